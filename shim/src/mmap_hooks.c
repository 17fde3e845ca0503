/*
 * Interposers for the mmap family. Anonymous mappings (private or shared) of
 * at least FBMM_MIN_SIZE become shared mappings of the arena; every other call goes
 * to the kernel unchanged, and calls that touch our ranges (munmap, MAP_FIXED
 * over them, mremap, madvise, mprotect) keep the region table exact.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>

#include "shim.h"
#include "sys.h"

/* Not redirected: stacks (MAP_GROWSDOWN cannot be a file mapping; MAP_STACK
 * marks thread stacks, which the kernel treats specially), MAP_HUGETLB
 * (explicit huge pages need hugetlbfs, whose 2 MiB granularity would change
 * munmap/madvise semantics), MAP_SHARED_VALIDATE, and every file, memfd or
 * posix shm mapping (not MAP_ANONYMOUS). MAP_SHARED|MAP_ANONYMOUS memory is
 * redirected as a P_SHARED piece: it stays shared with fork children (fork.c
 * leaves it mapped), and madvise on it goes to the kernel, which gives shmem
 * semantics (MADV_DONTNEED keeps the data, MADV_REMOVE frees it for all). */
static int redirectable_kind(int flags)
{
    return fbmm_cfg.active && !fbmm_depth && (flags & MAP_ANONYMOUS) &&
           ((flags & MAP_TYPE) == MAP_PRIVATE || (flags & MAP_TYPE) == MAP_SHARED) &&
           !(flags & (MAP_GROWSDOWN | MAP_STACK | MAP_HUGETLB));
}

FBMM_EXPORT void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    fbmm_init();
    int kind = redirectable_kind(flags);
    if (kind && len >= fbmm_cfg.min_size) {
        len = ROUND_UP(len, fbmm_page);
        fbmm_arena_grow_ahead(len);
        fbmm_lock();
        uint32_t pflags = (flags & MAP_TYPE) == MAP_SHARED ? P_SHARED : 0;
        void *p = fbmm_vm_map(addr, len, prot, flags, pflags);
        if (p == MAP_FAILED && errno == ENOMEM && fbmm_clean_release())
            p = fbmm_vm_map(addr, len, prot, flags, pflags);  /* slots' offsets freed */
        int err = errno;
        fbmm_unlock();
        if (p != MAP_FAILED) return p;
        if (fbmm_cfg.strict) {  /* the caller's error, or no memory outside the mount */
            errno = err == EEXIST || err == EINVAL || err == EPERM ? err : ENOMEM;
            return MAP_FAILED;
        }
        /* Whatever failed (arena, capacity, the shim's share of
         * vm.max_map_count, a backing the kernel will not map so), the
         * kernel's answer to the call itself is the native one: a caller's
         * error (EEXIST, EINVAL, EPERM) fails there the same way. */
        /* fall back to anonymous memory (shared stays shared: flags kept) */
    } else if (kind && !(flags & MAP_FIXED)) {
        /* Only its size keeps it out: counted for the exit report (report.c). */
        fbmm_report_small_mmap(len);
    }
    int fixed = (flags & MAP_FIXED) && !fbmm_depth && fbmm_rt_maybe((uintptr_t)addr, len);
    if (!fixed) return sys_mmap(addr, len, prot, flags, fd, off);
    fbmm_lock();
    void *p = sys_mmap(addr, len, prot, flags, fd, off);
    int err = errno;
    if (p != MAP_FAILED) fbmm_vm_forget((uintptr_t)p, ROUND_UP(len, fbmm_page));
    fbmm_unlock();
    errno = err;
    return p;
}

FBMM_EXPORT void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off)
    __attribute__((alias("mmap")));

FBMM_EXPORT int munmap(void *addr, size_t len)
{
    fbmm_init();
    if (fbmm_depth || !fbmm_rt_maybe((uintptr_t)addr, len)) return sys_munmap(addr, len);
    fbmm_lock();
    int r = fbmm_vm_unmap((uintptr_t)addr, len);
    int err = errno;
    fbmm_unlock();
    errno = err;
    return r;
}

FBMM_EXPORT void *mremap(void *old, size_t ol, size_t nl, int flags, ...)
{
    void *na = NULL;
    if (flags & MREMAP_FIXED) {
        va_list ap;
        va_start(ap, flags);
        na = va_arg(ap, void *);
        va_end(ap);
    }
    fbmm_init();
    uintptr_t a = (uintptr_t)old;
    if (fbmm_depth || !fbmm_rt_maybe(a, ol ? ol : 1) || (a & (fbmm_page - 1)) || !nl ||
        (flags & ~(MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP)) ||
        ((flags & MREMAP_FIXED) && !(flags & MREMAP_MAYMOVE)))
        return sys_mremap(old, ol, nl, flags, na);  /* the kernel checks the rest */
    fbmm_lock();
    void *r;
    struct fbmm_piece *p = fbmm_rt_find(a);
    if (!ol && p && (p->flags & P_SHARED)) {
        /* Duplicating shared memory (old_size 0): the kernel maps the same
         * pages again, untracked (a plain mapping of the same file, which
         * behaves natively). Our range may now be mapped twice: keep it. */
        r = sys_mremap(old, 0, nl, flags, na);
        if (r != MAP_FAILED) fbmm_vm_set(a, ROUND_UP(nl, fbmm_page), P_KEEP, 0, -1);
    } else if (!ol) {
        /* Duplicating a mapping (old_size 0) works only on shared mappings;
         * a private anonymous one, which ours stand for, refuses it. */
        errno = p ? EINVAL : ENOENT;
        r = MAP_FAILED;
    } else {
        size_t olr = ROUND_UP(ol, fbmm_page), nlr = ROUND_UP(nl, fbmm_page);
        r = fbmm_vm_remap(a, olr, nlr, flags, (uintptr_t)na);
        /* Growth with the backing descriptor gone: anonymous memory (but
         * shared must stay shared). */
        if (r == MAP_FAILED && errno == ENOMEM && fbmm_arena.mem_fd < 0 && nlr > olr &&
            !fbmm_vm_any(a, olr, P_SHARED))
            r = fbmm_vm_remap_anon(a, olr, nlr, flags, (uintptr_t)na);
    }
    int err = errno;
    fbmm_unlock();
    if (r == MAP_FAILED && err == ENOENT) return sys_mremap(old, ol, nl, flags, na);
    errno = err;
    return r;
}

FBMM_EXPORT int madvise(void *addr, size_t len, int advice)
{
    fbmm_init();
    uintptr_t a = (uintptr_t)addr;
    if (fbmm_depth || !fbmm_rt_maybe(a, len) || (a & (fbmm_page - 1)))
        return sys_madvise(addr, len, advice);
    len = ROUND_UP(len, fbmm_page);
    int r, err;
    fbmm_lock();
    switch (advice) {
    case MADV_DONTNEED: case MADV_FREE: case MADV_REMOVE: case MADV_DONTNEED_LOCKED:
        /* On a shared mapping these would keep the data in the file; a hole
         * punch frees it and makes it read back as zero, as for anon memory.
         * (P_SHARED pieces get the kernel's own shmem behaviour.) */
        r = fbmm_vm_discard(a, len, advice);
        err = errno;
        break;
    case MADV_WIPEONFORK: case MADV_KEEPONFORK:
        /* The kernel refuses these on shared mappings; the fork child code
         * implements them (for the whole range, which should be ours).
         * Shared anonymous memory refuses WIPEONFORK natively too. */
        if (advice == MADV_WIPEONFORK && fbmm_vm_any(a, len, P_SHARED)) {
            r = -1;
            err = EINVAL;
            break;
        }
        fbmm_vm_set(a, len, advice == MADV_WIPEONFORK ? P_WIPEFORK : 0,
                    advice == MADV_WIPEONFORK ? 0 : P_WIPEFORK, -1);
        r = 0;
        err = 0;
        break;
    default:
        r = sys_madvise(addr, len, advice);
        err = errno;
        if (r == 0 && (advice == MADV_DONTFORK || advice == MADV_DOFORK))
            fbmm_vm_set(a, len, advice == MADV_DONTFORK ? P_DONTFORK : 0,
                        advice == MADV_DONTFORK ? 0 : P_DONTFORK, -1);
    }
    fbmm_unlock();
    errno = err;
    return r;
}

/* posix_madvise returns the error instead of setting errno, and glibc's calls
 * the internal madvise, so it needs its own interposer. */
FBMM_EXPORT int posix_madvise(void *addr, size_t len, int advice)
{
    /* POSIX_MADV_DONTNEED is a no-op hint in glibc: do likewise. */
    if (advice == POSIX_MADV_DONTNEED) return 0;
    int saved = errno;
    int r = madvise(addr, len, advice) < 0 ? errno : 0;
    errno = saved;
    return r;
}

FBMM_EXPORT int mprotect(void *addr, size_t len, int prot)
{
    fbmm_init();
    if (fbmm_depth || !fbmm_rt_maybe((uintptr_t)addr, len)) return sys_mprotect(addr, len, prot);
    fbmm_lock();
    int r = sys_mprotect(addr, len, prot);
    int err = errno;
    if (r == 0) fbmm_vm_set((uintptr_t)addr, ROUND_UP(len, fbmm_page), 0, 0, prot);
    fbmm_unlock();
    errno = err;
    return r;
}
