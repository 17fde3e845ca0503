/*
 * forkfd: a program that does to its descriptors what daemons and servers
 * do (close every fd >= 3, dup2 over all of them, close_range, closefrom,
 * raw system calls the shim cannot see), then forks, and checks that parent
 * and child both still read exactly the memory they wrote, and that memory
 * allocated afterwards works (and, under the shim, forks) too.
 *
 *   forkfd MODE        MODE: close-loop | dup2-all | close-range | closefrom |
 *                            raw-close-range | raw-dup2 | exec
 *
 * exec: close every fd >= 3, then exec itself as "close-loop": the new image
 * must start over with its own arena and pass the whole close-loop check.
 *
 * Regions checked (each before and after the fork, in parent and child):
 *   a  malloc(8 MiB) filled with 'a' (the case of issue 14)
 *   b  malloc(256 KiB), a page-varying pattern (the pre-zeroed pool's size)
 *   c  mmap 4 MiB, pattern, then mprotect PROT_READ
 *   d  mmap 2 MiB, pattern, then mprotect PROT_NONE (data behind no access)
 *   e  mmap 16 MiB, every 4th page written, the rest must read zero
 *   f  calloc(4 MiB), never written: must read zero
 *   i  mmap 1 MiB, pattern; after the attack grown to 3 MiB by mremap
 * The child writes over a; the parent must not see it. After the fork the
 * parent allocates g (malloc 8 MiB, 'g') and h (mmap 1 MiB, pattern), forks
 * again and the child checks everything. The child of the first fork also
 * allocates and forks a grandchild. Prints PASS/FAIL lines and
 * "forkfd: ok MODE"; exit 0 only when every check passed. Prints
 * "INFO shmem-growth-kb N" for g+h (RssShmem growth), so a test can tell
 * whether memory allocated after the descriptors were attacked is still in
 * the mount.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef SYS_close_range
#define SYS_close_range 436
#endif

static long page;
static int failed;
static const char *mode;
static const char *self;

struct region { const char *name; unsigned char *p; size_t len; int kind; int prot; };
enum { FILL_CONST, FILL_PATTERN, FILL_SPARSE, FILL_ZERO };
static struct region R[16];
static int nr;

static unsigned char pat(int id, size_t off)
{
    return (unsigned char)(id * 37 + (off / 4096) * 13 + off * 7 + 1);
}

static unsigned char expect(const struct region *r, int id, size_t off, unsigned char c)
{
    switch (r->kind) {
    case FILL_CONST: return c;
    case FILL_PATTERN: return pat(id, off);
    case FILL_SPARSE: return (off / page) % 4 == 0 ? pat(id, off) : 0;
    default: return 0;
    }
}

static void result(const char *who, const char *what, int ok, const char *detail)
{
    printf("%s %s: %s%s%s\n", ok ? "PASS" : "FAIL", who, what, detail ? " " : "", detail ? detail : "");
    fflush(stdout);
    if (!ok) failed = 1;
}

static void fill(struct region *r, int id, unsigned char c)
{
    for (size_t off = 0; off < r->len; off++) {
        unsigned char v = expect(r, id, off, c);
        if (r->kind == FILL_SPARSE && (off / page) % 4) { off += page - 1 - off % page; continue; }
        if (r->kind == FILL_ZERO) break;
        r->p[off] = v;
    }
}

/* Whether region i reads as expected (const regions: byte c). */
static int check(int i, unsigned char c, const char *who)
{
    struct region *r = &R[i];
    if (!(r->prot & PROT_READ)) mprotect(r->p, r->len, PROT_READ);
    size_t bad = SIZE_MAX, nbad = 0;
    unsigned char got = 0;
    for (size_t off = 0; off < r->len; off++)
        if (r->p[off] != expect(r, i, off, c)) {
            if (bad == SIZE_MAX) { bad = off; got = r->p[off]; }
            nbad++;
        }
    if (!(r->prot & PROT_READ)) mprotect(r->p, r->len, r->prot);
    char d[160], what[64];
    if (nbad)
        snprintf(d, sizeof d, "(%zu bad bytes, first at +%zu: 0x%02x, expected 0x%02x)", nbad, bad, got,
                 expect(r, i, bad, c));
    snprintf(what, sizeof what, "region %s reads what was written", r->name);
    result(who, what, nbad == 0, nbad ? d : NULL);
    return nbad == 0;
}

static int add(const char *name, unsigned char *p, size_t len, int kind, int prot)
{
    if (!p || p == MAP_FAILED) {
        printf("FAIL allocation of %s: %s\n", name, strerror(errno));
        exit(1);
    }
    if (nr == (int)(sizeof R / sizeof *R)) abort();
    R[nr] = (struct region){ name, p, len, kind, prot };
    return nr++;
}

static unsigned char *map(size_t len)
{
    return mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
}

static long shmem_kb(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kb = -1;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "RssShmem: %ld", &kb) == 1) break;
    if (f) fclose(f);
    return kb;
}

static void setup(void)
{
    int a = add("a", malloc(8 << 20), 8 << 20, FILL_CONST, PROT_READ | PROT_WRITE);
    memset(R[a].p, 'a', R[a].len);
    int b = add("b", malloc(256 << 10), 256 << 10, FILL_PATTERN, PROT_READ | PROT_WRITE);
    fill(&R[b], b, 0);
    int c = add("c", map(4 << 20), 4 << 20, FILL_PATTERN, PROT_READ);
    fill(&R[c], c, 0);
    mprotect(R[c].p, R[c].len, PROT_READ);
    int d = add("d", map(2 << 20), 2 << 20, FILL_PATTERN, PROT_NONE);
    fill(&R[d], d, 0);
    mprotect(R[d].p, R[d].len, PROT_NONE);
    int e = add("e", map(16 << 20), 16 << 20, FILL_SPARSE, PROT_READ | PROT_WRITE);
    fill(&R[e], e, 0);
    add("f", calloc(1, 4 << 20), 4 << 20, FILL_ZERO, PROT_READ | PROT_WRITE);
    int i = add("i", map(1 << 20), 1 << 20, FILL_PATTERN, PROT_READ | PROT_WRITE);
    fill(&R[i], i, 0);
}

/* mremap growth of region i (the last of setup) after the attack: the old
 * part keeps its data, the new part reads zero. */
static void grow_i(void)
{
    int i = nr - 1;
    size_t nl = 3 << 20;
    unsigned char *q = mremap(R[i].p, R[i].len, nl, MREMAP_MAYMOVE);
    if (q == MAP_FAILED) {
        result("parent", "mremap growth after the attack", 0, strerror(errno));
        return;
    }
    R[i].p = q;
    check(i, 'a', "parent after mremap growth");
    size_t nonzero = 0;
    for (size_t off = R[i].len; off < nl; off++) nonzero += q[off] != 0;
    result("parent", "mremap growth reads zero", nonzero == 0, NULL);
    R[i].len = nl;
    fill(&R[i], i, 0);
}

static void check_all(const char *who, int upto)
{
    for (int i = 0; i < upto; i++) check(i, 'a', who);
}

static int raw_fd_count(void)
{
    int n = 0;
    for (int fd = 0; fd < 65536; fd++)
        if (fcntl(fd, F_GETFD) >= 0) n++;
    return n;
}

static void attack(void)
{
    if (!strcmp(mode, "close-loop") || !strcmp(mode, "exec")) {
        for (int fd = 3; fd < 1024; fd++) close(fd);
    } else if (!strcmp(mode, "dup2-all")) {
        int null = open("/dev/null", O_RDWR);
        for (int fd = 3; fd < 1024; fd++)
            if (fd != null && dup2(null, fd) < 0) {
                printf("FAIL dup2(%d, %d): %s\n", null, fd, strerror(errno));
                failed = 1;
            }
    } else if (!strcmp(mode, "close-range")) {
        if (close_range(3, ~0U, 0) < 0) result("parent", "close_range(3, ~0U, 0)", 0, strerror(errno));
    } else if (!strcmp(mode, "closefrom")) {
        closefrom(3);
    } else if (!strcmp(mode, "raw-close-range")) {
        /* Behind libc's back: no interposer sees this. */
        if (syscall(SYS_close_range, 3, ~0U, 0) < 0) result("parent", "raw close_range", 0, strerror(errno));
    } else if (!strcmp(mode, "raw-dup2")) {
        int null = open("/dev/zero", O_RDWR);
        for (int fd = 3; fd < 1024; fd++)
            if (fd != null) syscall(SYS_dup3, null, fd, 0);
    } else {
        fprintf(stderr, "forkfd: unknown mode %s\n", mode);
        exit(2);
    }
    char d[32];
    snprintf(d, sizeof d, "(%d fds open)", raw_fd_count());
    result("parent", "descriptors attacked", 1, d);
}

/* Forks; the child checks regions [0, upto), writes over a, allocates and
 * forks a grandchild that checks the child's new block; exit code 0 if all
 * passed. Returns in the parent only, after checking the child's status. */
static void fork_and_check(const char *label, int upto, int deep)
{
    pid_t pid = fork();
    if (pid < 0) {
        result("parent", "fork", 0, strerror(errno));
        return;
    }
    if (pid == 0) {
        char who[64];
        snprintf(who, sizeof who, "child (%s)", label);
        check_all(who, upto);
        memset(R[0].p, 'c', R[0].len);  /* must not reach the parent */
        if (deep) {
            unsigned char *n = malloc(8 << 20);
            memset(n, 'n', 8 << 20);
            pid_t g = fork();
            if (g == 0) {
                size_t bad = 0;
                for (size_t i = 0; i < 8u << 20; i++) bad += n[i] != 'n';
                for (size_t i = 0; i < R[0].len; i++) bad += R[0].p[i] != 'c';
                _exit(bad ? 1 : 0);
            }
            int st = 0;
            waitpid(g, &st, 0);
            result(who, "grandchild reads the child's memory", g > 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0, NULL);
        }
        fflush(stdout);
        _exit(failed ? 1 : 0);
    }
    int st = 0;
    if (waitpid(pid, &st, 0) < 0) st = -1;
    char d[64];
    snprintf(d, sizeof d, "(status 0x%x)", st);
    char what[96];
    snprintf(what, sizeof what, "child of the %s fork exits 0", label);
    result("parent", what, WIFEXITED(st) && WEXITSTATUS(st) == 0, d);
    check(0, 'a', "parent after the child wrote");
}

int main(int argc, char **argv)
{
    page = sysconf(_SC_PAGESIZE);
    self = argv[0];
    if (argc < 2) {
        fprintf(stderr, "usage: forkfd MODE\n");
        return 2;
    }
    mode = argv[1];
    alarm(120);
    setvbuf(stdout, NULL, _IOLBF, 0);
    setup();
    check_all("parent before", nr);
    attack();
    if (!strcmp(mode, "exec")) {
        fflush(stdout);
        char *args[] = { (char *)self, "close-loop", NULL };
        execv("/proc/self/exe", args);
        printf("FAIL exec: %s\n", strerror(errno));
        return 1;
    }
    check_all("parent after the attack", nr);
    grow_i();
    fork_and_check("first", nr, 1);

    /* Memory allocated after the attack works, and forks. */
    long before = shmem_kb();
    int g = add("g", malloc(8 << 20), 8 << 20, FILL_PATTERN, PROT_READ | PROT_WRITE);
    fill(&R[g], g, 0);
    int h = add("h", map(1 << 20), 1 << 20, FILL_PATTERN, PROT_READ | PROT_WRITE);
    fill(&R[h], h, 0);
    printf("INFO shmem-growth-kb %ld\n", shmem_kb() - before);
    check_all("parent, new memory", nr);
    fork_and_check("second", nr, 0);

    /* And a region freed and allocated again after the fork. */
    free(R[g].p);
    R[g].p = malloc(8 << 20);
    fill(&R[g], g, 0);
    fork_and_check("third", nr, 0);
    check_all("parent at the end", nr);

    printf(failed ? "forkfd: FAIL %s\n" : "forkfd: ok %s\n", mode);
    return failed;
}
