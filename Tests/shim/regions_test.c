/*
 * Unit test of the shim's region table (shim/src/regions.c), compiled as a
 * plain C program against that one source file: hundreds of thousands of
 * random inserts, removals, splits and merges, each checked against a
 * reference model (a sorted array, the structure the table used to be),
 * including every lookup the shim makes (piece i, the first piece ending
 * after an address, the piece containing an address). Exit 0 when every
 * check held. Run by `make -C shim check-units` and ShimTests.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../shim/src/shim.h"

/* What regions.c needs from the rest of the shim: nothing else. */
size_t fbmm_page = 4096;

static struct fbmm_piece model[1 << 18];  /* room for every phase */
static size_t model_n;
static unsigned long failures;

#define CHECK(cond, ...) do { if (!(cond)) { if (failures++ < 10) { fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); } } } while (0)

static size_t model_lower(uintptr_t a)
{
    size_t lo = 0, hi = model_n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (model[mid].addr + model[mid].len <= a) lo = mid + 1; else hi = mid;
    }
    return lo;
}

static int same(const struct fbmm_piece *x, const struct fbmm_piece *y)
{
    return x->addr == y->addr && x->len == y->len && x->off == y->off && x->prot == y->prot && x->flags == y->flags;
}

static void compare_all(const char *when)
{
    CHECK(fbmm_rt_n == model_n, "%s: %zu pieces, model %zu", when, fbmm_rt_n, model_n);
    for (size_t i = 0; i < model_n && i < fbmm_rt_n; i++) {
        const struct fbmm_piece *p = fbmm_rt_at(i);
        CHECK(p && same(p, &model[i]), "%s: piece %zu differs (%lx+%zu vs %lx+%zu)", when, i,
              p ? (unsigned long)p->addr : 0, p ? p->len : 0, (unsigned long)model[i].addr, model[i].len);
    }
    CHECK(fbmm_rt_at(fbmm_rt_n) == NULL, "%s: a piece past the end", when);
}

/* Whether a model piece has a page in a 2 MiB granule that [a, a+len)
 * touches: else the lock-free occupancy test must say "not ours". */
static int model_occupied(uintptr_t a, size_t len)
{
    uintptr_t lo = a >> 21 << 21, hi = ((a + len - 1) >> 21 << 21) + (1ul << 21);
    size_t i = model_lower(lo);
    return i < model_n && model[i].addr < hi;
}

static uint64_t rng = 88172645463325252ull;
static uint64_t next(void) { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return rng; }

int main(int argc, char **argv)
{
    long ops = argc > 1 ? atol(argv[1]) : 200000;
    const uintptr_t base = 0x100000000ull, slots = 1 << 16;  /* page slots of address space */
    for (long op = 0; op < ops; op++) {
        uint64_t r = next();
        int kind = (int)(r % 10);
        uintptr_t a = base + (uintptr_t)((r >> 8) % slots) * 4096;
        if (kind < 5 && model_n < sizeof model / sizeof *model) {
            /* insert a free run of 1-8 pages at a */
            size_t len = (size_t)(1 + (r >> 40) % 8) * 4096;
            size_t i = model_lower(a);
            if (i < model_n && model[i].addr < a + len) continue;  /* overlaps */
            struct fbmm_piece p = { .addr = a, .len = len, .off = a - base, .prot = 3,
                                    .flags = (r >> 50) % 3 == 0 ? P_HEAD : 0 };
            int at = fbmm_rt_insert(&p);
            CHECK(at == (int)i, "insert at %zu returned %d", i, at);
            memmove(&model[i + 1], &model[i], (model_n - i) * sizeof *model);
            model[i] = p;
            model_n++;
        } else if (kind < 7 && model_n) {
            /* remove 1-3 consecutive pieces */
            size_t i = (size_t)((r >> 8) % model_n), n = 1 + (size_t)((r >> 40) % 3);
            if (i + n > model_n) n = model_n - i;
            fbmm_rt_remove(i, n);
            memmove(&model[i], &model[i + n], (model_n - i - n) * sizeof *model);
            model_n -= n;
        } else if (kind < 8 && model_n) {
            /* split a piece at an inner page boundary */
            size_t i = (size_t)((r >> 8) % model_n);
            if (model[i].len < 2 * 4096) continue;
            uintptr_t cut = model[i].addr + 4096 * (1 + (uintptr_t)((r >> 40) % (model[i].len / 4096 - 1)));
            CHECK(fbmm_rt_split(cut) == 0, "split failed");
            struct fbmm_piece right = model[i];
            right.addr = cut;
            right.len = model[i].addr + model[i].len - cut;
            right.off += cut - model[i].addr;
            right.flags &= ~(P_HEAD | P_CACHED);
            model[i].len = cut - model[i].addr;
            memmove(&model[i + 2], &model[i + 1], (model_n - i - 1) * sizeof *model);
            model[i + 1] = right;
            model_n++;
        } else if (kind < 9 && model_n) {
            /* merge around a piece, as the kernel coalesces VMAs */
            size_t i = (size_t)((r >> 8) % model_n);
            fbmm_rt_merge_around(model[i].addr);
            if (i + 1 < model_n && model[i].addr + model[i].len == model[i + 1].addr &&
                !(model[i + 1].flags & P_HEAD) && model[i].off + model[i].len == model[i + 1].off &&
                (model[i].flags & ~P_HEAD) == model[i + 1].flags) {
                model[i].len += model[i + 1].len;
                memmove(&model[i + 1], &model[i + 2], (model_n - i - 2) * sizeof *model);
                model_n--;
            }
            if (i > 0 && model[i - 1].addr + model[i - 1].len == model[i].addr && !(model[i].flags & P_HEAD) &&
                model[i - 1].off + model[i - 1].len == model[i].off && (model[i - 1].flags & ~P_HEAD) == model[i].flags) {
                model[i - 1].len += model[i].len;
                memmove(&model[i], &model[i + 1], (model_n - i - 1) * sizeof *model);
                model_n--;
            }
        } else {
            /* lookups */
            size_t i = model_lower(a);
            CHECK(fbmm_rt_lower(a) == i, "lower(%lx) = %zu, model %zu", (unsigned long)a, fbmm_rt_lower(a), i);
            const struct fbmm_piece *f = fbmm_rt_find(a);
            int inside = i < model_n && model[i].addr <= a;
            CHECK(inside ? f && same(f, &model[i]) : f == NULL, "find(%lx)", (unsigned long)a);
            /* The lock-free test never misses a range with our pages in it,
             * and never sends one to the lock whose granules hold none. */
            size_t len = (size_t)(1 + (r >> 40) % 1024) * 4096, k = model_lower(a);
            int overlaps = k < model_n && model[k].addr < a + len, maybe = fbmm_rt_maybe(a, len);
            CHECK(!overlaps || maybe, "maybe(%lx, %zu) = 0 over a piece", (unsigned long)a, len);
            CHECK(maybe <= model_occupied(a, len), "maybe(%lx, %zu) = 1, no piece in its granules",
                  (unsigned long)a, len);
        }
        if (op % 4096 == 0) compare_all("periodic");
    }
    compare_all("end");
    size_t peak = model_n;
    /* Depth: 100,000 pieces inserted in random order (a burst of live
     * blocks), then 2,000 removed at random, checked throughout. */
    fbmm_rt_reset();
    CHECK(!fbmm_rt_maybe(base, slots * 4096), "occupancy left after reset");
    model_n = 0;
    enum { MANY = 100000 };
    for (size_t k = 0; k < MANY; k++) {
        uintptr_t a = base + (uintptr_t)((k * 7919) % MANY) * 2 * 4096;  /* a permutation */
        struct fbmm_piece p = { .addr = a, .len = 4096, .off = a, .prot = 3, .flags = P_HEAD };
        CHECK(fbmm_rt_insert(&p) >= 0, "burst insert");
    }
    for (size_t j = 0; j < MANY; j++) {  /* the model, in address order */
        uintptr_t a = base + (uintptr_t)j * 2 * 4096;
        model[j] = (struct fbmm_piece){ .addr = a, .len = 4096, .off = a, .prot = 3, .flags = P_HEAD };
    }
    model_n = MANY;
    compare_all("burst");
    for (size_t k = 0; k < 2000; k++) {
        size_t i = (size_t)(next() % model_n);
        uintptr_t a = model[i].addr + 100;
        CHECK(fbmm_rt_lower(a) == i && fbmm_rt_find(a) == fbmm_rt_at(i), "burst lookup %zu", i);
        fbmm_rt_remove(i, 1);
        memmove(&model[i], &model[i + 1], (model_n - i - 1) * sizeof *model);
        model_n--;
    }
    compare_all("burst freed");
    if (model_n > peak) peak = model_n;
    fbmm_rt_reset();
    model_n = 0;
    compare_all("reset");
    printf("regions_test: %ld operations, up to %zu pieces, %lu failure(s)\n", ops, peak, failures);
    return failures != 0;
}
