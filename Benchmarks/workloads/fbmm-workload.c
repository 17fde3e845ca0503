/*
 * fbmm-workload: the memory workloads `fbmm bench` runs natively and under the
 * shim. C11, libc only; all memory comes from malloc or anonymous mmap, so the
 * shim redirects it into the mount.
 *
 *   fbmm-workload gups    --size SIZE [--updates N] [--hot-fraction F --hot-prob P] [--seed S]
 *   fbmm-workload stream  --size SIZE [--times N]
 *   fbmm-workload churn   --size SIZE [--ops N] [--seed S]
 *   fbmm-workload latency --size SIZE [--loads N] [--seed S]
 *
 * Each prints one JSON line on stdout:
 *   {"workload":"gups","size":N,"metrics":[{"name":"gups","value":V,"unit":"GUPS","better":"higher"},...]}
 * The first metric is the workload's headline number. SIZE takes K/M/G suffixes.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void die(const char *fmt, const char *arg)
{
    fprintf(stderr, "fbmm-workload: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n");
    exit(2);
}

static uint64_t parse_size(const char *text)
{
    char *end;
    errno = 0;
    unsigned long long value = strtoull(text, &end, 10);
    if (errno || end == text) die("'%s' is not a size", text);
    unsigned shift = 0;
    switch (*end) {
    case 'k': case 'K': shift = 10; end++; break;
    case 'm': case 'M': shift = 20; end++; break;
    case 'g': case 'G': shift = 30; end++; break;
    case 't': case 'T': shift = 40; end++; break;
    case '\0': break;
    default: die("'%s' is not a size", text);
    }
    if (*end == 'B' || *end == 'b') end++;
    if (*end) die("'%s' is not a size", text);
    return (uint64_t)value << shift;
}

static double parse_double(const char *text)
{
    char *end;
    double value = strtod(text, &end);
    if (end == text || *end) die("'%s' is not a number", text);
    return value;
}

/* xorshift64*: fast, good enough for picking addresses. */
static inline uint64_t next_random(uint64_t *state)
{
    uint64_t x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * 0x2545F4914F6CDD1DULL;
}

/* A uniform index below n without division. */
static inline uint64_t below(uint64_t r, uint64_t n)
{
    return (uint64_t)(((unsigned __int128)r * n) >> 64);
}

struct metric { const char *name; double value; const char *unit; const char *better; };

static void report(const char *workload, uint64_t size, const struct metric *m, int count)
{
    printf("{\"workload\":\"%s\",\"size\":%llu,\"metrics\":[", workload, (unsigned long long)size);
    for (int i = 0; i < count; i++)
        printf("%s{\"name\":\"%s\",\"value\":%.6g,\"unit\":\"%s\",\"better\":\"%s\"}",
               i ? "," : "", m[i].name, m[i].value, m[i].unit, m[i].better);
    printf("]}\n");
    fflush(stdout);
}

struct options {
    uint64_t size, count, seed;
    double hot_fraction, hot_prob;
    int times;
};

static void parse_options(int argc, char **argv, struct options *o)
{
    for (int i = 2; i < argc; i++) {
        const char *key = argv[i];
        if (i + 1 >= argc) die("%s needs a value", key);
        const char *value = argv[++i];
        if (!strcmp(key, "--size")) o->size = parse_size(value);
        else if (!strcmp(key, "--updates") || !strcmp(key, "--ops") || !strcmp(key, "--loads"))
            o->count = parse_size(value);
        else if (!strcmp(key, "--seed")) o->seed = parse_size(value);
        else if (!strcmp(key, "--hot-fraction")) o->hot_fraction = parse_double(value);
        else if (!strcmp(key, "--hot-prob")) o->hot_prob = parse_double(value);
        else if (!strcmp(key, "--times")) o->times = (int)parse_size(value);
        else die("unknown option %s", key);
    }
    if (o->size == 0) die("%s", "--size is required");
    if (o->seed == 0) o->seed = 0x9E3779B97F4A7C15ULL;
}

/* GUPS: random read-modify-write of 8-byte words over SIZE; optionally a hot
 * set (the first hot_fraction of the table) receives hot_prob of the updates. */
static int run_gups(struct options *o)
{
    uint64_t n = o->size / sizeof(uint64_t);
    if (n < 2) die("%s", "gups: --size too small");
    uint64_t *table = malloc(n * sizeof(uint64_t));
    if (!table) die("%s", "gups: out of memory");
    double t0 = now();
    for (uint64_t i = 0; i < n; i++) table[i] = i;
    double init = now() - t0;
    uint64_t updates = o->count ? o->count : n;
    uint64_t hot_n = (uint64_t)((double)n * o->hot_fraction);
    uint64_t hot_threshold = (uint64_t)(o->hot_prob * 18446744073709551615.0);
    int hot = hot_n > 0 && o->hot_prob > 0;
    uint64_t state = o->seed;
    t0 = now();
    if (hot) {
        for (uint64_t u = 0; u < updates; u++) {
            uint64_t r = next_random(&state);
            uint64_t index = next_random(&state) < hot_threshold ? below(r, hot_n) : below(r, n);
            table[index] ^= r;
        }
    } else {
        for (uint64_t u = 0; u < updates; u++) {
            uint64_t r = next_random(&state);
            table[below(r, n)] ^= r;
        }
    }
    double elapsed = now() - t0;
    uint64_t check = 0;
    for (uint64_t i = 0; i < n; i += 4096 / sizeof(uint64_t)) check ^= table[i];
    free(table);
    struct metric m[] = {
        {"gups", (double)updates / elapsed / 1e9, "GUPS", "higher"},
        {"first_touch", (double)o->size / init / 1e6, "MB/s", "higher"},
    };
    report("gups", o->size, m, 2);
    return check == 1 ? 3 : 0; /* keep the checksum live */
}

/* STREAM: copy, scale, add, triad over three arrays of SIZE/3 bytes; best of N. */
static int run_stream(struct options *o)
{
    size_t n = o->size / 3 / sizeof(double);
    if (n < 1024) die("%s", "stream: --size too small");
    int times = o->times > 0 ? o->times : 10;
    double *a = malloc(n * sizeof(double)), *b = malloc(n * sizeof(double)), *c = malloc(n * sizeof(double));
    if (!a || !b || !c) die("%s", "stream: out of memory");
    for (size_t j = 0; j < n; j++) { a[j] = 1.0; b[j] = 2.0; c[j] = 0.0; }
    const double q = 3.0;
    double best[4] = {1e30, 1e30, 1e30, 1e30};
    for (int k = 0; k < times; k++) {
        double t = now();
        for (size_t j = 0; j < n; j++) c[j] = a[j];
        double t1 = now(); if (t1 - t < best[0]) best[0] = t1 - t;
        for (size_t j = 0; j < n; j++) b[j] = q * c[j];
        double t2 = now(); if (t2 - t1 < best[1]) best[1] = t2 - t1;
        for (size_t j = 0; j < n; j++) c[j] = a[j] + b[j];
        double t3 = now(); if (t3 - t2 < best[2]) best[2] = t3 - t2;
        for (size_t j = 0; j < n; j++) a[j] = b[j] + q * c[j];
        double t4 = now(); if (t4 - t3 < best[3]) best[3] = t4 - t3;
        __asm__ volatile("" ::: "memory");
    }
    double bytes2 = 2.0 * sizeof(double) * (double)n, bytes3 = 3.0 * sizeof(double) * (double)n;
    struct metric m[] = {
        {"triad", bytes3 / best[3] / 1e6, "MB/s", "higher"},
        {"copy", bytes2 / best[0] / 1e6, "MB/s", "higher"},
        {"scale", bytes2 / best[1] / 1e6, "MB/s", "higher"},
        {"add", bytes3 / best[2] / 1e6, "MB/s", "higher"},
    };
    int bad = a[n / 2] <= 0.0;
    free(a); free(b); free(c);
    report("stream", o->size, m, 4);
    return bad ? 3 : 0;
}

/* churn: allocate, touch every page, free, over a table of live blocks whose
 * total stays under SIZE. Half the blocks are small (malloc's heap), half
 * large (128K-4M: what the shim redirects); a third of the large ones come
 * straight from mmap. */
#define CHURN_SLOTS 256
static int run_churn(struct options *o)
{
    struct slot { void *p; size_t len; int mapped; } slots[CHURN_SLOTS];
    memset(slots, 0, sizeof slots);
    size_t max_large = o->size / CHURN_SLOTS * 2;
    if (max_large > (4u << 20)) max_large = 4u << 20;
    if (max_large < (256u << 10)) max_large = 256u << 10;
    uint64_t ops = o->count ? o->count : 20000;
    uint64_t state = o->seed;
    long page = sysconf(_SC_PAGESIZE);
    uint64_t touched = 0;
    double t0 = now();
    for (uint64_t i = 0; i < ops; i++) {
        struct slot *s = &slots[below(next_random(&state), CHURN_SLOTS)];
        if (s->p) {
            if (s->mapped) munmap(s->p, s->len); else free(s->p);
            s->p = NULL;
        }
        uint64_t r = next_random(&state);
        if (r & 1) {
            s->len = 64 + below(r >> 1, 64 << 10);
            s->mapped = 0;
            s->p = malloc(s->len);
        } else {
            s->len = (128u << 10) + below(r >> 1, max_large - (128u << 10));
            s->mapped = (r >> 60) % 3 == 0;
            if (s->mapped) {
                s->p = mmap(NULL, s->len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
                if (s->p == MAP_FAILED) s->p = NULL;
            } else {
                s->p = malloc(s->len);
            }
        }
        if (!s->p) die("%s", "churn: allocation failed");
        char *bytes = s->p;
        for (size_t off = 0; off < s->len; off += (size_t)page) bytes[off] = (char)i;
        bytes[s->len - 1] = 1;
        touched += s->len;
    }
    double elapsed = now() - t0;
    for (int i = 0; i < CHURN_SLOTS; i++)
        if (slots[i].p) { if (slots[i].mapped) munmap(slots[i].p, slots[i].len); else free(slots[i].p); }
    struct metric m[] = {
        {"ops", (double)ops / elapsed, "ops/s", "higher"},
        {"touched", (double)touched / elapsed / 1e6, "MB/s", "higher"},
    };
    report("churn", o->size, m, 2);
    return 0;
}

/* latency: a dependent pointer chase over SIZE, one pointer per 64-byte line,
 * in a random cyclic permutation (Sattolo), so every load misses. */
static int run_latency(struct options *o)
{
    size_t stride = 64 / sizeof(void *);
    size_t lines = o->size / 64;
    if (lines < 16) die("%s", "latency: --size too small");
    void **chain = mmap(NULL, lines * 64, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (chain == MAP_FAILED) die("%s", "latency: out of memory");
    uint32_t *order = malloc(lines * sizeof(uint32_t));
    if (!order) die("%s", "latency: out of memory");
    for (size_t i = 0; i < lines; i++) order[i] = (uint32_t)i;
    uint64_t state = o->seed;
    for (size_t i = lines - 1; i > 0; i--) {   /* Sattolo: one cycle through all lines */
        size_t j = below(next_random(&state), i);
        uint32_t t = order[i]; order[i] = order[j]; order[j] = t;
    }
    for (size_t i = 0; i < lines; i++)
        chain[(size_t)order[i] * stride] = &chain[(size_t)order[(i + 1) % lines] * stride];
    free(order);
    uint64_t loads = o->count ? o->count : (lines < 4000000 ? 4000000 : lines);
    void **p = &chain[0];
    for (size_t i = 0; i < lines / 4; i++) p = *p;   /* warm the TLB and caches a little */
    double t0 = now();
    for (uint64_t i = 0; i < loads; i++) p = *p;
    double elapsed = now() - t0;
    int bad = p == NULL;
    munmap(chain, lines * 64);
    struct metric m[] = { {"load", elapsed / (double)loads * 1e9, "ns", "lower"} };
    report("latency", o->size, m, 1);
    return bad ? 3 : 0;
}

int main(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        fprintf(stderr, "usage: fbmm-workload gups|stream|churn|latency --size SIZE [options]\n");
        return argc < 2 ? 2 : 0;
    }
    struct options o = {0};
    parse_options(argc, argv, &o);
    if (!strcmp(argv[1], "gups")) return run_gups(&o);
    if (!strcmp(argv[1], "stream")) return run_stream(&o);
    if (!strcmp(argv[1], "churn")) return run_churn(&o);
    if (!strcmp(argv[1], "latency")) return run_latency(&o);
    die("unknown workload '%s' (gups, stream, churn, latency)", argv[1]);
    return 2;
}
