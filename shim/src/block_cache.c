/*
 * The cache of freed malloc blocks (locked), used by malloc_hooks.c.
 *
 * Natively, glibc serves freed large blocks again from its heap: after a
 * block is freed, its mmap threshold rises to that size (up to 32 MiB) and
 * up to twice that (64 MiB) of freed heap stays resident (trim threshold).
 * Through the arena every large malloc would cost an mmap, first-touch
 * faults on shared memory, and at free a munmap and a hole punch. So free()
 * keeps a bounded number of blocks mapped and resident, and the malloc
 * family hands them out again:
 *
 *  - only malloc blocks (never mmap()ed regions, which must read zero), only
 *    whole, unchanged ones (one piece, PROT_READ|PROT_WRITE, no fork
 *    advice), at most CACHE_BLOCK_MAX each, CACHE_SLOTS blocks and
 *    FBMM_MALLOC_CACHE bytes (default 64 MiB; 0 disables) in all; the
 *    oldest is freed as before (munmap + hole punch) to make room;
 *  - a request of `need` page-rounded bytes takes the smallest cached block
 *    of need..need+need/4 bytes (ties: the most recently freed, whose pages
 *    are warmest), suitably aligned; malloc_usable_size then says the
 *    block's full length, which the program may use. calloc never takes
 *    from the cache (its memory must read zero) but gives blocks to it;
 *  - a cached block stays in the region table, flagged P_CACHED (free,
 *    realloc and malloc_usable_size do not take it for a live block), so
 *    munmap/MAP_FIXED/mremap over it keep table and cache consistent, and
 *    a fork child unmaps it rather than copying it.
 *
 * Entries are ordered oldest first. All of it under the lock. */
#define _GNU_SOURCE
#include <stdint.h>
#include <string.h>

#include "shim.h"
#include "sys.h"

#define CACHE_SLOTS     64
#define CACHE_BLOCK_MAX (32ul << 20)

static struct cached { uintptr_t addr; size_t len; } cache[CACHE_SLOTS];
static size_t cache_n, cache_bytes;

static void cache_del(size_t i)
{
    cache_bytes -= cache[i].len;
    memmove(&cache[i], &cache[i + 1], (cache_n - i - 1) * sizeof cache[0]);
    cache_n--;
}

void fbmm_cache_forget(struct fbmm_piece *p)
{
    if (p->flags & P_CLEAN) {  /* a clean slot: its own list */
        fbmm_clean_forget(p);
        return;
    }
    if (!(p->flags & P_CACHED)) return;
    for (size_t i = 0; i < cache_n; i++)
        if (cache[i].addr == p->addr) {
            cache_del(i);
            return;
        }
}

/* Frees a cached block for real (oldest first when making room). */
static void cache_evict(size_t i)
{
    struct cached c = cache[i];
    cache_del(i);
    struct fbmm_piece *pc = fbmm_rt_find(c.addr);
    if (pc && pc->addr == c.addr && pc->flags == (P_HEAD | P_CACHED) && pc->blk == c.len) {
        pc->flags &= ~P_CACHED;
        fbmm_block_retire(c.addr, pc, c.len);  /* a clean slot, else unmapped */
    } else {
        fbmm_vm_unmap(c.addr, c.len);  /* drops the piece (and P_CACHED) */
    }
}

/* Keeps our block at p (head piece *pc, length blk) for reuse instead of
 * freeing it; 0 when it was taken. */
int fbmm_cache_put(uintptr_t p, struct fbmm_piece *pc, size_t blk)
{
    size_t max = fbmm_cfg.cache_max < CACHE_BLOCK_MAX ? fbmm_cfg.cache_max : CACHE_BLOCK_MAX;
    if (blk > max || pc->flags != P_HEAD || pc->prot != (PROT_READ | PROT_WRITE) ||
        pc->len < blk || fbmm_arena.state != ARENA_READY)
        return -1;
    /* The head piece may have merged with a mapping right behind it. */
    if (pc->len > blk) {
        if (fbmm_rt_split(p + blk) < 0) return -1;
        pc = fbmm_rt_find(p);  /* the table may have moved */
    }
    while (cache_n && (cache_n == CACHE_SLOTS || cache_bytes + blk > fbmm_cfg.cache_max))
        cache_evict(0);
    pc = fbmm_rt_find(p);      /* evicting moved table entries */
    pc->flags |= P_CACHED;
    cache[cache_n].addr = p;
    cache[cache_n].len = blk;
    cache_n++;
    cache_bytes += blk;
    return 0;
}

/* A cached block for `len` bytes (page-rounded) aligned to `align`, or NULL. */
void *fbmm_cache_take(size_t len, size_t align)
{
    if (!cache_n) return NULL;
    size_t best = SIZE_MAX;
    for (size_t i = cache_n; i-- > 0;) {
        const struct cached *c = &cache[i];
        if (fbmm_block_fits(c->addr, c->len, len, align) && (best == SIZE_MAX || c->len < cache[best].len))
            best = i;
    }
    if (best == SIZE_MAX) return NULL;
    uintptr_t a = cache[best].addr;
    size_t blk = cache[best].len;
    struct fbmm_piece *pc = fbmm_rt_find(a);
    if (!pc || pc->addr != a || pc->flags != (P_HEAD | P_CACHED) || pc->len != blk ||
        pc->blk != blk || pc->prot != (PROT_READ | PROT_WRITE)) {
        /* Changed behind our back (mprotect/madvise of freed memory). */
        cache_evict(best);
        return NULL;
    }
    cache_del(best);
    pc->flags &= ~P_CACHED;
    fbmm_rt_merge_around(a);
    return (void *)a;
}

void fbmm_cache_drop_child(int lazy)
{
    /* The kernel copied these MAP_SHARED mappings of the parent's file:
     * unmap them (never punch the parent's file). Their offsets are holes
     * in the child's new file, so they go back to the allocator — except in
     * a lazy copy (cow.c), where the daemon would still fill them from the
     * parent: they are released (and punched) first, or kept. */
    while (cache_n) {
        struct cached c = cache[--cache_n];
        sys_munmap((void *)c.addr, c.len);
        size_t i = fbmm_rt_lower(c.addr);
        const struct fbmm_piece *p = i < fbmm_rt_n ? fbmm_rt_at(i) : NULL;
        if (p && p->addr == c.addr && (p->flags & P_CACHED)) {
            fbmm_heads_del(c.addr);
            if (!lazy || fbmm_arena_punch(p->off, p->len) == 0) fbmm_off_free(p->off, p->len);
            fbmm_rt_remove(i, 1);
        }
    }
    cache_bytes = 0;
    fbmm_clean_drop(lazy);  /* the clean slots likewise */
}
