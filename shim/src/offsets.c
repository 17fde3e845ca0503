/*
 * Allocator of file offset ranges in the arena file (locked).
 *
 * File offsets are virtual and cheap: the file is sparse, and a freed range
 * is hole-punched before it returns here, so every range handed out reads
 * as zero (calloc relies on this). Policy: first fit over the free ranges
 * in offset order, else bump the high-water mark. First fit keeps the file
 * size bounded for programs that churn; ranges freed at the top lower the
 * high-water mark.
 *
 * The free ranges (below `top`, disjoint, never adjacent: they coalesce)
 * are a treap keyed by offset whose nodes know the longest range in their
 * subtree, so first fit skips every subtree too short for the request:
 * O(log n) to allocate, free and coalesce (until 2026-12 a sorted array,
 * scanned and shifted on every call: O(n) with n fragments).
 */
#define _GNU_SOURCE
#include <errno.h>

#include "shim.h"
#include "sys.h"

struct range {
    uint64_t      off, len;
    uint64_t      longest;       /* the longest len in this subtree */
    struct range *left, *right;
    uint64_t      prio;
};

static struct fbmm_slab nodes = { .node_size = sizeof(struct range) };
static struct range *root;
static uint64_t top;

/* Read without the lock too (fbmm_arena_grow_ahead's first test): stores
 * are atomic. */
uint64_t fbmm_off_top(void) { return __atomic_load_n(&top, __ATOMIC_RELAXED); }
static void set_top(uint64_t v) { __atomic_store_n(&top, v, __ATOMIC_RELAXED); }

static inline uint64_t longest(const struct range *t) { return t ? t->longest : 0; }

static void update(struct range *t)
{
    uint64_t l = longest(t->left), r = longest(t->right);
    t->longest = t->len > l ? (t->len > r ? t->len : r) : (l > r ? l : r);
}

/* Ranges starting below `off` to *a, the rest to *b. */
static void split(struct range *t, uint64_t off, struct range **a, struct range **b)
{
    if (!t) {
        *a = *b = NULL;
    } else if (t->off < off) {
        split(t->right, off, &t->right, b);
        update(t);
        *a = t;
    } else {
        split(t->left, off, a, &t->left);
        update(t);
        *b = t;
    }
}

static struct range *merge(struct range *a, struct range *b)
{
    if (!a) return b;
    if (!b) return a;
    if (a->prio > b->prio) {
        a->right = merge(a->right, b);
        update(a);
        return a;
    }
    b->left = merge(a, b->left);
    update(b);
    return b;
}

static int insert(uint64_t off, uint64_t len)
{
    struct range *n = fbmm_slab_take(&nodes), *a, *b;
    if (!n) return -1;
    *n = (struct range){ .off = off, .len = len, .longest = len, .prio = fbmm_treap_priority() };
    split(root, off, &a, &b);
    root = merge(merge(a, n), b);
    return 0;
}

/* Takes the range starting at `off` out of the tree (it must be there). */
static void erase(uint64_t off)
{
    struct range *a, *b, *mid, *c;
    split(root, off, &a, &b);
    split(b, off + 1, &mid, &c);
    if (mid) fbmm_slab_give(&nodes, mid);
    root = merge(a, c);
}

/* The last range starting before `off`, and the first starting at or after it. */
static void neighbours(uint64_t off, struct range **before, struct range **after)
{
    *before = *after = NULL;
    for (struct range *t = root; t;) {
        if (t->off < off) { *before = t; t = t->right; }
        else { *after = t; t = t->left; }
    }
}

static void free_all(struct range *t)
{
    while (t) {
        free_all(t->left);
        struct range *r = t->right;
        fbmm_slab_give(&nodes, t);
        t = r;
    }
}

void fbmm_off_reset(void)
{
    free_all(root);
    root = NULL;
    set_top(0);
}

void fbmm_off_reserve(uint64_t end)
{
    if (top < end) set_top(end);
}

/* The first range, in offset order, with room for `len` at `align`. */
static struct range *first_fit(struct range *t, uint64_t len, uint64_t align)
{
    if (!t || t->longest < len) return NULL;
    struct range *r = first_fit(t->left, len, align);
    if (r) return r;
    if (ROUND_UP(t->off, align) + len <= t->off + t->len) return t;
    return first_fit(t->right, len, align);
}

/* Takes [off, off+len) out of free range r (which contains it). */
static int carve(struct range *r, uint64_t off, uint64_t len)
{
    uint64_t start = r->off, end = off + len, rend = r->off + r->len;
    erase(start);
    if (start < off && insert(start, off - start) < 0) return -1;
    if (end < rend && insert(end, rend - end) < 0) return -1;
    return 0;
}

int fbmm_off_fits(size_t len, size_t align)
{
    return first_fit(root, len, align) != NULL;
}

uint64_t fbmm_off_alloc(size_t len, size_t align)
{
    struct range *r = first_fit(root, len, align);
    if (r) {
        uint64_t a = ROUND_UP(r->off, align);
        return carve(r, a, len) ? FBMM_NO_OFF : a;
    }
    uint64_t a = ROUND_UP(top, align);
    if (fbmm_arena_grow(a + len)) return FBMM_NO_OFF;
    uint64_t old = top;
    set_top(a + len);
    if (a > old) fbmm_off_free(old, a - old);  /* the alignment gap stays usable */
    return a;
}

int fbmm_off_extend(uint64_t end, size_t len)
{
    if (end == top) {
        if (fbmm_arena_grow(end + len)) return -1;
        set_top(end + len);
        return 0;
    }
    struct range *before, *after;
    neighbours(end, &before, &after);
    if (after && after->off == end && after->len >= len) return carve(after, end, len);
    errno = ENOMEM;
    return -1;
}

void fbmm_off_free(uint64_t off, size_t len)
{
    /* The pool's control block and window are pool.c's, never ours. */
    if (!len || fbmm_pool_owns(off)) return;
    struct range *before, *after;
    neighbours(off, &before, &after);
    uint64_t start = off, end = off + len;
    if (before && before->off + before->len == off) {
        start = before->off;
        erase(before->off);
    }
    if (after && after->off == end) {
        end = after->off + after->len;
        erase(after->off);
    }
    /* A range now ending at `top` gives the high-water mark back. */
    if (end == top) {
        set_top(start);
        return;
    }
    insert(start, end - start);  /* on failure it leaks offsets, never memory */
}
