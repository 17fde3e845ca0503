/*
 * Interposers for the malloc family. Blocks of at least FBMM_MIN_SIZE are
 * mapped from the arena (one piece per block, flagged P_HEAD in the region
 * table); everything else goes to the next allocator in link order: glibc's,
 * or jemalloc/mimalloc when preloaded after the shim, whose own mmaps then
 * come back through our mmap interposer and land in the mount too.
 *
 * Ownership is decided by the region table, never by a header: a foreign
 * pointer is never dereferenced. Our blocks are page-aligned, so only
 * page-aligned pointers that pass the lock-free heads filter cost a lookup.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdint.h>
#include <string.h>

#include "shim.h"
#include "sys.h"

static struct {
    void *(*malloc)(size_t);
    void  (*free)(void *);
    void *(*calloc)(size_t, size_t);
    void *(*realloc)(void *, size_t);
    int   (*posix_memalign)(void **, size_t, size_t);
    void *(*aligned_alloc)(size_t, size_t);
    void *(*memalign)(size_t, size_t);
    void *(*valloc)(size_t);
    void *(*pvalloc)(size_t);
    size_t (*usable)(void *);
} next;

/* dlsym may allocate (its error state) before `next` is known; such early
 * allocations come from this buffer and are never freed. */
static _Alignas(64) char boot[64 * 1024];
static size_t boot_used;

static void *boot_alloc(size_t n, size_t align)
{
    if (align < 16) align = 16;
    size_t used = __atomic_load_n(&boot_used, __ATOMIC_RELAXED), start, end;
    do {
        start = ROUND_UP(used + 16, align);
        end = start + n;
        if (end > sizeof boot || end < start) {
            errno = ENOMEM;
            return NULL;
        }
    } while (!__atomic_compare_exchange_n(&boot_used, &used, end, 0,
                                          __ATOMIC_RELAXED, __ATOMIC_RELAXED));
    memcpy(&boot[start - sizeof(size_t)], &n, sizeof n);
    return &boot[start];
}
static int is_boot(const void *p)
{
    return (const char *)p >= boot && (const char *)p < boot + sizeof boot;
}
static size_t boot_size(const void *p)
{
    size_t n;
    memcpy(&n, (const char *)p - sizeof n, sizeof n);
    return n;
}

void fbmm_malloc_resolve(void)
{
    next.malloc = dlsym(RTLD_NEXT, "malloc");
    next.free = dlsym(RTLD_NEXT, "free");
    next.calloc = dlsym(RTLD_NEXT, "calloc");
    next.realloc = dlsym(RTLD_NEXT, "realloc");
    next.posix_memalign = dlsym(RTLD_NEXT, "posix_memalign");
    next.aligned_alloc = dlsym(RTLD_NEXT, "aligned_alloc");
    next.memalign = dlsym(RTLD_NEXT, "memalign");
    next.valloc = dlsym(RTLD_NEXT, "valloc");
    next.pvalloc = dlsym(RTLD_NEXT, "pvalloc");
    next.usable = dlsym(RTLD_NEXT, "malloc_usable_size");
}

static int want_big(size_t n)
{
    return fbmm_cfg.active && !fbmm_depth && n >= fbmm_cfg.min_size;
}

/* A page-aligned block of `n` bytes from the arena, or NULL. `zero`: the
 * memory must read zero (calloc), so not from the cache. */
static void *big_alloc(size_t n, size_t align, int zero)
{
    if (n > PTRDIFF_MAX - (align > fbmm_page ? align : fbmm_page)) return NULL;
    size_t len = ROUND_UP(n, fbmm_page), aligned = align > fbmm_page ? align : fbmm_page;
    void *p;
    if (!zero && (p = fbmm_mag_take(len, aligned))) return p;
    fbmm_arena_grow_ahead(len + aligned);
    fbmm_lock();
    if (!zero && (p = fbmm_cache_take(len, aligned))) {
        fbmm_unlock();
        return p;
    }
    if ((p = fbmm_clean_take(len, aligned))) {
        fbmm_unlock();
        return p;
    }
    if (align <= fbmm_page) {
        /* Several blocks of this length in one mapping (clean_slots.c),
         * not the pre-zeroed pool: its pages come mapped populated and go
         * back to be zeroed whole, which a block the program touches only
         * here and there pays many times over (a burst of 1,000 live
         * 256 KiB blocks, a byte written in each: 3.7x native from the pool
         * with the daemon's zeroing not counted, 7.5x counted; 1.5x from
         * batches; with every page written, 1.7x against 1.5x counted). */
        p = fbmm_clean_batch(len);
        if (p == MAP_FAILED) p = fbmm_vm_map(NULL, len, PROT_READ | PROT_WRITE, 0, P_HEAD);
        if (p == MAP_FAILED && fbmm_clean_release())
            p = fbmm_vm_map(NULL, len, PROT_READ | PROT_WRITE, 0, P_HEAD);
    } else {
        /* Reserve len+align of address space, map the aligned part over it,
         * give back the rest: no file offsets wasted on the alignment. */
        char *r = sys_mmap(NULL, len + align, PROT_NONE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        p = MAP_FAILED;
        if (r != MAP_FAILED) {
            char *a = (char *)ROUND_UP((uintptr_t)r, align);
            p = fbmm_vm_map(a, len, PROT_READ | PROT_WRITE, MAP_FIXED, P_HEAD);
            if (p == MAP_FAILED) {
                sys_munmap(r, len + align);
            } else {
                if (a > r) sys_munmap(r, (size_t)(a - r));
                sys_munmap(a + len, (size_t)(r + len + align - (a + len)));
            }
        }
    }
    fbmm_unlock();
    return p == MAP_FAILED ? NULL : p;
}

/* The head piece of our live block at p (under the lock; its `blk` is the
 * block's length), NULL when p is not ours or already freed (into the
 * cache or a magazine). */
static struct fbmm_piece *our_block(void *p)
{
    if (((uintptr_t)p & (fbmm_page - 1)) || !fbmm_heads_maybe((uintptr_t)p)) return NULL;
    struct fbmm_piece *pc = fbmm_rt_find((uintptr_t)p);
    if (!pc || pc->addr != (uintptr_t)p || (pc->flags & (P_HEAD | P_CACHED)) != P_HEAD ||
        fbmm_mag_freed(pc))
        return NULL;
    return pc;
}

/* Frees p if it is ours; returns 0 if it is not. */
static int big_free(void *p)
{
    if (((uintptr_t)p & (fbmm_page - 1)) || !fbmm_heads_maybe((uintptr_t)p)) return 0;
    if (!fbmm_depth && fbmm_mag_give(p)) return 1;  /* back into this thread's magazine */
    fbmm_lock();
    int ours = 0;
    struct fbmm_piece *pc = fbmm_rt_find((uintptr_t)p);
    if (pc && pc->addr == (uintptr_t)p && (pc->flags & P_HEAD)) {
        ours = 1;
        /* A cached block freed again (double free): nothing to do. A block
         * another thread's magazine knows leaves it, and goes to ours. */
        if (!(pc->flags & P_CACHED) && fbmm_mag_revoke(pc) != FBMM_MAG_FREED &&
            fbmm_mag_put((uintptr_t)p, pc, pc->blk) < 0 && fbmm_cache_put((uintptr_t)p, pc, pc->blk) < 0)
            fbmm_block_retire((uintptr_t)p, pc, pc->blk);
    }
    fbmm_unlock();
    return ours;
}

/* Failure policy for a big block: fall back to the next allocator, or in
 * strict mode fail like an exhausted allocator would. */
#define BIG_OR_FALLBACK(expr_big, expr_next) do {                     \
        void *q_ = (expr_big);                                        \
        if (q_) return q_;                                            \
        if (fbmm_cfg.strict) { errno = ENOMEM; return NULL; }         \
        return (expr_next);                                           \
    } while (0)

FBMM_EXPORT void *malloc(size_t n)
{
    fbmm_init();
    if (!next.malloc) return boot_alloc(n, 16);
    if (want_big(n)) BIG_OR_FALLBACK(big_alloc(n, 0, 0), next.malloc(n));
    return next.malloc(n);
}

FBMM_EXPORT void free(void *p)
{
    if (!p || is_boot(p)) return;
    if (big_free(p)) return;
    if (next.free) next.free(p);
}

FBMM_EXPORT void *calloc(size_t n, size_t m)
{
    size_t t;
    if (__builtin_mul_overflow(n, m, &t)) {
        errno = ENOMEM;
        return NULL;
    }
    fbmm_init();
    if (!next.calloc) return boot_alloc(t, 16);  /* static storage: zero */
    /* Fresh arena ranges are zero: freed ranges are punched before reuse. */
    if (want_big(t)) BIG_OR_FALLBACK(big_alloc(t, 0, 1), next.calloc(n, m));
    return next.calloc(n, m);
}

FBMM_EXPORT void *realloc(void *p, size_t n)
{
    if (!p) return malloc(n);
    if (is_boot(p)) {
        void *q = malloc(n);
        if (q) memcpy(q, p, boot_size(p) < n ? boot_size(p) : n);
        return q;
    }
    fbmm_init();
    int anon = 0;
    size_t blk = 0;
    if (!((uintptr_t)p & (fbmm_page - 1)) && fbmm_heads_maybe((uintptr_t)p)) {
        fbmm_lock();
        struct fbmm_piece *pc = our_block(p);
        if (pc) {
            blk = pc->blk;
            anon = !!(pc->flags & P_ANON);
            fbmm_mag_revoke(pc);  /* it may move or change size */
        }
        if (blk && !anon && n >= fbmm_cfg.min_size) {
            /* Zero-copy resize: shrink punches the tail; growth maps more
             * file behind it, in place or by moving the mapping. */
            size_t len = ROUND_UP(n, fbmm_page);
            void *r = len < n ? MAP_FAILED : fbmm_vm_remap((uintptr_t)p, blk, len, MREMAP_MAYMOVE, 0);
            if (r != MAP_FAILED) {
                fbmm_rt_find((uintptr_t)r)->blk = len;
                fbmm_unlock();
                return r;
            }
        }
        fbmm_unlock();
    }
    if (blk) {
        if (n == 0) {
            free(p);
            return NULL;
        }
        void *q = malloc(n);
        if (!q) return n <= blk ? p : NULL;  /* a shrink may keep the block */
        memcpy(q, p, n < blk ? n : blk);
        free(p);
        return q;
    }
    /* Foreign block growing past the threshold: move it into the arena once;
     * further growth is then zero-copy. */
    if (want_big(n) && next.usable) {
        size_t old = next.usable(p);
        if (old < n) {
            void *q = big_alloc(n, 0, 0);
            if (q) {
                memcpy(q, p, old);
                next.free(p);
                return q;
            }
            if (fbmm_cfg.strict) {
                errno = ENOMEM;
                return NULL;
            }
        }
    }
    return next.realloc(p, n);
}

FBMM_EXPORT void *reallocarray(void *p, size_t n, size_t m)
{
    size_t t;
    if (__builtin_mul_overflow(n, m, &t)) {
        errno = ENOMEM;
        return NULL;
    }
    return realloc(p, t);
}

static int pow2(size_t a) { return a && !(a & (a - 1)); }

FBMM_EXPORT int posix_memalign(void **out, size_t align, size_t n)
{
    if (!pow2(align) || align % sizeof(void *)) return EINVAL;
    fbmm_init();
    if (!next.posix_memalign) {
        *out = boot_alloc(n, align);
        return *out ? 0 : ENOMEM;
    }
    if (want_big(n)) {
        void *q = big_alloc(n, align, 0);
        if (q) {
            *out = q;
            return 0;
        }
        if (fbmm_cfg.strict) return ENOMEM;
    }
    return next.posix_memalign(out, align, n);
}

FBMM_EXPORT void *aligned_alloc(size_t align, size_t n)
{
    fbmm_init();
    if (!next.aligned_alloc) return boot_alloc(n, align);
    if (want_big(n) && pow2(align)) BIG_OR_FALLBACK(big_alloc(n, align, 0), next.aligned_alloc(align, n));
    return next.aligned_alloc(align, n);
}

FBMM_EXPORT void *memalign(size_t align, size_t n)
{
    fbmm_init();
    if (!next.memalign) return boot_alloc(n, align);
    if (want_big(n)) {
        size_t a = 1;
        while (a < align && a) a <<= 1;  /* glibc rounds up to a power of 2 */
        if (a) BIG_OR_FALLBACK(big_alloc(n, a, 0), next.memalign(align, n));
    }
    return next.memalign(align, n);
}

FBMM_EXPORT void *valloc(size_t n)
{
    fbmm_init();
    if (!next.valloc) return boot_alloc(n, fbmm_page);
    if (want_big(n)) BIG_OR_FALLBACK(big_alloc(n, 0, 0), next.valloc(n));
    return next.valloc(n);
}

/* pvalloc is memalign(page, n rounded up to pages). The next allocator's
 * memalign, not the first pvalloc after us: jemalloc and mimalloc have no
 * pvalloc, and glibc's would hand a block of glibc's heap to their free. */
static void *next_pvalloc(size_t n)
{
    size_t r = ROUND_UP(n ? n : 1, fbmm_page);
    if (r < n) {
        errno = ENOMEM;
        return NULL;
    }
    return next.memalign ? next.memalign(fbmm_page, r) : next.pvalloc(n);
}

FBMM_EXPORT void *pvalloc(size_t n)
{
    fbmm_init();
    if (!next.pvalloc) return boot_alloc(ROUND_UP(n ? n : 1, fbmm_page), fbmm_page);
    size_t r = ROUND_UP(n ? n : 1, fbmm_page);
    if (r >= n && want_big(r)) BIG_OR_FALLBACK(big_alloc(r, 0, 0), next_pvalloc(n));
    return next_pvalloc(n);
}

FBMM_EXPORT size_t malloc_usable_size(void *p)
{
    if (!p) return 0;
    if (is_boot(p)) return boot_size(p);
    size_t blk = 0;
    if (!((uintptr_t)p & (fbmm_page - 1)) && fbmm_heads_maybe((uintptr_t)p)) {
        fbmm_lock();
        struct fbmm_piece *pc = our_block(p);
        blk = pc ? pc->blk : 0;
        fbmm_unlock();
    }
    if (blk) return blk;
    return next.usable ? next.usable(p) : 0;
}
