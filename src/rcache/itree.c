/* Interval tree for the registration cache: an AVL tree keyed by start, augmented with max end. */
#include "rcache/itree.h"

static int height(const struct rcache_itree_node *n)
{
	return n ? n->height : 0;
}

static uintptr_t max_uptr(uintptr_t a, uintptr_t b)
{
	return a > b ? a : b;
}

static void update(struct rcache_itree_node *n)
{
	int hl = height(n->left), hr = height(n->right);

	n->height = 1 + (hl > hr ? hl : hr);
	n->max_end = n->end;
	if (n->left)
		n->max_end = max_uptr(n->max_end, n->left->max_end);
	if (n->right)
		n->max_end = max_uptr(n->max_end, n->right->max_end);
}

/* Total order: start, then end, then address (equal ranges are distinct nodes). */
static int cmp(const struct rcache_itree_node *a, const struct rcache_itree_node *b)
{
	if (a->start != b->start)
		return a->start < b->start ? -1 : 1;
	if (a->end != b->end)
		return a->end < b->end ? -1 : 1;
	if (a != b)
		return (uintptr_t)a < (uintptr_t)b ? -1 : 1;
	return 0;
}

static struct rcache_itree_node *rotate_right(struct rcache_itree_node *y)
{
	struct rcache_itree_node *x = y->left;

	y->left = x->right;
	x->right = y;
	update(y);
	update(x);
	return x;
}

static struct rcache_itree_node *rotate_left(struct rcache_itree_node *x)
{
	struct rcache_itree_node *y = x->right;

	x->right = y->left;
	y->left = x;
	update(x);
	update(y);
	return y;
}

static struct rcache_itree_node *rebalance(struct rcache_itree_node *n)
{
	int bf;

	update(n);
	bf = height(n->left) - height(n->right);
	if (bf > 1) {
		if (height(n->left->left) < height(n->left->right))
			n->left = rotate_left(n->left);
		return rotate_right(n);
	}
	if (bf < -1) {
		if (height(n->right->right) < height(n->right->left))
			n->right = rotate_right(n->right);
		return rotate_left(n);
	}
	return n;
}

static struct rcache_itree_node *insert(struct rcache_itree_node *root, struct rcache_itree_node *n)
{
	if (!root)
		return n;
	if (cmp(n, root) < 0)
		root->left = insert(root->left, n);
	else
		root->right = insert(root->right, n);
	return rebalance(root);
}

static struct rcache_itree_node *remove_min(struct rcache_itree_node *root,
					    struct rcache_itree_node **min)
{
	if (!root->left) {
		*min = root;
		return root->right;
	}
	root->left = remove_min(root->left, min);
	return rebalance(root);
}

static struct rcache_itree_node *remove_node(struct rcache_itree_node *root,
					     struct rcache_itree_node *n)
{
	struct rcache_itree_node *l, *r, *m;
	int c;

	if (!root)
		return NULL; /* not in the tree: the caller broke the contract */
	c = cmp(n, root);
	if (c < 0) {
		root->left = remove_node(root->left, n);
	} else if (c > 0) {
		root->right = remove_node(root->right, n);
	} else {
		l = root->left;
		r = root->right;
		if (!r)
			return l;
		r = remove_min(r, &m);
		m->left = l;
		m->right = r;
		return rebalance(m);
	}
	return rebalance(root);
}

void rcache_itree_init(struct rcache_itree *t)
{
	t->root = NULL;
	t->count = 0;
}

void rcache_itree_insert(struct rcache_itree *t, struct rcache_itree_node *n)
{
	n->left = n->right = NULL;
	n->height = 1;
	n->max_end = n->end;
	t->root = insert(t->root, n);
	t->count++;
}

void rcache_itree_remove(struct rcache_itree *t, struct rcache_itree_node *n)
{
	t->root = remove_node(t->root, n);
	t->count--;
	n->left = n->right = NULL;
}

/* Some node of a subtree whose max_end >= end, with its own end >= end. */
static struct rcache_itree_node *any_reaching(struct rcache_itree_node *n, uintptr_t end)
{
	while (n) {
		if (n->end >= end)
			return n;
		if (n->left && n->left->max_end >= end)
			n = n->left;
		else
			n = n->right;
	}
	return NULL;
}

struct rcache_itree_node *rcache_itree_find_cover(const struct rcache_itree *t, uintptr_t start,
						  uintptr_t end)
{
	struct rcache_itree_node *n = t->root;

	while (n && n->max_end >= end) {
		if (n->start > start) {
			n = n->left; /* only the left subtree holds smaller starts */
			continue;
		}
		if (n->end >= end)
			return n;
		/* Every node on the left starts at or before n, hence before start. */
		if (n->left && n->left->max_end >= end)
			return any_reaching(n->left, end);
		n = n->right;
	}
	return NULL;
}

static int walk(struct rcache_itree_node *n, uintptr_t start, uintptr_t end,
		int (*fn)(struct rcache_itree_node *, void *), void *arg)
{
	int r;

	while (n && n->max_end > start) {
		r = walk(n->left, start, end, fn, arg);
		if (r)
			return r;
		if (n->start >= end)
			return 0; /* this node and everything to its right start too late */
		if (n->end > start) {
			r = fn(n, arg);
			if (r)
				return r;
		}
		n = n->right; /* tail position: iterate instead of recursing */
	}
	return 0;
}

int rcache_itree_walk_overlaps(const struct rcache_itree *t, uintptr_t start, uintptr_t end,
			       int (*fn)(struct rcache_itree_node *, void *), void *arg)
{
	if (start >= end)
		return 0;
	return walk(t->root, start, end, fn, arg);
}

struct check_state {
	const struct rcache_itree_node *prev;
	size_t count;
	int bad;
};

static int check(const struct rcache_itree_node *n, struct check_state *st)
{
	int hl, hr;
	uintptr_t m;

	if (!n)
		return 0;
	hl = check(n->left, st);
	if (n->start >= n->end)
		st->bad = 1;
	if (st->prev && cmp(st->prev, n) >= 0)
		st->bad = 1;
	st->prev = n;
	st->count++;
	hr = check(n->right, st);
	if (n->height != 1 + (hl > hr ? hl : hr) || hl - hr > 1 || hr - hl > 1)
		st->bad = 1;
	m = n->end;
	if (n->left)
		m = max_uptr(m, n->left->max_end);
	if (n->right)
		m = max_uptr(m, n->right->max_end);
	if (m != n->max_end)
		st->bad = 1;
	return n->height;
}

int rcache_itree_check(const struct rcache_itree *t)
{
	struct check_state st = {NULL, 0, 0};

	check(t->root, &st);
	return st.bad || st.count != t->count ? -1 : 0;
}
