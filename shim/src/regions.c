/*
 * The region table: our pieces in address order, as an implicit treap (a
 * randomised balanced tree whose nodes count their subtrees), so that the
 * callers' view stays the one of a sorted array (piece i, the first piece
 * ending after an address, remove pieces i..i+n) while lookup, insert and
 * remove cost O(log n). Until 2026-12 this was a sorted array: with 20,000
 * live malloc blocks, 40% of a malloc/free burst went to memmove.
 *
 * Nodes come from slab.c and never move, so a piece pointer stays valid
 * until that piece is removed. Locked: callers hold fbmm_lock. A fork child
 * inherits the tree as it is.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <string.h>

#include "shim.h"
#include "sys.h"

struct rt_node {
    struct fbmm_piece piece;     /* first: a node pointer is a piece pointer */
    struct rt_node   *left, *right;
    uint32_t          size;      /* nodes in this subtree */
    uint32_t          prio;      /* heap order: higher above */
};

static struct fbmm_slab nodes = { .node_size = sizeof(struct rt_node) };
static struct rt_node *root;

size_t fbmm_rt_n;

/* ---- occupancy: may a range hold a piece of ours? (lock-free) ---------
 *
 * munmap, mprotect, madvise and MAP_FIXED of foreign memory must not take
 * the lock (and block signals twice). A first test is the span from the
 * lowest to the highest address we ever mapped, which only widens; inside
 * it, a count of our pages per 2 MiB granule of address space answers: the
 * call takes the lock only when a granule it touches holds one of our
 * pages. Counts live in 8 KiB leaves (4096 granules, 8 GiB of address space
 * each) mapped when first needed, under a static top level; they change
 * under the lock when pieces are inserted, removed, split, merged or cut,
 * and are read with atomic loads. A range past the 47-bit address space,
 * longer than 1 GiB, or any failure to map a leaf falls back to the span. */
static uintptr_t span_lo = UINTPTR_MAX, span_hi;

#define OCC_GRANULE_SHIFT 21
#define OCC_LEAF_SHIFT    12
#define OCC_TOP           (1ul << (47 - OCC_GRANULE_SHIFT - OCC_LEAF_SHIFT))
#define OCC_LIMIT         (1ul << 47)
#define OCC_SCAN_MAX      (1ul << 30)
static uint16_t *occ_top[OCC_TOP];
static int occ_broken;

static uint16_t *occ_leaf(uintptr_t g, int make)
{
    uint16_t **slot = &occ_top[g >> OCC_LEAF_SHIFT];
    uint16_t *leaf = __atomic_load_n(slot, __ATOMIC_ACQUIRE);
    if (!leaf && make) {
        leaf = sys_mmap(NULL, (1ul << OCC_LEAF_SHIFT) * sizeof *leaf, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (leaf == MAP_FAILED) return NULL;
        __atomic_store_n(slot, leaf, __ATOMIC_RELEASE);
    }
    return leaf;
}

/* Adds (sign 1) or removes (-1) the pages of [a, a+len) to the counts. */
static void occ_change(uintptr_t a, size_t len, int sign)
{
    if (!len) return;
    uintptr_t end = a + len;
    if (end > OCC_LIMIT || end < a) {
        __atomic_store_n(&occ_broken, 1, __ATOMIC_RELEASE);
        return;
    }
    for (uintptr_t g = a >> OCC_GRANULE_SHIFT; g <= (end - 1) >> OCC_GRANULE_SHIFT; g++) {
        uintptr_t lo = g << OCC_GRANULE_SHIFT, hi = lo + (1ul << OCC_GRANULE_SHIFT);
        uint16_t pages = (uint16_t)(((end < hi ? end : hi) - (a > lo ? a : lo)) / fbmm_page);
        uint16_t *leaf = occ_leaf(g, sign > 0);
        if (!leaf) {
            if (sign > 0) __atomic_store_n(&occ_broken, 1, __ATOMIC_RELEASE);
            continue;
        }
        uint16_t *c = &leaf[g & ((1ul << OCC_LEAF_SHIFT) - 1)];
        if (sign > 0) __atomic_add_fetch(c, pages, __ATOMIC_RELEASE);
        else __atomic_sub_fetch(c, pages, __ATOMIC_RELEASE);
    }
}

int fbmm_rt_maybe(uintptr_t a, size_t len)
{
    if (!(a < __atomic_load_n(&span_hi, __ATOMIC_ACQUIRE) && a + len > __atomic_load_n(&span_lo, __ATOMIC_ACQUIRE)))
        return 0;
    uintptr_t end = a + (len ? len : 1);
    if (__atomic_load_n(&occ_broken, __ATOMIC_ACQUIRE) || len > OCC_SCAN_MAX || end > OCC_LIMIT || end < a)
        return 1;
    for (uintptr_t g = a >> OCC_GRANULE_SHIFT; g <= (end - 1) >> OCC_GRANULE_SHIFT; g++) {
        uint16_t *leaf = occ_leaf(g, 0);
        if (leaf && __atomic_load_n(&leaf[g & ((1ul << OCC_LEAF_SHIFT) - 1)], __ATOMIC_ACQUIRE)) return 1;
    }
    return 0;
}

static inline uint32_t size_of(const struct rt_node *t) { return t ? t->size : 0; }
static inline void update(struct rt_node *t) { t->size = 1 + size_of(t->left) + size_of(t->right); }

static struct rt_node *node_new(const struct fbmm_piece *p)
{
    struct rt_node *t = fbmm_slab_take(&nodes);
    if (!t) return NULL;
    t->piece = *p;
    t->piece.flags &= ~P_CLEAN;  /* a new node is in no slot list */
    t->piece.clean_prev = t->piece.clean_next = NULL;
    t->left = t->right = NULL;
    t->size = 1;
    t->prio = (uint32_t)fbmm_treap_priority();
    return t;
}

static void node_free_all(struct rt_node *t)
{
    while (t) {
        node_free_all(t->left);
        occ_change(t->piece.addr, t->piece.len, -1);
        struct rt_node *r = t->right;
        fbmm_slab_give(&nodes, t);
        t = r;
    }
}

/* The first k nodes of t go to *a, the rest to *b. */
static void split_at(struct rt_node *t, size_t k, struct rt_node **a, struct rt_node **b)
{
    if (!t) {
        *a = *b = NULL;
    } else if (size_of(t->left) >= k) {
        split_at(t->left, k, a, &t->left);
        update(t);
        *b = t;
    } else {
        split_at(t->right, k - size_of(t->left) - 1, &t->right, b);
        update(t);
        *a = t;
    }
}

/* Every node of a before every node of b. */
static struct rt_node *merge(struct rt_node *a, struct rt_node *b)
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

void fbmm_rt_reset(void)
{
    node_free_all(root);
    root = NULL;
    fbmm_rt_n = 0;
}

struct fbmm_piece *fbmm_rt_at(size_t i)
{
    struct rt_node *t = root;
    while (t) {
        size_t l = size_of(t->left);
        if (i < l) t = t->left;
        else if (i == l) return &t->piece;
        else { i -= l + 1; t = t->right; }
    }
    return NULL;
}

size_t fbmm_rt_lower(uintptr_t a)
{
    size_t base = 0, found = fbmm_rt_n;
    for (struct rt_node *t = root; t;) {
        if (t->piece.addr + t->piece.len > a) {
            found = base + size_of(t->left);
            t = t->left;
        } else {
            base += size_of(t->left) + 1;
            t = t->right;
        }
    }
    return found;
}

struct fbmm_piece *fbmm_rt_find(uintptr_t a)
{
    size_t i = fbmm_rt_lower(a);
    struct fbmm_piece *p = i < fbmm_rt_n ? fbmm_rt_at(i) : NULL;
    return p && p->addr <= a ? p : NULL;
}

int fbmm_rt_insert(const struct fbmm_piece *p)
{
    struct rt_node *t = node_new(p), *a, *b;
    if (!t) return -1;
    size_t i = fbmm_rt_lower(p->addr);
    split_at(root, i, &a, &b);
    root = merge(merge(a, t), b);
    fbmm_rt_n++;
    fbmm_rt_span(p->addr, p->len);
    occ_change(p->addr, p->len, 1);
    return (int)i;
}

void fbmm_rt_span(uintptr_t a, size_t len)
{
    if (a < span_lo) __atomic_store_n(&span_lo, a, __ATOMIC_RELEASE);
    if (a + len > span_hi) __atomic_store_n(&span_hi, a + len, __ATOMIC_RELEASE);
}

void fbmm_rt_remove(size_t i, size_t n)
{
    struct rt_node *a, *b, *gone, *c;
    split_at(root, i, &a, &b);
    split_at(b, n, &gone, &c);
    fbmm_rt_n -= size_of(gone);
    node_free_all(gone);
    root = merge(a, c);
}

int fbmm_rt_split(uintptr_t a)
{
    struct fbmm_piece *p = fbmm_rt_find(a);
    if (!p || p->addr == a) return 0;
    struct fbmm_piece right = *p;
    size_t cut = a - p->addr;
    right.addr = a;
    right.len -= cut;
    if (!(right.flags & P_ANON)) right.off += cut;
    right.flags &= ~(P_HEAD | P_CACHED | P_CLEAN);
    right.blk = 0;
    right.mag = NULL;
    p->len = cut;
    occ_change(a, right.len, -1);  /* the right part's node adds them back */
    if (fbmm_rt_insert(&right) < 0) {
        p->len += right.len;  /* as it was */
        occ_change(a, right.len, 1);
        return -1;
    }
    return 0;
}

/* Two pieces are one kernel VMA when addresses and offsets are contiguous and
 * the attributes match; keep the table the same (fewer entries). A block
 * head never merges into its left neighbour; P_FOREIGN pieces never merge
 * (they may map different ancestors' files). */
static int mergeable(const struct fbmm_piece *l, const struct fbmm_piece *r)
{
    return l->addr + l->len == r->addr && !(r->flags & P_HEAD) &&
           !((l->flags | r->flags) & (P_ANON | P_FOREIGN)) && l->off + l->len == r->off &&
           l->prot == r->prot && (l->flags & ~P_HEAD) == r->flags;
}

void fbmm_rt_merge_around(uintptr_t a)
{
    size_t i = fbmm_rt_lower(a);
    if (i >= fbmm_rt_n) return;
    struct fbmm_piece *here = fbmm_rt_at(i);
    struct fbmm_piece *next = i + 1 < fbmm_rt_n ? fbmm_rt_at(i + 1) : NULL;
    if (next && mergeable(here, next)) {
        here->len += next->len;
        occ_change(next->addr, next->len, 1);  /* its removal takes them off */
        fbmm_rt_remove(i + 1, 1);
    }
    struct fbmm_piece *prev = i > 0 ? fbmm_rt_at(i - 1) : NULL;
    if (prev && mergeable(prev, here)) {
        prev->len += here->len;
        occ_change(here->addr, here->len, 1);
        fbmm_rt_remove(i, 1);
    }
}

void fbmm_rt_cut(struct fbmm_piece *p, size_t len)
{
    if (len >= p->len) return;
    occ_change(p->addr + len, p->len - len, -1);
    p->len = len;
}

/* ---- the shim's share of vm.max_map_count ------------------------------
 *
 * Every piece is a VMA of its own: MAP_SHARED mappings of scattered file
 * offsets do not merge, where the private anonymous mappings they stand for
 * usually would (glibc's mmapped chunks, an allocator's extents). A program
 * with many live blocks would so reach the kernel's limit on mappings
 * (vm.max_map_count, 65,530 by default), after which every mmap, brk growth
 * or VMA split fails, the fallback allocator's included. So new mappings
 * are ours only while the table holds under half of the limit; the rest
 * goes to the next allocator or the kernel (merging as natively), and the
 * other half stays the program's. The limit is read once, when the table
 * first gets near it (a small process never reads it). */
#define DEFAULT_MAX_MAP_COUNT 65530
#define ROOM_CHECK_FROM       256
static size_t rt_room_max;  /* 0: not read yet */

static size_t max_map_count(void)
{
    char buf[32];
    long fd = syscall(SYS_openat, AT_FDCWD, "/proc/sys/vm/max_map_count", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return DEFAULT_MAX_MAP_COUNT;
    long n = syscall(SYS_read, fd, buf, sizeof buf - 1);
    syscall(SYS_close, fd);
    size_t v = 0;
    for (long i = 0; i < n && buf[i] >= '0' && buf[i] <= '9'; i++) v = v * 10 + (size_t)(buf[i] - '0');
    return v ? v : DEFAULT_MAX_MAP_COUNT;
}

int fbmm_rt_room(void)
{
    if (fbmm_rt_n < ROOM_CHECK_FROM) return 1;
    if (!rt_room_max) rt_room_max = max_map_count() / 2;
    return fbmm_rt_n < rt_room_max;
}

/* ---- block heads filter ---------------------------------------------- */

#define HEADS_BITS 14
static uint32_t heads[1u << HEADS_BITS];

static inline size_t head_slot(uintptr_t a)
{
    return (size_t)(((uint64_t)(a >> 12) * 0x9E3779B97F4A7C15ull) >> (64 - HEADS_BITS));
}
void fbmm_heads_add(uintptr_t a) { __atomic_add_fetch(&heads[head_slot(a)], 1, __ATOMIC_RELEASE); }
void fbmm_heads_del(uintptr_t a) { __atomic_sub_fetch(&heads[head_slot(a)], 1, __ATOMIC_RELEASE); }
int  fbmm_heads_maybe(uintptr_t a)
{
    return __atomic_load_n(&heads[head_slot(a)], __ATOMIC_ACQUIRE) != 0;
}
