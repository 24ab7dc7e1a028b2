/* Interval tree (AVL, augmented with the largest end in each subtree) of [start, end) ranges. */
#ifndef RDAG_RCACHE_ITREE_H
#define RDAG_RCACHE_ITREE_H

#include <stddef.h>
#include <stdint.h>

/*
 * Nodes are embedded in the caller's structures (no allocation here). Ranges may overlap and
 * repeat; nodes are ordered by (start, end, node address), so every node has a distinct key.
 * Every operation is O(log n), except the overlap walk, which is O(k log n) for k results.
 * Not thread-safe: the owner serialises access.
 */
struct rcache_itree_node {
	struct rcache_itree_node *left, *right;
	uintptr_t start, end; /* [start, end), start < end */
	uintptr_t max_end;    /* largest end in this subtree */
	int height;
};

struct rcache_itree {
	struct rcache_itree_node *root;
	size_t count;
};

void rcache_itree_init(struct rcache_itree *t);

/* Inserts n, whose start and end the caller has set (start < end). */
void rcache_itree_insert(struct rcache_itree *t, struct rcache_itree_node *n);

/* Removes n, which must be in t. */
void rcache_itree_remove(struct rcache_itree *t, struct rcache_itree_node *n);

/*
 * Returns a node that covers the whole range (start <= start and end >= end), or NULL.
 * O(log n).
 */
struct rcache_itree_node *rcache_itree_find_cover(const struct rcache_itree *t, uintptr_t start,
						  uintptr_t end);

/*
 * Calls fn(node, arg) for every node overlapping [start, end), in ascending (start, end)
 * order; stops early when fn returns nonzero and returns that value, else 0. fn must not
 * change the tree (collect the nodes, then act on them).
 */
int rcache_itree_walk_overlaps(const struct rcache_itree *t, uintptr_t start, uintptr_t end,
			       int (*fn)(struct rcache_itree_node *, void *), void *arg);

/*
 * Checks the tree's invariants (order, balance, max_end, count); returns 0 if they hold.
 * For tests.
 */
int rcache_itree_check(const struct rcache_itree *t);

#endif /* RDAG_RCACHE_ITREE_H */
