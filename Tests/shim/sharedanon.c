/*
 * sharedanon: MAP_SHARED|MAP_ANONYMOUS memory keeps the kernel's semantics
 * (issue 14): shared with fork children and grandchildren both ways,
 * MADV_DONTNEED keeps the data, MADV_REMOVE zeroes it for everyone, munmap
 * in a child leaves the parent's data, mremap grow/move/shrink keeps data
 * and sharing, MADV_WIPEONFORK is refused, MADV_DONTFORK drops it in the
 * child; private anonymous memory stays private.
 *
 *   sharedanon check           all checks; "INFO backing KIND" says what the
 *                              region maps: devzero (native), memfd or mount
 *   sharedanon hold READY GO   64 MiB shared, filled by a fork child; writes
 *                              "PID" to READY, waits for the file GO to exist
 *
 * Prints PASS/FAIL lines and "sharedanon: ok"; exit 0 only if all passed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#define PG 4096ul
#define MB (1ul << 20)

static int failed;

static void check(int ok, const char *who, const char *what)
{
    printf("%s %s: %s\n", ok ? "PASS" : "FAIL", who, what);
    fflush(stdout);
    if (!ok) failed = 1;
}

static void fill(char *r, size_t page, int c) { memset(r + page * PG, c, PG); }

static int is(const char *r, size_t page, int c)
{
    for (size_t i = 0; i < PG; i++)
        if (r[page * PG + i] != (char)c) return 0;
    return 1;
}

static void sig(int fd) { if (write(fd, "x", 1) != 1) _exit(90); }
static void await(int fd)
{
    char c;
    ssize_t n;
    while ((n = read(fd, &c, 1)) < 0 && errno == EINTR) {}
    if (n != 1) _exit(91);
}

static char *shared(size_t len)
{
    char *r = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (r == MAP_FAILED) { perror("mmap"); exit(2); }
    return r;
}

static int reap(pid_t pid)
{
    int st;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR) return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* What the mapping at r is: its /proc/self/maps path. */
static void backing(const char *r)
{
    FILE *f = fopen("/proc/self/maps", "r");
    char line[4096], kind[64] = "none";
    const char *mount = getenv("FBMM_MOUNT");
    while (f && fgets(line, sizeof line, f)) {
        unsigned long lo, hi;
        if (sscanf(line, "%lx-%lx", &lo, &hi) != 2 || (unsigned long)r < lo || (unsigned long)r >= hi) continue;
        if (strstr(line, "/dev/zero")) strcpy(kind, "devzero");
        else if (strstr(line, "/memfd:") || strstr(line, "/fbmm-backing.")) strcpy(kind, "memfd");  /* the daemon's backing file */
        else if (mount && *mount && strstr(line, mount)) strcpy(kind, "mount");
        else strcpy(kind, "other");
        line[strcspn(line, "\n")] = 0;
        printf("INFO maps %s\n", line);
    }
    if (f) fclose(f);
    printf("INFO backing %s\n", kind);
}

static void check_fork_sharing(void)
{
    char *r = shared(8 * MB);
    backing(r);
    char *priv = mmap(NULL, MB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    fill(r, 0, 'p');
    fill(priv, 0, 'q');
    int p2c[2], c2p[2];
    if (pipe(p2c) || pipe(c2p)) exit(2);
    pid_t pid = fork();
    if (pid == 0) {
        close(p2c[1]);
        close(c2p[0]);
        check(is(r, 0, 'p'), "child", "sees the parent's write made before fork");
        fill(priv, 0, 'w');
        await(p2c[0]);                                   /* 1: parent wrote page 2 */
        check(is(r, 2, 'P'), "child", "sees the parent's write made after fork");
        fill(r, 1, 'c');
        sig(c2p[1]);                                     /* 2 */
        await(p2c[0]);                                   /* 3 */
        check(madvise(r, 8 * MB, MADV_DONTNEED) == 0, "child", "MADV_DONTNEED on shared memory succeeds");
        check(is(r, 0, 'p') && is(r, 1, 'c'), "child", "MADV_DONTNEED keeps the shared data");
        sig(c2p[1]);                                     /* 4 */
        await(p2c[0]);                                   /* 5: parent wrote page 4 */
        check(is(r, 4, 'r'), "child", "sees page 4 written by the parent");
        check(madvise(r + 4 * PG, PG, MADV_REMOVE) == 0, "child", "MADV_REMOVE on shared memory succeeds");
        check(is(r, 4, 0), "child", "MADV_REMOVE zeroes the page");
        sig(c2p[1]);                                     /* 6 */
        pid_t g = fork();
        if (g == 0) {
            check(is(r, 2, 'P') && is(r, 1, 'c'), "grandchild", "sees parent's and child's writes");
            fill(r, 3, 'g');
            _exit(failed);
        }
        check(reap(g) == 0, "child", "grandchild exits 0");
        check(is(r, 3, 'g'), "child", "sees the grandchild's write");
        /* Shared memory made by the child, shared with its own child. */
        char *c = shared(MB);
        fill(c, 1, 'k');
        g = fork();
        if (g == 0) {
            int ok = is(c, 1, 'k');
            fill(c, 2, 'l');
            _exit(!ok);
        }
        check(reap(g) == 0, "child", "its own shared region is seen by its child");
        check(is(c, 2, 'l'), "child", "sees its child's write to its own shared region");
        sig(c2p[1]);                                     /* 7 */
        /* munmap here, then new memory: the parent's data must stay. */
        check(munmap(r, 8 * MB) == 0, "child", "munmap of the shared region");
        char *x = shared(8 * MB), *y = mmap(NULL, 8 * MB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        memset(x, 'x', 8 * MB);
        memset(y, 'y', 8 * MB);
        sig(c2p[1]);                                     /* 8 */
        await(p2c[0]);                                   /* 9 */
        _exit(failed);
    }
    close(p2c[0]);
    close(c2p[1]);
    fill(r, 2, 'P');
    sig(p2c[1]);                                         /* 1 */
    await(c2p[0]);                                       /* 2 */
    check(is(r, 1, 'c'), "parent", "sees the child's write");
    sig(p2c[1]);                                         /* 3 */
    await(c2p[0]);                                       /* 4 */
    check(is(r, 0, 'p') && is(r, 1, 'c'), "parent", "data kept after the child's MADV_DONTNEED");
    fill(r, 4, 'r');
    sig(p2c[1]);                                         /* 5 */
    await(c2p[0]);                                       /* 6 */
    check(is(r, 4, 0), "parent", "page 4 reads zero after the child's MADV_REMOVE");
    await(c2p[0]);                                       /* 7 */
    check(is(r, 3, 'g'), "parent", "sees the grandchild's write");
    await(c2p[0]);                                       /* 8 */
    check(is(r, 0, 'p') && is(r, 1, 'c') && is(r, 2, 'P') && is(r, 3, 'g'),
          "parent", "data intact after the child's munmap and new allocations");
    sig(p2c[1]);                                         /* 9 */
    check(reap(pid) == 0, "parent", "child exits 0");
    check(is(priv, 0, 'q'), "parent", "private memory stays private");
    check(madvise(r, 8 * MB, MADV_DONTNEED) == 0 && is(r, 0, 'p') && is(r, 3, 'g'),
          "parent", "MADV_DONTNEED in the parent keeps the data");
    fill(r, 4, 'z');
    check(is(r, 4, 'z'), "parent", "a removed page can be written again");
    check(munmap(r, 8 * MB) == 0 && munmap(priv, MB) == 0, "parent", "munmap");
}

static void check_mremap(void)
{
    char *s = shared(2 * MB);
    fill(s, 0, 'a');
    fill(s, 400, 'z');
    int p2c[2], c2p[2];
    if (pipe(p2c) || pipe(c2p)) exit(2);
    pid_t pid = fork();
    if (pid == 0) {
        close(p2c[1]);
        close(c2p[0]);
        char *s2 = mremap(s, 2 * MB, 16 * MB, MREMAP_MAYMOVE);
        check(s2 != MAP_FAILED && is(s2, 0, 'a') && is(s2, 400, 'z'), "child", "mremap grow keeps the data");
        if (s2 == MAP_FAILED) _exit(1);
        fill(s2, 5, 'm');
        sig(c2p[1]);
        await(p2c[0]);
        check(is(s2, 6, 'n'), "child", "sees the parent's write after its mremap grow");
        char *s3 = mremap(s2, 16 * MB, MB, 0);
        check(s3 == s2 && is(s3, 0, 'a'), "child", "mremap shrink keeps the data");
        sig(c2p[1]);
        _exit(failed);
    }
    close(p2c[0]);
    close(c2p[1]);
    await(c2p[0]);
    check(is(s, 5, 'm'), "parent", "sees the write of a child that moved its mapping (mremap grow)");
    fill(s, 6, 'n');
    sig(p2c[1]);
    await(c2p[0]);
    check(is(s, 0, 'a') && is(s, 400, 'z'), "parent", "data intact after the child's mremap shrink");
    check(reap(pid) == 0, "parent", "mremap child exits 0");
    char *s4 = mremap(s, 2 * MB, 32 * MB, MREMAP_MAYMOVE);
    check(s4 != MAP_FAILED && is(s4, 0, 'a') && is(s4, 5, 'm') && is(s4, 400, 'z'),
          "parent", "its own mremap grow keeps the data");
    if (s4 == MAP_FAILED) return;
    pid = fork();
    if (pid == 0) {
        int ok = is(s4, 400, 'z');
        fill(s4, 7, 'o');
        _exit(!ok);
    }
    check(reap(pid) == 0 && is(s4, 7, 'o'), "parent", "shared with a child forked after the grow");
    check(munmap(s4, 32 * MB) == 0, "parent", "munmap of the grown region");
}

static void check_fork_advice(void)
{
    char *w = shared(MB);
    errno = 0;
    check(madvise(w, MB, MADV_WIPEONFORK) == -1 && errno == EINVAL, "parent",
          "MADV_WIPEONFORK on shared memory fails EINVAL");
    check(madvise(w, MB, MADV_DONTFORK) == 0, "parent", "MADV_DONTFORK");
    fill(w, 0, 'd');
    pid_t pid = fork();
    if (pid == 0) {
        unsigned char v;
        _exit(!(mincore(w, PG, &v) == -1 && errno == ENOMEM));
    }
    check(reap(pid) == 0, "parent", "a MADV_DONTFORK shared region is absent in the child");
    check(is(w, 0, 'd'), "parent", "and kept in the parent");
    munmap(w, MB);
}

static int hold(const char *ready, const char *go)
{
    size_t len = 64 * MB;
    char *r = shared(len);
    backing(r);
    int c2p[2], p2c[2];
    if (pipe(c2p) || pipe(p2c)) return 2;
    pid_t pid = fork();
    if (pid == 0) {
        close(c2p[0]);
        close(p2c[1]);
        memset(r, 's', len);
        sig(c2p[1]);
        await(p2c[0]);
        _exit(0);
    }
    close(c2p[1]);
    close(p2c[0]);
    await(c2p[0]);
    int ok = 1;
    for (size_t i = 0; i < len / PG; i++) ok &= is(r, i, 's');
    check(ok, "parent", "reads the 64 MiB its child wrote");
    FILE *f = fopen(ready, "w");
    if (!f) return 2;
    fprintf(f, "%d\n", (int)getpid());
    fclose(f);
    while (access(go, F_OK) != 0) usleep(20000);
    sig(p2c[1]);
    check(reap(pid) == 0, "parent", "child exits 0");
    munmap(r, len);
    printf(failed ? "sharedanon: FAIL\n" : "sharedanon: ok\n");
    return failed;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc == 4 && !strcmp(argv[1], "hold")) return hold(argv[2], argv[3]);
    if (argc != 2 || strcmp(argv[1], "check")) {
        fprintf(stderr, "usage: sharedanon check | hold READY GO\n");
        return 2;
    }
    check_fork_sharing();
    check_mremap();
    check_fork_advice();
    printf(failed ? "sharedanon: FAIL\n" : "sharedanon: ok\n");
    return failed;
}
