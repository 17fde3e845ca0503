/*
 * Raw system calls for memory operations. The shim interposes mmap, munmap,
 * mremap, madvise and mprotect, so its own calls must not go through those
 * symbols (they would recurse into the shim); libc's syscall() does not.
 */
#ifndef FBMM_SYS_H
#define FBMM_SYS_H

#include <stdint.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

static inline void *sys_mmap(void *a, size_t l, int prot, int flags, int fd, off_t off)
{
    return (void *)syscall(SYS_mmap, a, l, prot, flags, fd, off);
}
static inline int sys_munmap(void *a, size_t l)
{
    return (int)syscall(SYS_munmap, a, l);
}
static inline void *sys_mremap(void *a, size_t ol, size_t nl, int flags, void *na)
{
    return (void *)syscall(SYS_mremap, a, ol, nl, flags, na);
}
static inline int sys_madvise(void *a, size_t l, int advice)
{
    return (int)syscall(SYS_madvise, a, l, advice);
}
static inline int sys_mprotect(void *a, size_t l, int prot)
{
    return (int)syscall(SYS_mprotect, a, l, prot);
}
/* The shim's own descriptor calls: close, fstat, fcntl and dup are
 * interposed too (fdview.c hides the shim's descriptors from the program),
 * so the shim's own uses go straight to the kernel. */
static inline int sys_close(int fd)
{
    return (int)syscall(SYS_close, fd);
}
static inline int sys_fstat(int fd, struct stat *st)
{
    return (int)syscall(SYS_fstat, fd, st);
}
static inline int sys_fcntl(int fd, int cmd, long arg)
{
    return (int)syscall(SYS_fcntl, fd, cmd, arg);
}
/* Kernel-sized (8-byte) signal mask, so no sigset_t juggling. */
static inline int sys_sigmask(int how, const uint64_t *set, uint64_t *old)
{
    return (int)syscall(SYS_rt_sigprocmask, how, set, old, sizeof(uint64_t));
}

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif
#ifndef MREMAP_DONTUNMAP
#define MREMAP_DONTUNMAP 4
#endif
#ifndef MADV_WIPEONFORK
#define MADV_WIPEONFORK 18
#define MADV_KEEPONFORK 19
#endif
#ifndef MADV_DONTNEED_LOCKED
#define MADV_DONTNEED_LOCKED 24
#endif

#define ROUND_UP(x, a)   (((x) + (a) - 1) & ~((uintptr_t)(a) - 1))
#define ROUND_DOWN(x, a) ((x) & ~((uintptr_t)(a) - 1))

#endif
