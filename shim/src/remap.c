/*
 * mremap of our mappings (locked): moving, growing and shrinking pieces
 * keeps the region table and the arena file in step (vm.c holds the other
 * operations); fbmm_vm_remap_anon is the fallback for memory a fork left
 * anonymous, and fbmm_copy_sparse the copy both paths use.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>
#include <sys/sysinfo.h>

#include "shim.h"
#include "sys.h"

/* Moves one piece's mapping to dst. mremap moves the page tables (no
 * refaults); if the piece spans several kernel VMAs (split by something we
 * do not track, e.g. mlock of a part) mremap refuses, and mapping the same
 * file offsets at dst is an equally exact move of a shared mapping. */
static int move_piece(const struct fbmm_piece *p, uintptr_t dst)
{
    if (sys_mremap((void *)p->addr, p->len, p->len, MREMAP_MAYMOVE | MREMAP_FIXED,
                   (void *)dst) != MAP_FAILED)
        return 0;
    if (p->flags & P_FOREIGN) {
        /* An ancestor's file, of which we hold no descriptor: duplicate the
         * shared mapping itself (old_size 0), then drop the old one. */
        if (sys_mremap((void *)p->addr, 0, p->len, MREMAP_MAYMOVE | MREMAP_FIXED,
                       (void *)dst) == MAP_FAILED)
            return -1;
        if (p->prot != (uint32_t)(PROT_READ | PROT_WRITE)) sys_mprotect((void *)dst, p->len, (int)p->prot);
        sys_munmap((void *)p->addr, p->len);
        return 0;
    }
    if (sys_mmap((void *)dst, p->len, (int)p->prot, MAP_SHARED | MAP_FIXED,
                 fbmm_arena.mem_fd, (off_t)p->off) == MAP_FAILED)
        return -1;
    sys_munmap((void *)p->addr, p->len);
    return 0;
}

/* Re-files the table entries of [a, a+len), already moved to dst. */
static void refile(uintptr_t a, size_t len, uintptr_t dst)
{
    size_t i;
    while ((i = fbmm_rt_lower(a)) < fbmm_rt_n && fbmm_rt_at(i)->addr < a + len) {
        struct fbmm_piece *node = fbmm_rt_at(i);
        /* mremap of freed memory: the block is no longer ours to reuse. */
        fbmm_cache_forget(node);
        struct fbmm_piece e = *node;
        e.flags &= ~P_CACHED;
        fbmm_rt_remove(i, 1);
        if (e.flags & P_HEAD) fbmm_heads_del(e.addr);
        e.addr = dst + (e.addr - a);
        if (e.flags & P_HEAD) fbmm_heads_add(e.addr);
        fbmm_rt_insert(&e);  /* cannot fail: we just made room */
    }
}

void *fbmm_vm_remap(uintptr_t a, size_t ol, size_t nl, int flags, uintptr_t na)
{
    uintptr_t end = a + ol;
    size_t i = fbmm_rt_lower(a);
    if (i >= fbmm_rt_n || fbmm_rt_at(i)->addr >= end) {
        errno = ENOENT;  /* not ours: the kernel's business */
        return MAP_FAILED;
    }
    /* Natively the old range must lie in one VMA; ours must be all ours,
     * and all shared or all private. */
    uint32_t kind = fbmm_rt_at(i)->flags & P_SHARED;
    for (uintptr_t pos = a; pos < end; i++) {
        if (i >= fbmm_rt_n || fbmm_rt_at(i)->addr > pos || (fbmm_rt_at(i)->flags & P_ANON) ||
            (fbmm_rt_at(i)->flags & P_SHARED) != kind) {
            errno = EFAULT;
            return MAP_FAILED;
        }
        pos = fbmm_rt_at(i)->addr + fbmm_rt_at(i)->len;
    }
    if ((flags & MREMAP_DONTUNMAP) ||
        ((flags & MREMAP_FIXED) && na < end && a < na + nl)) {
        errno = EINVAL;
        return MAP_FAILED;
    }
    fbmm_mag_revoke_range(a, ol);  /* a block moving or changing size leaves its magazine */
    if (fbmm_rt_split(a) < 0 || fbmm_rt_split(end) < 0) {
        errno = ENOMEM;
        return MAP_FAILED;
    }
    if (nl < ol) {
        if (fbmm_vm_unmap(a + nl, ol - nl) < 0) return MAP_FAILED;
        ol = nl;
        end = a + ol;
        if (!(flags & MREMAP_FIXED)) return (void *)a;
    }
    if (nl == ol && !(flags & MREMAP_FIXED)) return (void *)a;

    struct fbmm_piece last = *fbmm_rt_at(fbmm_rt_lower(end - 1));
    size_t delta = nl - ol;
    uint64_t ext = FBMM_NO_OFF;
    /* (A fork child that kept only shared pieces has no arena yet.) */
    if (delta && (fbmm_arena_ready() < 0 || !fbmm_arena_fd_ok())) {
        errno = ENOMEM;  /* no backing to grow into: fbmm_vm_remap_anon */
        return MAP_FAILED;
    }
    if (delta) {
        /* File offsets right after the last piece keep it one VMA (never
         * out of the pool's window: its pages are handed out by the run). */
        if (!(last.flags & P_FOREIGN) && !fbmm_pool_owns(last.off) &&
            fbmm_off_extend(last.off + last.len, delta) == 0)
            ext = last.off + last.len;
        else if ((ext = fbmm_off_alloc(delta, fbmm_page)) == FBMM_NO_OFF) {
            errno = ENOMEM;
            return MAP_FAILED;
        }
    }
    /* The extension is fresh memory of our own file: shared with nobody
     * yet (natively, touching it would SIGBUS on shared anonymous memory). */
    struct fbmm_piece xp = { .len = delta, .off = ext, .prot = last.prot,
                             .flags = last.flags & ~(P_HEAD | P_KEEP | P_FOREIGN) };

    if (delta && !(flags & MREMAP_FIXED)) {
        /* Grow in place when the addresses after the region are free. */
        void *r = sys_mmap((void *)end, delta, (int)last.prot,
                           MAP_SHARED | MAP_FIXED_NOREPLACE, fbmm_arena.mem_fd, (off_t)ext);
        if (r == (void *)end) {
            fbmm_vm_advise_huge(r, delta);
            xp.addr = end;
            fbmm_rt_insert(&xp);
            fbmm_rt_merge_around(end);
            return (void *)a;
        }
        if (r != MAP_FAILED) sys_munmap(r, delta);
        if (!(flags & MREMAP_MAYMOVE)) {
            fbmm_off_free(ext, delta);
            errno = ENOMEM;
            return MAP_FAILED;
        }
    }

    uintptr_t dst;
    if (flags & MREMAP_FIXED) {
        dst = na;
        if (fbmm_vm_unmap(na, nl) < 0) goto fail_ext;
    } else {
        void *r = sys_mmap(NULL, nl, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (r == MAP_FAILED) goto fail_ext;
        dst = (uintptr_t)r;
    }
    if (delta && sys_mmap((void *)(dst + ol), delta, (int)last.prot, MAP_SHARED | MAP_FIXED,
                          fbmm_arena.mem_fd, (off_t)ext) == MAP_FAILED)
        goto fail_dst;
    if (delta) fbmm_vm_advise_huge((void *)(dst + ol), delta);

    size_t first = fbmm_rt_lower(a), k = first;
    for (; k < fbmm_rt_n && fbmm_rt_at(k)->addr < end; k++) {
        const struct fbmm_piece *p = fbmm_rt_at(k);
        /* A moved mapping leaves the userfaultfd: its pages stop being
         * copied on write or filled on first touch, so whatever a fork
         * copy still shares with us there is settled first. */
        if (!(p->flags & (P_SHARED | P_FOREIGN)) && fbmm_cow_settle(p->off, p->len) < 0) break;
        if (move_piece(p, dst + (p->addr - a)) < 0) break;
    }
    if (k < fbmm_rt_n && fbmm_rt_at(k)->addr < end) {
        int err = errno;
        for (size_t b = first; b < k; b++) {
            struct fbmm_piece moved = *fbmm_rt_at(b);
            moved.addr = dst + (fbmm_rt_at(b)->addr - a);
            move_piece(&moved, fbmm_rt_at(b)->addr);
        }
        errno = err;
        goto fail_dst;
    }
    refile(a, ol, dst);
    if (delta) {
        xp.addr = dst + ol;
        fbmm_rt_insert(&xp);
        fbmm_rt_merge_around(xp.addr);
    }
    return (void *)dst;

fail_dst:
    if (!(flags & MREMAP_FIXED)) sys_munmap((void *)dst, nl);
    else if (delta) sys_munmap((void *)(dst + ol), delta);
fail_ext:
    if (delta) {
        int err = errno;
        if (fbmm_arena_punch(ext, delta) == 0) fbmm_off_free(ext, delta);
        errno = err;
    }
    return MAP_FAILED;
}

/* Whether a page of a shared memory mapping that mincore reports absent is
 * surely a hole (reads zero): only when no swap is configured, since a
 * swapped-out shmem page is absent from the page cache too. */
static int absent_is_hole(void)
{
    struct sysinfo si;
    return sysinfo(&si) == 0 && si.totalswap == 0;
}

static int page_zero(const char *p)
{
    const uint64_t *w = (const uint64_t *)p;
    for (size_t i = 0; i < fbmm_page / sizeof *w; i++)
        if (w[i]) return 0;
    return 1;
}

void fbmm_copy_sparse(const char *src, char *dst, size_t len)
{
    int sparse = absent_is_hole();
    unsigned char vec[512];
    for (size_t done = 0; done < len;) {
        size_t chunk = len - done < sizeof vec * fbmm_page ? len - done : sizeof vec * fbmm_page;
        int know = sparse && syscall(SYS_mincore, src + done, chunk, vec) == 0;
        for (size_t k = 0; k < chunk; k += fbmm_page) {
            if (know && !(vec[k / fbmm_page] & 1)) continue;  /* a hole */
            if (!page_zero(src + done + k)) memcpy(dst + done + k, src + done + k, fbmm_page);
        }
        done += chunk;
    }
}

void *fbmm_vm_remap_anon(uintptr_t a, size_t ol, size_t nl, int flags, uintptr_t na)
{
    fbmm_mag_revoke_range(a, ol);
    size_t first = fbmm_rt_lower(a), delta = nl - ol;
    int prot = first < fbmm_rt_n ? (int)fbmm_rt_at(first)->prot : PROT_READ | PROT_WRITE;
    uintptr_t target = 0;
    void *reserved = MAP_FAILED;
    if (flags & MREMAP_FIXED) {
        if (fbmm_vm_unmap(na, nl) < 0) return MAP_FAILED;
        target = na;
    } else {
        /* In place if the addresses behind are free (held meanwhile). */
        reserved = sys_mmap((void *)(a + ol), delta, PROT_NONE,
                            MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0);
        if (reserved == (void *)(a + ol)) {
            target = a;
        } else {
            if (reserved != MAP_FAILED) sys_munmap(reserved, delta);
            reserved = MAP_FAILED;
            if (!(flags & MREMAP_MAYMOVE)) {
                errno = ENOMEM;
                return MAP_FAILED;
            }
        }
    }
    char *m = sys_mmap(NULL, nl, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    int readable = 1;
    for (size_t i = first; i < fbmm_rt_n && fbmm_rt_at(i)->addr < a + ol; i++)
        readable &= !!(fbmm_rt_at(i)->prot & PROT_READ);
    if (m == MAP_FAILED || (!readable && sys_mprotect((void *)a, ol, PROT_READ) < 0)) goto fail;
    fbmm_copy_sparse((const char *)a, m, ol);
    if (prot != (PROT_READ | PROT_WRITE)) sys_mprotect(m, nl, prot);
    if (target && sys_mremap(m, nl, nl, MREMAP_MAYMOVE | MREMAP_FIXED, (void *)target) == MAP_FAILED) goto fail;
    if (target == a) fbmm_vm_forget(a, ol);  /* the move replaced it */
    else fbmm_vm_unmap(a, ol);
    return target ? (void *)target : m;

fail:;
    int err = errno;
    if (!readable)  /* give the old pieces their protections back */
        for (size_t i = first; i < fbmm_rt_n && fbmm_rt_at(i)->addr < a + ol; i++)
            sys_mprotect((void *)fbmm_rt_at(i)->addr, fbmm_rt_at(i)->len, (int)fbmm_rt_at(i)->prot);
    if (m != MAP_FAILED) sys_munmap(m, nl);
    if (reserved != MAP_FAILED) sys_munmap(reserved, delta);
    errno = err ? err : ENOMEM;
    return MAP_FAILED;
}
