/*
 * hostile: what a hostile local user would run against an fbmm mount (issue
 * 13), for Tests/IntegrationTests/TrustTests.swift. Every subcommand prints
 * what it saw; the test judges.
 *
 *   hostile poolctl max|random|fuzz [--seed S] [--rounds N] READY GO
 *       Under the shim (FBMM_MIN_SIZE=4K): enrols in the pre-zeroed pool
 *       with small anonymous mmaps, finds its own arena memfd in
 *       /proc/self/fd (the /memfd: link whose offset 0 holds the pool magic),
 *       maps the control block (struct fbmm_pool_ctl) MAP_SHARED and
 *       overwrites it: `max` writes UINT64_MAX into every field (0xff over
 *       the whole block), `random` random bytes, `fuzz` N rounds of assorted
 *       garbage (edge values in the header, random bitmaps, zeroes, sparse
 *       random bytes) while it keeps mapping and freeing small blocks. Then
 *       writes its pid to READY and waits (up to 60 s, rewriting the garbage
 *       every 50 ms) for GO to exist; prints "poolctl: done" and exits 0.
 *
 *   hostile shrink MS
 *       Under the shim: enrols in the pool, truncates its own arena to 0
 *       under the daemon's pool mappings, waits MS ms ("shrink: done").
 *
 *   hostile grow MB
 *       Under the shim: grows its arena's backing by MB MiB through its own
 *       descriptor (ftruncate + fallocate), past the daemon's accounting.
 *
 *   hostile threadalloc READY
 *       Its first large allocation (malloc 8 MiB, memset) happens on a new
 *       thread; writes "PID TID" to READY and sleeps until killed (120 s).
 *
 *   hostile victim
 *       (started by pidreuse) under the shim: mallocs 8 MiB filled with
 *       "VICTIM-SECRET-...", writes its arena file's inode to fd 3, sleeps.
 *
 *   hostile pidreuse MOUNT SHIM UID_A GID_A UID_B GID_B [ATTEMPTS]
 *       As root. An attacker process (uid A) forks a child that connects two
 *       sockets to MOUNT's broker and exits; the attacker keeps the sockets.
 *       Root then writes ns_last_pid so that a victim (uid B, under SHIM,
 *       holding its arena open) gets the child's pid, and the attacker sends
 *       GET_BACKING for the victim's inode on the kept sockets: once with no
 *       fd attached, once with its own unrelated fd (a file of its own in the
 *       mount, opened O_RDWR), and once as a version-1 request naming the
 *       victim's fd by number (the attack on the old broker, which trusted
 *       the peer's pid). Prints "PASS ..."/"FAIL ..." lines; exit 0 only if
 *       all were refused with no fd, 1 if anything was handed out, 4 if the
 *       victim never got the pid.
 *
 *   hostile ask OP [--mount M | --sock PATH] [--open PATH [--access r|w|rw]]
 *               [--no-attach] [--attach PATH] [--ino N] [--flags N] [--node N]
 *               [--offset N] [--length N] [--dump] [--write TEXT]
 *               [--v1]
 *       One broker request (OP: get_backing, stat, migrate, pool or a
 *       number). --open opens PATH (default access rw) and attaches that fd,
 *       naming its inode, unless --no-attach; --attach attaches PATH (opened
 *       read-write, or read-only if that fails) instead. Prints
 *       "reply status=N (NAME) size=N fd=none|TARGET"; with --dump and an fd,
 *       then "data:" and up to 1 MiB of it from offset 0; with --write, writes
 *       TEXT at offset 0 of the fd it got and prints "wrote N". --v1 sends
 *       the request as protocol version 1 did (the --open fd by number in
 *       the message, nothing attached: the attack surface of the old broker,
 *       which must now be refused; a version-1 reply is then well-formed
 *       too). --then-close closes the --open fd as soon as the reply came;
 *       --fill MB then truncates the fd it got to MB MiB and writes every
 *       page through a shared mapping of it; --ready R --hold G create R and
 *       wait (up to 60 s) for G to exist before exiting, the fd it got
 *       still open and mapped (a program keeping a backing file after
 *       closing its handle in the mount). Exit 0 when a well-formed reply
 *       came, 2 otherwise.
 *
 * (One program over 400 lines: every attack in one binary, so that the
 * tests run the same build of each as an unprivileged user.)
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>
#include "rawfd.h"

#include "../../Sources/CFBMMSys/include/fbmm_broker.h"
#include "../../Sources/CFBMMSys/include/fbmm_pool.h"

extern char **environ;

static const char secret_pattern[] = "VICTIM-SECRET-";

/* ---- small helpers ------------------------------------------------------ */

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static uint64_t rnd(void)
{
    uint64_t x = rng_state;
    x ^= x >> 12; x ^= x << 25; x ^= x >> 27;
    rng_state = x;
    return x * 0x2545F4914F6CDD1DULL;
}

static void msleep(long ms)
{
    struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) { }
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static int write_file_atomic(const char *path, const char *text)
{
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f) { perror(tmp); return -1; }
    fputs(text, f);
    if (fclose(f) != 0) { perror(tmp); return -1; }
    if (rename(tmp, path) != 0) { perror(path); return -1; }
    return 0;
}

/* mmap without the shim seeing it (the shim interposes libc's mmap). */
static void *raw_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    long r = syscall(SYS_mmap, addr, len, prot, flags, fd, off);
    return r < 0 && r > -4096 ? MAP_FAILED : (void *)r;
}

static const char *errname(int e)
{
    if (e == 0) return "OK";
    const char *n = strerrorname_np(e);
    return n ? n : "?";
}

static void fd_target(int fd, char *buf, size_t n)
{
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t k = readlink(link, buf, n - 1);
    if (k < 0) k = 0;
    buf[k] = 0;
}

/* ---- broker exchanges --------------------------------------------------- */

/* Version 1 of the request (before ownership by possession). */
struct fbmm_request_v1 {
    uint16_t magic, version;
    uint32_t op;
    int32_t  fd;
    int32_t  node;
    uint64_t ino, offset, length;
};
_Static_assert(sizeof(struct fbmm_request_v1) == 40, "v1 request is 40 bytes");

/* `ask --v1`: a version-1 broker answers version 1. */
static int accept_v1_reply;

struct reply_info {
    ssize_t len;         /* bytes of the reply message, -1: none */
    int     err;         /* transport errno */
    int     status;
    uint64_t size;
    int     nfds;
    int     fds[8];
    int     well_formed; /* 16 bytes, right magic and version, status >= 0, <= 1 fd, no fd with a refusal */
};

static int broker_socket(void)
{
    int s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (s < 0) return -1;
    struct timeval tv = { .tv_sec = 10 };
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    return s;
}

static int broker_connect(int s, const char *path)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    if (strlen(path) >= sizeof sa.sun_path) { errno = ENAMETOOLONG; return -1; }
    strcpy(sa.sun_path, path);
    return connect(s, (struct sockaddr *)&sa, sizeof sa);
}

/* Sends `msg` with `nfds` fds attached on connected socket `s`, receives the reply. */
static void exchange(int s, const void *msg, size_t len, const int *fds, int nfds, struct reply_info *r)
{
    memset(r, 0, sizeof *r);
    r->len = -1;
    struct iovec iov = { .iov_base = (void *)msg, .iov_len = len };
    union { struct cmsghdr h; char buf[CMSG_SPACE(8 * sizeof(int))]; } c;
    memset(&c, 0, sizeof c);
    struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1 };
    if (nfds > 0) {
        m.msg_control = c.buf;
        m.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
        struct cmsghdr *h = CMSG_FIRSTHDR(&m);
        h->cmsg_level = SOL_SOCKET;
        h->cmsg_type = SCM_RIGHTS;
        h->cmsg_len = CMSG_LEN(nfds * sizeof(int));
        memcpy(CMSG_DATA(h), fds, nfds * sizeof(int));
    }
    if (sendmsg(s, &m, MSG_NOSIGNAL) < 0) { r->err = errno; return; }

    struct fbmm_reply rep;
    char buf[64];
    struct iovec riov = { .iov_base = buf, .iov_len = sizeof buf };
    memset(&c, 0, sizeof c);
    struct msghdr rm = { .msg_iov = &riov, .msg_iovlen = 1, .msg_control = c.buf, .msg_controllen = sizeof c.buf };
    ssize_t n = recvmsg(s, &rm, MSG_CMSG_CLOEXEC);
    if (n < 0) { r->err = errno; return; }
    r->len = n;
    for (struct cmsghdr *h = CMSG_FIRSTHDR(&rm); h; h = CMSG_NXTHDR(&rm, h)) {
        if (h->cmsg_level != SOL_SOCKET || h->cmsg_type != SCM_RIGHTS) continue;
        int k = (int)((h->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        for (int i = 0; i < k && r->nfds < 8; i++) memcpy(&r->fds[r->nfds++], CMSG_DATA(h) + i * sizeof(int), sizeof(int));
    }
    if (n != (ssize_t)sizeof rep) return;
    memcpy(&rep, buf, sizeof rep);
    r->status = rep.status;
    r->size = rep.size;
    r->well_formed = rep.magic == FBMM_BROKER_MAGIC && (rep.version == FBMM_BROKER_VERSION || (accept_v1_reply && rep.version == 1)) &&
                     rep.status >= 0 && r->nfds <= 1 && !(rep.status != 0 && r->nfds);
}

static void request_init(struct fbmm_request *q, uint32_t op, uint32_t flags, uint64_t ino)
{
    memset(q, 0, sizeof *q);
    q->magic = FBMM_BROKER_MAGIC;
    q->version = FBMM_BROKER_VERSION;
    q->op = op;
    q->flags = flags;
    q->ino = ino;
}

static int mount_broker(const char *mount, char *out, size_t n)
{
    ssize_t k = getxattr(mount, FBMM_XATTR_BROKER, out, n - 1);
    if (k <= 0) return -1;
    out[k] = 0;
    return 0;
}

/* ---- poolctl ------------------------------------------------------------- */

#define CHURN_SLOTS 16
static void *churn_p[CHURN_SLOTS];
static size_t churn_len[CHURN_SLOTS];

/* Maps and frees small anonymous blocks (the shim takes them from the pool
 * and hands them back dirty, which wakes the daemon's zeroing thread). */
static void churn(int n)
{
    long page = sysconf(_SC_PAGESIZE);
    for (int i = 0; i < n; i++) {
        int k = (int)(rnd() % CHURN_SLOTS);
        if (churn_p[k]) {
            if (rnd() % 4 == 0) madvise(churn_p[k], churn_len[k], MADV_DONTNEED);
            munmap(churn_p[k], churn_len[k]);
            churn_p[k] = NULL;
        } else {
            size_t len = (size_t)(1 + rnd() % 64) * (size_t)page;
            void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (p == MAP_FAILED) continue;
            memset(p, (int)(rnd() & 0xff), len);
            churn_p[k] = p;
            churn_len[k] = len;
        }
    }
}

/* Our arena's backing: the /memfd: link whose offset 0 holds the pool magic. */
static int find_pool_memfd(int *memfds)
{
    int fds[4096], nfd = raw_self_fds(fds, 4096);
    if (nfd < 0) return -1;
    int found = -1;
    *memfds = 0;
    for (int i = 0; i < nfd; i++) {
        int fd = fds[i];
        char target[PATH_MAX];
        fd_target(fd, target, sizeof target);
        /* The daemon backs files with memfds or files of its private tmpfs. */
        if (strncmp(target, "/memfd:", 7) && strncmp(target, "/fbmm-backing.", 14)) continue;
        ++*memfds;
        uint64_t magic = 0;
        if (pread(fd, &magic, sizeof magic, 0) == (ssize_t)sizeof magic && magic == FBMM_POOL_MAGIC) found = fd;
    }
    return found;
}

static const uint64_t edge[] = {
    0, 1, 2, 63, 64, 4095, 4096, 4097, 1ull << 17, (1ull << 17) + 1, 1ull << 21, (1ull << 21) - 1,
    1ull << 31, 1ull << 32, 1ull << 40, 1ull << 62, 1ull << 63, INT64_MAX, UINT64_MAX - 4095, UINT64_MAX - 1, UINT64_MAX,
};
#define NEDGE (sizeof edge / sizeof edge[0])

static uint64_t edge_value(void) { return rnd() % 4 == 0 ? rnd() : edge[rnd() % NEDGE]; }

static void garbage(struct fbmm_pool_ctl *ctl, int kind)
{
    unsigned char *b = (unsigned char *)ctl;
    switch (kind) {
    case 0:  /* UINT64_MAX everywhere */
        memset(b, 0xff, FBMM_POOL_CTL_BYTES);
        break;
    case 1:  /* random bytes everywhere */
        for (size_t i = 0; i < FBMM_POOL_CTL_BYTES / 8; i++) ((uint64_t *)b)[i] = rnd();
        break;
    case 2:  /* edge values in every header field */
        ctl->magic = rnd() % 2 ? FBMM_POOL_MAGIC : edge_value();
        ctl->window_pages = edge_value();
        ctl->page_size = edge_value();
        ctl->window_offset = edge_value();
        ctl->sleeping = (uint32_t)edge_value();
        ctl->pad0 = (uint32_t)rnd();
        ctl->handed_pages = edge_value();
        ctl->returned_pages = edge_value();
        ctl->misses = edge_value();
        ctl->kicks = edge_value();
        break;
    case 3:  /* counters at their maximum */
        ctl->handed_pages = ctl->returned_pages = ctl->misses = ctl->kicks = UINT64_MAX;
        break;
    case 4:  /* bitmaps all ones */
        memset(ctl->clean, 0xff, sizeof ctl->clean);
        memset(ctl->dirty, 0xff, sizeof ctl->dirty);
        memset(ctl->busy, 0xff, sizeof ctl->busy);
        break;
    case 5:  /* random bitmaps */
        for (size_t i = 0; i < FBMM_POOL_WORDS; i++) {
            ctl->clean[i] = rnd();
            ctl->dirty[i] = rnd();
            ctl->busy[i] = rnd();
        }
        break;
    case 6:  /* zeroes */
        memset(b, 0, FBMM_POOL_CTL_BYTES);
        break;
    default: /* sparse random bytes */
        for (int i = 0; i < 256; i++) b[rnd() % FBMM_POOL_CTL_BYTES] = (unsigned char)rnd();
        break;
    }
}

static int poolctl(const char *mode, uint64_t seed, int rounds, const char *ready, const char *go)
{
    rng_state ^= seed * 0x9E3779B97F4A7C15ull + 1;
    /* Enrol: mappings under 2 MiB take from the pool. */
    churn(40);
    int memfds = 0;
    int fd = find_pool_memfd(&memfds);
    if (fd < 0) {
        printf("FAIL poolctl: no enrolled arena memfd in /proc/self/fd (%d memfd(s)); is the shim loaded, FBMM_MIN_SIZE small, the pool on?\n", memfds);
        return 1;
    }
    struct fbmm_pool_ctl *ctl = raw_mmap(NULL, FBMM_POOL_CTL_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (ctl == MAP_FAILED) { printf("FAIL poolctl: mmap of the control block: %s\n", errname(errno)); return 1; }
    printf("poolctl: enrolled, memfd %d, window %llu pages at %llu\n", fd,
           (unsigned long long)ctl->window_pages, (unsigned long long)ctl->window_offset);
    fflush(stdout);
    int kind = !strcmp(mode, "max") ? 0 : !strcmp(mode, "random") ? 1 : -1;
    if (kind >= 0) {
        garbage(ctl, kind);
        churn(100);
        msleep(300);  /* the daemon's zeroing pass reads the block */
        garbage(ctl, kind);
        churn(100);
    } else {
        for (int r = 0; r < rounds; r++) {
            int k = (int)(rnd() % 8);
            garbage(ctl, k);
            churn(20);
            msleep(5 + (long)(rnd() % 25));
        }
    }
    printf("poolctl: wrote garbage (%s, %d rounds)\n", mode, kind >= 0 ? 2 : rounds);
    fflush(stdout);
    char pid[32];
    snprintf(pid, sizeof pid, "%d\n", (int)getpid());
    if (write_file_atomic(ready, pid) < 0) return 1;
    /* While the test runs `fbmm stat`, keep the block garbage. */
    for (int i = 0; i < 1200 && access(go, F_OK) != 0; i++) {
        garbage(ctl, kind >= 0 ? kind : (int)(rnd() % 8));
        if (i % 4 == 0) churn(4);
        msleep(50);
    }
    /* Exit with the block as bad as it gets: retirement reads it too. */
    garbage(ctl, kind >= 0 ? kind : 0);
    printf("poolctl: done\n");
    fflush(stdout);
    return 0;
}

/* ---- shrink / grow: what a program can do with its own backing fd ---------- */

/* Under the shim: enrols in the pool (its freed pages left for the daemon to
 * zero), then truncates its own arena to 0 under the daemon's lasting pool
 * mappings, and waits `ms` without touching that memory again. A sealed
 * memfd refuses (EPERM); a tmpfs file shrinks, and the daemon must survive
 * its next touch of the window. */
static int shrink(long ms)
{
    churn(40);
    int memfds = 0;
    int fd = find_pool_memfd(&memfds);
    if (fd < 0) { printf("FAIL shrink: no enrolled arena (%d backing file(s))\n", memfds); return 1; }
    fflush(stdout);
    /* From here on nothing that may touch the arena (the shim's pool
     * control block is in it): raw writes, no stdio, no malloc. */
    int r = ftruncate(fd, 0);
    const char *said = r == 0 ? "shrink: ftruncate ok\n" : "shrink: ftruncate refused\n";
    if (write(1, said, strlen(said)) < 0) _exit(2);
    struct timespec t = { ms / 1000, (ms % 1000) * 1000000 };
    while (nanosleep(&t, &t) < 0 && errno == EINTR) {}
    if (write(1, "shrink: done\n", 13) < 0) _exit(2);
    _exit(0);
}

/* Under the shim: grows its own arena's backing through the descriptor it
 * holds, past the mount's capacity (ftruncate, then fallocate of `mb` MiB),
 * bypassing the daemon's accounting; prints what the kernel said. */
static int grow(long mb)
{
    char *p = malloc(8u << 20);  /* an arena */
    if (!p) { printf("FAIL grow: malloc\n"); return 1; }
    memset(p, 1, 8u << 20);
    int memfds = 0;
    find_pool_memfd(&memfds);
    int fd = -1, fds[4096], nfd = raw_self_fds(fds, 4096);
    for (int i = 0; i < nfd; i++) {
        char target[PATH_MAX];
        fd_target(fds[i], target, sizeof target);
        if (!strncmp(target, "/memfd:", 7) || !strncmp(target, "/fbmm-backing.", 14)) fd = fds[i];
    }
    if (fd < 0) { printf("FAIL grow: no backing file in /proc/self/fd\n"); return 1; }
    off_t size = (off_t)mb << 20;
    int t = ftruncate(fd, size + (64 << 20));
    int f = fallocate(fd, 0, 64 << 20, size);
    printf("grow: ftruncate %s, fallocate %s\n", t == 0 ? "ok" : errname(errno), f == 0 ? "ok" : errname(errno));
    return 0;
}

/* ---- threadalloc ----------------------------------------------------------- */

static const char *thread_ready;

static void *alloc_thread(void *arg)
{
    (void)arg;
    size_t len = 8u << 20;
    char *p = malloc(len);
    if (!p) { printf("FAIL threadalloc: malloc\n"); fflush(stdout); return NULL; }
    memset(p, 0x5a, len);
    char text[64];
    snprintf(text, sizeof text, "%d %d\n", (int)getpid(), (int)gettid());
    write_file_atomic(thread_ready, text);
    return p;
}

static int threadalloc(const char *ready)
{
    thread_ready = ready;
    pthread_t t;
    if (pthread_create(&t, NULL, alloc_thread, NULL) != 0) { printf("FAIL threadalloc: pthread_create\n"); return 1; }
    void *p = NULL;
    pthread_join(t, &p);
    printf("threadalloc: pid %d, allocated on another thread: %s\n", (int)getpid(), p ? "yes" : "no");
    fflush(stdout);
    for (int i = 0; i < 120; i++) sleep(1);
    return 0;
}

/* ---- pidreuse ---------------------------------------------------------------- */

/* The mount file among our fds (our arena), or -1. */
static int find_mount_fd(const char *mount)
{
    int fds[4096], nfd = raw_self_fds(fds, 4096);
    if (nfd < 0) return -1;
    size_t m = strlen(mount);
    int found = -1;
    for (int i = 0; i < nfd; i++) {
        char target[PATH_MAX];
        fd_target(fds[i], target, sizeof target);
        if (!strncmp(target, mount, m) && target[m] == '/') found = fds[i];
    }
    return found;
}

static int victim(void)
{
    const char *mount = getenv("FBMM_MOUNT");
    size_t len = 8u << 20;
    char *p = malloc(len);
    uint64_t ino = 0;
    if (p && mount) {
        for (size_t i = 0; i + sizeof secret_pattern - 1 <= len; i += sizeof secret_pattern - 1)
            memcpy(p + i, secret_pattern, sizeof secret_pattern - 1);
        int fd = find_mount_fd(mount);
        struct stat st;
        if (fd >= 0 && raw_fstat(fd, &st) == 0) ino = (uint64_t)st.st_ino;
    }
    if (write(3, &ino, sizeof ino) != (ssize_t)sizeof ino) return 1;
    close(3);
    for (;;) pause();
}

/* Does the fd's file hold the victim's pattern anywhere in its first 256 MiB? */
static int holds_secret(int fd)
{
    static char buf[1 << 20];
    for (off_t off = 0; off < (256 << 20); off += sizeof buf) {
        ssize_t n = pread(fd, buf, sizeof buf, off);
        if (n <= 0) break;
        if (memmem(buf, (size_t)n, secret_pattern, sizeof secret_pattern - 1)) return 1;
    }
    return 0;
}

static int drop_to(uid_t uid, gid_t gid)
{
    if (setgroups(0, NULL) != 0 || setresgid(gid, gid, gid) != 0 || setresuid(uid, uid, uid) != 0) return -1;
    return getuid() == uid && geteuid() == uid ? 0 : -1;
}

/* The attacks on the kept sockets: v2 GET_BACKING with no fd, v2 with the
 * attacker's own unrelated fd, and the version-1 request that pid reuse
 * defeated (naming the victim's fd by number: the shim puts its arena's FUSE
 * fd at 700). */
#define NATTACKS 3
#define VICTIM_FD_GUESS 700


/* What the attacker reports back to root. */
struct attack_result {
    int  setup_errno;       /* nonzero: the attack could not be mounted */
    char setup_what[160];
    double send_delay;      /* seconds between connect and the requests */
    int  status[NATTACKS];
    int  well_formed[NATTACKS];
    int  nfds[NATTACKS];
    int  stolen[NATTACKS];  /* an fd came back holding the victim's secret */
    char target[NATTACKS][128];
};

static int read_full(int fd, void *buf, size_t n, int timeout_ms)
{
    struct pollfd p = { .fd = fd, .events = POLLIN };
    if (poll(&p, 1, timeout_ms) <= 0) return -1;
    return read(fd, buf, n) == (ssize_t)n ? 0 : -1;
}

static int attacker(int ctl, const char *sock, const char *mount)
{
    struct attack_result res;
    memset(&res, 0, sizeof res);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    char own[PATH_MAX];
    snprintf(own, sizeof own, "%s/pidreuse-attacker.%d", mount, (int)getpid());
    int ownfd = open(own, O_CREAT | O_RDWR | O_CLOEXEC, 0600);
    int s[NATTACKS] = { broker_socket(), broker_socket(), broker_socket() };
    pid_t child = -1;
    if (ownfd < 0) { res.setup_errno = errno; snprintf(res.setup_what, sizeof res.setup_what, "open own file"); }
    else if (ftruncate(ownfd, 1 << 20) != 0) { res.setup_errno = errno; snprintf(res.setup_what, sizeof res.setup_what, "ftruncate own file"); }
    else if (s[0] < 0 || s[1] < 0 || s[2] < 0) { res.setup_errno = errno; snprintf(res.setup_what, sizeof res.setup_what, "socket"); }
    double connected = 0;
    if (!res.setup_errno) {
        connected = now_s();
        child = fork();
        if (child == 0) {
            for (int k = 0; k < NATTACKS; k++)
                if (broker_connect(s[k], sock) != 0) _exit(1);
            _exit(0);
        }
        int st = 0;
        if (child < 0 || waitpid(child, &st, 0) != child || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            res.setup_errno = child < 0 ? errno : ECONNREFUSED;
            snprintf(res.setup_what, sizeof res.setup_what, "connect a child to the broker");
            child = -1;
        }
    }
    if (write(ctl, &child, sizeof child) != (ssize_t)sizeof child) _exit(5);
    uint64_t ino = 0;
    if (child > 0 && read_full(ctl, &ino, sizeof ino, 5000) == 0 && ino != 0) {
        res.send_delay = now_s() - connected;
        for (int k = 0; k < NATTACKS; k++) {
            struct fbmm_request q;
            request_init(&q, FBMM_OP_GET_BACKING, 0, ino);
            struct fbmm_request_v1 old = {
                .magic = FBMM_BROKER_MAGIC, .version = 1, .op = FBMM_OP_GET_BACKING, .fd = VICTIM_FD_GUESS, .ino = ino,
            };
            struct reply_info r;
            accept_v1_reply = k == 2;  /* an old broker answers version 1 */
            if (k == 2) exchange(s[k], &old, sizeof old, NULL, 0, &r);
            else exchange(s[k], &q, sizeof q, k ? &ownfd : NULL, k ? 1 : 0, &r);
            res.status[k] = r.len < 0 ? -r.err : r.status;
            res.well_formed[k] = r.well_formed;
            res.nfds[k] = r.nfds;
            for (int i = 0; i < r.nfds; i++) {
                res.stolen[k] = holds_secret(r.fds[i]);
                fd_target(r.fds[i], res.target[k], sizeof res.target[k]);
                close(r.fds[i]);
            }
        }
    }
    if (ownfd >= 0) { close(ownfd); unlink(own); }
    if (write(ctl, &res, sizeof res) != (ssize_t)sizeof res) _exit(5);
    _exit(0);
}

static int pidreuse(const char *mount, const char *shim, uid_t ua, gid_t ga, uid_t ub, gid_t gb, int attempts)
{
    char sock[PATH_MAX];
    if (mount_broker(mount, sock, sizeof sock) < 0) { printf("FAIL pidreuse: %s has no %s\n", mount, FBMM_XATTR_BROKER); return 2; }
    char self[PATH_MAX];
    ssize_t sl = readlink("/proc/self/exe", self, sizeof self - 1);
    if (sl <= 0) { printf("FAIL pidreuse: /proc/self/exe\n"); return 2; }
    self[sl] = 0;
    for (int attempt = 1; attempt <= attempts; attempt++) {
        int sp[2];
        if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sp) != 0) { perror("socketpair"); return 2; }
        pid_t a = fork();
        if (a == 0) {
            close(sp[0]);
            if (drop_to(ua, ga) != 0) _exit(6);
            attacker(sp[1], sock, mount);
            _exit(5);
        }
        close(sp[1]);
        pid_t want = -1;
        if (a < 0 || read_full(sp[0], &want, sizeof want, 5000) < 0 || want <= 1) {
            printf("attempt %d: the attacker did not report a child pid\n", attempt);
            struct attack_result res;
            if (a > 0 && read_full(sp[0], &res, sizeof res, 2000) == 0 && res.setup_errno)
                printf("FAIL pidreuse: the attacker could not %s: %s\n", res.setup_what, errname(res.setup_errno));
            if (a > 0) { kill(a, SIGKILL); waitpid(a, NULL, 0); }
            close(sp[0]);
            return 2;
        }
        int vp[2];
        if (pipe2(vp, O_CLOEXEC) != 0) { perror("pipe2"); return 2; }
        /* The victim must get `want`: the pid the broker saw connecting. */
        int nl = open("/proc/sys/kernel/ns_last_pid", O_WRONLY | O_CLOEXEC);
        char num[32];
        int k = snprintf(num, sizeof num, "%d", (int)want - 1);
        if (nl < 0 || write(nl, num, (size_t)k) != k) {
            printf("FAIL pidreuse: cannot write /proc/sys/kernel/ns_last_pid: %s\n", errname(errno));
            return 2;
        }
        close(nl);
        pid_t v = fork();
        if (v == 0) {
            dup2(vp[1], 3);
            if (drop_to(ub, gb) != 0) _exit(6);
            setenv("LD_PRELOAD", shim, 1);
            setenv("FBMM_MOUNT", mount, 1);
            execl(self, "hostile", "victim", (char *)NULL);
            _exit(127);
        }
        close(vp[1]);
        uint64_t ino = 0, zero = 0;
        if (v != want) {
            printf("attempt %d: the victim got pid %d, not %d; again\n", attempt, (int)v, (int)want);
            if (v > 0) { kill(v, SIGKILL); waitpid(v, NULL, 0); }
            if (write(sp[0], &zero, sizeof zero) < 0) { }
            kill(a, SIGKILL);
            waitpid(a, NULL, 0);
            close(sp[0]);
            close(vp[0]);
            continue;
        }
        if (read_full(vp[0], &ino, sizeof ino, 3000) < 0 || ino == 0) {
            printf("FAIL pidreuse: the victim (pid %d, uid %u, under the shim) has no arena file in %s\n", (int)v, (unsigned)ub, mount);
            kill(v, SIGKILL); waitpid(v, NULL, 0);
            kill(a, SIGKILL); waitpid(a, NULL, 0);
            return 2;
        }
        close(vp[0]);
        printf("attempt %d: victim pid %d (uid %u) == the attacker's child pid %d; victim's arena inode %llu\n",
               attempt, (int)v, (unsigned)ub, (int)want, (unsigned long long)ino);
        if (write(sp[0], &ino, sizeof ino) != (ssize_t)sizeof ino) return 2;
        struct attack_result res;
        int got = read_full(sp[0], &res, sizeof res, 10000);
        kill(v, SIGKILL);
        waitpid(v, NULL, 0);
        waitpid(a, NULL, 0);
        close(sp[0]);
        if (got < 0) { printf("FAIL pidreuse: no result from the attacker\n"); return 2; }
        if (res.setup_errno) { printf("FAIL pidreuse: the attacker could not %s: %s\n", res.setup_what, errname(res.setup_errno)); return 2; }
        if (res.send_delay > 1.8 || res.status[0] == ETIMEDOUT || res.status[1] == ETIMEDOUT || res.status[2] == ETIMEDOUT) {
            printf("attempt %d: too slow (%.2f s after connect; the broker drops silent peers after 2 s); again\n", attempt, res.send_delay);
            continue;
        }
        printf("requests sent %.3f s after the child connected\n", res.send_delay);
        int bad = 0;
        const char *what[NATTACKS] = { "no fd attached", "the attacker's own unrelated fd attached",
                                       "a version-1 request naming the victim's fd 700" };
        for (int i = 0; i < NATTACKS; i++) {
            int ok = res.well_formed[i] && res.status[i] > 0 && res.nfds[i] == 0;
            printf("%s pid reuse, GET_BACKING of the victim's inode with %s: status %d (%s), %d fd(s)%s%s%s\n",
                   ok ? "PASS" : "FAIL", what[i], res.status[i], res.status[i] >= 0 ? errname(res.status[i]) : "transport error",
                   res.nfds[i], res.nfds[i] ? " -> " : "", res.target[i], res.stolen[i] ? " HOLDING THE VICTIM'S SECRET" : "");
            bad += !ok;
        }
        return bad ? 1 : 0;
    }
    printf("FAIL pidreuse: the victim never got the attacker's child's pid in %d attempts\n", attempts);
    return 4;
}

/* ---- ask ------------------------------------------------------------------------ */

static int ask(int argc, char **argv)
{
    if (argc < 1) { fprintf(stderr, "ask: OP missing\n"); return 2; }
    const char *opname = argv[0];
    uint32_t op = !strcmp(opname, "get_backing") ? FBMM_OP_GET_BACKING : !strcmp(opname, "stat") ? FBMM_OP_STAT
                : !strcmp(opname, "migrate") ? FBMM_OP_MIGRATE : !strcmp(opname, "pool") ? FBMM_OP_POOL
                : (uint32_t)strtoul(opname, NULL, 0);
    const char *mount = NULL, *sock = NULL, *openpath = NULL, *access_mode = "rw", *attach = NULL, *text = NULL;
    int attach_own = 1, dump = 0, have_ino = 0, v1 = 0, then_close = 0;
    long fill_mb = 0;
    const char *ready = NULL, *hold = NULL;
    uint64_t ino = 0, offset = 0, length = 0;
    uint32_t flags = 0;
    int32_t node = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--no-attach")) { attach_own = 0; continue; }
        if (!strcmp(a, "--dump")) { dump = 1; continue; }
        if (!strcmp(a, "--v1")) { v1 = accept_v1_reply = 1; continue; }
        if (!strcmp(a, "--then-close")) { then_close = 1; continue; }
        if (!v) { fprintf(stderr, "ask: %s needs a value\n", a); return 2; }
        i++;
        if (!strcmp(a, "--mount")) mount = v;
        else if (!strcmp(a, "--sock")) sock = v;
        else if (!strcmp(a, "--open")) openpath = v;
        else if (!strcmp(a, "--access")) access_mode = v;
        else if (!strcmp(a, "--attach")) attach = v;
        else if (!strcmp(a, "--ino")) { ino = strtoull(v, NULL, 0); have_ino = 1; }
        else if (!strcmp(a, "--flags")) flags = (uint32_t)strtoul(v, NULL, 0);
        else if (!strcmp(a, "--node")) node = (int32_t)strtol(v, NULL, 0);
        else if (!strcmp(a, "--offset")) offset = strtoull(v, NULL, 0);
        else if (!strcmp(a, "--length")) length = strtoull(v, NULL, 0);
        else if (!strcmp(a, "--write")) text = v;
        else if (!strcmp(a, "--fill")) fill_mb = atol(v);
        else if (!strcmp(a, "--ready")) ready = v;
        else if (!strcmp(a, "--hold")) hold = v;
        else { fprintf(stderr, "ask: unknown option %s\n", a); return 2; }
    }
    char path[PATH_MAX];
    if (!sock) {
        if (!mount || mount_broker(mount, path, sizeof path) < 0) {
            printf("error: cannot read %s of %s: %s\n", FBMM_XATTR_BROKER, mount ? mount : "(no --mount)", errname(errno));
            return 2;
        }
        sock = path;
    }
    int fds[1], nfds = 0, fd = -1;
    if (openpath) {
        int mode = !strcmp(access_mode, "r") ? O_RDONLY : !strcmp(access_mode, "w") ? O_WRONLY : O_RDWR;
        fd = open(openpath, mode | O_CLOEXEC);
        if (fd < 0) { printf("error: open %s (%s): %s\n", openpath, access_mode, errname(errno)); return 2; }
        struct stat st;
        if (fstat(fd, &st) == 0 && !have_ino) ino = (uint64_t)st.st_ino;
        if (attach_own) fds[nfds++] = fd;
    }
    if (attach) {
        int other = open(attach, O_RDWR | O_CLOEXEC);
        if (other < 0) other = open(attach, O_RDONLY | O_CLOEXEC);
        if (other < 0) { printf("error: open %s: %s\n", attach, errname(errno)); return 2; }
        nfds = 0;
        fds[nfds++] = other;
    }
    struct fbmm_request q;
    request_init(&q, op, flags, ino);
    q.node = node;
    q.offset = offset;
    q.length = length;
    int s = broker_socket();
    if (s < 0 || broker_connect(s, sock) < 0) { printf("error: connect %s: %s\n", sock, errname(errno)); return 2; }
    struct reply_info r;
    if (v1) {
        /* The old protocol: the fd by number, nothing attached (the broker
         * looked it up in /proc/PID/fd of the peer's SO_PEERCRED pid). */
        struct fbmm_request_v1 old = {
            .magic = FBMM_BROKER_MAGIC, .version = 1, .op = op, .fd = fd, .node = node,
            .ino = ino, .offset = offset, .length = length,
        };
        exchange(s, &old, sizeof old, NULL, 0, &r);
    } else {
        exchange(s, &q, sizeof q, fds, nfds, &r);
    }
    close(s);
    if (r.len < 0) { printf("error: no reply: %s\n", errname(r.err)); return 2; }
    char target[PATH_MAX] = "none";
    if (r.nfds) fd_target(r.fds[0], target, sizeof target);
    printf("reply status=%d (%s) size=%llu fds=%d fd=%s%s\n", r.status, errname(r.status), (unsigned long long)r.size,
           r.nfds, target, r.well_formed ? "" : " MALFORMED");
    if (then_close && fd >= 0) { close(fd); fd = -1; }
    if (r.nfds && fill_mb > 0) {
        size_t len = (size_t)fill_mb << 20;
        int t = ftruncate(r.fds[0], (off_t)len);
        char *m = t == 0 ? mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, r.fds[0], 0) : MAP_FAILED;
        if (m != MAP_FAILED)
            for (size_t i = 0; i < len; i += 4096) m[i] = 1;
        printf("fill: %s\n", t != 0 ? errname(errno) : m == MAP_FAILED ? "mmap failed" : "ok");
    }
    if (r.nfds && text) {
        ssize_t n = pwrite(r.fds[0], text, strlen(text), 0);
        printf("wrote %zd\n", n);
    }
    if (r.nfds && dump) {
        size_t want = r.size && r.size < (1u << 20) ? (size_t)r.size : (1u << 20);
        char *buf = malloc(want + 1);
        ssize_t n = buf ? pread(r.fds[0], buf, want, 0) : -1;
        printf("data:\n");
        if (n > 0) fwrite(buf, 1, (size_t)n, stdout);
        printf("\n");
        free(buf);
    }
    fflush(stdout);
    if (ready && hold) {
        close(open(ready, O_WRONLY | O_CREAT | O_CLOEXEC, 0644));
        for (int i = 0; i < 1200 && access(hold, F_OK) != 0; i++) usleep(50000);
    }
    for (int i = 0; i < r.nfds; i++) close(r.fds[i]);
    if (fd >= 0) close(fd);
    return r.well_formed ? 0 : 2;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc >= 5 && !strcmp(argv[1], "poolctl")) {
        uint64_t seed = 1;
        int rounds = 50;
        int i = 3;
        for (; i + 1 < argc - 2; i += 2) {
            if (!strcmp(argv[i], "--seed")) seed = strtoull(argv[i + 1], NULL, 0);
            else if (!strcmp(argv[i], "--rounds")) rounds = atoi(argv[i + 1]);
            else break;
        }
        return poolctl(argv[2], seed, rounds, argv[argc - 2], argv[argc - 1]);
    }
    if (argc == 3 && !strcmp(argv[1], "threadalloc")) return threadalloc(argv[2]);
    if (argc == 3 && !strcmp(argv[1], "shrink")) return shrink(atol(argv[2]));
    if (argc == 3 && !strcmp(argv[1], "grow")) return grow(atol(argv[2]));
    if (argc == 2 && !strcmp(argv[1], "victim")) return victim();
    if ((argc == 8 || argc == 9) && !strcmp(argv[1], "pidreuse"))
        return pidreuse(argv[2], argv[3], (uid_t)atoi(argv[4]), (gid_t)atoi(argv[5]), (uid_t)atoi(argv[6]),
                        (gid_t)atoi(argv[7]), argc == 9 ? atoi(argv[8]) : 8);
    if (argc >= 3 && !strcmp(argv[1], "ask")) return ask(argc - 2, argv + 2);
    fprintf(stderr, "usage: hostile poolctl max|random|fuzz [--seed S] [--rounds N] READY GO | threadalloc READY | victim\n"
                    "       | pidreuse MOUNT SHIM UID_A GID_A UID_B GID_B [ATTEMPTS] | ask OP [options]\n");
    return 2;
}
