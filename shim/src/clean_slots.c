/*
 * Clean slots (locked), used by malloc_hooks.c: malloc blocks of up to
 * 2 MiB that stay mapped while empty. Their file range is a hole, so they
 * read zero (calloc may take them) and hold no memory, only address space;
 * handing one out again costs no system call.
 *
 * They come from two places:
 *  - free(), when a block goes neither into a magazine nor into the
 *    (resident) cache, punches it in place instead of unmapping it;
 *  - big_alloc, when no cached block or slot fits, maps several blocks of
 *    that length with one mmap (under 2 MiB in all, so that no huge page
 *    spans two blocks; never from the pre-zeroed pool), hands out the
 *    first and keeps the rest here.
 * Before (issue 15), every block of a burst cost an mmap, and at free a
 * munmap and a hole punch: 1,000 live 256 KiB blocks allocated and freed
 * ran 3x native, where glibc serves them from its heap or one mmap each.
 *
 * A slot is its piece, flagged P_HEAD|P_CACHED|P_CLEAN with `blk` its
 * length, linked into its length's list through the piece itself (table
 * nodes never move). Whatever changes a piece behind our back (munmap,
 * MAP_FIXED or mremap over freed memory) unlinks it through
 * fbmm_clean_forget; mprotect or a split leaves it linked but no longer
 * whole, and taking checks that. Bounded by address space: SLOTS_MAX slots
 * and SLOT_BYTES_MAX bytes; beyond, a freed block is unmapped as before. A
 * fork child unmaps its slots (nothing to copy).
 */
#define _GNU_SOURCE
#include <stdint.h>

#include "shim.h"
#include "sys.h"

#define CLASSES        64                /* distinct block lengths kept */
#define SLOTS_MAX      16384
#define SLOT_BYTES_MAX (4ul << 30)
#define BATCH_MAX      16                /* blocks mapped at once */
#define HUGE_SPAN      (2ul << 20)

/* Open addressing by length; a class, once made, stays (its list may be
 * empty), so a lookup may stop at the first unused entry. */
static struct slot_class { size_t len; struct fbmm_piece *head; } classes[CLASSES];
static size_t slots_n, slot_bytes;

static struct slot_class *class_of(size_t len, int make)
{
    size_t h = (len / fbmm_page) % CLASSES;
    for (size_t k = 0; k < CLASSES; k++) {
        struct slot_class *c = &classes[(h + k) % CLASSES];
        if (c->len == len) return c;
        if (!c->len) {
            if (!make) return NULL;
            c->len = len;
            return c;
        }
    }
    return NULL;
}

static int room(size_t n, size_t len)
{
    return slots_n + n <= SLOTS_MAX && slot_bytes + n * len <= SLOT_BYTES_MAX;
}

/* Links piece pc (whose blk is its length) as a slot. */
static int link_slot(struct fbmm_piece *pc)
{
    struct slot_class *c = class_of(pc->blk, 1);
    if (!c) return -1;
    pc->flags |= P_CACHED | P_CLEAN;
    pc->clean_prev = NULL;
    pc->clean_next = c->head;
    if (c->head) c->head->clean_prev = pc;
    c->head = pc;
    slots_n++;
    slot_bytes += pc->blk;
    return 0;
}

static void unlink_slot(struct fbmm_piece *pc)
{
    struct slot_class *c = class_of(pc->blk, 0);
    if (pc->clean_prev) pc->clean_prev->clean_next = pc->clean_next;
    else if (c) c->head = pc->clean_next;
    if (pc->clean_next) pc->clean_next->clean_prev = pc->clean_prev;
    pc->clean_prev = pc->clean_next = NULL;
    pc->flags &= ~(P_CACHED | P_CLEAN);
    slots_n--;
    slot_bytes -= pc->blk;
}

void fbmm_clean_forget(struct fbmm_piece *pc)
{
    if (pc->flags & P_CLEAN) unlink_slot(pc);
}

int fbmm_clean_put(uintptr_t p, struct fbmm_piece *pc, size_t blk)
{
    /* Only whole, plain blocks of our own file: pool pages go back to the
     * daemon, and a copy-on-write link asks the daemon before a punch. */
    if (blk > HUGE_SPAN || pc->flags != P_HEAD || pc->prot != (PROT_READ | PROT_WRITE) ||
        pc->len < blk || fbmm_arena.state != ARENA_READY || fbmm_pool_owns(pc->off) ||
        fbmm_cow_linked() || !room(1, blk))
        return -1;
    if (pc->len > blk) {
        if (fbmm_rt_split(p + blk) < 0) return -1;
        pc = fbmm_rt_find(p);
    }
    /* A punch of at most 2 MiB, under the lock: the slot must read zero
     * before anyone can take it. */
    if (fbmm_arena_punch(pc->off, blk) < 0) return -1;
    return link_slot(pc);
}

void *fbmm_clean_take(size_t len, size_t align)
{
    struct slot_class *c = class_of(len, 0);
    if (!c) return NULL;
    for (struct fbmm_piece *pc = c->head, *next; pc; pc = next) {
        next = pc->clean_next;
        if (pc->flags != (P_HEAD | P_CACHED | P_CLEAN) || pc->len != len || pc->blk != len ||
            pc->prot != (PROT_READ | PROT_WRITE)) {
            /* Changed behind our back (mprotect, a split): free it as any
             * freed block. */
            uintptr_t a = pc->addr;
            size_t blk = pc->blk;
            unlink_slot(pc);
            fbmm_vm_unmap(a, blk);
            return NULL;  /* the table changed: next pointers may be stale */
        }
        if (pc->addr & (align - 1)) continue;
        uintptr_t a = pc->addr;
        unlink_slot(pc);
        fbmm_rt_merge_around(a);
        return (void *)a;
    }
    return NULL;
}

void *fbmm_clean_batch(size_t len)
{
    size_t k = (HUGE_SPAN - 1) / len;
    if (k > BATCH_MAX) k = BATCH_MAX;
    if (k < 2 || !room(k - 1, len) || !class_of(len, 1)) return MAP_FAILED;
    char *p = fbmm_vm_map(NULL, k * len, PROT_READ | PROT_WRITE, 0, P_HEAD | P_NOPOOL);
    if (p == MAP_FAILED) return MAP_FAILED;
    fbmm_rt_find((uintptr_t)p)->blk = len;
    for (size_t i = 1; i < k; i++) {
        uintptr_t a = (uintptr_t)p + i * len;
        struct fbmm_piece *pc;
        if (fbmm_rt_split(a) < 0 || !(pc = fbmm_rt_find(a)) || pc->addr != a) {
            /* No memory for table nodes: give the rest back. */
            struct fbmm_piece *last = fbmm_rt_find(a - len);
            fbmm_rt_cut(last, len);
            sys_munmap((void *)a, (k - i) * len);
            fbmm_off_free(last->off + len, (k - i) * len);  /* never touched: holes */
            break;
        }
        pc->flags |= P_HEAD;
        pc->blk = len;
        fbmm_heads_add(a);
        link_slot(pc);  /* fresh offsets: already holes */
    }
    return p;
}

void fbmm_block_retire(uintptr_t p, struct fbmm_piece *pc, size_t blk)
{
    if (fbmm_clean_put(p, pc, blk) < 0) fbmm_vm_unmap(p, blk);
}

/* Unmaps every slot; their offsets go back to the allocator (released from
 * a lazy fork copy first when `lazy`). In a fork child, as the cache's
 * blocks: the kernel copied these mappings of the parent's file, and their
 * offsets are holes in the child's new file. */
void fbmm_clean_drop(int lazy)
{
    for (size_t k = 0; k < CLASSES; k++) {
        while (classes[k].head) {
            struct fbmm_piece *pc = classes[k].head;
            uintptr_t a = pc->addr;
            size_t len = pc->len;
            uint64_t off = pc->off;
            unlink_slot(pc);
            sys_munmap((void *)a, len);
            fbmm_heads_del(a);
            if (!lazy || fbmm_arena_punch(off, len) == 0) fbmm_off_free(off, len);
            fbmm_rt_remove(fbmm_rt_lower(a), 1);
        }
    }
}

int fbmm_clean_release(void)
{
    /* A slot holds no memory, but its offsets keep the arena file as
     * large: when the file cannot grow (the mount's capacity, this user's
     * share), they go back to the allocator for any length. */
    if (!slots_n) return 0;
    fbmm_clean_drop(0);
    return 1;
}
