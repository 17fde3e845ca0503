/*
 * Operations on our mappings (all locked). Every piece maps a range of the
 * arena backing with MAP_SHARED; the kernel's own munmap/mprotect work on it
 * unchanged, and these functions keep the region table and the file in step:
 * memory leaves the file (hole punch) exactly when anonymous memory would
 * be freed, so a program sees the same semantics, only other placement.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>

#include "shim.h"
#include "sys.h"

#define HUGE_ALIGN (2ul << 20)
/* mmap flags that keep their meaning on a shared file mapping. */
#define KEEP_FLAGS (MAP_FIXED | MAP_FIXED_NOREPLACE | MAP_POPULATE | MAP_NONBLOCK | \
                    MAP_LOCKED | MAP_NORESERVE | MAP_32BIT)

/* Frees the file range of a piece the kernel no longer maps. Offsets return
 * to the allocator only once punched, so reused ranges always read zero;
 * pool pages go back to the daemon to be zeroed. */
static void release(const struct fbmm_piece *p)
{
    /* P_KEEP/P_FOREIGN: shared memory another process may still map (as
     * the kernel keeps shared anonymous memory until its last mapping
     * goes): left allocated until the arena file goes away. */
    if (p->flags & (P_ANON | P_KEEP | P_FOREIGN)) return;
    if (fbmm_pool_owns(p->off)) {
        /* A piece may run past the window (mremap growth merged with it). */
        size_t in = fbmm_pool_window_part(p->off, p->len);
        fbmm_pool_give(p->off, in);
        if (in == p->len) return;
        struct fbmm_piece rest = *p;
        rest.off += in;
        rest.len -= in;
        release(&rest);
        return;
    }
    if (fbmm_punch_after_unlock(p->off, p->len) == 0) return;
    if (fbmm_arena_punch(p->off, p->len) == 0) fbmm_off_free(p->off, p->len);
}

static void drop(size_t i, size_t n)
{
    for (size_t k = i; k < i + n; k++) {
        struct fbmm_piece *p = fbmm_rt_at(k);
        fbmm_cache_forget(p);
        if (p->flags & P_HEAD) fbmm_heads_del(p->addr);
    }
    fbmm_rt_remove(i, n);
}

void fbmm_vm_forget(uintptr_t a, size_t len)
{
    uintptr_t end = a + len;
    if (!len || !fbmm_rt_maybe(a, len)) return;
    fbmm_mag_revoke_range(a, len);
    fbmm_rt_split(a);
    fbmm_rt_split(end);
    size_t i = fbmm_rt_lower(a), j = i;
    while (j < fbmm_rt_n && fbmm_rt_at(j)->addr < end) release(fbmm_rt_at(j++));
    drop(i, j - i);
}

void *fbmm_vm_map(void *addr, size_t len, int prot, int flags, uint32_t pflags)
{
    /* Our share of the kernel's mappings is used up: the caller falls back
     * (the next allocator, or the kernel's own anonymous memory). */
    if (!fbmm_rt_room()) {
        static int once;
        fbmm_say_once(&once, "falling back to anonymous memory for new mappings: ",
                      "the shim's pieces reached half of vm.max_map_count", NULL);
        errno = ENOMEM;
        return MAP_FAILED;
    }
    if (fbmm_arena_ready() < 0) return MAP_FAILED;
    /* The backing descriptor is gone (a raw close or dup2 by the program):
     * never map whatever now has its number; fall back. */
    if (!fbmm_arena_fd_ok()) {
        errno = ENOMEM;
        return MAP_FAILED;
    }
    /* Pre-zeroed pages when the pool has them: mapped populated, so the
     * program's first touches do not fault. PROT_NONE is a reservation. */
    uint64_t off;
    int pool_ok = !(pflags & P_NOPOOL);
    pflags &= ~(uint32_t)P_NOPOOL;
    int pooled = pool_ok && prot != PROT_NONE && !(pflags & P_SHARED) && fbmm_pool_take(len, &off) == 0;
    if (!pooled) off = fbmm_off_alloc(len, len >= HUGE_ALIGN ? HUGE_ALIGN : fbmm_page);
    if (off == FBMM_NO_OFF) {
        errno = ENOMEM;
        return MAP_FAILED;
    }
    void *p = sys_mmap(addr, len, prot, MAP_SHARED | (flags & KEEP_FLAGS) | (pooled ? MAP_POPULATE : 0),
                       fbmm_arena.mem_fd, (off_t)off);
    int err = errno;
    if (p != MAP_FAILED && (flags & MAP_FIXED_NOREPLACE) && p != addr) {
        sys_munmap(p, len);  /* a kernel older than 4.17 took it as a hint */
        p = MAP_FAILED;
        err = EEXIST;
    }
    if (p == MAP_FAILED) {
        if (pooled) fbmm_pool_untake(off, len);  /* never mapped, so still zero */
        else fbmm_off_free(off, len);
        errno = err;
        return MAP_FAILED;
    }
    fbmm_vm_advise_huge(p, len);
    if (flags & MAP_FIXED) fbmm_vm_forget((uintptr_t)p, len);  /* replaced */
    struct fbmm_piece pc = { .addr = (uintptr_t)p, .len = len, .off = off, .prot = (uint32_t)prot,
                             .flags = pflags, .blk = (pflags & P_HEAD) ? len : 0 };
    if (fbmm_rt_insert(&pc) < 0) {
        sys_munmap(p, len);
        if (pooled) fbmm_pool_give(off, len);
        else fbmm_off_free(off, len);
        errno = ENOMEM;
        return MAP_FAILED;
    }
    if (pflags & P_HEAD) fbmm_heads_add((uintptr_t)p);
    fbmm_rt_merge_around((uintptr_t)p);
    return p;
}

int fbmm_vm_unmap(uintptr_t a, size_t len)
{
    if (sys_munmap((void *)a, len) < 0) return -1;
    fbmm_vm_forget(a, ROUND_UP(len, fbmm_page));
    return 0;
}

/* The range must read zero but its file range cannot be punched now: a
 * lazy fork copy may still need it and the daemon did not take it back
 * (MADV_REMOVE would free it under the copy). Writing zeros through the
 * mapping goes through the write-protect faults that give the copy its
 * pages first; without copies, the kernel punches. */
static int zero_in_place(const struct fbmm_piece *p, uintptr_t s, size_t len)
{
    if (!fbmm_cow_linked()) return sys_madvise((void *)s, len, MADV_REMOVE);  /* needs PROT_WRITE */
    if (!(p->prot & PROT_WRITE) && sys_mprotect((void *)s, len, PROT_READ | PROT_WRITE) < 0) return -1;
    memset((void *)s, 0, len);
    if (!(p->prot & PROT_WRITE)) sys_mprotect((void *)s, len, (int)p->prot);
    return 0;
}

int fbmm_vm_discard(uintptr_t a, size_t len, int advice)
{
    uintptr_t end = a + len, pos = a;
    size_t i = fbmm_rt_lower(a);
    int ret = 0, err = 0;
    while (pos < end) {
        const struct fbmm_piece *p = i < fbmm_rt_n && fbmm_rt_at(i)->addr < end ? fbmm_rt_at(i) : NULL;
        uintptr_t gap_end = p ? (p->addr > pos ? p->addr : pos) : end;
        if (gap_end > pos && sys_madvise((void *)pos, gap_end - pos, advice) < 0) {
            ret = -1;
            err = errno;
        }
        if (!p) break;
        uintptr_t s = gap_end, t = p->addr + p->len < end ? p->addr + p->len : end;
        int r;
        if (p->flags & (P_ANON | P_SHARED))  /* shared: the kernel's shmem semantics */
            r = sys_madvise((void *)s, t - s, advice);
        else if ((r = fbmm_arena_punch(p->off + (s - p->addr), t - s)) < 0)
            r = zero_in_place(p, s, t - s);
        if (r < 0) {
            ret = -1;
            err = errno;
        }
        pos = t;
        i++;
    }
    errno = err;
    return ret;
}

int fbmm_vm_any(uintptr_t a, size_t len, uint32_t flags)
{
    for (size_t i = fbmm_rt_lower(a); i < fbmm_rt_n && fbmm_rt_at(i)->addr < a + len; i++)
        if (fbmm_rt_at(i)->flags & flags) return 1;
    return 0;
}

void fbmm_vm_set(uintptr_t a, size_t len, uint32_t set, uint32_t clear, int prot)
{
    uintptr_t end = a + len;
    fbmm_mag_revoke_range(a, len);
    fbmm_rt_split(a);
    fbmm_rt_split(end);
    struct fbmm_piece *p;
    for (size_t i = fbmm_rt_lower(a); i < fbmm_rt_n && (p = fbmm_rt_at(i))->addr < end; i++) {
        p->flags = (p->flags | set) & ~clear;
        if (prot >= 0) p->prot = (uint32_t)prot;
    }
    /* Re-merge from the right so that indices stay valid. */
    for (size_t i = fbmm_rt_lower(end); i-- > fbmm_rt_lower(a);)
        fbmm_rt_merge_around(fbmm_rt_at(i)->addr);
}
