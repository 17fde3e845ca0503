/*
 * manyblocks: holds many live large malloc blocks at once, more than the
 * kernel's vm.max_map_count (65,530) if each were a mapping of its own.
 * Natively glibc's mmapped chunks are adjacent private anonymous mappings,
 * which the kernel merges into few VMAs (and past M_MMAP_MAX it uses the
 * heap), so every malloc succeeds; under the shim each block in the mount is
 * a VMA of its own, and when the shim cannot place one it must hand the
 * request to the next allocator rather than fail it.
 *
 *   manyblocks [N [SIZE]] [--ready FILE --go FILE]
 *
 * Allocates N blocks (default 100000) of SIZE bytes (default 256 KiB),
 * touches one page of each (writes its tag), checks every malloc returned
 * memory and every block still holds its own tag once all are live; while
 * they are live it also checks the rest of the family (calloc reads zero,
 * realloc keeps the data, posix_memalign/aligned_alloc/memalign/valloc/
 * pvalloc are aligned and usable, malloc_usable_size, a direct anonymous
 * mmap reads zero), and counts the blocks that lie in shared mappings (the
 * mount, under the shim; none natively) and RssShmem. With --ready/--go it
 * then writes FILE and waits (up to 60 s) for GO to exist, so a test can
 * look at the mount while the blocks are held. Then it frees them in random
 * order. Prints "manyblocks: ok ..." with the figures, or FAIL lines; exit 0
 * only if no check failed.
 */
#define _GNU_SOURCE
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static int failed;

#define FAIL(...) do { printf("FAIL " __VA_ARGS__); putchar('\n'); fflush(stdout); failed = 1; } while (0)

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static uint64_t rnd(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12; x ^= x << 25; x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1DULL;
}

static uint64_t tag(size_t i) { return 0x6d616e79b10c0000ull ^ ((uint64_t)i * 0x9E3779B97F4A7C15ull); }

/* The shared mappings of this process (sorted by address, as in maps). */
static struct range { uintptr_t lo, hi; } *shared;
static size_t nshared;

static void load_shared(void)
{
    FILE *f = fopen("/proc/self/maps", "r");
    if (!f) return;
    size_t cap = 0;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        unsigned long lo, hi;
        char perms[8];
        if (sscanf(line, "%lx-%lx %7s", &lo, &hi, perms) != 3 || perms[3] != 's') continue;
        if (nshared == cap) {
            cap = cap ? cap * 2 : 1024;
            struct range *r = realloc(shared, cap * sizeof *shared);
            if (!r) break;
            shared = r;
        }
        shared[nshared].lo = lo;
        shared[nshared].hi = hi;
        nshared++;
    }
    fclose(f);
}

static int in_shared(const void *p)
{
    uintptr_t a = (uintptr_t)p;
    size_t lo = 0, hi = nshared;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (shared[mid].hi <= a) lo = mid + 1; else hi = mid;
    }
    return lo < nshared && shared[lo].lo <= a;
}

static long status_kb(const char *key)
{
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return -1;
    char line[256];
    long v = -1;
    size_t n = strlen(key);
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, key, n) && line[n] == ':') v = atol(line + n + 1);
    fclose(f);
    return v;
}

static long map_count(void)
{
    FILE *f = fopen("/proc/self/maps", "r");
    if (!f) return -1;
    long n = 0;
    int c;
    while ((c = getc(f)) != EOF) n += c == '\n';
    fclose(f);
    return n;
}

static int zero(const unsigned char *p, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (p[i]) return 0;
    return 1;
}

/* The rest of the malloc family and a direct mmap, while the blocks are live. */
static void family(size_t size)
{
    unsigned char *c = calloc(1, size);
    if (!c) FAIL("calloc(%zu) returned NULL", size);
    else if (!zero(c, size)) FAIL("calloc(%zu) memory is not zero", size);

    char *r = malloc(size);
    if (!r) FAIL("malloc(%zu) before realloc returned NULL", size);
    else {
        for (size_t i = 0; i < size; i += 4096) r[i] = (char)(i / 4096 + 1);
        char *g = realloc(r, 4 * size);
        if (!g) FAIL("realloc(%zu -> %zu) returned NULL", size, 4 * size);
        else {
            for (size_t i = 0; i < size; i += 4096)
                if (g[i] != (char)(i / 4096 + 1)) { FAIL("realloc lost the data at %zu", i); break; }
            if (malloc_usable_size(g) < 4 * size) FAIL("malloc_usable_size after realloc: %zu", malloc_usable_size(g));
            g[4 * size - 1] = 1;
            char *s = realloc(g, size / 2);
            if (!s) FAIL("realloc shrink returned NULL");
            else if (s[0] != 1) FAIL("realloc shrink lost the data");
            free(s ? s : g);
        }
    }

    void *pm = NULL;
    int e = posix_memalign(&pm, 1 << 16, size);
    if (e || !pm) FAIL("posix_memalign(64K, %zu): %d", size, e);
    else if ((uintptr_t)pm & 0xffff) FAIL("posix_memalign: %p not 64K-aligned", pm);
    else { memset(pm, 1, 64); free(pm); }

    struct { const char *name; void *p; size_t align; } a[] = {
        { "aligned_alloc", aligned_alloc(1 << 14, size), 1 << 14 },
        { "memalign", memalign(1 << 13, size), 1 << 13 },
        { "valloc", valloc(size), 4096 },
        { "pvalloc", pvalloc(size - 100), 4096 },
    };
    for (size_t i = 0; i < sizeof a / sizeof a[0]; i++) {
        if (!a[i].p) { FAIL("%s(%zu) returned NULL", a[i].name, size); continue; }
        if ((uintptr_t)a[i].p & (a[i].align - 1)) FAIL("%s: %p not aligned to %zu", a[i].name, a[i].p, a[i].align);
        if (malloc_usable_size(a[i].p) < size - 100) FAIL("%s: malloc_usable_size %zu", a[i].name, malloc_usable_size(a[i].p));
        ((char *)a[i].p)[size - 101] = 1;
        free(a[i].p);
    }
    free(c);

    unsigned char *m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) FAIL("mmap(%zu, MAP_PRIVATE|MAP_ANONYMOUS) failed", size);
    else {
        if (!zero(m, size)) FAIL("fresh anonymous mmap is not zero");
        m[0] = 1;
        m[size - 1] = 2;
        if (munmap(m, size)) FAIL("munmap of the direct mapping failed");
    }
}

int main(int argc, char **argv)
{
    size_t n = 100000, size = 256 << 10;
    const char *ready = NULL, *go = NULL;
    int pos = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--ready") && i + 1 < argc) ready = argv[++i];
        else if (!strcmp(argv[i], "--go") && i + 1 < argc) go = argv[++i];
        else if (pos++ == 0) n = strtoul(argv[i], NULL, 0);
        else size = strtoul(argv[i], NULL, 0);
    }
    if (size < sizeof(uint64_t)) size = sizeof(uint64_t);
    uint64_t **blocks = calloc(n, sizeof *blocks);
    size_t *order = malloc(n * sizeof *order);
    if (!blocks || !order) {
        printf("FAIL cannot allocate the bookkeeping for %zu blocks\n", n);
        return 1;
    }

    double t0 = now();
    size_t nulls = 0;
    for (size_t i = 0; i < n; i++) {
        blocks[i] = malloc(size);
        if (!blocks[i]) {
            if (!nulls++) FAIL("malloc(%zu) number %zu returned NULL", size, i);
            continue;
        }
        blocks[i][0] = tag(i);  /* one page touched */
    }
    double t1 = now();
    if (nulls) FAIL("%zu of %zu mallocs returned NULL", nulls, n);

    size_t wrong = 0;
    for (size_t i = 0; i < n; i++)
        if (blocks[i] && blocks[i][0] != tag(i) && !wrong++)
            FAIL("block %zu at %p holds tag %#llx", i, (void *)blocks[i], (unsigned long long)blocks[i][0]);
    if (wrong) FAIL("%zu blocks do not hold their own tag", wrong);

    family(size);

    load_shared();
    size_t in_mount = 0;
    for (size_t i = 0; i < n; i++) in_mount += blocks[i] && in_shared(blocks[i]);
    long shmem = status_kb("RssShmem"), anon = status_kb("RssAnon"), vmas = map_count();
    printf("manyblocks: holding %zu blocks of %zu bytes: %zu in shared mappings, RssShmem %ld kB, RssAnon %ld kB, %ld mappings\n",
           n, size, in_mount, shmem, anon, vmas);
    fflush(stdout);

    if (ready && go) {
        char tmp[4096];
        snprintf(tmp, sizeof tmp, "%s.tmp", ready);
        FILE *f = fopen(tmp, "w");
        if (f) {
            fprintf(f, "%d %zu\n", (int)getpid(), in_mount);
            fclose(f);
            rename(tmp, ready);
        }
        struct stat st;
        for (int i = 0; i < 6000 && stat(go, &st) != 0; i++) usleep(10000);
    }

    /* Again after the family's allocations and frees: still intact? */
    for (size_t i = 0; i < n; i++)
        if (blocks[i] && blocks[i][0] != tag(i)) { FAIL("block %zu lost its tag", i); break; }

    uint64_t seed = 0x243F6A8885A308D3ull;
    for (size_t i = 0; i < n; i++) order[i] = i;
    for (size_t i = n; i > 1; i--) {
        size_t j = (size_t)(rnd(&seed) % i), t = order[i - 1];
        order[i - 1] = order[j];
        order[j] = t;
    }
    double t2 = now();
    for (size_t i = 0; i < n; i++) free(blocks[order[i]]);
    double t3 = now();

    /* Everything freed: a new round of blocks still works. */
    for (size_t i = 0; i < 64 && i < n; i++) {
        blocks[i] = malloc(size);
        if (!blocks[i]) FAIL("malloc after freeing everything returned NULL");
        else blocks[i][0] = tag(i);
    }
    for (size_t i = 0; i < 64 && i < n; i++) free(blocks[i]);

    double per_op = (t1 - t0 + t3 - t2) / (2.0 * (double)(n ? n : 1)) * 1e6;
    printf("manyblocks: %s n=%zu size=%zu malloc %.2f us/op free %.2f us/op (%.2f us/op both) in_mount=%zu\n",
           failed ? "FAILED" : "ok", n, size, (t1 - t0) / (double)(n ? n : 1) * 1e6,
           (t3 - t2) / (double)(n ? n : 1) * 1e6, per_op, in_mount);
    free(order);
    free(blocks);
    free(shared);
    return failed;
}
