/*
 * poolcheck: hammers the shim's pre-zeroed pool and checks that every range
 * it hands out reads zero. Threads map anonymous regions of 1..300 pages
 * (and calloc blocks), check every byte is zero, fill them with a pattern,
 * check the pattern survives, and free them whole, in part (munmap of a
 * middle or a tail) or discard them (MADV_DONTNEED, which must read back as
 * zero). Some iterations fork: the child maps and checks on its own and
 * verifies the parent's data it inherited.
 *
 *   poolcheck [--threads N] [--iters N] [--forks N] [--ready FILE --go FILE]
 *
 * With --ready/--go, after the churn it frees everything, writes FILE
 * (its pid) and waits (up to 60 s) for GO to exist, so a test can look at
 * the pool of an idle process. Prints "poolcheck: ok ..." or FAIL lines;
 * exit 0 only if no check failed. Natively it checks the same things.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define SLOTS 24

static long page;
static int threads = 4, forks = 4;
static long iters = 4000;
static volatile int failed;
static long checked_bytes[64];

struct slot { unsigned char *p; size_t len; unsigned char fill; int mapped; };

static uint64_t rnd(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12; x ^= x << 25; x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1DULL;
}

static void fail(const char *what, const void *p, size_t off, unsigned v)
{
    printf("FAIL %s at %p+%zu: byte 0x%02x\n", what, p, off, v);
    fflush(stdout);
    failed = 1;
}

/* Every byte zero? (word scan, then the exact byte for the message) */
static int all_zero(const unsigned char *p, size_t len, const char *what)
{
    const uint64_t *w = (const uint64_t *)p;
    for (size_t i = 0; i < len / 8; i++)
        if (w[i]) {
            for (size_t b = i * 8; b < i * 8 + 8; b++)
                if (p[b]) { fail(what, p, b, p[b]); return 0; }
        }
    return 1;
}

static int all_fill(const unsigned char *p, size_t len, unsigned char v, const char *what)
{
    for (size_t i = 0; i < len; i += 61)
        if (p[i] != v) { fail(what, p, i, p[i]); return 0; }
    if (len && p[len - 1] != v) { fail(what, p, len - 1, p[len - 1]); return 0; }
    return 1;
}

static void release(struct slot *s)
{
    if (!s->p) return;
    all_fill(s->p, s->len, s->fill, "pattern lost before free");
    if (s->mapped) munmap(s->p, s->len); else free(s->p);
    s->p = NULL;
}

static void churn(int id, long n, uint64_t seed, long *checked)
{
    struct slot slots[SLOTS];
    memset(slots, 0, sizeof slots);
    uint64_t st = seed;
    for (long i = 0; i < n && !failed; i++) {
        struct slot *s = &slots[rnd(&st) % SLOTS];
        release(s);
        uint64_t r = rnd(&st);
        size_t pages = 1 + r % 300;
        s->len = pages * (size_t)page;
        s->fill = (unsigned char)(1 + (id * 37 + i) % 250);
        s->mapped = (r >> 20) % 4 != 0;
        if (s->mapped) {
            s->p = mmap(NULL, s->len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (s->p == MAP_FAILED) { printf("FAIL mmap\n"); failed = 1; s->p = NULL; return; }
        } else {
            s->p = calloc(1, s->len);
            if (!s->p) { printf("FAIL calloc\n"); failed = 1; return; }
        }
        all_zero(s->p, s->len, s->mapped ? "mmap not zero" : "calloc not zero");
        *checked += (long)s->len;
        memset(s->p, s->fill, s->len);
        uint64_t act = (r >> 40) % 8;
        if (s->mapped && act == 0 && pages >= 4) {
            /* free the tail */
            size_t keep = (pages / 2) * (size_t)page;
            munmap(s->p + keep, s->len - keep);
            s->len = keep;
        } else if (s->mapped && act == 1 && pages >= 3) {
            /* discard the middle page: must read back zero */
            madvise(s->p + page, (size_t)page, MADV_DONTNEED);
            all_zero(s->p + page, (size_t)page, "MADV_DONTNEED page not zero");
            memset(s->p + page, s->fill, (size_t)page);
        } else if (s->mapped && act == 2 && pages >= 3) {
            /* free a hole in the middle, keep both ends */
            munmap(s->p + page, (size_t)page);
            all_fill(s->p, (size_t)page, s->fill, "head after a hole");
            all_fill(s->p + 2 * page, s->len - 2 * (size_t)page, s->fill, "tail after a hole");
            munmap(s->p, (size_t)page);
            s->p += 2 * page;
            s->len -= 2 * (size_t)page;
        }
    }
    for (int k = 0; k < SLOTS; k++) release(&slots[k]);
}

static void *worker(void *arg)
{
    int id = (int)(intptr_t)arg;
    churn(id, iters, 0x9E3779B97F4A7C15ull * (uint64_t)(id + 1), &checked_bytes[id]);
    return NULL;
}

/* A child of a process with live pool regions: its copy must hold the
 * parent's data and its own new mappings must read zero. */
static void fork_check(int round)
{
    size_t len = 37 * (size_t)page;
    unsigned char *keep = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (keep == MAP_FAILED) { printf("FAIL mmap before fork\n"); failed = 1; return; }
    all_zero(keep, len, "mmap before fork not zero");
    memset(keep, 0xA5, len);
    pid_t pid = fork();
    if (pid == 0) {
        int bad = !all_fill(keep, len, 0xA5, "fork child lost the parent's data");
        memset(keep, 0x5A, len);
        long c = 0;
        churn(60, 300, 0xC0FFEEull + (uint64_t)round, &c);
        bad |= failed;
        _exit(bad ? 1 : 0);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) { printf("FAIL fork child %d\n", round); failed = 1; }
    all_fill(keep, len, 0xA5, "parent saw the child's writes");
    munmap(keep, len);
}

int main(int argc, char **argv)
{
    const char *ready = NULL, *go = NULL;
    page = sysconf(_SC_PAGESIZE);
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--threads")) threads = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--iters")) iters = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--forks")) forks = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--ready")) ready = argv[i + 1];
        else if (!strcmp(argv[i], "--go")) go = argv[i + 1];
        else { fprintf(stderr, "poolcheck: unknown option %s\n", argv[i]); return 2; }
    }
    if (threads < 1 || threads > 32) threads = 4;
    pthread_t t[32];
    for (int i = 0; i < threads; i++) pthread_create(&t[i], NULL, worker, (void *)(intptr_t)i);
    for (int i = 0; i < forks && !failed; i++) fork_check(i);
    for (int i = 0; i < threads; i++) pthread_join(t[i], NULL);
    long total = 0;
    for (int i = 0; i < threads; i++) total += checked_bytes[i];
    printf("poolcheck: %s, %ld MiB checked zero by %d threads, %d forks\n",
           failed ? "FAILED" : "ok", total >> 20, threads, forks);
    fflush(stdout);
    if (ready) {
        char tmp[4096];
        snprintf(tmp, sizeof tmp, "%s.tmp", ready);
        FILE *f = fopen(tmp, "w");
        if (f) { fprintf(f, "%d\n", (int)getpid()); fclose(f); rename(tmp, ready); }
        for (int i = 0; i < 6000 && go; i++) {
            struct stat sb;
            if (stat(go, &sb) == 0) break;
            usleep(10000);
        }
    }
    return failed ? 1 : 0;
}
