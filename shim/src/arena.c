/*
 * The per-process arena: one file in the mount, "<comm>.<pid>.<seq>", whose
 * backing (the daemon's memfd, or the file itself on tmpfs) holds all of the
 * process's redirected memory. Locked, except where noted.
 *
 * Lifetime: the FUSE fd stays open for the life of the process; the daemon
 * deletes the file and drops its memory when the last fd is released, i.e.
 * when the process dies. On tmpfs nobody would, so the file is unlinked at
 * once (the open fd and the mappings keep the memory alive until exit).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "../../Sources/CFBMMSys/include/fbmm_broker.h"
#include "../../Sources/CFBMMSys/include/fbmm_pool.h"
#include "shim.h"
#include "sys.h"

#define MIN_ARENA   (64ull << 20)   /* first size: few FUSE setattr round trips */
#define ARENA_ALIGN (2ull << 20)    /* sizes in huge-page units */

struct fbmm_arena fbmm_arena;

/* reason = s1 s2 s3 [": " errno name] */
static void why_set3(struct fbmm_arena *a, const char *s1, const char *s2, const char *s3, int err)
{
    const char *parts[] = { s1, s2, s3, err ? ": " : NULL, err ? strerrorname_np(err) : NULL };
    fbmm_join(a->reason, sizeof a->reason, parts, 5);
}

static void why_set(struct fbmm_arena *a, const char *s1, const char *s2, int err)
{
    why_set3(a, s1, s2, NULL, err);
}

/* "<comm>.<pid>.<seq>": comm limited to [A-Za-z0-9_-], at most 15 chars. */
static void arena_name(char *buf, size_t n, unsigned seq)
{
    char comm[17] = { 0 }, num[21];
    if (prctl(PR_GET_NAME, comm) != 0 || !comm[0]) memcpy(comm, "proc", 5);
    size_t k = 0, m = strlen(fbmm_cfg.mount);
    memcpy(buf, fbmm_cfg.mount, m);
    k = m;
    buf[k++] = '/';
    for (int i = 0; comm[i] && i < 15; i++) {
        char c = comm[i];
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                 (c >= '0' && c <= '9') || c == '_' || c == '-';
        buf[k++] = ok ? c : '_';
    }
    buf[k++] = '.';
    for (const char *p = fbmm_utoa(num, (uint64_t)getpid()); *p; p++) buf[k++] = *p;
    buf[k++] = '.';
    for (const char *p = fbmm_utoa(num, seq); *p; p++) buf[k++] = *p;
    buf[k] = 0;
    (void)n;
}

/* The mount's pool window and huge-page mode (root xattrs); an older
 * daemon without them means no pool and "advise". */
static void read_mount_settings(struct fbmm_arena *a)
{
    char v[32];
    ssize_t n = getxattr(fbmm_cfg.mount, FBMM_XATTR_PREZERO, v, sizeof v - 1);
    size_t window = 0;
    if (n > 0) {
        v[n] = 0;
        if (fbmm_parse_size(v, &window) < 0) window = 0;
    }
    if (fbmm_cfg.no_pool || window % fbmm_page ||
        window / fbmm_page > FBMM_POOL_MAX_PAGES)
        window = 0;
    a->pool_window = window;
    n = getxattr(fbmm_cfg.mount, FBMM_XATTR_HUGE, v, sizeof v - 1);
    v[n > 0 ? n : 0] = 0;
    a->huge = strcmp(v, "always") == 0 ? HUGE_ALWAYS : strcmp(v, "never") == 0 ? HUGE_NEVER : HUGE_ADVISE;
}

int fbmm_arena_open(struct fbmm_arena *a)
{
    static unsigned seq;
    char path[PATH_MAX + 64];
    int fd = -1;

    memset(a, 0, sizeof *a);
    a->name_fd = a->mem_fd = -1;
    a->state = ARENA_FAILED;

    /* Decide the mode before creating anything: with no broker, only tmpfs
     * can back memory directly (mmap MAP_SHARED, hole punching, page
     * granular like anonymous memory); a disk file system, or a FUSE mount
     * whose daemon is gone, must not get a file at all. */
    char sock[PATH_MAX];
    ssize_t sl = getxattr(fbmm_cfg.mount, FBMM_XATTR_BROKER, sock, sizeof sock - 1);
    if (sl < 0 && (errno == EACCES || errno == EPERM)) {
        /* A FUSE mount of another user without allow_other: even stat fails. */
        why_set3(a, "no permission to use ", fbmm_cfg.mount,
                 " (mounted by another user: it needs -o allow_other)", 0);
        return -1;
    }
    if (sl < 0 && errno != ENODATA && errno != ENOTSUP && errno != EOPNOTSUPP) {
        why_set(a, "cannot read the broker xattr of ", fbmm_cfg.mount, errno);
        return -1;
    }
    if (sl <= 0) {
        struct statfs sf;
        if (statfs(fbmm_cfg.mount, &sf) < 0 || sf.f_type != TMPFS_MAGIC) {
            why_set(a, fbmm_cfg.mount, " is neither an fbmm mount nor a tmpfs", 0);
            return -1;
        }
        a->tmpfs = 1;
    }
    sock[sl > 0 ? sl : 0] = 0;
    if (!a->tmpfs) {
        size_t k = strlen(sock);
        if (k >= sizeof a->sock) k = 0;  /* too long for sun_path anyway */
        memcpy(a->sock, sock, k);
        a->sock[k] = 0;
        read_mount_settings(a);
    }

    for (int tries = 0; tries < 64; tries++) {
        arena_name(path, sizeof path, seq++);
        /* The sticky bit marks it as our arena from birth: the daemon removes
         * it if we die before claiming it (tmpfs ignores the bit on files). */
        fd = open(path, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 01600);
        if (fd >= 0 || errno != EEXIST) break;
    }
    if (fd < 0) {
        why_set(a, "cannot create a file in ", fbmm_cfg.mount, errno);
        return -1;
    }
    fd = fbmm_fd_high(fd);
    struct stat st;
    if (sys_fstat(fd, &st) < 0) {
        why_set(a, "fstat of the arena file", NULL, errno);
        goto fail;
    }
    a->name_dev = st.st_dev;
    a->name_ino = st.st_ino;
    if (a->tmpfs) {
        unlink(path);  /* the fd and the mappings keep the memory alive */
        a->mem_fd = fd;
    } else {
        int memfd;
        if (fbmm_broker_request(sock, FBMM_OP_GET_BACKING, FBMM_BACKING_ARENA, fd, (uint64_t)st.st_ino, 1, &memfd,
                                NULL, a->reason, sizeof a->reason) < 0)
            goto fail;
        a->mem_fd = fbmm_fd_high(memfd);
    }
    a->name_fd = fd;
    if (sys_fstat(a->mem_fd, &st) < 0) {
        why_set(a, "fstat of the backing", NULL, errno);
        goto fail;
    }
    a->mem_dev = st.st_dev;
    a->mem_ino = st.st_ino;
    a->size = (uint64_t)st.st_size;
    a->state = ARENA_READY;
    /* The pool's control block comes first in the file (its window is
     * taken from the offset allocator only when the arena enrols). */
    if (a->pool_window) fbmm_off_reserve(FBMM_POOL_CTL_BYTES);
    fbmm_say(a->tmpfs ? "using tmpfs file backing in " : "using fbmm mount ",
             fbmm_cfg.mount, NULL);
    return 0;

fail:
    if (a->mem_fd >= 0 && a->mem_fd != fd) sys_close(a->mem_fd);
    a->mem_fd = -1;
    unlink(path);
    sys_close(fd);
    a->name_fd = -1;
    a->state = ARENA_FAILED;
    return -1;
}

/* Closes what is still ours: a number that a raw close handed to the
 * program is the program's. */
void fbmm_arena_close(struct fbmm_arena *a)
{
    if (a->mem_fd >= 0 && a->mem_fd != a->name_fd && fbmm_fd_is(a->mem_fd, a->mem_dev, a->mem_ino))
        sys_close(a->mem_fd);
    if (a->name_fd >= 0 && fbmm_fd_is(a->name_fd, a->name_dev, a->name_ino)) sys_close(a->name_fd);
    a->mem_fd = a->name_fd = -1;
}

void fbmm_note_fallback(const char *why, const char *detail)
{
    static int once;
    fbmm_say_once(&once, "falling back to anonymous memory: ", why, detail);
}

int fbmm_arena_ready(void)
{
    if (fbmm_arena.state == ARENA_NONE && fbmm_arena_open(&fbmm_arena) < 0)
        fbmm_note_fallback(fbmm_arena.reason, NULL);
    if (fbmm_arena.state != ARENA_READY) {
        errno = ENOMEM;
        return -1;
    }
    return 0;
}

/* Our descriptor was closed behind libc's back (the interposers in fds.c
 * see every other way), and the number may be reused for one of the
 * program's own files, which we must never truncate, punch, map or close. */
static void forget(int *fd, const char *which)
{
    static int once;
    *fd = -1;
    fbmm_say_once(&once, "falling back to anonymous memory: the arena's ", which,
                  " was closed or replaced behind libc's back");
}

int fbmm_arena_fd_ok(void)
{
    struct fbmm_arena *a = &fbmm_arena;
    if (a->mem_fd < 0) return 0;
    if (fbmm_fd_is(a->mem_fd, a->mem_dev, a->mem_ino)) return 1;
    if (a->name_fd == a->mem_fd) a->name_fd = -1;  /* tmpfs: the same fd */
    forget(&a->mem_fd, "backing descriptor");
    return 0;
}

int fbmm_arena_name_ok(void)
{
    struct fbmm_arena *a = &fbmm_arena;
    if (a->name_fd < 0) return 0;
    if (fbmm_fd_is(a->name_fd, a->name_dev, a->name_ino)) return 1;
    if (a->mem_fd == a->name_fd) a->mem_fd = -1;
    forget(&a->name_fd, "file descriptor");
    return 0;
}

/* Geometric growth: O(log) FUSE setattr round trips in all. */
static uint64_t grow_target(uint64_t size, uint64_t need)
{
    uint64_t n = size * 2;
    if (n < MIN_ARENA) n = MIN_ARENA;
    if (n < need) n = need;
    return ROUND_UP(n, ARENA_ALIGN);
}

/* ftruncate of the FUSE fd to *n; near a bound (-o capacity, user-capacity)
 * doubling may not fit where what is needed still does (*n then says what
 * was asked). */
static int grow_file(int fd, uint64_t *n, uint64_t need)
{
    int r = ftruncate(fd, (off_t)*n);
    if (r < 0 && (errno == ENOSPC || errno == EDQUOT) && *n > ROUND_UP(need, ARENA_ALIGN)) {
        *n = ROUND_UP(need, ARENA_ALIGN);
        r = ftruncate(fd, (off_t)*n);
    }
    return r;
}

/* Room kept ahead of the high-water mark by growing ahead: a batch of
 * blocks (clean_slots.c) and 2 MiB alignment. */
#define AHEAD_SLACK (4ul << 20)

int fbmm_arena_grow(uint64_t need)
{
    struct fbmm_arena *a = &fbmm_arena;
    if (need <= a->size) return 0;
    if (a->grow_dead || !fbmm_arena_fd_ok() || !fbmm_arena_name_ok()) {
        errno = ENOMEM;
        return -1;
    }
    uint64_t n = grow_target(a->size, need);
    int r = grow_file(a->name_fd, &n, need);
    if (r < 0) {
        int e = errno;
        static int once;
        if (e == ENOSPC)
            fbmm_say_once(&once, "falling back to anonymous memory: the mount is full ",
                          "(ENOSPC: its -o capacity is used up)", NULL);
        else if (e == EDQUOT)
            fbmm_say_once(&once, "falling back to anonymous memory: this user's share of the mount is used up ",
                          "(EDQUOT: its -o user-capacity)", NULL);
        else
            fbmm_say_once(&once, "falling back to anonymous memory: cannot grow the arena file: ",
                          strerrorname_np(e) ? strerrorname_np(e) : "error", NULL);
        /* The daemon is gone or the descriptor is: don't ask again. */
        if (e == ENOTCONN || e == ENODEV || e == EIO || e == EBADF) a->grow_dead = 1;
        errno = ENOMEM;
        return -1;
    }
    /* The daemon must have grown the memfd before answering the setattr;
     * mapping past its end would SIGBUS the application later. */
    struct stat st;
    if (sys_fstat(a->mem_fd, &st) < 0 || (uint64_t)st.st_size < n) {
        static int once;
        fbmm_say_once(&once, "falling back to anonymous memory: ",
                      "the daemon did not grow the backing", NULL);
        a->grow_dead = 1;
        errno = ENOMEM;
        return -1;
    }
    __atomic_store_n(&a->size, n, __ATOMIC_RELAXED);
    return 0;
}

void fbmm_arena_grow_ahead(size_t len)
{
    struct fbmm_arena *a = &fbmm_arena;
    /* The lock-free first test: most calls end here. Nested calls (init,
     * a handler) grow under the lock as before. */
    if (fbmm_depth || __atomic_load_n(&a->state, __ATOMIC_ACQUIRE) != ARENA_READY ||
        fbmm_off_top() + len + AHEAD_SLACK <= __atomic_load_n(&a->size, __ATOMIC_RELAXED))
        return;
    uint64_t all = ~(uint64_t)0, old;
    sys_sigmask(SIG_BLOCK, &all, &old);  /* no handler may re-enter with grow_mu held */
    fbmm_grow_lock();
    fbmm_lock();
    uint64_t need = fbmm_off_top() + len + AHEAD_SLACK, n = 0;
    int name_fd = -1, mem_fd = -1;
    ino_t ino = 0;
    /* Not when free ranges below the top serve it (growing the file would
     * count against a capacity for nothing), nor again at a size where it
     * failed (the locked path then says why, once). */
    if (a->state == ARENA_READY && need > a->size && !fbmm_off_fits(len, fbmm_page) &&
        a->ahead_failed != a->size && !a->grow_dead && fbmm_arena_fd_ok() && fbmm_arena_name_ok()) {
        n = grow_target(a->size, need);
        name_fd = a->name_fd;
        mem_fd = a->mem_fd;
        ino = a->name_ino;
    }
    fbmm_unlock();
    if (n) {
        /* The FUSE setattr round trip, holding only grow_mu. */
        struct stat st;
        int ok = grow_file(name_fd, &n, need) == 0 && sys_fstat(mem_fd, &st) == 0 && (uint64_t)st.st_size >= n;
        fbmm_lock();
        /* The same arena still (nothing replaced or forgot it meanwhile). */
        if (a->state == ARENA_READY && a->name_fd == name_fd && a->mem_fd == mem_fd && a->name_ino == ino) {
            if (!ok) a->ahead_failed = a->size;
            else if (n > a->size) __atomic_store_n(&a->size, n, __ATOMIC_RELAXED);
        }
        fbmm_unlock();
    }
    fbmm_grow_unlock();
    sys_sigmask(SIG_SETMASK, &old, NULL);
}

int fbmm_arena_punch(uint64_t off, uint64_t len)
{
    if (!fbmm_arena_fd_ok()) {
        errno = EBADF;
        return -1;
    }
    if (fbmm_cow_release(off, len) < 0) return -1;
    return fallocate(fbmm_arena.mem_fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                     (off_t)off, (off_t)len);
}
