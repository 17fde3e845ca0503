/*
 * The test programs that look behind the shim (hostile.c attacks its
 * descriptors, semantics.c weighs its memfds) list /proc/self/fd and stat
 * descriptors with bare system calls: through libc the shim hides its own
 * descriptors (shim/src/fdview.c), and an attacker goes around libc.
 */
#ifndef FBMM_TEST_RAWFD_H
#define FBMM_TEST_RAWFD_H

#include <dirent.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

/* The open descriptors as the kernel lists them (at most max, the listing's
 * own excluded). Returns the count, or -1. */
static inline int raw_self_fds(int *out, int max)
{
    int d = (int)syscall(SYS_openat, AT_FDCWD, "/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (d < 0) return -1;
    char buf[16384];
    long got;
    int n = 0;
    while ((got = syscall(SYS_getdents64, d, buf, sizeof buf)) > 0)
        for (long off = 0; off < got;) {
            struct dirent64 *e = (struct dirent64 *)(buf + off);
            off += e->d_reclen;
            if (e->d_name[0] == '.') continue;
            int fd = atoi(e->d_name);
            if (fd != d && n < max) out[n++] = fd;
        }
    syscall(SYS_close, d);
    return n;
}

static inline int raw_fstat(int fd, struct stat *st)
{
    return (int)syscall(SYS_fstat, fd, st);
}

#endif
