/*
 * Huge pages and first touch, natively and under the shim (scripts/bench-huge.sh).
 *
 *   hugebench MB ASK UPDATES
 *     mallocs MB MiB, optionally madvise(MADV_HUGEPAGE) on it (ASK=1, as
 *     JVMs, jemalloc thp:always and PyTorch do), touches every page (timed),
 *     then does UPDATES random 8-byte updates (timed), and prints
 *     "touch_ms X mups Y pmd_kb Z" (Z: AnonHugePages + ShmemPmdMapped +
 *     FilePmdMapped of the process).
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    if (argc != 4) { fprintf(stderr, "usage: hugebench MB ASK UPDATES\n"); return 2; }
    size_t len = (size_t)atol(argv[1]) << 20;
    long updates = atol(argv[3]);
    uint64_t *p = malloc(len);
    if (!p) { perror("malloc"); return 1; }
    if (atoi(argv[2])) {
        uintptr_t a = ((uintptr_t)p + (2u << 20) - 1) & ~(uintptr_t)((2u << 20) - 1);
        madvise((void *)a, len - (a - (uintptr_t)p), MADV_HUGEPAGE);
    }
    double t0 = now();
    for (size_t i = 0; i < len / 8; i += 512) p[i] = i;
    double touch = now() - t0;
    uint64_t x = 88172645463325252ull, n = len / 8;
    t0 = now();
    for (long i = 0; i < updates; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        p[x % n] += i;
    }
    double upd = now() - t0;
    long kb = 0, v;
    char line[256];
    FILE *f = fopen("/proc/self/smaps_rollup", "r");
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "AnonHugePages: %ld", &v) == 1 || sscanf(line, "ShmemPmdMapped: %ld", &v) == 1 ||
            sscanf(line, "FilePmdMapped: %ld", &v) == 1)
            kb += v;
    if (f) fclose(f);
    printf("touch_ms %.1f mups %.2f pmd_kb %ld\n", touch * 1e3, updates / upd / 1e6, kb);
    return 0;
}
