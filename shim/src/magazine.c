/*
 * Per-thread magazines of freed malloc blocks: the lock-free fast path.
 *
 * Natively a thread that frees a large block and mallocs another of about
 * its size gets it back from glibc's heap in ~80 ns. Through the shared
 * freed-block cache (block_cache.c) the same round trip takes the shim's
 * lock, with every signal blocked around it (two rt_sigprocmask system
 * calls each way), so threads allocating concurrently went no faster than
 * one. A magazine is a few slots a thread owns, each remembering one block
 * the thread freed: malloc takes a fitting idle block, free puts a block
 * the thread took from its magazine back, both with one compare-and-swap
 * on the slot's state word, no lock, no system call.
 *
 * To the region table (and so to munmap, mremap, fork, realloc and every
 * other thread) a block in a magazine is a live malloc block; what the
 * magazine knows on top is whether the program holds it (OUT) or freed it
 * (IDLE). Whoever changes such a block under the lock first revokes the
 * slot (state GONE, piece->mag cleared): a munmap, mremap, MAP_FIXED,
 * mprotect or madvise over it, realloc, another thread's free, the fork
 * prepare handler (which empties every magazine, so parent and child go on
 * with none), a thread's exit. The fast paths only ever move IDLE<->OUT by
 * compare-and-swap on a word that also holds a generation, bumped whenever
 * the owner reuses a slot for another block under the lock, so a fast path
 * that raced a revocation or a reuse fails its swap and takes the locked
 * path instead. Only the owner writes a slot's address and length (under
 * the lock, where its signal handlers cannot run), and a fast path reads
 * them after the state word it will swap, so a signal handler on the same
 * thread re-entering a fast path is safe too.
 *
 * Bounds: MAG_SLOTS blocks and a quarter of FBMM_MALLOC_CACHE (at most
 * MAG_BYTES_MAX) per thread, counting blocks the program holds; nothing
 * when FBMM_MALLOC_CACHE=0. A magazine's memory (one page) outlives its
 * thread and is adopted by the next thread that frees a block.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>

#include "shim.h"
#include "sys.h"

#define MAG_SLOTS     8
#define MAG_BYTES_MAX (32ul << 20)

enum { GONE = 0, IDLE = 1, OUT = 2 };
#define STATE(w)    ((w) & 3u)
#define WITH(w, s)  (((w) & ~(uint64_t)3) | (s))
#define NEXT_GEN(w) (((w) & ~(uint64_t)3) + 4)

struct fbmm_mag_slot {
    uint64_t  word;       /* generation << 2 | state; atomic */
    uintptr_t addr;       /* owner-written, under the lock */
    size_t    len;
    uint64_t  stamp;      /* when put (eviction order) */
};

struct mag {
    struct fbmm_mag_slot slot[MAG_SLOTS];
    struct mag *next;     /* all magazines (locked) */
    int owned;
    uint64_t clock;
    int hint;             /* the slot last taken or given (owner only) */
};

static struct mag *all;
static size_t live;       /* slots not GONE, all magazines (locked) */
static FBMM_TLS struct mag *mine;
static pthread_key_t exit_key;
static int key_made;

/* ---- lock-free fast paths (the owner thread only) ---- */

void *fbmm_mag_take(size_t len, size_t align)
{
    struct mag *m = mine;
    if (!m) return NULL;
    /* The block last given back is the usual answer (and the warmest). */
    struct fbmm_mag_slot *h = &m->slot[m->hint];
    uint64_t hw = __atomic_load_n(&h->word, __ATOMIC_ACQUIRE);
    if (STATE(hw) == IDLE && fbmm_block_fits(h->addr, h->len, len, align)) {
        uintptr_t a = h->addr;
        if (__atomic_compare_exchange_n(&h->word, &hw, WITH(hw, OUT), 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
            return (void *)a;
    }
    for (int tries = 0; tries < 2; tries++) {
        int best = -1;
        uint64_t bw = 0;
        for (int i = 0; i < MAG_SLOTS; i++) {
            struct fbmm_mag_slot *s = &m->slot[i];
            uint64_t w = __atomic_load_n(&s->word, __ATOMIC_ACQUIRE);
            if (STATE(w) != IDLE) continue;
            if (fbmm_block_fits(s->addr, s->len, len, align) && (best < 0 || s->len < m->slot[best].len)) {
                best = i;
                bw = w;
            }
        }
        if (best < 0) return NULL;
        struct fbmm_mag_slot *s = &m->slot[best];
        uintptr_t a = s->addr;
        if (__atomic_compare_exchange_n(&s->word, &bw, WITH(bw, OUT), 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
            m->hint = best;
            return (void *)a;
        }
    }
    return NULL;
}

int fbmm_mag_give(void *p)
{
    struct mag *m = mine;
    if (!m) return 0;
    for (int k = 0; k < MAG_SLOTS; k++) {
        int i = (m->hint + k) % MAG_SLOTS;  /* the slot last taken first */
        struct fbmm_mag_slot *s = &m->slot[i];
        uint64_t w = __atomic_load_n(&s->word, __ATOMIC_ACQUIRE);
        if (STATE(w) == OUT && s->addr == (uintptr_t)p) {
            if (!__atomic_compare_exchange_n(&s->word, &w, WITH(w, IDLE), 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
                return 0;
            m->hint = i;
            return 1;
        }
    }
    return 0;
}

/* ---- locked side ---- */

/* Makes the slot GONE and returns what it was (GONE, IDLE or OUT). */
static int slot_revoke(struct fbmm_mag_slot *s)
{
    uint64_t w = __atomic_load_n(&s->word, __ATOMIC_ACQUIRE);
    while (STATE(w) != GONE)
        if (__atomic_compare_exchange_n(&s->word, &w, WITH(w, GONE), 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
            live--;
            return (int)STATE(w);
        }
    return GONE;
}

int fbmm_mag_revoke(struct fbmm_piece *pc)
{
    struct fbmm_mag_slot *s = pc->mag;
    if (!s) return FBMM_MAG_NONE;
    pc->mag = NULL;
    int was = slot_revoke(s);
    return was == IDLE ? FBMM_MAG_FREED : FBMM_MAG_LIVE;
}

int fbmm_mag_freed(const struct fbmm_piece *pc)
{
    const struct fbmm_mag_slot *s = pc->mag;
    return s && STATE(__atomic_load_n(&s->word, __ATOMIC_ACQUIRE)) == IDLE;
}

void fbmm_mag_revoke_range(uintptr_t a, size_t len)
{
    if (!live) return;
    for (size_t i = fbmm_rt_lower(a); i < fbmm_rt_n; i++) {
        struct fbmm_piece *p = fbmm_rt_at(i);
        if (p->addr >= a + len) break;
        if (p->mag) fbmm_mag_revoke(p);
    }
}

/* A slot's block leaves the magazine for good: an idle one is freed as
 * free() would without magazines (shared cache or unmapped). */
static void slot_evict(struct fbmm_mag_slot *s)
{
    struct fbmm_piece *pc = fbmm_rt_find(s->addr);
    if (!pc || pc->mag != s) {  /* a GONE slot (a piece that changes revokes first) */
        slot_revoke(s);
        return;
    }
    if (fbmm_mag_revoke(pc) == FBMM_MAG_FREED && fbmm_cache_put(s->addr, pc, s->len) < 0)
        fbmm_block_retire(s->addr, pc, s->len);
}

static void on_thread_exit(void *m)
{
    (void)m;
    if (!mine) return;
    fbmm_lock();
    for (int i = 0; i < MAG_SLOTS; i++) slot_evict(&mine->slot[i]);
    mine->owned = 0;
    mine = NULL;
    fbmm_unlock();
}

static struct mag *my_magazine(void)
{
    if (mine) return mine;
    struct mag *m;
    for (m = all; m && m->owned; m = m->next) {}
    if (!m) {
        m = sys_mmap(NULL, ROUND_UP(sizeof *m, fbmm_page), PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED) return NULL;
        m->next = all;
        all = m;
    }
    if (!key_made) key_made = pthread_key_create(&exit_key, on_thread_exit) == 0 ? 1 : -1;
    if (key_made < 0 || pthread_setspecific(exit_key, m) != 0) return NULL;
    m->owned = 1;
    mine = m;
    return m;
}

int fbmm_mag_put(uintptr_t p, struct fbmm_piece *pc, size_t blk)
{
    size_t limit = fbmm_cfg.cache_max / 4 < MAG_BYTES_MAX ? fbmm_cfg.cache_max / 4 : MAG_BYTES_MAX;
    if (blk > limit || pc->flags != P_HEAD || pc->prot != (PROT_READ | PROT_WRITE) ||
        pc->len != blk || pc->mag || fbmm_arena.state != ARENA_READY)
        return -1;
    struct mag *m = my_magazine();
    if (!m) return -1;
    /* Room: a GONE slot, and the bytes; the oldest goes first. */
    for (;;) {
        size_t bytes = 0;
        int free_slot = -1, oldest = -1;
        for (int i = 0; i < MAG_SLOTS; i++) {
            struct fbmm_mag_slot *s = &m->slot[i];
            if (STATE(__atomic_load_n(&s->word, __ATOMIC_ACQUIRE)) == GONE) {
                if (free_slot < 0) free_slot = i;
                continue;
            }
            bytes += s->len;
            if (oldest < 0 || s->stamp < m->slot[oldest].stamp) oldest = i;
        }
        if (free_slot >= 0 && bytes + blk <= limit) {
            struct fbmm_mag_slot *s = &m->slot[free_slot];
            pc = fbmm_rt_find(p);  /* evictions may have moved table nodes */
            s->addr = p;
            s->len = blk;
            s->stamp = ++m->clock;
            __atomic_store_n(&s->word, WITH(NEXT_GEN(s->word), IDLE), __ATOMIC_RELEASE);
            pc->mag = s;
            live++;
            return 0;
        }
        if (oldest < 0) return -1;
        slot_evict(&m->slot[oldest]);
    }
}

void fbmm_mag_flush_all(void)
{
    for (struct mag *m = all; m && live; m = m->next)
        for (int i = 0; i < MAG_SLOTS; i++) slot_evict(&m->slot[i]);
}

void fbmm_mag_child(void)
{
    /* The other threads are gone in the child: their magazines are free
     * (all slots GONE since the prepare handler flushed them). */
    for (struct mag *m = all; m; m = m->next)
        if (m != mine) m->owned = 0;
}
