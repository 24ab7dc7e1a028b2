/* Recording registrar for the rcache tests (thread-safe). */
#include <stdlib.h>
#include <string.h>

#include "fake_reg.h"

void fake_init(struct fake_reg *f)
{
	memset(f, 0, sizeof(*f));
	pthread_mutex_init(&f->lock, NULL);
}

void fake_fini(struct fake_reg *f)
{
	free(f->recs);
	pthread_mutex_destroy(&f->lock);
}

int fake_reg_cb(void *arg, void *addr, size_t len, uint32_t access, struct fab_mr *out)
{
	struct fake_reg *f = arg;
	struct fake_rec *r;
	uint64_t stamp = 0;
	int rc = 0;

	if (f->read_stamp)
		memcpy(&stamp, addr, sizeof(stamp));
	pthread_mutex_lock(&f->lock);
	if (f->fail_next) {
		rc = f->fail_next;
		f->fail_next = 0;
		goto out;
	}
	if (f->nrecs == f->cap) {
		size_t cap = f->cap ? 2 * f->cap : 64;
		struct fake_rec *n = realloc(f->recs, cap * sizeof(*n));

		if (!n) {
			rc = RDAG_ENOMEM;
			goto out;
		}
		f->recs = n;
		f->cap = cap;
	}
	r = &f->recs[f->nrecs++];
	r->addr = addr;
	r->len = len;
	r->access = access;
	r->stamp = stamp;
	r->live = 1;
	f->live++;
	memset(out, 0, sizeof(*out));
	out->addr = addr;
	out->len = len;
	out->rkey = f->nrecs;
	out->desc = (void *)(uintptr_t)f->nrecs;
	out->remote_base = (uint64_t)(uintptr_t)addr;
out:
	pthread_mutex_unlock(&f->lock);
	return rc;
}

int fake_dereg_cb(void *arg, struct fab_mr *mr)
{
	struct fake_reg *f = arg;
	int rc = 0;

	pthread_mutex_lock(&f->lock);
	if (mr->rkey == 0 || mr->rkey > f->nrecs || !f->recs[mr->rkey - 1].live ||
	    f->recs[mr->rkey - 1].addr != mr->addr) {
		f->errors++;
		rc = RDAG_EINVAL;
	} else {
		f->recs[mr->rkey - 1].live = 0;
		f->live--;
		f->deregs++;
	}
	pthread_mutex_unlock(&f->lock);
	return rc;
}

int fake_get(struct fake_reg *f, uint64_t key, struct fake_rec *out)
{
	int ok = 0;

	pthread_mutex_lock(&f->lock);
	if (key >= 1 && key <= f->nrecs) {
		*out = f->recs[key - 1];
		ok = 1;
	}
	pthread_mutex_unlock(&f->lock);
	return ok;
}

int fake_is_live(struct fake_reg *f, uint64_t key)
{
	struct fake_rec r;

	return fake_get(f, key, &r) && r.live;
}

size_t fake_nregs(struct fake_reg *f)
{
	size_t n;

	pthread_mutex_lock(&f->lock);
	n = f->nrecs;
	pthread_mutex_unlock(&f->lock);
	return n;
}

size_t fake_live(struct fake_reg *f)
{
	size_t n;

	pthread_mutex_lock(&f->lock);
	n = f->live;
	pthread_mutex_unlock(&f->lock);
	return n;
}
