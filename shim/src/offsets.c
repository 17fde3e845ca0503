/*
 * Allocator of file offset ranges in the arena file (locked).
 *
 * File offsets are virtual and cheap: the file is sparse, and a freed range
 * is hole-punched before it returns here, so every range handed out reads
 * as zero (calloc relies on this). Policy: first fit over a sorted,
 * coalescing free list, else bump the high-water mark. First fit keeps the
 * file size bounded for programs that churn; ranges freed at the top lower
 * the high-water mark. The list lives in memory mapped with raw syscalls.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>

#include "shim.h"
#include "sys.h"

struct range { uint64_t off, len; };

static struct range *fl;       /* free ranges below `top`, sorted, disjoint */
static size_t fl_n, fl_cap;
static uint64_t top;

uint64_t fbmm_off_top(void) { return top; }

void fbmm_off_reset(void)
{
    fl_n = 0;
    top = 0;
}

void fbmm_off_reserve(uint64_t end)
{
    if (top < end) top = end;
}

static int fl_reserve(size_t want)
{
    if (want <= fl_cap) return 0;
    size_t ncap = fl_cap ? fl_cap * 2 : 4096 / sizeof(struct range) * 4;
    while (ncap < want) ncap *= 2;
    void *p = fl ? sys_mremap(fl, fl_cap * sizeof *fl, ncap * sizeof *fl, MREMAP_MAYMOVE, NULL)
                 : sys_mmap(NULL, ncap * sizeof *fl, PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return -1;
    fl = p;
    fl_cap = ncap;
    return 0;
}

/* Takes [off, off+len) out of free range i (which contains it). */
static int fl_carve(size_t i, uint64_t off, uint64_t len)
{
    struct range r = fl[i];
    uint64_t end = off + len, rend = r.off + r.len;
    if (off == r.off && end == rend) {
        memmove(&fl[i], &fl[i + 1], (fl_n - i - 1) * sizeof *fl);
        fl_n--;
    } else if (off == r.off) {
        fl[i].off = end;
        fl[i].len = rend - end;
    } else if (end == rend) {
        fl[i].len = off - r.off;
    } else {
        if (fl_reserve(fl_n + 1)) return -1;
        memmove(&fl[i + 2], &fl[i + 1], (fl_n - i - 1) * sizeof *fl);
        fl_n++;
        fl[i].len = off - r.off;
        fl[i + 1].off = end;
        fl[i + 1].len = rend - end;
    }
    return 0;
}

uint64_t fbmm_off_alloc(size_t len, size_t align)
{
    for (size_t i = 0; i < fl_n; i++) {
        uint64_t a = ROUND_UP(fl[i].off, align);
        if (a + len <= fl[i].off + fl[i].len) {
            if (fl_carve(i, a, len)) return FBMM_NO_OFF;
            return a;
        }
    }
    uint64_t a = ROUND_UP(top, align);
    if (fbmm_arena_grow(a + len)) return FBMM_NO_OFF;
    uint64_t old = top;
    top = a + len;
    if (a > old) fbmm_off_free(old, a - old);  /* the alignment gap stays usable */
    return a;
}

int fbmm_off_extend(uint64_t end, size_t len)
{
    if (end == top) {
        if (fbmm_arena_grow(end + len)) return -1;
        top = end + len;
        return 0;
    }
    for (size_t i = 0; i < fl_n && fl[i].off <= end; i++)
        if (fl[i].off == end && fl[i].len >= len) return fl_carve(i, end, len);
    errno = ENOMEM;
    return -1;
}

void fbmm_off_free(uint64_t off, size_t len)
{
    /* The pool's control block and window are pool.c's, never ours. */
    if (!len || fbmm_pool_owns(off)) return;
    size_t i = 0;
    while (i < fl_n && fl[i].off < off) i++;
    int join_prev = i > 0 && fl[i - 1].off + fl[i - 1].len == off;
    int join_next = i < fl_n && off + len == fl[i].off;
    if (join_prev && join_next) {
        fl[i - 1].len += len + fl[i].len;
        memmove(&fl[i], &fl[i + 1], (fl_n - i - 1) * sizeof *fl);
        fl_n--;
        i--;
    } else if (join_prev) {
        fl[--i].len += len;
    } else if (join_next) {
        fl[i].off = off;
        fl[i].len += len;
    } else {
        if (fl_reserve(fl_n + 1)) return;  /* leaks offsets, never memory */
        memmove(&fl[i + 1], &fl[i], (fl_n - i) * sizeof *fl);
        fl[i].off = off;
        fl[i].len = len;
        fl_n++;
    }
    /* The range now ending at `top` gives the high-water mark back. */
    if (fl_n && fl[fl_n - 1].off + fl[fl_n - 1].len == top) {
        top = fl[fl_n - 1].off;
        fl_n--;
    }
}
