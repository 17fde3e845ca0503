/*
 * Allocation micro-benchmarks for the fbmm shim (run natively and under
 * `fbmm run` by scripts/bench-shim.sh, which reports the ratios).
 *
 *   bench table MiB UPDATES   random 8-byte read-modify-writes over a malloc'ed
 *                             table (GUPS-like); prints "updates_per_s N".
 *                             The table is touched once before timing.
 *                             With "4k", it is madvised MADV_NOHUGEPAGE (the
 *                             4 KiB-page baseline).
 *   bench mmap PAGES ITERS    mmap(PAGES pages, anonymous private) + write one
 *                             byte per page + munmap, ITERS times; prints
 *                             "ns_per_iter N".
 *   bench burst N SIZE [all]  malloc N blocks of SIZE bytes (one byte written
 *                             per block, or per page with `all`), then free
 *                             them in random order;
 *                             prints "ns_per_op N" (mallocs and frees
 *                             together, 2N ops) and "failed N" (NULL
 *                             mallocs). Issue 15's burst: per-op cost should
 *                             stay flat from 1,000 to 100,000 blocks.
 *   bench threads T ITERS SIZE
 *                             T threads, each ITERS times: malloc(SIZE),
 *                             one byte written per page, free; prints
 *                             "ops_per_s N" (all threads' malloc+free pairs
 *                             per second, wall time). Issue 15's scaling:
 *                             throughput from 1 to 8 threads should grow
 *                             no worse than natively.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static int table(size_t mib, uint64_t updates, int small_pages)
{
    size_t n = (mib << 20) / sizeof(uint64_t);   /* a power of two for MiB powers of two */
    uint64_t *t = malloc(n * sizeof *t);
    if (!t) { perror("malloc"); return 1; }
    if (small_pages) {
        /* The 4 KiB baseline whatever the system's THP setting. */
        size_t page = (size_t)sysconf(_SC_PAGESIZE);
        uintptr_t a = ((uintptr_t)t + page - 1) & ~(uintptr_t)(page - 1);
        madvise((void *)a, n * sizeof *t - (a - (uintptr_t)t), MADV_NOHUGEPAGE);
    }
    for (size_t i = 0; i < n; i++) t[i] = i;
    uint64_t x = 0x9E3779B97F4A7C15ull, mask = n - 1;
    if (n & (n - 1)) { fprintf(stderr, "table size must be a power of two\n"); return 2; }
    double start = now();
    for (uint64_t i = 0; i < updates; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;   /* xorshift64 */
        t[x & mask] ^= x;
    }
    double elapsed = now() - start;
    uint64_t sum = 0;
    for (size_t i = 0; i < n; i += 4096) sum += t[i];
    printf("updates_per_s %.0f\nchecksum %llu\n", updates / elapsed, (unsigned long long)sum);
    free(t);
    return 0;
}

static int maps(size_t pages, long iters)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE), len = pages * page;
    /* warm up: first mmap initialises the shim's arena */
    for (int w = 0; w < 100; w++) {
        volatile char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) { perror("mmap"); return 1; }
        for (size_t o = 0; o < len; o += page) p[o] = 1;
        munmap((void *)p, len);
    }
    double start = now();
    for (long i = 0; i < iters; i++) {
        volatile char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) { perror("mmap"); return 1; }
        for (size_t o = 0; o < len; o += page) p[o] = (char)i;
        if (munmap((void *)p, len)) { perror("munmap"); return 1; }
    }
    printf("ns_per_iter %.1f\n", (now() - start) * 1e9 / iters);
    return 0;
}

static int burst(size_t n, size_t size, int every_page)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE), step = every_page ? page : size;
    char **blocks = calloc(n, sizeof *blocks);
    size_t *order = calloc(n, sizeof *order);
    if (!blocks || !order) { perror("calloc"); return 1; }
    uint64_t x = 0x2545F4914F6CDD1Dull;
    for (size_t i = 0; i < n; i++) order[i] = i;
    for (size_t i = n - 1; i > 0; i--) {   /* Fisher-Yates, before timing */
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        size_t j = x % (i + 1), t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    size_t failed = 0;
    double start = now();
    for (size_t i = 0; i < n; i++) {
        blocks[i] = malloc(size);
        if (!blocks[i]) { failed++; continue; }
        for (size_t o = 0; o < size; o += step) blocks[i][o] = (char)i;
    }
    for (size_t i = 0; i < n; i++) free(blocks[order[i]]);
    double elapsed = now() - start;
    printf("ns_per_op %.1f\nfailed %zu\n", elapsed * 1e9 / (2.0 * n), failed);
    free(blocks);
    free(order);
    return failed != 0;
}

struct worker { long iters; size_t size; int failed; };

static void *churn(void *arg)
{
    struct worker *w = arg;
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    for (long i = 0; i < w->iters; i++) {
        char *p = malloc(w->size);
        if (!p) { w->failed = 1; return NULL; }
        for (size_t o = 0; o < w->size; o += page) p[o] = (char)i;
        free(p);
    }
    return NULL;
}

static int threads(int t, long iters, size_t size)
{
    if (t < 1 || t > 256) return 2;
    pthread_t tid[256];
    struct worker w[256];
    double start = now();
    for (int i = 0; i < t; i++) {
        w[i] = (struct worker){ .iters = iters, .size = size };
        if (pthread_create(&tid[i], NULL, churn, &w[i])) { perror("pthread_create"); return 1; }
    }
    int failed = 0;
    for (int i = 0; i < t; i++) { pthread_join(tid[i], NULL); failed |= w[i].failed; }
    printf("ops_per_s %.0f\nfailed %d\n", (double)t * iters / (now() - start), failed);
    return failed;
}

int main(int argc, char **argv)
{
    if ((argc == 4 || argc == 5) && !strcmp(argv[1], "table"))
        return table(strtoul(argv[2], NULL, 0), strtoull(argv[3], NULL, 0), argc == 5 && !strcmp(argv[4], "4k"));
    if (argc == 4 && !strcmp(argv[1], "mmap")) return maps(strtoul(argv[2], NULL, 0), strtol(argv[3], NULL, 0));
    if (argc == 5 && !strcmp(argv[1], "threads"))
        return threads(atoi(argv[2]), strtol(argv[3], NULL, 0), strtoul(argv[4], NULL, 0));
    if ((argc == 4 || (argc == 5 && !strcmp(argv[4], "all"))) && !strcmp(argv[1], "burst"))
        return burst(strtoul(argv[2], NULL, 0), strtoul(argv[3], NULL, 0), argc == 5);
    fprintf(stderr, "usage: bench table MiB UPDATES [4k] | bench mmap PAGES ITERS | bench burst N SIZE [all] | bench threads T ITERS SIZE\n");
    return 2;
}
