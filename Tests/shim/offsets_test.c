/*
 * Unit test of the shim's offset allocator (shim/src/offsets.c), compiled
 * as a plain C program against that one source file: random allocations
 * (page and 2 MiB alignments), frees in random order and in-place
 * extensions, each answer compared with a reference model (first fit over
 * a sorted array, the structure the allocator used to be): the same offset
 * for every request, the same high-water mark, no range handed out twice.
 * Exit 0 when every check held.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../shim/src/shim.h"
#include "../../shim/src/sys.h"

/* What offsets.c needs from the rest of the shim. */
size_t fbmm_page = 4096;
int fbmm_arena_grow(uint64_t need) { (void)need; return 0; }
int fbmm_pool_owns(uint64_t off) { (void)off; return 0; }

static unsigned long failures;
#define CHECK(cond, ...) do { if (!(cond)) { if (failures++ < 10) { fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); } } } while (0)

/* ---- the model: first fit over a sorted, coalescing array ------------- */
static struct { uint64_t off, len; } fl[1 << 20];
static size_t fl_n;
static uint64_t mtop;

static void m_remove(size_t i) { memmove(&fl[i], &fl[i + 1], (fl_n - i - 1) * sizeof *fl); fl_n--; }
static void m_insert(size_t i, uint64_t off, uint64_t len)
{
    memmove(&fl[i + 1], &fl[i], (fl_n - i) * sizeof *fl);
    fl[i].off = off; fl[i].len = len; fl_n++;
}
static void m_carve(size_t i, uint64_t off, uint64_t len)
{
    uint64_t start = fl[i].off, end = off + len, rend = fl[i].off + fl[i].len;
    m_remove(i);
    if (end < rend) m_insert(i, end, rend - end);
    if (start < off) m_insert(i, start, off - start);
}
static void m_free(uint64_t off, uint64_t len)
{
    size_t i = 0;
    while (i < fl_n && fl[i].off < off) i++;
    uint64_t start = off, end = off + len;
    if (i < fl_n && fl[i].off == end) { end += fl[i].len; m_remove(i); }
    if (i > 0 && fl[i - 1].off + fl[i - 1].len == off) { start = fl[i - 1].off; m_remove(--i); }
    if (end == mtop) { mtop = start; return; }
    m_insert(i, start, end - start);
}
static uint64_t m_alloc(uint64_t len, uint64_t align)
{
    for (size_t i = 0; i < fl_n; i++) {
        uint64_t a = ROUND_UP(fl[i].off, align);
        if (a + len <= fl[i].off + fl[i].len) { m_carve(i, a, len); return a; }
    }
    uint64_t a = ROUND_UP(mtop, align), old = mtop;
    mtop = a + len;
    if (a > old) m_free(old, a - old);
    return a;
}
static int m_extend(uint64_t end, uint64_t len)
{
    if (end == mtop) { mtop = end + len; return 0; }
    for (size_t i = 0; i < fl_n && fl[i].off <= end; i++)
        if (fl[i].off == end && fl[i].len >= len) { m_carve(i, end, len); return 0; }
    return -1;
}

/* ---- live allocations ---------------------------------------------------- */
static struct { uint64_t off, len; } live[1 << 16];
static size_t live_n;

static uint64_t rng = 0x2545F4914F6CDD1Dull;
static uint64_t next(void) { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return rng; }

int main(int argc, char **argv)
{
    long ops = argc > 1 ? atol(argv[1]) : 200000;
    size_t peak = 0;
    for (long op = 0; op < ops; op++) {
        uint64_t r = next();
        int kind = (int)(r % 8);
        if ((kind < 4 || !live_n) && live_n < sizeof live / sizeof *live) {
            uint64_t len = (r >> 8) % 16 == 0 ? (1 + (r >> 20) % 3) << 21 : (1 + (r >> 20) % 64) * 4096;
            uint64_t align = len >= (2u << 20) ? 2u << 20 : 4096;
            uint64_t got = fbmm_off_alloc(len, align), want = m_alloc(len, align);
            CHECK(got == want, "alloc %lu/%lu: %lx, model %lx", (unsigned long)len, (unsigned long)align,
                  (unsigned long)got, (unsigned long)want);
            live[live_n].off = want;
            live[live_n++].len = len;
        } else if (kind < 7) {
            size_t i = (size_t)((r >> 8) % live_n);
            fbmm_off_free(live[i].off, live[i].len);
            m_free(live[i].off, live[i].len);
            live[i] = live[--live_n];
        } else {
            /* grow a live range in place by 1-4 pages, as mremap does */
            size_t i = (size_t)((r >> 8) % live_n);
            uint64_t more = (1 + (r >> 30) % 4) * 4096, end = live[i].off + live[i].len;
            int got = fbmm_off_extend(end, more), want = m_extend(end, more);
            CHECK(got == want, "extend %lx by %lu: %d, model %d", (unsigned long)end, (unsigned long)more, got, want);
            if (want == 0) live[i].len += more;
        }
        CHECK(fbmm_off_top() == mtop, "top %lx, model %lx", (unsigned long)fbmm_off_top(), (unsigned long)mtop);
        if (fl_n > peak) peak = fl_n;
        if (failures) break;
    }
    /* Everything freed: the file's high-water mark goes back to zero. */
    while (live_n) {
        live_n--;
        fbmm_off_free(live[live_n].off, live[live_n].len);
        m_free(live[live_n].off, live[live_n].len);
    }
    CHECK(fbmm_off_top() == 0 && mtop == 0, "after freeing everything: top %lx, model %lx",
          (unsigned long)fbmm_off_top(), (unsigned long)mtop);
    fbmm_off_reset();
    printf("offsets_test: %ld operations, up to %zu free fragments, %lu failure(s)\n", ops, peak, failures);
    return failures != 0;
}
