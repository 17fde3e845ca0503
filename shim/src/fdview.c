/*
 * What the program sees of the shim's descriptors: nothing. The shim keeps a
 * few fds open (the arena's FUSE fd and memfd, the pool's eventfd, a lazy
 * fork copy's userfaultfd), and programs find open descriptors by asking:
 * fstat or fcntl(F_GETFD) over every number up to the limit (CPython's
 * fd_status, daemons' sanity checks), or a listing of /proc/self/fd (ls,
 * os.listdir, lsof of itself). Natively none of ours exist, so each of
 * those answers as if they were not open:
 *
 *  - fstat, fstatat/statx relative to one of ours, fcntl, dup: EBADF
 *    (close and dup2/dup3 are in fds.c, which also keeps ours out of the
 *    way of numbers the program takes);
 *  - readdir, getdents64 and scandir(at) of this process's /proc/<pid>/fd
 *    or fdinfo (also as self, thread-self or task/<tid>) skip our numbers.
 *
 * The checks compare numbers only (fbmm_fd_ours: a few atomic loads), so
 * an fstat costs what it did; the directory identity (fstatfs + readlink)
 * is looked up only for an entry whose name is one of our numbers.
 * The shim's own calls bypass all this (sys.h's sys_fstat, sys_fcntl) or run
 * with fbmm_depth > 0. scandir(3) reads through libc's internal readdir,
 * so its result is filtered after the fact. What no LD_PRELOAD can see
 * still lists ours: raw getdents64 system calls, and glob(3)/fts(3)/nftw(3)
 * walking /proc/self/fd (they, too, read through libc's internals).
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include "shim.h"
#include "sys.h"

#ifndef PROC_SUPER_MAGIC
#define PROC_SUPER_MAGIC 0x9fa0
#endif

struct statx;

static int (*next_fstat)(int, struct stat *);
static int (*next_fstat64)(int, struct stat64 *);
static int (*next_fstatat)(int, const char *, struct stat *, int);
static int (*next_fstatat64)(int, const char *, struct stat64 *, int);
static int (*next_fxstat)(int, int, struct stat *);
static int (*next_fxstat64)(int, int, struct stat64 *);
static int (*next_fxstatat)(int, int, const char *, struct stat *, int);
static int (*next_fxstatat64)(int, int, const char *, struct stat64 *, int);
static int (*next_statx)(int, const char *, int, unsigned, struct statx *);
static int (*next_fcntl)(int, int, ...);
static int (*next_fcntl64)(int, int, ...);
static int (*next_dup)(int);
static struct dirent *(*next_readdir)(DIR *);
static struct dirent64 *(*next_readdir64)(DIR *);
static ssize_t (*next_getdents64)(int, void *, size_t);
typedef int (*scan_filter)(const struct dirent *);
typedef int (*scan_compare)(const struct dirent **, const struct dirent **);
static int (*next_scandirat)(int, const char *, struct dirent ***, scan_filter, scan_compare);
typedef int (*scan_filter64)(const struct dirent64 *);
typedef int (*scan_compare64)(const struct dirent64 **, const struct dirent64 **);
static int (*next_scandirat64)(int, const char *, struct dirent64 ***, scan_filter64, scan_compare64);

void fbmm_fdview_resolve(void)
{
    next_fstat = dlsym(RTLD_NEXT, "fstat");
    next_fstat64 = dlsym(RTLD_NEXT, "fstat64");
    next_fstatat = dlsym(RTLD_NEXT, "fstatat");
    next_fstatat64 = dlsym(RTLD_NEXT, "fstatat64");
    next_fxstat = dlsym(RTLD_NEXT, "__fxstat");
    next_fxstat64 = dlsym(RTLD_NEXT, "__fxstat64");
    next_fxstatat = dlsym(RTLD_NEXT, "__fxstatat");
    next_fxstatat64 = dlsym(RTLD_NEXT, "__fxstatat64");
    next_statx = dlsym(RTLD_NEXT, "statx");
    next_fcntl = dlsym(RTLD_NEXT, "fcntl");
    next_fcntl64 = dlsym(RTLD_NEXT, "fcntl64");
    next_dup = dlsym(RTLD_NEXT, "dup");
    next_readdir = dlsym(RTLD_NEXT, "readdir");
    next_readdir64 = dlsym(RTLD_NEXT, "readdir64");
    next_getdents64 = dlsym(RTLD_NEXT, "getdents64");
    next_scandirat = dlsym(RTLD_NEXT, "scandirat");
    next_scandirat64 = dlsym(RTLD_NEXT, "scandirat64");
}

/* Is fd one of ours, as the program asks about it? */
static int hidden(int fd)
{
    return !fbmm_depth && fd >= 0 && fbmm_fd_ours(fd);
}

/* A path resolved relative to dirfd (relative or empty) uses dirfd. */
static int hidden_at(int dirfd, const char *path)
{
    return (!path || path[0] != '/') && hidden(dirfd);
}

static int ebadf(void)
{
    errno = EBADF;
    return -1;
}

/* Before the shim is initialised (the dynamic loader, libc's own start-up)
 * the next symbols may not be resolved yet: the system call does it. */
FBMM_EXPORT int fstat(int fd, struct stat *st)
{
    if (hidden(fd)) return ebadf();
    return next_fstat ? next_fstat(fd, st) : sys_fstat(fd, st);
}

FBMM_EXPORT int fstat64(int fd, struct stat64 *st)
{
    if (hidden(fd)) return ebadf();
    return next_fstat64 ? next_fstat64(fd, st) : sys_fstat(fd, (struct stat *)st);
}

FBMM_EXPORT int fstatat(int dirfd, const char *path, struct stat *st, int flags)
{
    if (hidden_at(dirfd, path)) return ebadf();
    return next_fstatat ? next_fstatat(dirfd, path, st, flags)
                        : (int)syscall(SYS_newfstatat, dirfd, path, st, flags);
}

FBMM_EXPORT int fstatat64(int dirfd, const char *path, struct stat64 *st, int flags)
{
    if (hidden_at(dirfd, path)) return ebadf();
    return next_fstatat64 ? next_fstatat64(dirfd, path, st, flags)
                          : (int)syscall(SYS_newfstatat, dirfd, path, st, flags);
}

/* Binaries built against glibc before 2.33 call these instead. */
FBMM_EXPORT int __fxstat(int ver, int fd, struct stat *st)
{
    if (hidden(fd)) return ebadf();
    return next_fxstat ? next_fxstat(ver, fd, st) : sys_fstat(fd, st);
}

FBMM_EXPORT int __fxstat64(int ver, int fd, struct stat64 *st)
{
    if (hidden(fd)) return ebadf();
    return next_fxstat64 ? next_fxstat64(ver, fd, st) : sys_fstat(fd, (struct stat *)st);
}

FBMM_EXPORT int __fxstatat(int ver, int dirfd, const char *path, struct stat *st, int flags)
{
    if (hidden_at(dirfd, path)) return ebadf();
    return next_fxstatat ? next_fxstatat(ver, dirfd, path, st, flags)
                         : (int)syscall(SYS_newfstatat, dirfd, path, st, flags);
}

FBMM_EXPORT int __fxstatat64(int ver, int dirfd, const char *path, struct stat64 *st, int flags)
{
    if (hidden_at(dirfd, path)) return ebadf();
    return next_fxstatat64 ? next_fxstatat64(ver, dirfd, path, st, flags)
                           : (int)syscall(SYS_newfstatat, dirfd, path, st, flags);
}

FBMM_EXPORT int statx(int dirfd, const char *path, int flags, unsigned mask, struct statx *st)
{
    if (hidden_at(dirfd, path)) return ebadf();
    return next_statx ? next_statx(dirfd, path, flags, mask, st)
                      : (int)syscall(SYS_statx, dirfd, path, flags, mask, st);
}

/* fcntl's third argument, when there is one, is an int, a long or a
 * pointer: read as a long (what libc itself does) and passed on. */
static int pass_fcntl(int (*next)(int, int, ...), int fd, int cmd, long arg)
{
    if (hidden(fd)) return ebadf();
    return next ? next(fd, cmd, arg) : sys_fcntl(fd, cmd, arg);
}

FBMM_EXPORT int fcntl(int fd, int cmd, ...)
{
    va_list ap;
    va_start(ap, cmd);
    long arg = va_arg(ap, long);
    va_end(ap);
    return pass_fcntl(next_fcntl, fd, cmd, arg);
}

FBMM_EXPORT int fcntl64(int fd, int cmd, ...)
{
    va_list ap;
    va_start(ap, cmd);
    long arg = va_arg(ap, long);
    va_end(ap);
    return pass_fcntl(next_fcntl64, fd, cmd, arg);
}

FBMM_EXPORT int dup(int fd)
{
    if (hidden(fd)) return ebadf();
    return next_dup ? next_dup(fd) : (int)syscall(SYS_dup, fd);
}

/* ---- /proc/self/fd listings ---- */

/* Is the directory open on dfd this process's fd or fdinfo directory
 * (/proc/<us>/fd, /proc/<us>/task/<tid>/fd, or fdinfo)? */
static int own_fd_directory(int dfd)
{
    struct statfs sf;
    if (dfd < 0 || fstatfs(dfd, &sf) < 0 || sf.f_type != PROC_SUPER_MAGIC) return 0;
    char path[48], link[128], want[32];
    snprintf(path, sizeof path, "/proc/self/fd/%d", dfd);
    ssize_t n = readlink(path, link, sizeof link - 1);
    if (n <= 0) return 0;
    link[n] = 0;
    int w = snprintf(want, sizeof want, "/proc/%d/", (int)getpid());
    if (strncmp(link, want, (size_t)w) != 0) return 0;
    const char *rest = link + w;
    if (strncmp(rest, "task/", 5) == 0) {
        rest += 5;
        if (!isdigit((unsigned char)*rest)) return 0;
        while (isdigit((unsigned char)*rest)) rest++;
        if (*rest++ != '/') return 0;
    }
    return strcmp(rest, "fd") == 0 || strcmp(rest, "fdinfo") == 0;
}

/* Should the entry `name` of the directory on dfd be left out? Only a
 * name that is one of our numbers costs more than a few compares. */
static int hidden_entry(int dfd, const char *name)
{
    if (fbmm_depth || !isdigit((unsigned char)name[0])) return 0;
    long v = 0;
    for (const char *p = name; *p; p++) {
        if (!isdigit((unsigned char)*p) || v > 1L << 31) return 0;
        v = v * 10 + (*p - '0');
    }
    return fbmm_fd_ours((int)v) && own_fd_directory(dfd);
}

FBMM_EXPORT struct dirent *readdir(DIR *d)
{
    if (!next_readdir) next_readdir = dlsym(RTLD_NEXT, "readdir");
    struct dirent *e;
    do e = next_readdir(d);
    while (e && hidden_entry(dirfd(d), e->d_name));
    return e;
}

FBMM_EXPORT struct dirent64 *readdir64(DIR *d)
{
    if (!next_readdir64) next_readdir64 = dlsym(RTLD_NEXT, "readdir64");
    struct dirent64 *e;
    do e = next_readdir64(d);
    while (e && hidden_entry(dirfd(d), e->d_name));
    return e;
}

/* The records the kernel filled, minus ours, packed; a batch that held
 * only ours is read past, so 0 still means the end. */
FBMM_EXPORT ssize_t getdents64(int fd, void *buf, size_t count)
{
    for (;;) {
        ssize_t n = next_getdents64 ? next_getdents64(fd, buf, count)
                                    : (ssize_t)syscall(SYS_getdents64, fd, buf, count);
        if (n <= 0 || fbmm_depth) return n;
        char *p = buf, *out = buf, *end = (char *)buf + n;
        while (p < end) {
            struct dirent64 *e = (struct dirent64 *)p;
            unsigned short len = e->d_reclen;
            if (!hidden_entry(fd, e->d_name)) {
                if (out != p) memmove(out, p, len);
                out += len;
            }
            p += len;
        }
        if (out > (char *)buf) return out - (char *)buf;
    }
}

/* scandir's list, minus ours, kept in its order (struct dirent and dirent64
 * are laid out alike on LP64, so one pass serves both). The directory is
 * opened to check its identity only when an entry has one of our numbers. */
static int scanned_without_ours(int dfd, const char *path, struct dirent **list, int n)
{
    if (n <= 0 || fbmm_depth) return n;
    int dir = -2, kept = 0;
    for (int i = 0; i < n; i++) {
        const char *name = list[i]->d_name;
        int drop = 0;
        if (isdigit((unsigned char)name[0])) {
            if (dir == -2) dir = openat(dfd, path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
            drop = dir >= 0 && hidden_entry(dir, name);
        }
        if (drop) free(list[i]);
        else list[kept++] = list[i];
    }
    if (dir >= 0) sys_close(dir);
    return kept;
}

FBMM_EXPORT int scandirat(int dfd, const char *path, struct dirent ***list, scan_filter filter, scan_compare compare)
{
    if (!next_scandirat) next_scandirat = dlsym(RTLD_NEXT, "scandirat");
    int n = next_scandirat(dfd, path, list, filter, compare);
    return scanned_without_ours(dfd, path, *list, n);
}

FBMM_EXPORT int scandir(const char *path, struct dirent ***list, scan_filter filter, scan_compare compare)
{
    return scandirat(AT_FDCWD, path, list, filter, compare);
}

FBMM_EXPORT int scandirat64(int dfd, const char *path, struct dirent64 ***list, scan_filter64 filter, scan_compare64 compare)
{
    if (!next_scandirat64) next_scandirat64 = dlsym(RTLD_NEXT, "scandirat64");
    int n = next_scandirat64(dfd, path, list, filter, compare);
    return scanned_without_ours(dfd, path, (struct dirent **)*list, n);
}

FBMM_EXPORT int scandir64(const char *path, struct dirent64 ***list, scan_filter64 filter, scan_compare64 compare)
{
    return scandirat64(AT_FDCWD, path, list, filter, compare);
}
