/*
 * fbmm pre-zeroed pool: the memory shared by the shim and the daemon.
 *
 * Why: a first-touch fault on shmem costs about twice an anonymous one, but
 * mapping pages that already exist and are zero (MAP_POPULATE) costs a third
 * of a native anonymous mmap+touch. So the daemon allocates and zeroes pages
 * ahead of need, off the application's critical path, and the shim hands
 * them out without a round trip.
 *
 * Where: inside each process's arena file. The control block sits at offset
 * 0 (the shim's offset allocator keeps it out from the start); the pool
 * window, whose pages are the only ones the pool ever hands out, is
 * `window_pages` long at `window_offset` (a multiple of 2 MiB), which the
 * shim takes from its offset allocator when it enrols. Taking it only then
 * matters: a policy places ranges as the file grows (tiered counts them
 * against the fast node), and a program that never enrols reserves nothing.
 *
 * Who owns a window page, by bit (one bit per page in each bitmap):
 *   clean[i] set   zero, allocated on the policy's nodes; the pool's.
 *                  Only the daemon sets it (after zeroing); the shim clears
 *                  it taking the page for a region. The daemon clears it
 *                  only to revoke pages after the file's policy changed;
 *                  the shim's claim sees that in the old value of its
 *                  atomic AND and gives back what it took.
 *   dirty[i] set   freed by the shim; the daemon's to zero (or punch).
 *                  Only the shim sets it; only the daemon clears it.
 *   neither        in use by a region of the program, or (a state the
 *                  daemon keeps to itself) empty or being zeroed.
 * So each side only ever turns on the bits it hands over and turns off the
 * bits it receives (revocation aside): no compare-and-swap loops, and a
 * misbehaving program can only confuse its own pool (the daemon validates
 * every page number).
 *
 * Waking: the daemon's zeroing thread sleeps on an eventfd it hands out with
 * the enrolment reply. Before sleeping it sets `sleeping`; a shim that frees
 * pages or misses the pool swaps it to 0 and, if it was 1, writes the
 * eventfd once. Otherwise the daemon rescans on a short timer.
 *
 * Plain C with fixed-size fields: the shim includes it.
 */
#ifndef FBMM_POOL_H
#define FBMM_POOL_H

#include <stdint.h>

#define FBMM_POOL_MAGIC        0x4642504f4f4c0001ull  /* "FBPOOL", v1 */
/* The control block: header page + three bitmaps. */
#define FBMM_POOL_CTL_BYTES    (64u << 10)
/* The window starts at a huge-page boundary so that it can be THP-backed. */
#define FBMM_POOL_WINDOW_ALIGN (2ull << 20)
/* At most this many window pages (512 MiB of 4 KiB pages). */
#define FBMM_POOL_MAX_PAGES    (1u << 17)
#define FBMM_POOL_WORDS        (FBMM_POOL_MAX_PAGES / 64)

struct fbmm_pool_ctl {
    /* Written once by the shim before enrolment, read by the daemon. */
    uint64_t magic;
    uint64_t window_pages;     /* must be what the mount says (user.fbmm.prezero) */
    uint64_t page_size;
    uint64_t window_offset;    /* file offset of the window, FBMM_POOL_WINDOW_ALIGN-aligned */
    /* Set by the daemon before it sleeps; the shim swaps it to 0 to kick. */
    uint32_t sleeping;
    uint32_t pad0;
    /* The shim's counters (shown by `fbmm stat`; untrusted, reporting only). */
    uint64_t handed_pages;     /* pages taken from the pool for regions */
    uint64_t returned_pages;   /* pages given back dirty */
    uint64_t misses;           /* mappings that found no clean run */
    uint64_t kicks;            /* eventfd writes */
    uint8_t  header_pad[4096 - 9 * 8];
    uint64_t clean[FBMM_POOL_WORDS];
    uint64_t dirty[FBMM_POOL_WORDS];
    /* Pages in use by the shim when it enrolled (a fork child's copies):
     * the daemon must never fill them. Shim-written before enrolment only. */
    uint64_t busy[FBMM_POOL_WORDS];
};

_Static_assert(sizeof(struct fbmm_pool_ctl) <= FBMM_POOL_CTL_BYTES, "control block too big");

/* Turns bits [first, first+n) of `map` on (release: what the pages hold is
 * visible before the bit) or off (acquire), one atomic operation per word. */
static inline void fbmm_pool_mark(uint64_t *map, uint64_t first, uint64_t n, int on)
{
    while (n) {
        uint64_t w = first / 64, b = first % 64, k = 64 - b < n ? 64 - b : n;
        uint64_t m = (k == 64 ? ~0ull : ((1ull << k) - 1)) << b;
        if (on) __atomic_fetch_or(&map[w], m, __ATOMIC_RELEASE);
        else __atomic_fetch_and(&map[w], ~m, __ATOMIC_ACQUIRE);
        first += k;
        n -= k;
    }
}

#endif /* FBMM_POOL_H */
