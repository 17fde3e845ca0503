/*
 * Semantics checks for the fbmm shim: everything a program could rely on for
 * anonymous memory and the malloc family must behave the same under the
 * shim. Runs natively too (then the "in mount" checks are skipped), so the
 * test itself is checked against the kernel's own behaviour.
 *
 * Each check prints "PASS name" or "FAIL name: detail"; exit status is the
 * number of failures (capped), 0 when all pass.
 *
 * With FBMM_MOUNT set (and the shim preloaded), also checks that memory
 * really lives in the mount: the mapping is of a file (not anonymous) and
 * RssShmem grows with it.
 *
 * (One program over 400 lines: one run natively and one under the shim
 * must print the same checks, so they are not split into programs.)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <sys/wait.h>
#include <unistd.h>
#include "rawfd.h"

extern char **environ;

static int failures;
static int in_mount;   /* FBMM_MOUNT set: expect redirection */
/* malloc's blocks are the shim's too (SEMANTICS_FOREIGN_MALLOC unset). Set
 * when another interposer owns malloc ahead of the shim: the shim's
 * AddressSanitizer run (scripts/shim-sanitizers.sh), where ASan's runtime
 * must come first; its mmap interceptor still hands every mapping on. */
static int malloc_in_mount;
static size_t PG;
#define MB (1024ul * 1024ul)

static void result(const char *name, int ok, const char *detail)
{
    if (ok) printf("PASS %s\n", name);
    else { printf("FAIL %s: %s\n", name, detail ? detail : ""); failures++; }
    fflush(stdout);
}
#define CHECK(name, cond) result(name, (cond), #cond)

/* ---- helpers ------------------------------------------------------------ */

static sigjmp_buf fault_jmp;
static void on_fault(int sig) { siglongjmp(fault_jmp, sig); }

/* 1 if writing (or reading) *p faults. */
static int faults(volatile char *p, int write)
{
    struct sigaction sa = { .sa_handler = on_fault }, o1, o2;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &o1);
    sigaction(SIGBUS, &sa, &o2);
    int f = 0;
    if (sigsetjmp(fault_jmp, 1) == 0) {
        if (write) *p = 1; else (void)*p;
    } else {
        f = 1;
    }
    sigaction(SIGSEGV, &o1, NULL);
    sigaction(SIGBUS, &o2, NULL);
    return f;
}

/* The /proc/self/maps line of p: 1 if file-backed (inode != 0), 0 if
 * anonymous, -1 if unmapped. */
static int file_backed(const void *p)
{
    FILE *f = fopen("/proc/self/maps", "r");
    char line[512];
    int r = -1;
    while (f && fgets(line, sizeof line, f)) {
        unsigned long lo, hi, ino;
        if (sscanf(line, "%lx-%lx %*s %*s %*s %lu", &lo, &hi, &ino) == 3 &&
            (uintptr_t)p >= lo && (uintptr_t)p < hi) {
            r = ino != 0;
            break;
        }
    }
    if (f) fclose(f);
    return r;
}

static long status_kb(const char *key)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long v = -1;
    size_t k = strlen(key);
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, key, k) && line[k] == ':') { v = atol(line + k + 1); break; }
    if (f) fclose(f);
    return v;
}

/* Memory this process holds, in kB, measured where it lives so that other
 * processes on the machine cannot disturb it: natively RssAnon; under the
 * shim, the allocated blocks of its backing (the memfds it holds, in broker
 * mode, else its files in the mount: tmpfs mode). */
static long held_kb(void)
{
    if (!in_mount) return status_kb("RssAnon");
    const char *mnt = getenv("FBMM_MOUNT");
    size_t ml = strlen(mnt);
    long memfd_blocks = 0, mount_blocks = 0;
    int fds[4096], nfd = raw_self_fds(fds, 4096);
    for (int i = 0; i < nfd; i++) {
        char path[300], link[4096];
        snprintf(path, sizeof path, "/proc/self/fd/%d", fds[i]);
        ssize_t n = readlink(path, link, sizeof link - 1);
        if (n <= 0) continue;
        link[n] = 0;
        struct stat st;
        if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) continue;
        if (!strncmp(link, "/memfd:", 7) || !strncmp(link, "/fbmm-backing.", 14)) memfd_blocks += st.st_blocks;
        else if (!strncmp(link, mnt, ml) && link[ml] == '/') mount_blocks += st.st_blocks;
    }
    return (memfd_blocks ? memfd_blocks : mount_blocks) / 2;
}

static void fill(void *p, size_t n, unsigned seed)
{
    uint32_t *q = p;
    for (size_t i = 0; i < n / 4; i++) q[i] = seed + (uint32_t)i * 2654435761u;
}
static int verify(const void *p, size_t n, unsigned seed)
{
    const uint32_t *q = p;
    for (size_t i = 0; i < n / 4; i++)
        if (q[i] != seed + (uint32_t)i * 2654435761u) return 0;
    return 1;
}
static int all_zero(const void *p, size_t n)
{
    const unsigned char *c = p;
    for (size_t i = 0; i < n; i++) if (c[i]) return 0;
    return 1;
}

static void *anon(size_t n)
{
    return mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
}

static void result_mount(const char *name, const void *p)
{
    char n[128];
    snprintf(n, sizeof n, "%s in mount", name);
    result(n, file_backed(p) == 1, "mapping is anonymous, not a file of the mount");
}

static void expect_mount(const char *name, const void *p)
{
    if (in_mount) result_mount(name, p);
}

/* The same for a block malloc handed out. */
static void expect_malloc_mount(const char *name, const void *p)
{
    if (malloc_in_mount) result_mount(name, p);
}

/* ---- malloc family ---------------------------------------------------- */

static void test_malloc(void)
{
    size_t n = 8 * MB + 123;
    char *p = malloc(n);
    CHECK("malloc large", p != NULL);
    if (!p) return;
    fill(p, n & ~3ul, 1);
    CHECK("malloc large data", verify(p, n & ~3ul, 1));
    CHECK("malloc_usable_size >= size", malloc_usable_size(p) >= n);
    expect_malloc_mount("malloc large", p);
    free(p);

    char *s = malloc(100);
    CHECK("malloc small", s != NULL && (strcpy(s, "hello"), !strcmp(s, "hello")));
    free(s);

    /* calloc zero even when the memory was used before (range reuse). */
    int zero = 1;
    for (int i = 0; i < 20; i++) {
        size_t sz = (size_t)(1 + i % 4) * MB;
        unsigned char *c = calloc(1, sz);
        if (!c || !all_zero(c, sz)) { zero = 0; free(c); break; }
        memset(c, 0xAB, sz);
        free(c);
    }
    CHECK("calloc zero after reuse", zero);

    /* Many blocks of one length, written and freed, more than the shim's
     * cache of resident blocks holds (64 MiB): the rest stay mapped with
     * their memory punched (clean slots). calloc must read zero from them,
     * in this process and in a fork child; malloc'ed ones hold what is
     * written. */
    enum { NB = 400 };
    size_t bs = 256 * 1024;
    char *many[NB];
    int made = 1;
    for (int i = 0; i < NB; i++) {
        many[i] = malloc(bs);
        if (!many[i]) { made = 0; break; }
        memset(many[i], 0xCD, bs);
    }
    CHECK("malloc 400 blocks of 256K", made);
    for (int i = 0; i < NB; i++) free(made ? many[i] : NULL);
    int slots_zero = made;
    for (int i = 0; i < NB && slots_zero; i++) {
        many[i] = calloc(1, bs);
        if (!many[i] || !all_zero(many[i], bs)) slots_zero = 0;
        else fill(many[i], bs, (unsigned)i);
    }
    CHECK("calloc zero from freed 256K blocks", slots_zero);
    int kept = slots_zero;
    for (int i = 0; i < NB && kept; i++) kept = verify(many[i], bs, (unsigned)i);
    CHECK("256K blocks hold their data", kept);
    for (int i = 0; i < NB / 2; i++) free(slots_zero ? many[i] : NULL);
    pid_t kid = fork();
    if (kid == 0) {
        int good = 1;
        for (int i = NB / 2; i < NB && good; i++) good = verify(many[i], bs, (unsigned)i);
        for (int i = 0; i < NB / 2 && good; i++) {
            char *c = calloc(1, bs);
            good = c && all_zero(c, bs);
            if (c) memset(c, 0xEE, bs);
        }
        _exit(good ? 0 : 1);
    }
    int kst = -1;
    waitpid(kid, &kst, 0);
    CHECK("fork child: blocks kept, calloc zero from freed ones", WIFEXITED(kst) && WEXITSTATUS(kst) == 0);
    int parent_zero = 1;
    for (int i = 0; i < NB / 2 && parent_zero; i++) {
        many[i] = calloc(1, bs);
        parent_zero = many[i] && all_zero(many[i], bs);
    }
    for (int i = NB / 2; i < NB && parent_zero; i++) parent_zero = verify(many[i], bs, (unsigned)i);
    CHECK("parent after the child: calloc zero, blocks kept", parent_zero);
    for (int i = 0; i < NB; i++) free(parent_zero ? many[i] : NULL);
    volatile size_t huge = SIZE_MAX / 2;  /* volatile: keep the compiler out */
    void *ov = calloc(huge, 3);
    CHECK("calloc overflow is ENOMEM", ov == NULL && errno == ENOMEM);

    /* realloc: grow from small across the threshold, then on and back. */
    char *r = malloc(64);
    size_t have = 64;
    fill(r, have, 7);
    int ok = 1;
    for (size_t sz = 128; sz <= 64 * MB && ok; sz *= 2) {
        char *q = realloc(r, sz);
        if (!q) { ok = 0; break; }
        r = q;
        if (!verify(r, have, 7)) ok = 0;
        fill(r, sz, 7);
        have = sz;
    }
    CHECK("realloc grow keeps data", ok);
    expect_malloc_mount("realloc grown block", r);
    char *q = realloc(r, 3 * MB);
    CHECK("realloc shrink keeps data", q && verify(q, 3 * MB, 7));
    q = realloc(q, 1000);
    CHECK("realloc to small keeps data", q && verify(q, 1000, 7));
    q = realloc(q, 5 * MB);
    CHECK("realloc small to large keeps data", q && verify(q, 1000, 7));
    free(q);

    /* Two interleaved growing blocks force moves rather than in-place. */
    char *a = malloc(1 * MB), *b = malloc(1 * MB);
    fill(a, MB, 11); fill(b, MB, 12);
    for (size_t sz = 2 * MB; sz <= 32 * MB; sz *= 2) {
        char *na = realloc(a, sz), *nb = realloc(b, sz);
        if (!na || !nb) { ok = 0; break; }
        if (!verify(na, sz / 2, 11) || !verify(nb, sz / 2, 12)) ok = 0;
        a = na; b = nb;
        fill(a, sz, 11); fill(b, sz, 12);
    }
    CHECK("realloc interleaved growth", ok);
    free(a); free(b);

    void *m = NULL;
    int e = posix_memalign(&m, 64 * 1024, 2 * MB);
    CHECK("posix_memalign 64K", e == 0 && ((uintptr_t)m & (64 * 1024 - 1)) == 0);
    if (m) { memset(m, 1, 2 * MB); expect_malloc_mount("posix_memalign", m); free(m); }
    e = posix_memalign(&m, 2 * MB, 3 * MB);
    CHECK("posix_memalign 2M", e == 0 && ((uintptr_t)m & (2 * MB - 1)) == 0);
    free(m);
    CHECK("posix_memalign bad alignment is EINVAL", posix_memalign(&m, 3, 1 * MB) == EINVAL);
    void *al = aligned_alloc(4096, 1 * MB);
    CHECK("aligned_alloc", al && ((uintptr_t)al & 4095) == 0);
    free(al);
    void *ma = memalign(1 << 20, 1 * MB);
    CHECK("memalign", ma && ((uintptr_t)ma & ((1 << 20) - 1)) == 0);
    free(ma);
    void *va = valloc(1 * MB + 5);
    CHECK("valloc", va && ((uintptr_t)va & (PG - 1)) == 0 && malloc_usable_size(va) >= MB + 5);
    free(va);
    void *pv = pvalloc(1 * MB + 5);
    CHECK("pvalloc", pv && ((uintptr_t)pv & (PG - 1)) == 0 && malloc_usable_size(pv) >= MB + PG);
    free(pv);
    void *volatile ra = reallocarray(NULL, 1024, 1024);
    CHECK("reallocarray", ra != NULL);
    void *rb = reallocarray(ra, huge, 4);
    CHECK("reallocarray overflow", rb == NULL && errno == ENOMEM);
    free(ra);
}

/* ---- mmap family ------------------------------------------------------ */

static void test_mmap(void)
{
    size_t n = 16 * MB;
    char *p = anon(n);
    CHECK("mmap anon", p != MAP_FAILED);
    if (p == MAP_FAILED) return;
    CHECK("mmap anon zero", all_zero(p, n));
    fill(p, n, 3);
    expect_mount("mmap anon", p);

    void *p64 = mmap64(NULL, 1 * MB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK("mmap64 anon", p64 != MAP_FAILED && all_zero(p64, MB));
    expect_mount("mmap64 anon", p64);
    munmap(p64, MB);

    /* Partial munmap: the middle goes, both ends stay intact. */
    CHECK("munmap middle", munmap(p + 4 * MB, 4 * MB) == 0);
    CHECK("munmap middle faults", faults(p + 5 * MB, 0));
    CHECK("munmap ends intact", verify(p, 4 * MB, 3) &&
          verify(p + 8 * MB, 8 * MB, 3 + (uint32_t)(8 * MB / 4) * 2654435761u));
    /* A fresh mapping of the freed hole is zero. */
    char *h = mmap(p + 4 * MB, 4 * MB, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    CHECK("mmap into hole is zero", h == p + 4 * MB && all_zero(h, 4 * MB));
    CHECK("munmap whole", munmap(p, n) == 0 && faults(p, 0) && faults(p + n - 1, 0));

    /* Memory really returns: the backing's blocks (RssAnon natively) fall. */
    long before = held_kb();
    char *big = anon(256 * MB);
    memset(big, 1, 256 * MB);
    long mid = held_kb();
    munmap(big, 256 * MB);
    long after = held_kb();
    char d[128];
    snprintf(d, sizeof d, "before %ld mid %ld after %ld kB", before, mid, after);
    result("munmap frees memory", mid - before > 200 * 1024 && mid - after > 200 * 1024, d);

    /* mprotect */
    char *m = anon(2 * MB);
    m[0] = 5;
    CHECK("mprotect read-only", mprotect(m, 2 * MB, PROT_READ) == 0 && faults(m + MB, 1) && m[0] == 5);
    CHECK("mprotect part back", mprotect(m + MB, MB, PROT_READ | PROT_WRITE) == 0 &&
          !faults(m + MB, 1) && faults(m, 1));
    CHECK("mprotect none", mprotect(m, 2 * MB, PROT_NONE) == 0 && faults(m, 0));
    mprotect(m, 2 * MB, PROT_READ | PROT_WRITE);
    CHECK("mprotect restore", !faults(m, 1) && m[0] == 1);
    munmap(m, 2 * MB);

    /* MAP_FIXED over a region replaces it, anonymous or file. */
    char *f = anon(4 * MB);
    memset(f, 7, 4 * MB);
    char *g = mmap(f + MB, MB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    CHECK("MAP_FIXED anon replaces", g == f + MB && all_zero(g, MB) && f[0] == 7 && f[2 * MB] == 7);
    int fd = open("/proc/self/exe", O_RDONLY);
    char *fm = mmap(f + 2 * MB, PG, PROT_READ, MAP_PRIVATE | MAP_FIXED, fd, 0);
    CHECK("MAP_FIXED file replaces", fm == f + 2 * MB && !memcmp(fm, "\177ELF", 4));
    close(fd);
    munmap(f, 4 * MB);
    void *nr = mmap(NULL, 2 * MB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    void *nr2 = mmap(nr, 2 * MB, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    CHECK("MAP_FIXED_NOREPLACE refuses", nr2 == MAP_FAILED && errno == EEXIST);
    munmap(nr, 2 * MB);

    /* madvise: DONTNEED, FREE, REMOVE read back as zero and free memory. */
    static const struct { int adv; const char *name; } advs[] = {
        { MADV_DONTNEED, "MADV_DONTNEED" }, { MADV_FREE, "MADV_FREE" }, { MADV_REMOVE, "MADV_REMOVE" },
    };
    for (size_t i = 0; i < 3; i++) {
        char *z = anon(64 * MB);
        memset(z, 9, 64 * MB);
        long b = held_kb();
        int r = madvise(z + MB, 62 * MB, advs[i].adv);
        long a = held_kb();
        char nm[64];
        if (advs[i].adv == MADV_REMOVE && !in_mount) {
            /* Natively MADV_REMOVE refuses private anonymous memory. */
            snprintf(nm, sizeof nm, "%s native EINVAL", advs[i].name);
            CHECK(nm, r == -1 && errno == EINVAL);
            munmap(z, 64 * MB);
            continue;
        }
        snprintf(nm, sizeof nm, "%s reads zero", advs[i].name);
        /* MADV_FREE natively may keep data until memory pressure: no check. */
        result(nm, r == 0 && (advs[i].adv == MADV_FREE && !in_mount ? 1 : all_zero(z + MB, 62 * MB)) &&
               z[0] == 9 && z[63 * MB] == 9, "data survived or neighbours lost");
        if (advs[i].adv != MADV_FREE || in_mount) {
            snprintf(nm, sizeof nm, "%s frees memory", advs[i].name);
            snprintf(d, sizeof d, "before %ld after %ld kB", b, a);
            result(nm, b - a > 50 * 1024, d);
        }
        munmap(z, 64 * MB);
    }

    /* mremap: grow (in place or moved), shrink, move, fixed. */
    char *r = anon(4 * MB);
    fill(r, 4 * MB, 21);
    char *r2 = mremap(r, 4 * MB, 12 * MB, MREMAP_MAYMOVE);
    CHECK("mremap grow", r2 != MAP_FAILED && verify(r2, 4 * MB, 21) && all_zero(r2 + 4 * MB, 8 * MB));
    expect_mount("mremap grown", r2 + 10 * MB);
    fill(r2, 12 * MB, 22);
    char *blocker = mmap(r2 + 12 * MB, PG, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    CHECK("mremap no-move grow blocked is ENOMEM",
          blocker == MAP_FAILED || (mremap(r2, 12 * MB, 16 * MB, 0) == MAP_FAILED && errno == ENOMEM));
    char *r3 = mremap(r2, 12 * MB, 20 * MB, MREMAP_MAYMOVE);
    CHECK("mremap grow moved", r3 != MAP_FAILED && verify(r3, 12 * MB, 22) && all_zero(r3 + 12 * MB, 8 * MB));
    if (blocker != MAP_FAILED) munmap(blocker, PG);
    char *r4 = mremap(r3, 20 * MB, 6 * MB, 0);
    CHECK("mremap shrink", r4 == r3 && verify(r4, 6 * MB, 22) && faults(r3 + 7 * MB, 0));
    char *tgt = anon(8 * MB);
    char *r5 = mremap(r4, 6 * MB, 8 * MB, MREMAP_MAYMOVE | MREMAP_FIXED, tgt);
    CHECK("mremap fixed", r5 == tgt && verify(r5, 6 * MB, 22) && all_zero(r5 + 6 * MB, 2 * MB) &&
          faults(r4, 0));
    mprotect(r5, 8 * MB, PROT_READ);
    char *r6 = mremap(r5, 8 * MB, 10 * MB, MREMAP_MAYMOVE);
    CHECK("mremap keeps protection", r6 != MAP_FAILED && faults(r6, 1) && faults(r6 + 9 * MB, 1) &&
          verify(r6, 6 * MB, 22));
    char *r7 = mremap(r6 + 2 * MB, 2 * MB, 4 * MB, MREMAP_MAYMOVE);
    CHECK("mremap part of a region", r7 != MAP_FAILED && faults(r6 + 3 * MB, 0) &&
          verify(r7, 2 * MB, 22 + (uint32_t)(2 * MB / 4) * 2654435761u));
    munmap(r6, 10 * MB);
    munmap(r7, 4 * MB);
    char *dup = anon(2 * MB);
    CHECK("mremap dup of private is EINVAL", mremap(dup, 0, 2 * MB, MREMAP_MAYMOVE) == MAP_FAILED && errno == EINVAL);
    munmap(dup, 2 * MB);

    /* Not redirected: shared anonymous memory stays shared with children. */
    volatile int *sh = mmap(NULL, 2 * MB, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    *sh = 0;
    pid_t c = fork();
    if (c == 0) { *sh = 42; _exit(0); }
    waitpid(c, NULL, 0);
    CHECK("MAP_SHARED anon shared with child", *sh == 42);
    munmap((void *)sh, 2 * MB);
}

/* ---- fork ------------------------------------------------------------- */

static void test_fork(void)
{
    size_t n = 32 * MB;
    char *p = anon(n);
    char *blk = malloc(8 * MB);
    char *ro = anon(2 * MB);
    char *nofork = anon(2 * MB);
    char *wipe = anon(2 * MB);
    memset(p, 'P', n);
    memset(blk, 'B', 8 * MB);
    memset(ro, 'R', 2 * MB);
    memset(nofork, 'N', 2 * MB);
    memset(wipe, 'W', 2 * MB);
    mprotect(ro, 2 * MB, PROT_READ);
    int dontfork_ok = madvise(nofork, 2 * MB, MADV_DONTFORK) == 0;
    int wipe_ok = madvise(wipe, 2 * MB, MADV_WIPEONFORK) == 0;
    CHECK("MADV_DONTFORK accepted", dontfork_ok);
    CHECK("MADV_WIPEONFORK accepted", wipe_ok);

    int to_child[2], to_parent[2];
    if (pipe(to_child) || pipe(to_parent)) { result("fork pipes", 0, strerror(errno)); return; }
    pid_t c = fork();
    if (c == 0) {
        /* Child: report each check as a bit. */
        unsigned bits = 0;
        if (p[0] == 'P' && p[n - 1] == 'P' && blk[0] == 'B') bits |= 1;
        p[0] = 'c'; blk[1] = 'c';                           /* must not reach parent */
        char go;
        if (read(to_child[0], &go, 1) != 1) _exit(99);
        if (p[100] == 'P' && blk[100] == 'B') bits |= 2;    /* parent wrote 'p' after fork */
        if (faults(ro, 1) && ro[0] == 'R') bits |= 4;
        if (faults(nofork, 0)) bits |= 8;
        if (all_zero(wipe, 2 * MB)) bits |= 16;
        if (!in_mount || file_backed(p) == 1) bits |= 32;
        char *more = malloc(4 * MB);                        /* child's own arena */
        memset(more, 1, 4 * MB);
        if (!malloc_in_mount || file_backed(more) == 1) bits |= 64;
        free(more);
        free(blk);
        munmap(p, n);
        if (write(to_parent[1], &bits, sizeof bits) != sizeof bits) _exit(98);
        _exit(0);
    }
    /* Parent: writes after fork returned must not reach the child. */
    p[100] = 'p';
    blk[100] = 'p';
    if (write(to_child[1], "g", 1) != 1) failures++;
    unsigned bits = 0;
    ssize_t rn = read(to_parent[0], &bits, sizeof bits);
    int st;
    waitpid(c, &st, 0);
    CHECK("fork child ran", rn == sizeof bits && WIFEXITED(st) && WEXITSTATUS(st) == 0);
    CHECK("fork child sees data", bits & 1);
    CHECK("fork parent writes invisible to child", bits & 2);
    CHECK("fork child keeps protections", bits & 4);
    CHECK("fork MADV_DONTFORK absent in child", bits & 8);
    CHECK("fork MADV_WIPEONFORK zero in child", bits & 16);
    CHECK("fork child memory in mount", bits & 32);
    CHECK("fork child allocations in mount", bits & 64);
    CHECK("fork child writes invisible to parent", p[0] == 'P' && blk[1] == 'B');
    CHECK("fork WIPEONFORK parent keeps data", wipe[0] == 'W');
    munmap(p, n); free(blk); munmap(ro, 2 * MB); munmap(nofork, 2 * MB); munmap(wipe, 2 * MB);
    close(to_child[0]); close(to_child[1]); close(to_parent[0]); close(to_parent[1]);

    /* Nested fork: the grandchild copies from the child's arena. */
    char *q = malloc(4 * MB);
    memset(q, 'Q', 4 * MB);
    c = fork();
    if (c == 0) {
        q[0] = 'x';
        pid_t g = fork();
        if (g == 0) _exit(q[0] == 'x' && q[1] == 'Q' ? 0 : 1);
        int gs;
        waitpid(g, &gs, 0);
        _exit(WIFEXITED(gs) && WEXITSTATUS(gs) == 0 && q[0] == 'x' ? 0 : 1);
    }
    waitpid(c, &st, 0);
    CHECK("nested fork", WIFEXITED(st) && WEXITSTATUS(st) == 0 && q[0] == 'Q');
    free(q);
}

/* ---- threads, signals, exec, spawn ------------------------------------ */

/* Joins n threads: 1 when every one returned NULL (no failure). */
static int joined_ok(pthread_t *t, int n)
{
    int ok = 1;
    for (int i = 0; i < n; i++) {
        void *r;
        pthread_join(t[i], &r);
        if (r) ok = 0;
    }
    return ok;
}

static void *thread_main(void *arg)
{
    unsigned seed = (unsigned)(uintptr_t)arg;
    for (int i = 0; i < 300; i++) {
        size_t sz = (size_t)(128 * 1024) << (i % 6);
        char *a = malloc(sz);
        char *b = (i & 1) ? calloc(1, sz) : anon(sz);
        if (!a || !b || b == MAP_FAILED) return (void *)1;
        if ((i & 1) && !all_zero(b, sz)) return (void *)2;
        fill(a, sz, seed + (unsigned)i);
        memset(b, 1, 4096);
        a = realloc(a, sz * 2);
        if (!a || !verify(a, sz, seed + (unsigned)i)) return (void *)3;
        free(a);
        if (i & 1) free(b); else munmap(b, sz);
    }
    return NULL;
}

static void test_threads(void)
{
    pthread_t t[8];
    for (uintptr_t i = 0; i < 8; i++) pthread_create(&t[i], NULL, thread_main, (void *)(i * 1000));
    int ok = joined_ok(t, 8);
    CHECK("threads allocate and free concurrently", ok);
}

/* Blocks handed between threads: each thread frees blocks another thread
 * allocated and filled (the shim's per-thread magazines must give such a
 * block up), reallocs some, and a fork happens while threads churn: every
 * block keeps its contents, in the parent and in the child. */
#define HAND_SLOTS 64
static struct { pthread_mutex_t mu; char *blk[HAND_SLOTS]; unsigned seed[HAND_SLOTS]; } hand = { PTHREAD_MUTEX_INITIALIZER, {0}, {0} };
static volatile int churning;

static void *handoff_main(void *arg)
{
    unsigned me = (unsigned)(uintptr_t)arg;
    size_t sz = 256 * 1024;
    for (int i = 0; i < 2000 || churning; i++) {
        char *a = malloc(sz + (size_t)(i % 3) * 4096);
        if (!a) return (void *)1;
        unsigned seed = me * 100000u + (unsigned)i;
        fill(a, sz, seed);
        size_t k = (me * 7u + (unsigned)i * 13u) % HAND_SLOTS;
        pthread_mutex_lock(&hand.mu);
        char *b = hand.blk[k];
        unsigned bs = hand.seed[k];
        hand.blk[k] = a;
        hand.seed[k] = seed;
        pthread_mutex_unlock(&hand.mu);
        if (!b) continue;
        if (!verify(b, sz, bs)) return (void *)2;
        if (malloc_usable_size(b) < sz) return (void *)3;
        if (i % 16 == 0) {
            b = realloc(b, 2 * sz);
            if (!b || !verify(b, sz, bs)) return (void *)4;
        }
        free(b);
    }
    return NULL;
}

static void test_handoff(void)
{
    pthread_t t[4];
    for (uintptr_t i = 0; i < 4; i++) pthread_create(&t[i], NULL, handoff_main, (void *)(i + 1));
    int ok = joined_ok(t, 4);
    CHECK("handoff: blocks freed by another thread keep their contents", ok);
    /* Fork while two threads keep allocating, freeing and reusing blocks. */
    churning = 1;
    for (uintptr_t i = 0; i < 2; i++) pthread_create(&t[i], NULL, handoff_main, (void *)(i + 10));
    int child_ok = 1;
    for (int round = 0; round < 20; round++) {
        char *mine = malloc(256 * 1024);
        fill(mine, 256 * 1024, 777u + (unsigned)round);
        free(mine);  /* into this thread's magazine */
        mine = malloc(256 * 1024);
        fill(mine, 256 * 1024, 888u + (unsigned)round);
        pthread_mutex_lock(&hand.mu);  /* the array is whole at the fork */
        pid_t c = fork();
        if (c == 0) {
            /* Blocks the other threads allocated (their magazines' too) are
             * the child's copies; the child's own blocks work as usual. */
            int bad = !verify(mine, 256 * 1024, 888u + (unsigned)round);
            for (int k = 0; k < HAND_SLOTS && !bad; k++)
                if (hand.blk[k] && (malloc_usable_size(hand.blk[k]) < 256 * 1024 ||
                                    !verify(hand.blk[k], 256 * 1024, hand.seed[k])))
                    bad = 2;
            for (int j = 0; j < 50 && !bad; j++) {
                char *x = malloc(256 * 1024);
                fill(x, 256 * 1024, (unsigned)j);
                free(x);
                char *y = malloc(256 * 1024);
                fill(y, 256 * 1024, (unsigned)j + 1);
                bad |= !verify(y, 256 * 1024, (unsigned)j + 1);
                free(y);
            }
            _exit(bad);
        }
        pthread_mutex_unlock(&hand.mu);
        int st = 0;
        waitpid(c, &st, 0);
        if (!WIFEXITED(st) || WEXITSTATUS(st)) child_ok = 0;
        if (!verify(mine, 256 * 1024, 888u + (unsigned)round)) child_ok = 0;
        free(mine);
    }
    churning = 0;
    ok = joined_ok(t, 2);
    for (int k = 0; k < HAND_SLOTS; k++) {
        free(hand.blk[k]);
        hand.blk[k] = NULL;
    }
    CHECK("handoff: fork while threads reuse blocks (parent and child keep theirs)", ok && child_ok);
}

static volatile int sig_ok = 1, sig_count;
static void on_alarm(int s)
{
    (void)s;
    char *m = mmap(NULL, 1 * MB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) { sig_ok = 0; return; }
    m[0] = 1;
    if (munmap(m, 1 * MB)) sig_ok = 0;
    sig_count++;
}

static void test_signals(void)
{
    struct sigaction sa = { .sa_handler = on_alarm, .sa_flags = SA_RESTART };
    sigemptyset(&sa.sa_mask);
    sigaction(SIGALRM, &sa, NULL);
    struct itimerval it = { { 0, 200 }, { 0, 200 } };
    setitimer(ITIMER_REAL, &it, NULL);
    for (int i = 0; i < 3000; i++) {
        char *m = anon(1 * MB);
        m[1] = 2;
        munmap(m, 1 * MB);
    }
    struct itimerval off = { { 0, 0 }, { 0, 0 } };
    setitimer(ITIMER_REAL, &off, NULL);
    signal(SIGALRM, SIG_DFL);
    CHECK("mmap/munmap in signal handlers", sig_ok && sig_count > 0);
}

/* Runs in the exec'd child: is the shim still there (memory in the mount)? */
static int child_check(void)
{
    char *m = malloc(4 * MB);
    memset(m, 1, 4 * MB);
    return malloc_in_mount ? file_backed(m) != 1 : 0;
}

static void test_exec_spawn(void)
{
    pid_t c = fork();
    if (c == 0) {
        execl("/proc/self/exe", "semantics", "--child-check", (char *)NULL);
        _exit(127);
    }
    int st;
    waitpid(c, &st, 0);
    CHECK("exec keeps the shim", WIFEXITED(st) && WEXITSTATUS(st) == 0);

    char *big = malloc(64 * MB);
    memset(big, 1, 64 * MB);
    char *argv[] = { "semantics", "--child-check", NULL };
    pid_t sp;
    int e = posix_spawn(&sp, "/proc/self/exe", NULL, NULL, argv, environ);
    if (e == 0) waitpid(sp, &st, 0);
    CHECK("posix_spawn", e == 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0);
    free(big);
}

/* Freed large malloc blocks may be kept mapped and handed out again (the
 * shim's cache, like glibc's heap): what must hold whatever is reused. */
static void test_reuse(void)
{
    size_t n = 1 * MB + 5000;
    int ok_usable = 1, ok_data = 1;
    for (int i = 0; i < 40; i++) {
        size_t sz = n + (size_t)(i % 5) * 40000;   /* sizes within the fit window */
        char *p = malloc(sz);
        if (!p) { ok_data = 0; break; }
        if (malloc_usable_size(p) < sz) ok_usable = 0;
        fill(p, sz & ~3ul, (unsigned)i);
        if (!verify(p, sz & ~3ul, (unsigned)i)) ok_data = 0;
        free(p);
    }
    CHECK("reuse: malloc/free cycles keep data", ok_data);
    CHECK("reuse: malloc_usable_size >= size", ok_usable);

    char *p = malloc(n);
    memset(p, 0xCD, n);
    free(p);
    unsigned char *c = calloc(1, n);
    CHECK("reuse: calloc after free of a used block is zero", c && all_zero(c, n));
    free(c);
    p = malloc(n);
    memset(p, 0xCD, n);
    free(p);
    void *m = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK("reuse: mmap after free of a used block is zero", m != MAP_FAILED && all_zero(m, n));
    if (m != MAP_FAILED) munmap(m, n);
    void *al = NULL;
    p = malloc(4 * MB);
    free(p);
    int e = posix_memalign(&al, 2 * MB, 4 * MB - 8192);
    CHECK("reuse: posix_memalign keeps its alignment",
          e == 0 && ((uintptr_t)al & (2 * MB - 1)) == 0 && malloc_usable_size(al) >= 4 * MB - 8192);
    free(al);

    /* A block freed before fork, taken again on both sides after it: the
     * two must not share memory. */
    char *a = malloc(n);
    memset(a, 1, n);
    free(a);
    int to_child[2], to_parent[2];
    if (pipe(to_child) || pipe(to_parent)) { result("reuse: fork pipes", 0, strerror(errno)); return; }
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        char go;
        char *q = malloc(n);
        fill(q, n & ~3ul, 77);
        int good = verify(q, n & ~3ul, 77);
        if (write(to_parent[1], "x", 1) != 1) good = 0;      /* child has written */
        if (read(to_child[0], &go, 1) != 1) good = 0;        /* parent has written */
        good = good && verify(q, n & ~3ul, 77);
        free(q);
        char *r = malloc(n);                                 /* and again, in the child */
        memset(r, 3, n);
        free(r);
        _exit(good ? 0 : 1);
    }
    char *q = malloc(n);
    fill(q, n & ~3ul, 99);
    char x;
    int got = read(to_parent[0], &x, 1) == 1;
    int parent_ok = got && verify(q, n & ~3ul, 99);
    fill(q, n & ~3ul, 98);
    if (write(to_child[1], "x", 1) != 1) parent_ok = 0;
    int st = 0;
    waitpid(pid, &st, 0);
    parent_ok = parent_ok && verify(q, n & ~3ul, 98);
    free(q);
    close(to_child[0]); close(to_child[1]); close(to_parent[0]); close(to_parent[1]);
    CHECK("reuse: fork child's reused block is its own", WIFEXITED(st) && WEXITSTATUS(st) == 0);
    CHECK("reuse: parent's reused block untouched by the child", parent_ok);
}

static void test_in_mount_rss(void)
{
    if (!malloc_in_mount) return;
    long before = status_kb("RssShmem");
    char *m = malloc(128 * MB);
    memset(m, 1, 128 * MB);
    __asm__ volatile("" : : "r"(m) : "memory");  /* keep the dead store */
    long after = status_kb("RssShmem");
    char d[96];
    snprintf(d, sizeof d, "RssShmem %ld -> %ld kB", before, after);
    result("RssShmem grows with malloc", after - before >= 120 * 1024, d);
    free(m);
}

int main(int argc, char **argv)
{
    PG = (size_t)sysconf(_SC_PAGESIZE);
    const char *mnt = getenv("FBMM_MOUNT");
    in_mount = mnt && *mnt && getenv("LD_PRELOAD") && strstr(getenv("LD_PRELOAD"), "fbmm");
    malloc_in_mount = in_mount && !getenv("SEMANTICS_FOREIGN_MALLOC");
    if (argc > 1 && !strcmp(argv[1], "--child-check")) return child_check();
    printf("# semantics: %s\n", in_mount ? "under the shim, checking the mount" : "native checks");
    static const struct { void (*fn)(void); const char *name; } groups[] = {
        { test_malloc, "malloc" }, { test_mmap, "mmap" }, { test_fork, "fork" },
        { test_threads, "threads" }, { test_handoff, "handoff" }, { test_signals, "signals" },
        { test_exec_spawn, "exec/spawn" }, { test_reuse, "reuse" }, { test_in_mount_rss, "rss" },
    };
    for (size_t i = 0; i < sizeof groups / sizeof *groups; i++) {
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        groups[i].fn();
        clock_gettime(CLOCK_MONOTONIC, &b);
        printf("# %s: %.3f s\n", groups[i].name,
               (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9);
    }
    printf("# %d failure(s)\n", failures);
    return failures > 100 ? 100 : failures;
}
