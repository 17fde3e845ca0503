/*
 * Fixed-size nodes for the shim's trees (the region table, the free
 * offsets), from slabs mapped with raw system calls: never the program's
 * allocator, never our own interposers. Nodes never move, so pointers into
 * a tree stay valid until their node is given back. A fork child inherits
 * the slabs with the trees in them. Locked: callers hold fbmm_lock.
 */
#define _GNU_SOURCE
#include "shim.h"
#include "sys.h"

#define SLAB_BYTES (256u << 10)

void *fbmm_slab_take(struct fbmm_slab *s)
{
    void *n = s->free;
    if (n) {
        s->free = *(void **)n;
        return n;
    }
    if (!s->current || s->used + s->node_size > SLAB_BYTES) {
        void *m = sys_mmap(NULL, SLAB_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED) return NULL;
        s->current = m;
        s->used = 0;
    }
    n = s->current + s->used;
    s->used += s->node_size;
    return n;
}

void fbmm_slab_give(struct fbmm_slab *s, void *n)
{
    *(void **)n = s->free;
    s->free = n;
}

uint64_t fbmm_treap_priority(void)
{
    /* xorshift64: any spread of priorities keeps the expected depth logarithmic */
    static uint64_t state = 0x9E3779B97F4A7C15ull;
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state >> 32;
}
