/* Unit tests of the context manager (ids, current context, references, records) and the u64 map. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <rdag/rdag.h>

#include "ctx/ctxmgr.h"
#include "util/u64map.h"

static void map_put_get_del_grow(void **state)
{
	struct u64map m;
	static char vals[3];
	uint64_t k;
	void *v;
	size_t i = 0, seen = 0;

	(void)state;
	memset(&m, 0, sizeof(m));
	assert_null(u64map_get(&m, 1));
	for (uint64_t key = 0; key < 10000; key++)
		assert_int_equal(u64map_put(&m, key * 7919, &vals[key % 3]), 0);
	assert_int_equal(m.count, 10000);
	for (uint64_t key = 0; key < 10000; key++)
		assert_ptr_equal(u64map_get(&m, key * 7919), &vals[key % 3]);
	/* delete the odd ones, then reinsert some: tombstones are reused, lookups still right */
	for (uint64_t key = 1; key < 10000; key += 2)
		assert_ptr_equal(u64map_del(&m, key * 7919), &vals[key % 3]);
	assert_null(u64map_del(&m, 7919));
	assert_int_equal(m.count, 5000);
	for (uint64_t key = 1; key < 100; key += 2)
		assert_int_equal(u64map_put(&m, key * 7919, &vals[0]), 0);
	while (u64map_next(&m, &i, &k, &v)) {
		assert_non_null(v);
		seen++;
	}
	assert_int_equal(seen, 5050);
	assert_int_equal(u64map_put(&m, 0, &vals[2]), 0); /* replace */
	assert_ptr_equal(u64map_get(&m, 0), &vals[2]);
	assert_int_equal(m.count, 5050);
	u64map_fini(&m);
	assert_null(u64map_get(&m, 0));
}

static void ids_layout_and_exhaustion(void **state)
{
	struct ctxmgr m;
	uint64_t id, prev = 0, mid;

	(void)state;
	ctxmgr_init(&m, 0x1234);
	for (int i = 0; i < 200; i++) {
		assert_int_equal(ctxmgr_create(&m, &id), 0);
		assert_int_equal(id >> 48, 0x1234);
		if (i)
			assert_int_equal(id, prev + 1);
		else
			assert_int_equal(id & CTX_ID_LOW_MASK, 0);
		prev = id;
		{
			struct ctx *c = ctxmgr_remove(&m, id);

			assert_non_null(c);
			ctx_put(c);
		}
	}
	/* the message counter is separate: it starts at 0 */
	assert_int_equal(ctxmgr_new_msg_id(&m, &mid), 0);
	assert_int_equal(mid, (uint64_t)0x1234 << 48);
	atomic_store(&m.next_msg, CTX_ID_LOW_MASK);
	assert_int_equal(ctxmgr_new_msg_id(&m, &mid), 0);
	assert_int_equal(mid & CTX_ID_LOW_MASK, CTX_ID_LOW_MASK);
	assert_int_equal(ctxmgr_new_msg_id(&m, &mid), RDAG_ERANGE);
	assert_int_equal(ctxmgr_new_msg_id(&m, &mid), RDAG_ERANGE); /* stays exhausted */
	atomic_store(&m.next_ctx, CTX_ID_LOW_MASK);
	assert_int_equal(ctxmgr_create(&m, &id), 0);
	assert_int_equal(id, ((uint64_t)0x1234 << 48) | CTX_ID_LOW_MASK);
	ctx_put(ctxmgr_remove(&m, id));
	assert_int_equal(ctxmgr_create(&m, &id), RDAG_ERANGE);
	assert_int_equal(ctxmgr_count(&m), 0);
	ctxmgr_fini(&m);
}

struct remover {
	struct ctxmgr *m;
	uint64_t id;
};

static void *remove_on_other_thread(void *arg)
{
	struct remover *r = arg;

	ctx_put(ctxmgr_remove(r->m, r->id));
	return NULL;
}

static void current_and_nesting(void **state)
{
	struct ctxmgr m, other;
	uint64_t id, cur, id2;
	bool had;

	(void)state;
	ctxmgr_init(&m, 1);
	ctxmgr_init(&other, 2);
	assert_int_equal(ctxmgr_current(&m, &cur), RDAG_ENOENT);
	assert_int_equal(ctxmgr_create(&m, &id), 0);
	assert_int_equal(ctxmgr_current(&m, &cur), 0);
	assert_int_equal(cur, id);
	assert_int_equal(ctxmgr_create(&m, &id2), RDAG_EBUSY);
	assert_int_equal(ctxmgr_current(&other, &cur), RDAG_ENOENT); /* per manager */
	ctxmgr_swap_current(&m, false, 0, &had, &cur);
	assert_true(had);
	assert_int_equal(cur, id);
	assert_int_equal(ctxmgr_create(&m, &id2), 0);
	assert_int_equal(ctxmgr_count(&m), 2);
	/* removing the current context clears it */
	ctx_put(ctxmgr_remove(&m, id2));
	assert_int_equal(ctxmgr_current(&m, &cur), RDAG_ENOENT);
	/* one released by another thread stays current here, but a new one replaces it */
	ctxmgr_swap_current(&m, true, id, NULL, NULL);
	{
		struct remover rm = {&m, id};
		pthread_t t;

		assert_int_equal(pthread_create(&t, NULL, remove_on_other_thread, &rm), 0);
		pthread_join(t, NULL);
	}
	assert_int_equal(ctxmgr_current(&m, &cur), 0);
	assert_int_equal(cur, id);
	assert_int_equal(ctxmgr_create(&m, &id2), 0);
	assert_int_equal(ctxmgr_current(&m, &cur), 0);
	assert_int_equal(cur, id2);
	ctxmgr_fini(&m);
	ctxmgr_fini(&other);
}

static void refs_known_and_records(void **state)
{
	struct ctxmgr m;
	struct ctx *c, *c2;
	struct ctx_sendfn *s1 = calloc(1, sizeof(*s1)), *s2 = calloc(1, sizeof(*s2));
	struct ctx_recvfn *r1 = calloc(1, sizeof(*r1));
	uint16_t known[8];

	(void)state;
	ctxmgr_init(&m, 3);
	assert_null(ctxmgr_get(&m, 42));
	assert_int_equal(ctxmgr_get_or_create(&m, 42, &c), 0);
	assert_int_equal(ctxmgr_get_or_create(&m, 42, &c2), 0);
	assert_ptr_equal(c, c2);
	ctx_put(c2);
	for (uint16_t w = 5; w > 0; w--) {
		assert_int_equal(ctx_add_known(c, w), 0);
		assert_int_equal(ctx_add_known(c, w), 0);
	}
	assert_int_equal(ctx_known(c, known, 8), 5);
	for (int i = 0; i < 5; i++)
		assert_int_equal(known[i], i + 1);
	s1->msg_id = s2->msg_id = r1->msg_id = 7;
	assert_int_equal(ctx_add_send(c, s1), 0);
	assert_int_equal(ctx_add_send(c, s2), RDAG_EEXIST);
	free(s2);
	assert_int_equal(ctx_add_recv(c, r1), 0); /* send and recv maps are separate */
	/* removed while referenced: still usable until the last reference goes */
	c2 = ctxmgr_remove(&m, 42);
	assert_ptr_equal(c, c2);
	assert_null(ctxmgr_get(&m, 42));
	assert_int_equal(ctx_known(c, NULL, 0), 5);
	ctx_put(c2);
	ctx_put(c);
	assert_int_equal(ctxmgr_count(&m), 0);
	ctxmgr_fini(&m);
}

struct race {
	struct ctxmgr *m;
	int ok;
};

static void *churn(void *arg)
{
	struct race *r = arg;

	r->ok = 1;
	for (int i = 0; i < 20000; i++) {
		uint64_t id;
		struct ctx *c;

		if (ctxmgr_create(r->m, &id)) {
			r->ok = 0;
			break;
		}
		c = ctxmgr_get(r->m, id);
		if (!c || ctx_add_known(c, (uint16_t)(i & 15))) {
			r->ok = 0;
			break;
		}
		ctx_put(ctxmgr_remove(r->m, id));
		ctx_put(c);
	}
	return NULL;
}

static void concurrent_create_release(void **state)
{
	struct ctxmgr m;
	pthread_t t[4];
	struct race r[4];

	(void)state;
	ctxmgr_init(&m, 9);
	for (int i = 0; i < 4; i++) {
		r[i].m = &m;
		assert_int_equal(pthread_create(&t[i], NULL, churn, &r[i]), 0);
	}
	for (int i = 0; i < 4; i++) {
		pthread_join(t[i], NULL);
		assert_true(r[i].ok);
	}
	assert_int_equal(ctxmgr_count(&m), 0);
	assert_int_equal(atomic_load(&m.next_ctx), 80000);
	ctxmgr_fini(&m);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(map_put_get_del_grow),
		cmocka_unit_test(ids_layout_and_exhaustion),
		cmocka_unit_test(current_and_nesting),
		cmocka_unit_test(refs_known_and_records),
		cmocka_unit_test(concurrent_create_release),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
