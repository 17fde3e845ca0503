/*
 * Small probe for the shim's integration tests (Tests/IntegrationTests/ShimTests.swift).
 *
 *   probe alloc MB
 *       malloc(MB) and an anonymous mmap(MB); fills, checks, and prints
 *       "malloc ok|errno NAME", "mmap ok|errno NAME", then "RssShmem KB" and
 *       "RssAnon KB" from /proc/self/status. Exit 0 when both succeeded,
 *       3 when both failed with ENOMEM, 1 otherwise.
 *
 *   probe hold MB READY GO
 *       mallocs MB, fills it with a pattern, writes its pid to READY, waits
 *       (up to 60 s) for the file GO to exist, then checks the pattern,
 *       rewrites and re-checks it, allocates 4*MB more (which needs the
 *       arena to grow) and checks that too. Prints "data ok", "new ok",
 *       the Rss lines, and exits 0 when all data read back correctly.
 *
 *   probe burst N MB
 *       forks N children that wait on one pipe, then releases them all at
 *       once: each execs "probe alloc MB", so N fresh processes ask the
 *       daemon for their arena's backing in the same instant. Exit 0 when
 *       every child exited 0, else the number that did not.
 *
 *   probe pieces N KB
 *       maps N anonymous mappings of KB KiB each and touches every page
 *       (ruby 3.1's GC heap pages come as 32 KiB mmaps, under the shim's
 *       --min-size), then prints the Rss lines.
 *
 *   probe growstall READY GO DONE
 *       maps 16 regions of 1 MiB (the shim's), writes READY, waits for GO,
 *       then starts a thread whose 512 MiB malloc needs the arena file to
 *       grow (a FUSE round trip: the test has stopped the daemon), and
 *       after 200 ms unmaps the 16 regions itself and writes DONE. Exit 0
 *       once the thread's block holds its data too. With growth under the
 *       shim's lock the unmaps waited for the stopped daemon.
 *
 *   probe unblock CMD [ARGS...]
 *       unblocks all signals and restores default dispositions of the
 *       catchable ones, then execs CMD. Test runners (Swift concurrency
 *       threads) spawn children with most signals blocked; programs that
 *       rely on SIGALRM/SIGCHLD/SIGTERM (stress-ng) then never stop.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

static long status_kb(const char *key)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long v = -1;
    size_t n = strlen(key);
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, key, n) && line[n] == ':') v = atol(line + n + 1);
    if (f) fclose(f);
    return v;
}

static void print_rss(void)
{
    printf("RssShmem %ld\nRssAnon %ld\n", status_kb("RssShmem"), status_kb("RssAnon"));
    fflush(stdout);
}

static void fill(uint64_t *p, size_t bytes, uint64_t seed)
{
    for (size_t i = 0; i < bytes / 8; i++) p[i] = (i * 0x9E3779B97F4A7C15ull) ^ seed;
}

static int check(const uint64_t *p, size_t bytes, uint64_t seed)
{
    for (size_t i = 0; i < bytes / 8; i++)
        if (p[i] != ((i * 0x9E3779B97F4A7C15ull) ^ seed)) return 0;
    return 1;
}

static int alloc(size_t mb)
{
    size_t bytes = mb << 20;
    int ok = 0, enomem = 0;
    errno = 0;
    uint64_t *m = malloc(bytes);
    if (m) {
        fill(m, bytes, 1);
        printf("malloc %s\n", check(m, bytes, 1) ? "ok" : "corrupt");
        ok++;
    } else {
        printf("malloc errno %s\n", strerrorname_np(errno));
        enomem += errno == ENOMEM;
    }
    errno = 0;
    uint64_t *a = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (a != MAP_FAILED) {
        fill(a, bytes, 2);
        printf("mmap %s\n", check(a, bytes, 2) ? "ok" : "corrupt");
        ok++;
    } else {
        printf("mmap errno %s\n", strerrorname_np(errno));
        enomem += errno == ENOMEM;
    }
    print_rss();
    return ok == 2 ? 0 : enomem == 2 ? 3 : 1;
}

static int hold(size_t mb, const char *ready, const char *go)
{
    size_t bytes = mb << 20;
    uint64_t *m = malloc(bytes);
    if (!m) { printf("malloc failed\n"); return 1; }
    fill(m, bytes, 7);
    print_rss();
    FILE *f = fopen(ready, "w");
    if (!f) { perror(ready); return 1; }
    fprintf(f, "%d\n", (int)getpid());
    fclose(f);
    for (int i = 0; i < 6000 && access(go, F_OK) != 0; i++) usleep(10000);
    if (access(go, F_OK) != 0) { printf("timed out waiting for %s\n", go); return 1; }
    int ok = check(m, bytes, 7);
    fill(m, bytes, 8);
    ok = ok && check(m, bytes, 8);
    printf("data %s\n", ok ? "ok" : "corrupt");
    uint64_t *more = malloc(4 * bytes);
    int ok2 = more != NULL;
    if (more) {
        fill(more, 4 * bytes, 9);
        ok2 = check(more, 4 * bytes, 9) && check(m, bytes, 8);
    }
    printf("new %s\n", ok2 ? "ok" : "failed");
    print_rss();
    free(more);
    free(m);
    return ok && ok2 ? 0 : 1;
}

static void touch_file(const char *path)
{
    FILE *f = fopen(path, "w");
    if (f) { fprintf(f, "%d\n", (int)getpid()); fclose(f); }
}

static void *grow_thread(void *arg)
{
    size_t bytes = 512ul << 20;
    uint64_t *m = malloc(bytes);
    if (m) { fill(m, bytes, 5); *(int *)arg = check(m, bytes, 5); free(m); }
    return NULL;
}

static int growstall(const char *ready, const char *go, const char *done)
{
    void *regions[16];
    for (int i = 0; i < 16; i++) {
        regions[i] = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (regions[i] == MAP_FAILED) { perror("mmap"); return 1; }
        memset(regions[i], i, 1 << 20);
    }
    touch_file(ready);
    for (int i = 0; i < 6000 && access(go, F_OK) != 0; i++) usleep(10000);
    int grown = 0;
    pthread_t t;
    if (pthread_create(&t, NULL, grow_thread, &grown)) return 1;
    usleep(200000);
    for (int i = 0; i < 16; i++) munmap(regions[i], 1 << 20);
    touch_file(done);
    pthread_join(t, NULL);
    printf("grown %s\n", grown ? "ok" : "failed");
    return grown ? 0 : 1;
}

static int unblock(char **argv)
{
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    for (int sig = 1; sig < NSIG; sig++)
        if (sig != SIGKILL && sig != SIGSTOP) signal(sig, SIG_DFL);
    execvp(argv[0], argv);
    perror(argv[0]);
    return 127;
}

static int pieces(long n, size_t kb)
{
    for (long i = 0; i < n; i++) {
        char *p = mmap(NULL, kb << 10, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) { perror("mmap"); return 1; }
        for (size_t o = 0; o < kb << 10; o += 4096) p[o] = 1;
    }
    print_rss();
    return 0;
}

static int burst(int n, const char *mb)
{
    int gate[2];
    if (n < 1 || n > 512 || pipe(gate) < 0) return 2;
    for (int i = 0; i < n; i++) {
        pid_t pid = fork();
        if (pid < 0) { perror("fork"); return 2; }
        if (pid == 0) {
            char c;
            close(gate[1]);
            if (read(gate[0], &c, 1) != 0) _exit(2);  /* EOF: all released together */
            close(gate[0]);
            execl("/proc/self/exe", "probe", "alloc", mb, (char *)NULL);
            _exit(127);
        }
    }
    close(gate[0]);
    close(gate[1]);
    int bad = 0, st;
    while (wait(&st) > 0) bad += !(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    printf("burst %d bad %d\n", n, bad);
    return bad;
}

/* Maps and touches MB MiB of anonymous memory and prints how much of this
 * process's memory is mapped by huge-page (PMD) entries: shmem under the
 * shim, anonymous natively. */
static int hugepmd(size_t mb, int ask)
{
    size_t len = mb << 20;
    char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) { perror("mmap"); return 1; }
    /* "ask": as JVMs and jemalloc's thp:always do, MADV_HUGEPAGE first. */
    if (ask && madvise(p, len, MADV_HUGEPAGE) < 0) { perror("madvise"); return 1; }
    for (size_t i = 0; i < len; i += 4096) p[i] = 1;
    FILE *f = fopen("/proc/self/smaps_rollup", "r");
    if (!f) { perror("smaps_rollup"); return 1; }
    char line[256];
    long kb = 0, v;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "ShmemPmdMapped: %ld", &v) == 1 || sscanf(line, "FilePmdMapped: %ld", &v) == 1 ||
            sscanf(line, "AnonHugePages: %ld", &v) == 1)
            kb += v;
    fclose(f);
    printf("pmd_kb %ld\n", kb);
    munmap(p, len);
    return 0;
}

int main(int argc, char **argv)
{
    if ((argc == 3 || argc == 4) && !strcmp(argv[1], "hugepmd"))
        return hugepmd(strtoul(argv[2], NULL, 0), argc == 4 && !strcmp(argv[3], "ask"));
    if (argc >= 3 && !strcmp(argv[1], "unblock")) return unblock(argv + 2);
    if (argc == 4 && !strcmp(argv[1], "pieces")) return pieces(atol(argv[2]), strtoul(argv[3], NULL, 0));
    if (argc == 4 && !strcmp(argv[1], "burst")) return burst(atoi(argv[2]), argv[3]);
    if (argc == 3 && !strcmp(argv[1], "alloc")) return alloc(strtoul(argv[2], NULL, 0));
    if (argc == 5 && !strcmp(argv[1], "growstall")) return growstall(argv[2], argv[3], argv[4]);
    if (argc == 5 && !strcmp(argv[1], "hold")) return hold(strtoul(argv[2], NULL, 0), argv[3], argv[4]);
    fprintf(stderr, "usage: probe alloc MB | probe hold MB READY GO | probe hugepmd MB [ask] | probe burst N MB | probe pieces N KB | probe unblock CMD [ARGS...]\n");
    return 2;
}
