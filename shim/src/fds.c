/*
 * The shim's own descriptors (the arena's FUSE fd and memfd, the pool's
 * eventfd) against a program that closes or dup2s over every fd it does not
 * know: daemons, servers and python's os.closerange do exactly that. Losing
 * the memfd would leave a fork child with nothing to copy from, so the
 * calls that can destroy a descriptor number are interposed:
 *
 *  - close of one of ours fails with EBADF, as for any number that is not
 *    open, and closes nothing (fdview.c keeps the rest of the illusion:
 *    fstat, fcntl, dup and /proc/self/fd do not show ours either);
 *  - close_range and closefrom close everything else in their range (one
 *    close_range per gap between ours);
 *  - dup2/dup3 onto one of ours first moves ours to another number (>= the
 *    floor, or above the soft RLIMIT_NOFILE when everything up to it is
 *    taken), then lets the program have the number. If ours cannot move,
 *    the shim forgets it (-1): no new memory comes from the arena, and a
 *    fork child copies from the live mappings.
 *
 * What a program does behind libc's back (raw syscalls) is caught later by
 * the identity checks (fbmm_fd_is) wherever the shim uses a descriptor.
 *
 * close must stay cheap and async-signal-safe: it only compares numbers.
 * close_range, closefrom and a dup2 onto a number >= the floor (or onto one
 * of ours) take the lock, so they never race with the shim opening or
 * moving its descriptors.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "shim.h"
#include "sys.h"

#ifndef SYS_close_range
#define SYS_close_range 436
#endif
#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

static int (*next_close)(int);
static int (*next_dup2)(int, int);
static int (*next_dup3)(int, int, int);

void fbmm_fds_resolve(void)
{
    next_close = dlsym(RTLD_NEXT, "close");
    next_dup2 = dlsym(RTLD_NEXT, "dup2");
    next_dup3 = dlsym(RTLD_NEXT, "dup3");
}

static int real_close(int fd)
{
    return next_close ? next_close(fd) : (int)syscall(SYS_close, fd);
}

static int real_dup3(int o, int n, int flags)
{
    if (!flags && next_dup2) return next_dup2(o, n);
    if (flags && next_dup3) return next_dup3(o, n, flags);
    if (!flags && o == n) return sys_fcntl(o, F_GETFD, 0) < 0 ? -1 : n;  /* dup2's answer */
    return (int)syscall(SYS_dup3, o, n, flags);
}

int fbmm_fd_is(int fd, dev_t dev, ino_t ino)
{
    struct stat st;
    return fd >= 0 && sys_fstat(fd, &st) == 0 && st.st_dev == dev && st.st_ino == ino;
}

int fbmm_fd_high(int fd)
{
    if (fd < 0) return fd;
    int h = fbmm_fd_move(fd);
    if (h < 0) return fd;
    sys_close(fd);
    return h;
}

int fbmm_fd_move(int fd)
{
    int h = sys_fcntl(fd, F_DUPFD_CLOEXEC, FBMM_FD_FLOOR);
    if (h >= 0 || (errno != EMFILE && errno != EINVAL)) return h;
    /* Every number from the floor up to the soft limit is taken, or the
     * limit is below the floor: go just above the soft limit, where the
     * program can neither open nor dup2 anything (and loops up to
     * sysconf(_SC_OPEN_MAX) do not reach). Only for this one call. */
    struct rlimit old, up;
    if (getrlimit(RLIMIT_NOFILE, &old) < 0 || old.rlim_cur >= old.rlim_max || old.rlim_cur > INT_MAX - 64) {
        errno = EMFILE;
        return -1;
    }
    up = old;
    up.rlim_cur = old.rlim_max - old.rlim_cur > 64 ? old.rlim_cur + 64 : old.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &up) < 0) return -1;
    h = sys_fcntl(fd, F_DUPFD_CLOEXEC, (int)old.rlim_cur);
    int e = errno;
    setrlimit(RLIMIT_NOFILE, &old);
    errno = e;
    return h;
}

/* Our descriptors now (some may be -1): the arena's FUSE fd and memfd, the
 * pool's eventfd. Lock-free loads, so close() can ask. Returns the count. */
static int our_fds(int mine[5])
{
    int n = 0;
    if (__atomic_load_n(&fbmm_arena.state, __ATOMIC_RELAXED) == ARENA_READY) {
        mine[n++] = __atomic_load_n(&fbmm_arena.name_fd, __ATOMIC_RELAXED);
        mine[n++] = __atomic_load_n(&fbmm_arena.mem_fd, __ATOMIC_RELAXED);
    }
    mine[n++] = fbmm_pool_fd();
    n += fbmm_cow_fds(mine + n);
    return n;
}

/* Is fd one of ours? Lock-free: only numbers are compared. */
int fbmm_fd_ours(int fd)
{
    int mine[5], n = our_fds(mine);
    for (int i = 0; i < n; i++)
        if (fd >= 0 && fd == mine[i]) return 1;
    return 0;
}

/* Locked: if fd is ours, moves ours off it (or forgets it). */
static void evict(int fd)
{
    struct fbmm_arena *a = &fbmm_arena;
    int in_arena = a->state == ARENA_READY && (a->name_fd == fd || a->mem_fd == fd);
    int in_pool = fd == fbmm_pool_fd();
    if (fbmm_cow_evict(fd)) return;
    if (!in_arena && !in_pool) return;
    int h = fbmm_fd_move(fd);
    if (in_arena) {
        if (a->name_fd == fd) a->name_fd = h;
        if (a->mem_fd == fd) a->mem_fd = h;
    }
    if (in_pool) fbmm_pool_fd_set(h);
    if (h < 0) {
        static int once;
        fbmm_say_once(&once, "falling back to anonymous memory: ",
                      "no descriptor left to keep the arena's out of the program's way", NULL);
    }
}

FBMM_EXPORT int close(int fd)
{
    if (!fbmm_depth && fbmm_fd_ours(fd)) {
        /* Not open as far as the program knows (fdview.c): the kernel's
         * answer for such a number, and ours stays. */
        errno = EBADF;
        return -1;
    }
    return real_close(fd);
}

/* close_range(first, last) minus our descriptors (locked). */
static int close_except_ours(unsigned first, unsigned last, int flags)
{
    int mine[5], n = our_fds(mine);
    unsigned lo = first;
    for (;;) {
        /* The lowest of ours in [lo, last]. */
        long next = -1;
        for (int i = 0; i < n; i++)
            if (mine[i] >= 0 && (unsigned)mine[i] >= lo && (unsigned)mine[i] <= last &&
                (next < 0 || mine[i] < next))
                next = mine[i];
        if (next < 0) return (int)syscall(SYS_close_range, lo, last, flags);
        if ((unsigned)next > lo && syscall(SYS_close_range, lo, (unsigned)next - 1, flags) < 0) return -1;
        if ((unsigned)next == last) return 0;
        lo = (unsigned)next + 1;
    }
}

FBMM_EXPORT int close_range(unsigned first, unsigned last, int flags)
{
    fbmm_init();
    if (fbmm_depth || !fbmm_cfg.active || first > last || (flags & CLOSE_RANGE_CLOEXEC))
        return (int)syscall(SYS_close_range, first, last, flags);
    fbmm_lock();
    int r = close_except_ours(first, last, flags);
    int e = errno;
    fbmm_unlock();
    errno = e;
    return r;
}

FBMM_EXPORT void closefrom(int low)
{
    fbmm_init();
    if (low < 0) low = 0;
    int active = !fbmm_depth && fbmm_cfg.active;
    if (active) fbmm_lock();
    int r = active ? close_except_ours((unsigned)low, ~0U, 0)
                   : (int)syscall(SYS_close_range, (unsigned)low, ~0U, 0);
    if (r < 0) {
        /* No close_range (kernel before 5.9): close one by one up to the
         * soft limit, sparing ours. */
        struct rlimit rl;
        long max = getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < 1L << 20 ? (long)rl.rlim_cur : 1L << 20;
        for (long fd = low; fd < max; fd++)
            if (!active || !fbmm_fd_ours((int)fd)) syscall(SYS_close, (int)fd);
    }
    if (active) fbmm_unlock();
}

static int dup_onto(int oldfd, int newfd, int flags)
{
    fbmm_init();
    if (!fbmm_depth && fbmm_fd_ours(oldfd)) {  /* not open, for the program */
        errno = EBADF;
        return -1;
    }
    /* Only a number that is ours, or could be about to be (the floor and
     * up: ours are being opened or moved under the lock), needs care. */
    if (fbmm_depth || !fbmm_cfg.active || oldfd == newfd || (newfd < FBMM_FD_FLOOR && !fbmm_fd_ours(newfd)))
        return real_dup3(oldfd, newfd, flags);
    fbmm_lock();
    int was = fbmm_fd_ours(newfd);
    if (was) evict(newfd);
    int r = real_dup3(oldfd, newfd, flags);
    int e = errno;
    /* It failed (oldfd not open...): newfd still holds our old copy, which
     * the program must not find open. */
    if (r < 0 && was) syscall(SYS_close, newfd);
    fbmm_unlock();
    errno = e;
    return r;
}

FBMM_EXPORT int dup2(int oldfd, int newfd)
{
    return dup_onto(oldfd, newfd, 0);
}

FBMM_EXPORT int dup3(int oldfd, int newfd, int flags)
{
    if (oldfd == newfd) {  /* the kernel's answer, without a system call */
        errno = EINVAL;
        return -1;
    }
    return dup_onto(oldfd, newfd, flags);
}
