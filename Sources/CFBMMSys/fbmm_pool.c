/*
 * The daemon's half of the pre-zeroed pool (see fbmm_pool.h for who owns
 * which bit). In C because it works on memory shared with an untrusted
 * process with atomic bit operations, and because it runs in a tight loop.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include "include/fbmm_pool.h"
#include "include/fbmm_sys.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

static uint64_t valid_mask(uint64_t word, uint64_t pages)
{
    uint64_t first = word * 64;
    if (first + 64 <= pages) return ~0ull;
    if (first >= pages) return 0;
    return (1ull << (pages - first)) - 1;
}

/* Set bits among the first `pages` of a bitmap (shared or not). */
static uint64_t count_bits(const uint64_t *map, uint64_t pages)
{
    uint64_t n = 0;
    for (uint64_t w = 0; w * 64 < pages; w++)
        n += (uint64_t)__builtin_popcountll(__atomic_load_n(&map[w], __ATOMIC_SEQ_CST) & valid_mask(w, pages));
    return n;
}

void fbmm_pool_enroll(struct fbmm_pool_ctl *ctl, uint64_t *empty, uint64_t pages)
{
    for (uint64_t w = 0; w < FBMM_POOL_WORDS; w++) {
        uint64_t busy = __atomic_load_n(&ctl->busy[w], __ATOMIC_RELAXED);
        empty[w] = valid_mask(w, pages) & ~busy;
        __atomic_store_n(&ctl->clean[w], 0, __ATOMIC_RELAXED);
        __atomic_store_n(&ctl->dirty[w], 0, __ATOMIC_RELAXED);
    }
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
}

void fbmm_pool_set_sleeping(struct fbmm_pool_ctl *ctl, uint32_t value)
{
    __atomic_store_n(&ctl->sleeping, value, __ATOMIC_SEQ_CST);
}

void fbmm_pool_counters(const struct fbmm_pool_ctl *ctl, uint64_t *handed, uint64_t *returned,
                        uint64_t *misses, uint64_t *kicks)
{
    *handed = __atomic_load_n(&ctl->handed_pages, __ATOMIC_RELAXED);
    *returned = __atomic_load_n(&ctl->returned_pages, __ATOMIC_RELAXED);
    *misses = __atomic_load_n(&ctl->misses, __ATOMIC_RELAXED);
    *kicks = __atomic_load_n(&ctl->kicks, __ATOMIC_RELAXED);
}

static int punch(int memfd, uint64_t base, uint64_t first, uint64_t n, uint64_t page)
{
    return fallocate(memfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                     (off_t)(base + first * page), (off_t)(n * page));
}

/* A run of freed pages: zero in place (the pages exist and stay where the
 * policy put them; a page the program discarded is allocated again by the
 * write, by the file's policy), or give it back when over budget. */
static void settle_dirty(struct fbmm_pool_ctl *ctl, uint64_t *empty, char *window, int memfd, uint64_t base,
                         uint64_t first, uint64_t n, uint64_t page, uint64_t budget,
                         struct fbmm_pool_pass *out)
{
    if (out->clean_pages + n <= budget) {
        memset(window + first * page, 0, n * page);
        fbmm_pool_mark(ctl->clean, first, n, 1);
        out->clean_pages += n;
        out->zeroed_pages += n;
    } else {
        punch(memfd, base, first, n, page);
        fbmm_pool_mark(empty, first, n, 1);
        out->punched_pages += n;
    }
}

uint64_t fbmm_pool_dirty_pages(const struct fbmm_pool_ctl *ctl, uint64_t pages)
{
    return count_bits(ctl->dirty, pages);
}

void fbmm_pool_run(struct fbmm_pool_ctl *ctl, uint64_t *empty, char *window, uint64_t pages,
                   int memfd, uint64_t base, uint64_t budget, uint64_t fill_to, uint64_t fill_max,
                   struct fbmm_pool_pass *out)
{
    uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE);
    memset(out, 0, sizeof *out);
    out->clean_pages = count_bits(ctl->clean, pages);

    /* Freed pages, in runs that may cross words. A bit the daemon does not
     * expect (the page is clean or empty) is a confused program's: ignored. */
    uint64_t run0 = 0, runn = 0;
    for (uint64_t w = 0; w * 64 < pages; w++) {
        uint64_t d = 0;
        if (__atomic_load_n(&ctl->dirty[w], __ATOMIC_RELAXED))
            d = __atomic_exchange_n(&ctl->dirty[w], 0, __ATOMIC_ACQUIRE);
        d &= valid_mask(w, pages) & ~empty[w] & ~__atomic_load_n(&ctl->clean[w], __ATOMIC_RELAXED);
        for (uint64_t b = 0; b < 64; b++) {
            uint64_t i = w * 64 + b;
            if (d >> b & 1) {
                if (runn && run0 + runn == i) { runn++; continue; }
                if (runn) settle_dirty(ctl, empty, window, memfd, base, run0, runn, page, budget, out);
                run0 = i;
                runn = 1;
            }
            if (!d || !(d >> b)) break;
        }
    }
    if (runn) settle_dirty(ctl, empty, window, memfd, base, run0, runn, page, budget, out);

    /* Fill empty pages up to the budget, in runs of at most 2 MiB so that a
     * THP-backed window gets whole huge pages and a pass stays short. */
    uint64_t want = fill_to > out->clean_pages ? fill_to - out->clean_pages : 0;
    if (want > fill_max) want = fill_max;
    uint64_t chunk = (2u << 20) / page;
    for (uint64_t w = 0; want && w * 64 < pages; w++) {
        while (want && empty[w]) {
            uint64_t first = w * 64 + (uint64_t)__builtin_ctzll(empty[w]);
            uint64_t n = 0, limit = want < chunk - first % chunk ? want : chunk - first % chunk;
            while (n < limit && first + n < pages && (empty[(first + n) / 64] >> ((first + n) % 64) & 1)) n++;
            fbmm_pool_mark(empty, first, n, 0);
            char *p = window + first * page;
            /* A write fault allocates each page by the file's policy, zeroed. */
            if (madvise(p, n * page, MADV_POPULATE_WRITE) < 0) {
                int e = errno;
                if (e == EINVAL) {
                    memset(p, 0, n * page);  /* kernels before 5.14 */
                } else {
                    punch(memfd, base, first, n, page);
                    fbmm_pool_mark(empty, first, n, 1);
                    out->fill_errno = e;
                    want = 0;
                    break;
                }
            }
            fbmm_pool_mark(ctl->clean, first, n, 1);
            out->clean_pages += n;
            out->filled_pages += n;
            want -= n;
            w = first / 64;  /* the run may have crossed words */
        }
    }
}

uint64_t fbmm_pool_revoke(struct fbmm_pool_ctl *ctl, uint64_t *empty, uint64_t pages, int memfd, uint64_t base)
{
    uint64_t n = 0;
    for (uint64_t w = 0; w * 64 < pages; w++) {
        uint64_t taken = __atomic_exchange_n(&ctl->clean[w], 0, __ATOMIC_ACQ_REL) & valid_mask(w, pages);
        empty[w] |= taken;
        n += (uint64_t)__builtin_popcountll(taken);
    }
    fbmm_pool_trim(empty, pages, memfd, base);
    return n;
}

void fbmm_pool_trim(const uint64_t *empty, uint64_t pages, int memfd, uint64_t base)
{
    uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE), first = 0, n = 0;
    for (uint64_t i = 0; i <= pages; i++) {
        int on = i < pages && (empty[i / 64] >> (i % 64) & 1);
        if (on) { if (!n) first = i; n++; continue; }
        if (n) punch(memfd, base, first, n, page);
        n = 0;
    }
}

int fbmm_eventfd(void)
{
    return eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
}

void fbmm_eventfd_drain(int fd)
{
    uint64_t v;
    while (read(fd, &v, sizeof v) == (ssize_t)sizeof v) {}
}

int fbmm_poll_in(int fd, int timeout_ms)
{
    struct pollfd p = { .fd = fd, .events = POLLIN };
    int r = poll(&p, 1, timeout_ms);
    return r < 0 ? -1 : (r > 0);
}
