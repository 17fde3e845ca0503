/*
 * Huge pages and first touch, natively and under the shim (scripts/bench-huge.sh).
 *
 *   hugebench MB ASK UPDATES [WARM [down]]
 *     mallocs MB MiB, optionally madvise(MADV_HUGEPAGE) on it (ASK=1, as
 *     JVMs, jemalloc thp:always and PyTorch do), touches every page (timed),
 *     then does UPDATES random 8-byte updates (timed), and prints
 *     "touch_ms X mups Y pmd_kb Z cold_ms C" (Z: AnonHugePages +
 *     ShmemPmdMapped + FilePmdMapped of the process).
 *     WARM (default 0) blocks of the same size are first malloc'ed, touched
 *     and freed; X is then the first touch of the next, fresh block, and C
 *     the process's first (cold) one. Why: on a virtual machine the host
 *     backs guest memory lazily and takes back what the guest frees (free
 *     page reporting), so the first touch of memory the guest has not used
 *     lately costs a host fault per page whoever asks for it: single cold
 *     runs here spread from 130 ms to 3.3 s for the same 1 GiB. A block that
 *     follows a freed one gets memory the host still backs, so X measures
 *     the kernel's fault path (natively or under the shim), not the host's.
 *     "down" touches the pages from the last to the first: a huge shmem
 *     fault zeroes the 2 MiB page from its first byte to its last, an
 *     anonymous one the faulting 4 KiB last, so which of the two leaves the
 *     bytes the program writes next in the cache depends on the direction.
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
    if (argc < 4 || argc > 6) { fprintf(stderr, "usage: hugebench MB ASK UPDATES [WARM [down]]\n"); return 2; }
    size_t len = (size_t)atol(argv[1]) << 20;
    long updates = atol(argv[3]);
    int warm = argc >= 5 ? atoi(argv[4]) : 0;
    int down = argc == 6 && strcmp(argv[5], "down") == 0;
    uint64_t *p = NULL;
    double touch = 0, cold = 0;
    for (int round = 0; round <= warm; round++) {
        free(p);
        p = malloc(len);
        if (!p) { perror("malloc"); return 1; }
        if (atoi(argv[2])) {
            uintptr_t a = ((uintptr_t)p + (2u << 20) - 1) & ~(uintptr_t)((2u << 20) - 1);
            madvise((void *)a, len - (a - (uintptr_t)p), MADV_HUGEPAGE);
        }
        double t0 = now();
        if (down)
            for (size_t i = len / 8; i >= 512; i -= 512) p[i - 512] = i;
        else
            for (size_t i = 0; i < len / 8; i += 512) p[i] = i;
        touch = now() - t0;
        if (round == 0) cold = touch;
    }
    uint64_t x = 88172645463325252ull, n = len / 8;
    double t0 = now();
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
    printf("touch_ms %.1f mups %.2f pmd_kb %ld cold_ms %.1f\n", touch * 1e3, updates / upd / 1e6, kb, cold * 1e3);
    return 0;
}
