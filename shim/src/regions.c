/*
 * The region table: our pieces sorted by address, in memory mapped with raw
 * syscalls (locked). A sorted array keeps lookups a binary search and the
 * code short; insertions move entries, which is cheap next to the mmap
 * system call each one accompanies.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <string.h>

#include "shim.h"
#include "sys.h"

struct fbmm_piece *fbmm_rt;
size_t fbmm_rt_n;
static size_t rt_cap;

/* Lowest and highest address we ever mapped: a lock-free first test that
 * keeps munmap/mprotect/MAP_FIXED of foreign memory off the lock. */
static uintptr_t span_lo = UINTPTR_MAX, span_hi;

int fbmm_rt_maybe(uintptr_t a, size_t len)
{
    return a < __atomic_load_n(&span_hi, __ATOMIC_ACQUIRE) &&
           a + len > __atomic_load_n(&span_lo, __ATOMIC_ACQUIRE);
}

void fbmm_rt_reset(void)
{
    fbmm_rt_n = 0;
}

size_t fbmm_rt_lower(uintptr_t a)
{
    size_t lo = 0, hi = fbmm_rt_n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (fbmm_rt[mid].addr + fbmm_rt[mid].len <= a) lo = mid + 1; else hi = mid;
    }
    return lo;
}

struct fbmm_piece *fbmm_rt_find(uintptr_t a)
{
    size_t i = fbmm_rt_lower(a);
    return i < fbmm_rt_n && fbmm_rt[i].addr <= a ? &fbmm_rt[i] : NULL;
}

static int rt_reserve(size_t want)
{
    if (want <= rt_cap) return 0;
    size_t ncap = rt_cap ? rt_cap * 2 : 1024;
    while (ncap < want) ncap *= 2;
    void *p = fbmm_rt
        ? sys_mremap(fbmm_rt, rt_cap * sizeof *fbmm_rt, ncap * sizeof *fbmm_rt, MREMAP_MAYMOVE, NULL)
        : sys_mmap(NULL, ncap * sizeof *fbmm_rt, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return -1;
    fbmm_rt = p;
    rt_cap = ncap;
    return 0;
}

int fbmm_rt_insert(const struct fbmm_piece *p)
{
    if (rt_reserve(fbmm_rt_n + 1)) return -1;
    size_t i = fbmm_rt_lower(p->addr);
    memmove(&fbmm_rt[i + 1], &fbmm_rt[i], (fbmm_rt_n - i) * sizeof *fbmm_rt);
    fbmm_rt[i] = *p;
    fbmm_rt_n++;
    fbmm_rt_span(p->addr, p->len);
    return (int)i;
}

void fbmm_rt_span(uintptr_t a, size_t len)
{
    if (a < span_lo) __atomic_store_n(&span_lo, a, __ATOMIC_RELEASE);
    if (a + len > span_hi) __atomic_store_n(&span_hi, a + len, __ATOMIC_RELEASE);
}

void fbmm_rt_remove(size_t i, size_t n)
{
    memmove(&fbmm_rt[i], &fbmm_rt[i + n], (fbmm_rt_n - i - n) * sizeof *fbmm_rt);
    fbmm_rt_n -= n;
}

int fbmm_rt_split(uintptr_t a)
{
    struct fbmm_piece *p = fbmm_rt_find(a);
    if (!p || p->addr == a) return 0;
    struct fbmm_piece right = *p;
    size_t cut = a - p->addr;
    right.addr = a;
    right.len -= cut;
    if (!(right.flags & P_ANON)) right.off += cut;
    right.flags &= ~(P_HEAD | P_CACHED);
    right.blk = 0;
    p->len = cut;
    return fbmm_rt_insert(&right) < 0 ? -1 : 0;
}

/* Two pieces are one kernel VMA when addresses and offsets are contiguous and
 * the attributes match; keep the table the same (fewer entries). A block
 * head never merges into its left neighbour; P_FOREIGN pieces never merge
 * (they may map different ancestors' files). */
static int mergeable(const struct fbmm_piece *l, const struct fbmm_piece *r)
{
    return l->addr + l->len == r->addr && !(r->flags & P_HEAD) &&
           !((l->flags | r->flags) & (P_ANON | P_FOREIGN)) && l->off + l->len == r->off &&
           l->prot == r->prot && (l->flags & ~P_HEAD) == r->flags;
}

void fbmm_rt_merge_around(uintptr_t a)
{
    size_t i = fbmm_rt_lower(a);
    if (i >= fbmm_rt_n) return;
    if (i + 1 < fbmm_rt_n && mergeable(&fbmm_rt[i], &fbmm_rt[i + 1])) {
        fbmm_rt[i].len += fbmm_rt[i + 1].len;
        fbmm_rt_remove(i + 1, 1);
    }
    if (i > 0 && mergeable(&fbmm_rt[i - 1], &fbmm_rt[i])) {
        fbmm_rt[i - 1].len += fbmm_rt[i].len;
        fbmm_rt_remove(i, 1);
    }
}

/* ---- the shim's share of vm.max_map_count ------------------------------
 *
 * Every piece is a VMA of its own: MAP_SHARED mappings of scattered file
 * offsets do not merge, where the private anonymous mappings they stand for
 * usually would (glibc's mmapped chunks, an allocator's extents). A program
 * with many live blocks would so reach the kernel's limit on mappings
 * (vm.max_map_count, 65,530 by default), after which every mmap, brk growth
 * or VMA split fails, the fallback allocator's included. So new mappings
 * are ours only while the table holds under half of the limit; the rest
 * goes to the next allocator or the kernel (merging as natively), and the
 * other half stays the program's. The limit is read once, when the table
 * first gets near it (a small process never reads it). */
#define DEFAULT_MAX_MAP_COUNT 65530
#define ROOM_CHECK_FROM       256
static size_t rt_room_max;  /* 0: not read yet */

static size_t max_map_count(void)
{
    char buf[32];
    long fd = syscall(SYS_openat, AT_FDCWD, "/proc/sys/vm/max_map_count", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return DEFAULT_MAX_MAP_COUNT;
    long n = syscall(SYS_read, fd, buf, sizeof buf - 1);
    syscall(SYS_close, fd);
    size_t v = 0;
    for (long i = 0; i < n && buf[i] >= '0' && buf[i] <= '9'; i++) v = v * 10 + (size_t)(buf[i] - '0');
    return v ? v : DEFAULT_MAX_MAP_COUNT;
}

int fbmm_rt_room(void)
{
    if (fbmm_rt_n < ROOM_CHECK_FROM) return 1;
    if (!rt_room_max) rt_room_max = max_map_count() / 2;
    return fbmm_rt_n < rt_room_max;
}

/* ---- block heads filter ---------------------------------------------- */

#define HEADS_BITS 14
static uint32_t heads[1u << HEADS_BITS];

static inline size_t head_slot(uintptr_t a)
{
    return (size_t)(((uint64_t)(a >> 12) * 0x9E3779B97F4A7C15ull) >> (64 - HEADS_BITS));
}
void fbmm_heads_add(uintptr_t a) { __atomic_add_fetch(&heads[head_slot(a)], 1, __ATOMIC_RELEASE); }
void fbmm_heads_del(uintptr_t a) { __atomic_sub_fetch(&heads[head_slot(a)], 1, __ATOMIC_RELEASE); }
int  fbmm_heads_maybe(uintptr_t a)
{
    return __atomic_load_n(&heads[head_slot(a)], __ATOMIC_ACQUIRE) != 0;
}
