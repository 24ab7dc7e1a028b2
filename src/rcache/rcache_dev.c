/* Device-memory registration cache: entries keyed on (buffer id, device, range, access). */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "rcache/rcache_dev.h"
#include "util/err.h"
#include "util/log.h"

#define DEFAULT_MAX_ENTRIES 256

struct entry {
	struct rcache_dev_reg reg;      /* first: handed out */
	struct entry *prev, *next;      /* the cache's list (most recently released first), or none */
	unsigned refs;
	int cached;                     /* in the list; else dropped or uncached: dereg on release */
};

struct rcache_dev {
	struct rcache_dev_attr attr;
	pthread_mutex_t lock;
	struct entry head;              /* circular list sentinel */
	size_t entries;
	struct rcache_dev_stats st;
};

int rcache_dev_key_serves(const struct rcache_dev_key *e, const struct rcache_dev_key *q)
{
	return e->buffer_id != 0 && e->buffer_id == q->buffer_id && e->device == q->device &&
	       e->addr <= q->addr && q->len <= e->len && q->addr - e->addr <= e->len - q->len &&
	       (e->access & q->access) == q->access;
}

int rcache_dev_key_stale(const struct rcache_dev_key *e, const struct rcache_dev_key *q)
{
	int overlap = e->addr < q->addr + q->len && q->addr < e->addr + e->len;

	return overlap && (e->buffer_id != q->buffer_id || e->device != q->device);
}

static void unlink_entry(struct rcache_dev *c, struct entry *e)
{
	e->prev->next = e->next;
	e->next->prev = e->prev;
	e->prev = e->next = NULL;
	e->cached = 0;
	c->entries--;
}

static void link_front(struct rcache_dev *c, struct entry *e)
{
	e->next = c->head.next;
	e->prev = &c->head;
	c->head.next->prev = e;
	c->head.next = e;
	e->cached = 1;
	c->entries++;
}

static void dereg_entry(struct rcache_dev *c, struct entry *e)
{
	int rc = c->attr.dereg(c->attr.arg, &e->reg.mr);

	if (rc)
		LOG_WARN("rcache_dev: deregistering %zu bytes of device %d at %p: %s", e->reg.key.len,
			 e->reg.key.device, (void *)e->reg.key.addr, rdag_strerror(rc));
	free(e);
}

int rcache_dev_create(const struct rcache_dev_attr *attr, struct rcache_dev **out)
{
	struct rcache_dev *c;

	if (!out)
		return err_set(RDAG_EINVAL, "rcache_dev: create without an output");
	*out = NULL;
	if (!attr || !attr->ident || !attr->reg || !attr->dereg)
		return err_set(RDAG_EINVAL, "rcache_dev: ident, reg and dereg callbacks are required");
	c = calloc(1, sizeof(*c));
	if (!c)
		return err_set(RDAG_ENOMEM, "rcache_dev: out of memory");
	c->attr = *attr;
	if (!c->attr.max_entries)
		c->attr.max_entries = DEFAULT_MAX_ENTRIES;
	pthread_mutex_init(&c->lock, NULL);
	c->head.next = c->head.prev = &c->head;
	*out = c;
	return 0;
}

int rcache_dev_destroy(struct rcache_dev *c)
{
	struct entry *e;

	if (!c)
		return 0;
	pthread_mutex_lock(&c->lock);
	if (c->st.in_use) {
		size_t n = c->st.in_use;

		pthread_mutex_unlock(&c->lock);
		return err_set(RDAG_EBUSY, "rcache_dev: %zu registrations still referenced", n);
	}
	while ((e = c->head.next) != &c->head) {
		unlink_entry(c, e);
		dereg_entry(c, e);
	}
	pthread_mutex_unlock(&c->lock);
	pthread_mutex_destroy(&c->lock);
	free(c);
	return 0;
}

/* Removes stale entries overlapping q into *dead (unused ones) and finds a hit. Lock held. */
static struct entry *scan(struct rcache_dev *c, const struct rcache_dev_key *q, struct entry **dead)
{
	struct entry *e, *next, *hit = NULL;

	for (e = c->head.next; e != &c->head; e = next) {
		next = e->next;
		if (rcache_dev_key_stale(&e->reg.key, q)) {
			unlink_entry(c, e);
			c->st.stale_drops++;
			if (e->refs == 0) {
				e->next = *dead;
				*dead = e;
			}
			continue;
		}
		if (!hit && rcache_dev_key_serves(&e->reg.key, q))
			hit = e;
	}
	return hit;
}

int rcache_dev_lookup(struct rcache_dev *c, const void *addr, size_t len, uint32_t access,
		      struct rcache_dev_reg **out)
{
	struct rcache_dev_ident id;
	struct rcache_dev_key q;
	struct entry *dead = NULL, *hit, *e, *victim = NULL;
	int rc;

	if (!c || !out || !addr || !len)
		return err_set(RDAG_EINVAL, "rcache_dev: lookup of %zu bytes at %p", len, addr);
	*out = NULL;
	rc = c->attr.ident(c->attr.ident_arg, addr, &id);
	if (rc)
		return rc;
	if (!id.buffer_id || (uintptr_t)addr < id.base ||
	    len > id.size || (uintptr_t)addr - id.base > id.size - len)
		return err_set(RDAG_EINVAL, "rcache_dev: [%p, +%zu) is not inside one device allocation "
					    "(buffer %llu at 0x%lx, %zu bytes)",
			       addr, len, (unsigned long long)id.buffer_id, (unsigned long)id.base, id.size);
	q = (struct rcache_dev_key){.buffer_id = id.buffer_id, .device = id.device,
				    .addr = (uintptr_t)addr, .len = len, .access = access};
	pthread_mutex_lock(&c->lock);
	c->st.lookups++;
	hit = scan(c, &q, &dead);
	if (hit) {
		hit->refs++;
		if (hit->refs == 1)
			c->st.in_use++;
		c->st.hits++;
	} else {
		c->st.misses++;
	}
	pthread_mutex_unlock(&c->lock);
	while (dead) {
		e = dead;
		dead = e->next;
		c->st.deregs++;
		dereg_entry(c, e);
	}
	if (hit) {
		*out = &hit->reg;
		return 0;
	}
	e = calloc(1, sizeof(*e));
	if (!e)
		return err_set(RDAG_ENOMEM, "rcache_dev: out of memory");
	rc = c->attr.reg(c->attr.arg, (void *)(uintptr_t)addr, len, access, id.device, &e->reg.mr);
	if (rc) {
		free(e);
		return rc;
	}
	e->reg.key = q;
	e->refs = 1;
	pthread_mutex_lock(&c->lock);
	c->st.regs++;
	c->st.in_use++;
	if (c->entries >= c->attr.max_entries) {
		/* The least recently released unused entry: the list's tail end. */
		for (struct entry *v = c->head.prev; v != &c->head; v = v->prev) {
			if (v->refs == 0) {
				victim = v;
				break;
			}
		}
		if (victim) {
			unlink_entry(c, victim);
			c->st.evictions++;
		}
	}
	if (c->entries < c->attr.max_entries)
		link_front(c, e);
	else
		c->st.uncached++;
	pthread_mutex_unlock(&c->lock);
	if (victim) {
		c->st.deregs++;
		dereg_entry(c, victim);
	}
	*out = &e->reg;
	return 0;
}

void rcache_dev_release(struct rcache_dev *c, struct rcache_dev_reg *reg)
{
	struct entry *e = (struct entry *)reg;
	int drop = 0;

	if (!c || !reg)
		return;
	pthread_mutex_lock(&c->lock);
	if (--e->refs == 0) {
		c->st.in_use--;
		if (e->cached) {
			/* Most recently released first. */
			unlink_entry(c, e);
			link_front(c, e);
		} else {
			drop = 1;
			c->st.deregs++;
		}
	}
	pthread_mutex_unlock(&c->lock);
	if (drop)
		dereg_entry(c, e);
}

int rcache_dev_invalidate(struct rcache_dev *c, const void *addr, size_t len)
{
	struct rcache_dev_key q = {.addr = (uintptr_t)addr, .len = len};
	struct entry *e, *next, *dead = NULL;
	int n = 0;

	if (!c || !len)
		return err_set(RDAG_EINVAL, "rcache_dev: invalidate of %zu bytes", len);
	pthread_mutex_lock(&c->lock);
	for (e = c->head.next; e != &c->head; e = next) {
		next = e->next;
		/* buffer id 0 in q: every overlapping entry counts as stale. */
		if (rcache_dev_key_stale(&e->reg.key, &q)) {
			unlink_entry(c, e);
			n++;
			if (e->refs == 0) {
				e->next = dead;
				dead = e;
				c->st.deregs++;
			}
		}
	}
	pthread_mutex_unlock(&c->lock);
	while (dead) {
		e = dead;
		dead = e->next;
		dereg_entry(c, e);
	}
	return n;
}

void rcache_dev_get_stats(struct rcache_dev *c, struct rcache_dev_stats *out)
{
	pthread_mutex_lock(&c->lock);
	*out = c->st;
	out->entries = c->entries;
	pthread_mutex_unlock(&c->lock);
}

int rcache_dev_fab_reg(void *ep, void *addr, size_t len, uint32_t access, int device,
		       struct fab_mr *out)
{
	return fab_mr_reg_mem(ep, addr, len, access, FAB_MEM_CUDA, device, out);
}

int rcache_dev_fab_dereg(void *ep, struct fab_mr *mr)
{
	return fab_mr_dereg(ep, mr);
}
