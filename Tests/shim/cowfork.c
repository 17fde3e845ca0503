/*
 * Private memory across fork, as the kernel keeps it: run natively and
 * under the shim (CowForkTests), the same answers are expected. Each check
 * prints "ok NAME" or "FAIL NAME: why"; the last line is "cowfork: ok"
 * only when all passed.
 *
 *   cowfork checks       every semantic check below
 *   cowfork resident MB  holds MB of touched memory, forks an idle child and
 *                        prints the bytes the mount's files hold meanwhile
 *                        ("mount-bytes N"; FBMM_MOUNT names the mount)
 *   cowfork orphan READY GO
 *                        forks an idle child over 32 MiB of memory, creates
 *                        READY, waits for GO (the test kills the daemon
 *                        meanwhile), then writes all of it: must not hang
 *                        ("parent writes ok")
 *   cowfork bench MB     fork-return time with MB resident and an idle
 *                        child, and the parent's cost per page written
 *                        while the child lives ("fork-ms", "write-us")
 *
 * (One program over 400 lines: its checks share the fork helpers and are
 * run natively and under the shim as one list.)
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096
static int failures;

static void report(const char *name, const char *why)
{
    if (why) { printf("FAIL %s: %s\n", name, why); failures++; }
    else printf("ok %s\n", name);
    fflush(stdout);
}

/* First page of [p, p+len) whose bytes are not all c, or -1. */
static long first_bad(const char *p, size_t len, char c)
{
    for (size_t i = 0; i < len; i++)
        if (p[i] != c) return (long)(i / PAGE);
    return -1;
}

static void wait_byte(int fd) { char c; while (read(fd, &c, 1) < 0 && errno == EINTR) {} }
static void send_byte(int fd) { if (write(fd, "x", 1) != 1) _exit(3); }

/* Runs `child` in a fork child; its exit status 0 is success. */
static int child_status(pid_t pid)
{
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {}
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static char *block(size_t len, char c)
{
    char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) { perror("mmap"); exit(2); }
    memset(p, c, len);
    return p;
}

/* Neither side sees the other's writes after fork, in either order. */
static void both_ways(void)
{
    size_t len = 32 << 20;
    char *p = block(len, 'a');
    int go[2], done[2];
    if (pipe(go) || pipe(done)) exit(2);
    pid_t pid = fork();
    if (pid == 0) {
        wait_byte(go[0]);                         /* the parent wrote 'b' everywhere */
        long bad = first_bad(p, len, 'a');
        memset(p, 'c', len / 2);
        send_byte(done[1]);
        _exit(bad < 0 && first_bad(p, len / 2, 'c') < 0 ? 0 : 1);
    }
    memset(p, 'b', len);
    send_byte(go[1]);
    wait_byte(done[0]);
    long bad = first_bad(p, len, 'b');
    int st = child_status(pid);
    report("both-ways", st ? "the child saw the parent's writes" : bad >= 0 ? "the parent saw the child's writes" : NULL);
    munmap(p, len);
}

/* The kernel writes into memory the child has not touched (read(2)). */
static void kernel_writes(void)
{
    size_t len = 8 << 20;
    char *p = block(len, 'k');
    int fds[2];
    if (pipe(fds)) exit(2);
    pid_t pid = fork();
    if (pid == 0) {
        if (write(fds[1], "hello", 5) != 5) _exit(2);
        char *q = p + 3 * PAGE + 100;
        if (read(fds[0], q, 5) != 5) _exit(3);   /* into a page never touched here */
        if (memcmp(q, "hello", 5) || q[-1] != 'k' || q[5] != 'k') _exit(4);
        _exit(first_bad(p + 4 * PAGE, len - 4 * PAGE, 'k') < 0 ? 0 : 5);
    }
    memset(p, 'P', len);  /* the parent changes everything meanwhile */
    int st = child_status(pid);
    report("kernel-writes", st ? "read(2) into the child's memory failed or showed wrong data" : NULL);
    munmap(p, len);
}

/* A grandchild keeps the child's view at its fork, the child the parent's. */
static void chain(void)
{
    size_t len = 16 << 20;
    char *p = block(len, '1');
    int go[2];
    if (pipe(go)) exit(2);
    pid_t pid = fork();
    if (pid == 0) {
        memset(p, '2', len / 2);                 /* half the child's own */
        int g2[2];
        if (pipe(g2)) _exit(2);
        pid_t g = fork();
        if (g == 0) {
            wait_byte(g2[0]);
            _exit(first_bad(p, len / 2, '2') < 0 && first_bad(p + len / 2, len / 2, '1') < 0 ? 0 : 1);
        }
        memset(p, '3', len);                     /* the child changes everything */
        send_byte(g2[1]);
        int gs = child_status(g);
        wait_byte(go[0]);
        _exit(gs ? 10 + gs : first_bad(p, len, '3') < 0 ? 0 : 2);
    }
    memset(p, '4', len);
    send_byte(go[1]);
    int st = child_status(pid);
    report("chain", st == 0 ? (first_bad(p, len, '4') < 0 ? NULL : "the parent lost its writes")
                            : st > 10 ? "the grandchild saw later writes" : "the child saw the parent's writes");
    munmap(p, len);
}

/* The parent frees and reuses memory the child still has. */
static void free_and_reuse(void)
{
    size_t len = 16 << 20;
    char *p = block(len, 'f');
    int go[2];
    if (pipe(go)) exit(2);
    pid_t pid = fork();
    if (pid == 0) {
        wait_byte(go[0]);
        _exit(first_bad(p, len, 'f') < 0 ? 0 : 1);
    }
    munmap(p, len);
    char *q = block(len, 'r');                   /* likely the same file range */
    madvise(q, len, MADV_DONTNEED);
    long zero = first_bad(q, len, 0);
    memset(q, 's', len);
    send_byte(go[1]);
    int st = child_status(pid);
    report("free-reuse", st ? "the child lost memory the parent freed" : zero >= 0 ? "MADV_DONTNEED did not zero" : NULL);
    munmap(q, len);
}

/* Memory the child frees reads zero when reused; the parent is untouched. */
static void child_frees(void)
{
    size_t len = 8 << 20;
    char *p = block(len, 'd');
    pid_t pid = fork();
    if (pid == 0) {
        madvise(p, len, MADV_DONTNEED);
        if (first_bad(p, len, 0) >= 0) _exit(1);
        memset(p, 'e', len);
        _exit(0);
    }
    int st = child_status(pid);
    report("child-frees", st ? "MADV_DONTNEED in the child did not read zero" :
                          first_bad(p, len, 'd') >= 0 ? "the child's writes reached the parent" : NULL);
    munmap(p, len);
}

/* Wipe-on-fork and don't-fork, as the kernel does them. */
static void fork_advice(void)
{
    size_t len = 4 << 20;
    char *w = block(len, 'w'), *d = block(len, 'x');
    if (madvise(w, len, MADV_WIPEONFORK) || madvise(d, len, MADV_DONTFORK)) { report("fork-advice", "madvise refused"); return; }
    pid_t pid = fork();
    if (pid == 0) {
        if (first_bad(w, len, 0) >= 0) _exit(1);
        unsigned char v;
        _exit(mincore(d, PAGE, &v) == 0 ? 2 : 0);  /* ENOMEM: not mapped here */
    }
    int st = child_status(pid);
    report("fork-advice", st == 1 ? "a wipe-on-fork region was not zero" : st == 2 ? "a don't-fork region was mapped" :
                          st ? "the child failed" : first_bad(w, len, 'w') >= 0 ? "the parent's region changed" : NULL);
    munmap(w, len);
    munmap(d, len);
}

/* Another thread writes all the while the main thread forks. */
static volatile int stop_writer;
static char *busy;
static size_t busy_len;
static void *writer(void *arg)
{
    (void)arg;
    for (unsigned round = 0; !__atomic_load_n(&stop_writer, __ATOMIC_RELAXED); round++)
        for (size_t i = 0; i < busy_len; i += PAGE) busy[i] = (char)('A' + round % 26);
    return NULL;
}
static void threads(void)
{
    busy_len = 16 << 20;
    busy = block(busy_len, 'A');
    pthread_t t;
    pthread_create(&t, NULL, writer, NULL);
    int bad = 0;
    for (int k = 0; k < 8 && !bad; k++) {
        pid_t pid = fork();
        if (pid == 0) {
            /* What the child sees must not change under it. */
            char first[(16 << 20) / PAGE];
            for (size_t i = 0; i < busy_len; i += PAGE) first[i / PAGE] = busy[i];
            usleep(20000);
            for (size_t i = 0; i < busy_len; i += PAGE) if (busy[i] != first[i / PAGE]) _exit(1);
            _exit(0);
        }
        bad = child_status(pid);
    }
    __atomic_store_n(&stop_writer, 1, __ATOMIC_RELAXED);
    pthread_join(t, NULL);
    report("threads", bad ? "a child's memory changed after fork" : NULL);
    munmap(busy, busy_len);
}

/* Memory moved by mremap after fork, in the parent and in the child: a
 * moved mapping is no longer watched by the userfaultfd that keeps the two
 * apart, so it must be settled before it moves. */
static void remap_after_fork(void)
{
    size_t len = 8 << 20;
    char *p = block(len, 'm');
    int go[2];
    if (pipe(go)) exit(2);
    pid_t pid = fork();
    if (pid == 0) {
        /* The child moves memory it has never touched: the parent's data. */
        char *q = mremap(p, len, 2 * len, MREMAP_MAYMOVE);
        if (q == MAP_FAILED) _exit(2);
        if (first_bad(q, len, 'm') >= 0) _exit(3);
        memset(q, 'c', len);
        wait_byte(go[0]);                        /* the parent moved and wrote */
        _exit(first_bad(q, len, 'c') < 0 ? 0 : 4);
    }
    /* Force a move: a new address of twice the size. */
    char *hold = mmap(NULL, 2 * len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    char *q = mremap(p, len, 2 * len, MREMAP_MAYMOVE | MREMAP_FIXED, hold);
    const char *why = q == MAP_FAILED ? "mremap failed" : NULL;
    if (!why) {
        if (first_bad(q, len, 'm') >= 0) why = "the parent's moved memory changed";
        memset(q, 'n', 2 * len);
    }
    send_byte(go[1]);
    int st = child_status(pid);
    report("remap", why ? why : st == 3 ? "the child's moved memory lost the parent's data" :
                    st == 4 ? "the child saw the parent's writes after both moved" : st ? "the child failed" : NULL);
    munmap(q == MAP_FAILED ? p : q, q == MAP_FAILED ? len : 2 * len);
}

/* Many children freeing and discarding what they share with the parent, all
 * at once, while the parent frees it too: every free asks the daemon first,
 * and none of those requests may be lost to its bound on requests in flight. */
static void many_children(void)
{
    enum { KIDS = 12, BLOCKS = 16 };
    size_t len = 1 << 20;
    char *b[BLOCKS];
    for (int i = 0; i < BLOCKS; i++) b[i] = block(len, (char)('a' + i));
    pid_t kids[KIDS];
    for (int k = 0; k < KIDS; k++) {
        kids[k] = fork();
        if (kids[k] == 0) {
            for (int i = 0; i < BLOCKS; i++) {
                if (first_bad(b[i], len, (char)('a' + i)) >= 0) _exit(1);
                if (i % 2) {
                    munmap(b[i], len);
                } else {
                    madvise(b[i], len, MADV_DONTNEED);
                    if (first_bad(b[i], len, 0) >= 0) _exit(2);
                    memset(b[i], 'z', len);
                }
            }
            _exit(0);
        }
    }
    for (int i = 0; i < BLOCKS; i++) {
        if (i % 2) memset(b[i], 'P', len);
        else munmap(b[i], len);
    }
    int bad = 0;
    for (int k = 0; k < KIDS; k++) {
        int st = child_status(kids[k]);
        if (st && !bad) bad = st;
    }
    int parent_bad = 0;
    for (int i = 1; i < BLOCKS; i += 2) {
        parent_bad |= first_bad(b[i], len, 'P') >= 0;
        munmap(b[i], len);
    }
    report("many-children", bad == 1 ? "a child lost the parent's data" : bad == 2 ? "MADV_DONTNEED in a child did not zero" :
                            bad ? "a child failed" : parent_bad ? "the parent lost its writes" : NULL);
}

/* fork + exec, many times: nothing is left behind. */
static void exec_children(void)
{
    size_t len = 8 << 20;
    char *p = block(len, 'z');
    int bad = 0;
    for (int k = 0; k < 20 && !bad; k++) {
        pid_t pid = fork();
        if (pid == 0) { execl("/bin/true", "true", (char *)NULL); _exit(127); }
        bad = child_status(pid);
        memset(p, 'a' + k, len);
    }
    report("exec", bad ? "an exec'd child failed" : first_bad(p, len, 'a' + 19) >= 0 ? "the parent's memory changed" : NULL);
    munmap(p, len);
}

static uint64_t mount_bytes(void)
{
    const char *m = getenv("FBMM_MOUNT");
    if (!m || !*m) return 0;
    DIR *d = opendir(m);
    if (!d) return 0;
    uint64_t sum = 0;
    struct dirent *e;
    /* Each file's resident bytes per node: "0:4096 1:8192". */
    while ((e = readdir(d))) {
        char path[4096], nodes[1024];
        if (e->d_name[0] == '.') continue;
        snprintf(path, sizeof path, "%s/%s", m, e->d_name);
        ssize_t n = getxattr(path, "user.fbmm.nodes", nodes, sizeof nodes - 1);
        if (n <= 0) continue;
        nodes[n] = 0;
        for (char *c = nodes; (c = strchr(c, ':')); c++) sum += strtoull(c + 1, NULL, 10);
    }
    closedir(d);
    return sum;
}

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "checks";
    if (!strcmp(mode, "checks")) {
        both_ways();
        kernel_writes();
        chain();
        free_and_reuse();
        child_frees();
        fork_advice();
        threads();
        exec_children();
        remap_after_fork();
        many_children();
        printf("cowfork: %s\n", failures ? "FAILED" : "ok");
        return failures != 0;
    }
    if (!strcmp(mode, "orphan") && argc > 3) {
        size_t len = 32 << 20;
        char *p = block(len, 'o');
        int go[2];
        if (pipe(go)) return 2;
        pid_t pid = fork();
        if (pid == 0) { wait_byte(go[0]); _exit(0); }  /* touches nothing: its memory went with the daemon */
        FILE *f = fopen(argv[2], "w");
        if (f) fclose(f);
        struct stat st;
        while (stat(argv[3], &st) < 0) usleep(10000);
        memset(p, 'p', len);
        printf("parent writes %s\n", first_bad(p, len, 'p') < 0 ? "ok" : "lost");
        fflush(stdout);
        send_byte(go[1]);
        return child_status(pid);
    }
    size_t len = (size_t)(argc > 2 ? atol(argv[2]) : 256) << 20;
    char *p = block(len, 'm');
    int go[2];
    if (pipe(go)) return 2;
    double t0 = now();
    pid_t pid = fork();
    if (pid == 0) { wait_byte(go[0]); _exit(0); }
    double fork_ms = (now() - t0) * 1e3;
    if (!strcmp(mode, "resident")) {
        usleep(100000);
        printf("fork-ms %.3f\nmount-bytes %llu\n", fork_ms, (unsigned long long)mount_bytes());
    } else {
        t0 = now();
        for (size_t i = 0; i < len; i += PAGE) p[i] = 'n';
        printf("fork-ms %.3f\nwrite-us %.3f\n", fork_ms, (now() - t0) * 1e6 / (double)(len / PAGE));
    }
    send_byte(go[1]);
    return child_status(pid);
}
