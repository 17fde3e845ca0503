/*
 * fbmm shim: internal interfaces shared by the shim's translation units.
 *
 * The shim runs inside arbitrary processes, possibly before any runtime and
 * underneath malloc itself, so nothing here may call malloc: all state lives
 * in static storage or in memory mapped with raw system calls.
 *
 * Locking: one mutex (fbmm_lock) protects the region table, the offset
 * allocator and the arena. Every function documented "locked" expects it held.
 */
#ifndef FBMM_SHIM_H
#define FBMM_SHIM_H

#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define FBMM_EXPORT __attribute__((visibility("default")))
#define FBMM_TLS    __thread __attribute__((tls_model("initial-exec")))

/* ---- config.c: environment and diagnostics ---------------------------- */

struct fbmm_config {
    int    active;             /* FBMM_MOUNT set and non-empty */
    int    strict;             /* FBMM_STRICT=1 */
    int    verbose;            /* FBMM_VERBOSE=1 */
    int    no_pool;            /* FBMM_PREZERO=0 */
    size_t min_size;           /* FBMM_MIN_SIZE, bytes */
    size_t cache_max;          /* FBMM_MALLOC_CACHE, bytes (0: no cache) */
    char   mount[PATH_MAX];    /* FBMM_MOUNT */
};
extern struct fbmm_config fbmm_cfg;
extern size_t fbmm_page;       /* page size, from the aux vector */

void fbmm_config_load(void);
/* Parses "123", "64K", "2M", "1G" (binary units; optional "B"/"iB").
 * Returns 0 and sets *out, or -1 when the text is not a size. */
int fbmm_parse_size(const char *s, size_t *out);
/* Writes "fbmm: a b c\n" to stderr when verbose (NULL parts are skipped). */
void fbmm_say(const char *a, const char *b, const char *c);
/* Like fbmm_say, but only the first time *once is 0. */
void fbmm_say_once(int *once, const char *a, const char *b, const char *c);
/* report.c: FBMM_REPORT (the pid fbmm run gave the program) is read; a
 * message is offered to the reporter, which remembers the first fallback,
 * says it in the reporting process. */
void fbmm_report_load(void);
void fbmm_report_message(const char *text, size_t n);
/* Writes to fd 2 only while it is the file it was when the shim started. */
void fbmm_stderr_write(const char *text, size_t n);
/* An anonymous mapping left to the kernel for being under --min-size. */
void fbmm_report_small_mmap(size_t len);
/* Concatenates `count` strings (NULL ones skipped) into buf, at most cap-1
 * characters, NUL-terminated; returns the length. */
size_t fbmm_join(char *buf, size_t cap, const char *const *parts, size_t count);
/* Decimal formatting into buf (>= 21 bytes); returns buf. */
char *fbmm_utoa(char *buf, uint64_t v);

/* ---- init.c: lazy initialisation, lock, recursion guard --------------- */

/* Depth of shim code on this thread's stack. Non-zero means we re-entered
 * (dlsym/pthread_atfork calling malloc during init): go straight through. */
extern FBMM_TLS int fbmm_depth;
void fbmm_init(void);          /* idempotent, cheap after the first call */
/* Under the lock: punch [off, off+len) of the arena and free the offsets
 * once this thread lets the lock go (0), or -1: do it now. */
int  fbmm_punch_after_unlock(uint64_t off, uint64_t len);
void fbmm_lock(void);          /* blocks signals, then takes the mutex */
void fbmm_unlock(void);
void fbmm_lock_reset_child(void);
/* Serialises growing ahead of the lock (arena.c); reset in a fork child. */
void fbmm_grow_lock(void);
void fbmm_grow_unlock(void);

/* ---- fds.c: the shim's descriptors against the program's close/dup2 --- */

/* Our descriptors live at or above this number, away from the low numbers
 * programs dup2 onto or close in loops. */
#define FBMM_FD_FLOOR 700
void fbmm_fds_resolve(void);
/* A close-on-exec duplicate of fd at or above the floor (or above the soft
 * RLIMIT_NOFILE when that is full); fd stays open. -1 when there is none. */
int  fbmm_fd_move(int fd);
/* Moves fd (closing it) to such a number; fd itself when there is none
 * (or fd < 0). */
int  fbmm_fd_high(int fd);
/* Whether fd is open on the file (dev, ino): the program may have closed
 * ours with a raw system call and reused the number for its own file. */
int  fbmm_fd_is(int fd, dev_t dev, ino_t ino);
/* Whether fd is one of the shim's descriptors (numbers only, lock-free). */
int  fbmm_fd_ours(int fd);
void fbmm_fdview_resolve(void);

/* ---- offsets.c: allocator of arena file offset ranges (locked) -------- */

#define FBMM_NO_OFF UINT64_MAX
uint64_t fbmm_off_alloc(size_t len, size_t align);
void     fbmm_off_free(uint64_t off, size_t len);
/* Claims [end, end+len) if free (for in-place growth); returns 0 on success. */
int      fbmm_off_extend(uint64_t end, size_t len);
uint64_t fbmm_off_top(void);   /* highest offset in use + 1 (file high water) */
int      fbmm_off_fits(size_t len, size_t align);  /* a free range below the top serves it */
void     fbmm_off_reset(void);
/* Keeps [0, end) out of the allocator for the pool (first thing at open). */
void     fbmm_off_reserve(uint64_t end);

/* ---- arena.c / broker.c: the per-process backing file (locked) -------- */

struct fbmm_arena {
    int      state;            /* ARENA_NONE, ARENA_READY, ARENA_FAILED */
    int      name_fd;          /* the file opened in the mount (FUSE fd) */
    int      mem_fd;           /* what we mmap: the memfd, or name_fd on tmpfs */
    int      tmpfs;            /* no broker: name_fd is the backing itself */
    int      grow_dead;        /* growth failed for good (daemon gone) */
    int      huge;             /* HUGE_ADVISE, HUGE_ALWAYS, HUGE_NEVER (user.fbmm.huge) */
    uint64_t pool_window;      /* pool window bytes (user.fbmm.prezero), 0: no pool */
    char     sock[108];        /* the broker socket path */
    uint64_t size;             /* current file size (atomic stores: read unlocked) */
    uint64_t ahead_failed;     /* size at which growing ahead last failed */
    dev_t    mem_dev;          /* identity of mem_fd, checked before use */
    ino_t    mem_ino;
    dev_t    name_dev;         /* identity of name_fd */
    ino_t    name_ino;
    char     reason[160];      /* why the arena failed, for messages */
};
enum { ARENA_NONE = 0, ARENA_READY = 1, ARENA_FAILED = 2 };
enum { HUGE_ADVISE = 0, HUGE_ALWAYS = 1, HUGE_NEVER = 2 };
extern struct fbmm_arena fbmm_arena;

/* Opens the arena if not yet tried; 0 when it can be used. */
int  fbmm_arena_ready(void);
/* Opens a fresh arena file + backing (used by init and the fork child). */
int  fbmm_arena_open(struct fbmm_arena *a);
void fbmm_arena_close(struct fbmm_arena *a);
/* Is mem_fd still our backing (not closed and reused by the program)? A
 * descriptor found not to be ours any more is forgotten (-1) for good: the
 * arena then maps nothing new (allocations fall back to anonymous memory)
 * and a fork child copies from the live mappings. */
int  fbmm_arena_fd_ok(void);
/* Same for name_fd (the FUSE fd: growth, the pool's enrolment). */
int  fbmm_arena_name_ok(void);
/* Grows the file (via the FUSE fd) so that it is at least `need` bytes. */
int  fbmm_arena_grow(uint64_t need);
/* Unlocked, before a caller takes the lock to map `len` bytes: when that
 * would grow the file, grows it here, so the FUSE round trip holds no lock
 * that other threads' frees and munmaps need. Failures are left to the
 * locked path, which reports them. */
void fbmm_arena_grow_ahead(size_t len);
/* Frees the memory of [off, off+len): hole punch on the backing. */
int  fbmm_arena_punch(uint64_t off, uint64_t len);
/* One broker exchange about our fd `fd` (inode `ino`), which goes along
 * (SCM_RIGHTS): op is a fbmm_broker_op, flags its FBMM_BACKING_* flags. On
 * success *fd_out gets the attached fd (or -1 when none came and none is
 * needed: want_fd 0) and *size the reply's size. */
int  fbmm_broker_request(const char *sock, uint32_t op, uint32_t flags, int fd, uint64_t ino, int want_fd,
                         int *fd_out, uint64_t *size, char *why, size_t whylen);
struct fbmm_request;
/* The general exchange: `request`'s op, flags, ino, offset, length (magic
 * and version are filled in) with the `nfds` fds attached. */
int  fbmm_broker_exchange(const char *sock, const struct fbmm_request *request, const int *fds, int nfds,
                          int want_fd, int *fd_out, uint64_t *size, char *why, size_t whylen);
/* Says once (verbose) that we fall back, and why. */
void fbmm_note_fallback(const char *why, const char *detail);

/* ---- regions.c: the table of our mappings (locked) -------------------- */

/* One piece: a run of virtual addresses mapping contiguous file offsets.
 * A region the program sees may be several pieces (mremap growth appends a
 * piece rather than copying). A malloc block starts at a piece flagged
 * P_HEAD whose `blk` holds the block length. */
struct fbmm_piece {
    uintptr_t addr;
    size_t    len;
    uint64_t  off;
    uint32_t  prot;
    uint32_t  flags;
    size_t    blk;
    /* The slot of a thread's magazine that knows this block (magazine.c),
     * or NULL. Only heads of malloc blocks have one. */
    struct fbmm_mag_slot *mag;
    /* The list of clean slots of its length (clean_slots.c), when P_CLEAN. */
    struct fbmm_piece *clean_prev, *clean_next;
};
enum {
    P_HEAD      = 1u << 0,     /* start of a malloc block */
    P_DONTFORK  = 1u << 1,     /* MADV_DONTFORK: absent in fork children */
    P_WIPEFORK  = 1u << 2,     /* MADV_WIPEONFORK: zero in fork children */
    P_ANON      = 1u << 3,     /* private anonymous (fork copy fell back) */
    P_CACHED    = 1u << 4,     /* freed malloc block kept in the cache */
    /* MAP_SHARED|MAP_ANONYMOUS memory: stays shared across fork (the child
     * keeps the parent's mapping), madvise goes to the kernel. */
    P_SHARED    = 1u << 5,
    /* Another process may map this file range (we forked since it was
     * made, or duplicated it with mremap): never punched, never reused. */
    P_KEEP      = 1u << 6,
    /* Maps an ancestor's arena file, not ours (set in fork children on
     * P_SHARED pieces; implies P_KEEP): its offsets mean nothing to our
     * allocator and it has no descriptor of ours. */
    P_FOREIGN   = 1u << 7,
    /* A freed malloc block kept mapped with its file range punched (with
     * P_CACHED): a clean slot, clean_slots.c. */
    P_CLEAN     = 1u << 8,
    /* fbmm_vm_map only, never stored: not from the pre-zeroed pool. */
    P_NOPOOL    = 1u << 9,
};

/* ---- slab.c: fixed-size tree nodes that never move (locked) ---------- */
struct fbmm_slab {
    size_t node_size;      /* >= sizeof(void *) */
    char  *current;        /* the slab being carved */
    size_t used;           /* bytes of it handed out */
    void  *free;           /* nodes given back, linked through their first word */
};
void    *fbmm_slab_take(struct fbmm_slab *s);   /* NULL when no memory */
void     fbmm_slab_give(struct fbmm_slab *s, void *node);
uint64_t fbmm_treap_priority(void);             /* a pseudo-random heap priority */

extern size_t fbmm_rt_n;                       /* pieces in the table */
struct fbmm_piece *fbmm_rt_at(size_t i);       /* the i-th piece by address (i < fbmm_rt_n) */

/* Lock-free pre-check: may [a, a+len) overlap one of our pieces? */
int    fbmm_rt_maybe(uintptr_t a, size_t len);
size_t fbmm_rt_lower(uintptr_t a);            /* first piece ending after a */
struct fbmm_piece *fbmm_rt_find(uintptr_t a); /* piece containing a */
int    fbmm_rt_split(uintptr_t a);            /* make a a piece boundary */
int    fbmm_rt_insert(const struct fbmm_piece *p); /* returns its index */
void   fbmm_rt_remove(size_t i, size_t n);
void   fbmm_rt_merge_around(uintptr_t a);     /* coalesce like the kernel */
void   fbmm_rt_cut(struct fbmm_piece *p, size_t len); /* shorten p to len (its tail unmapped) */
void   fbmm_rt_reset(void);
void   fbmm_rt_span(uintptr_t a, size_t len); /* widen the lock-free span */
/* Whether a new mapping may be ours: the table holds under half of the
 * kernel's vm.max_map_count (each piece is a VMA that does not merge), so
 * the program and the allocators we fall back to keep the other half. */
int    fbmm_rt_room(void);

/* Lock-free filter of malloc block heads, so free() of foreign pointers
 * does not take the lock: a counting hash of head addresses. */
void fbmm_heads_add(uintptr_t a);
void fbmm_heads_del(uintptr_t a);
int  fbmm_heads_maybe(uintptr_t a);

/* ---- vm.c, remap.c: operations on our mappings (locked) --------------- */

/* Maps `len` bytes of fresh (zero) arena memory. `flags` are the caller's
 * extra mmap flags (MAP_FIXED, MAP_POPULATE, ...); `pflags` the new piece's
 * flags (P_HEAD for a malloc block, whose length is then `len`). Returns
 * MAP_FAILED with errno on failure. */
void *fbmm_vm_map(void *addr, size_t len, int prot, int flags, uint32_t pflags);
/* Forgets our pieces in [a, a+len) after the kernel dropped or replaced
 * them: punches their file ranges and frees the offsets. */
void  fbmm_vm_forget(uintptr_t a, size_t len);
/* munmap + forget. */
int   fbmm_vm_unmap(uintptr_t a, size_t len);
/* Frees the memory of our pieces in [a, a+len) and calls the kernel's
 * madvise on the gaps. */
int   fbmm_vm_discard(uintptr_t a, size_t len, int advice);
/* mremap on a range made only of our pieces. Returns MAP_FAILED/errno;
 * errno ENOENT (with MAP_FAILED) means "none of it is ours". */
void *fbmm_vm_remap(uintptr_t a, size_t ol, size_t nl, int flags, uintptr_t na);
/* mremap growth when the backing descriptor is gone (fbmm_vm_remap failed
 * ENOMEM with mem_fd forgotten): the region becomes plain anonymous memory,
 * in place if the addresses behind it are free, else moved (MREMAP_MAYMOVE),
 * its data copied. Same arguments; [a, a+ol) must be all ours. */
void *fbmm_vm_remap_anon(uintptr_t a, size_t ol, size_t nl, int flags, uintptr_t na);
/* Copies len bytes from src (a mapping of shared memory) into dst (zero):
 * pages that read zero are not written, and pages absent from the page
 * cache are skipped when they are surely holes (no swap). */
void  fbmm_copy_sparse(const char *src, char *dst, size_t len);
/* Whether a piece in [a, a+len) has any of `flags`. */
int   fbmm_vm_any(uintptr_t a, size_t len, uint32_t flags);
/* Records flags (fork behaviour) or protections on pieces in a range. */
void  fbmm_vm_set(uintptr_t a, size_t len, uint32_t set, uint32_t clear,
                  int prot /* -1: keep */);

/* ---- pool.c: the pre-zeroed pool, shim side (locked) ------------------ */

/* Takes `len` bytes of zero, allocated pages from the pool (enrolling the
 * arena on first use). Returns 0 and the file offset, or -1: map lazily. */
int  fbmm_pool_take(size_t len, uint64_t *off);
/* Puts back pages taken but never mapped (still zero). */
void fbmm_pool_untake(uint64_t off, size_t len);
/* Whether a file offset lies in the pool's control block or window. */
int  fbmm_pool_owns(uint64_t off);
/* How much of [off, off+len) (off owned by the pool) lies inside the window. */
size_t fbmm_pool_window_part(uint64_t off, size_t len);
/* Gives freed window pages back to be zeroed (or punches them if the pool
 * is not running in this process). */
void fbmm_pool_give(uint64_t off, size_t len);
/* Fork child: drop the parent's pool (its control block is the parent's);
 * `fresh` when the child also starts a new offset space (forgets the window). */
void fbmm_pool_child(int fresh);
/* The pool's eventfd (-1: none), for the close/dup2 interposers; set: it
 * moved (or is gone, -1). */
int  fbmm_pool_fd(void);
void fbmm_pool_fd_set(int fd);
/* Applies the mount's huge-page mode to a new mapping of the arena. */
void fbmm_vm_advise_huge(void *p, size_t len);

/* ---- fork.c ----------------------------------------------------------- */
void fbmm_fork_register(void);

/* ---- cow.c: copy-on-write fork (locked) -------------------------------- */
/* Prepare handler: 1 when this fork is copy-on-write (the child then calls
 * fbmm_cow_child, the parent fbmm_cow_parent), 0 to copy eagerly. */
int  fbmm_cow_prepare(void);
void fbmm_cow_parent(void);
/* 1 when the child's memory was set up copy-on-write (else copy eagerly). */
int  fbmm_cow_child(void);
/* Before [off, off+len) of the arena is freed: 0 to go ahead, -1 (EBUSY)
 * to keep it (a lazy copy may need it and the daemon did not answer). */
int  fbmm_cow_release(uint64_t off, uint64_t len);
/* Before a mapping of [off, off+len) moves (mremap): the range becomes ours
 * alone, filled from our source and pushed to our lazy copies, since a
 * moved mapping leaves the userfaultfd (no UFFD_FEATURE_EVENT_REMAP). 0 to
 * go ahead, -1 (EBUSY) not to move. */
int  fbmm_cow_settle(uint64_t off, uint64_t len);
/* Whether the arena has holes that read as another file (a lazy copy):
 * an eager fork copy must then read the live mappings, not the file. */
int  fbmm_cow_linked(void);
/* Our copy-on-write descriptors (at most 2) for the close interposers, and
 * moving one off a number the program dup2s onto (1 if it was ours). */
int  fbmm_cow_fds(int *out);
int  fbmm_cow_evict(int fd);

/* ---- malloc_hooks.c, block_cache.c ------------------------------------ */
void fbmm_malloc_resolve(void);
/* The cache of freed malloc blocks (locked). A piece flagged P_CACHED that
 * leaves the table or moves (munmap, MAP_FIXED, mremap of freed memory) must
 * leave the cache: fbmm_cache_forget (a clean slot leaves its list, see
 * clean_slots.c; any other piece is left alone). The fork child drops the
 * cached blocks (unmaps them, frees their offsets) before it copies
 * anything. */
void fbmm_cache_forget(struct fbmm_piece *p);
/* free(): keeps our block at p (head piece *pc, length blk) for reuse;
 * 0 when taken. malloc: a cached block of `len` bytes (page-rounded)
 * aligned to `align`, or NULL. */
int   fbmm_cache_put(uintptr_t p, struct fbmm_piece *pc, size_t blk);
/* Whether a freed block [addr, addr+blk) may serve a request of `len`
 * page-rounded bytes aligned to `align`: at most a quarter larger (the
 * cache's and the magazines' rule, so a small request never pins a big block). */
static inline int fbmm_block_fits(uintptr_t addr, size_t blk, size_t len, size_t align)
{
    return blk >= len && blk - len <= len / 4 && !(addr & (align - 1));
}
void *fbmm_cache_take(size_t len, size_t align);
void fbmm_cache_drop_child(int lazy);

/* ---- clean_slots.c: mapped, punched malloc blocks (locked) ------------
 * put: keep our freed block at p (head piece pc, length blk) mapped with
 * its memory punched, 0 when kept; take: one of exactly `len` bytes aligned
 * to `align`, reading zero, or NULL; batch: map blocks of `len` several at
 * once, keep all but the first as slots, return the first (MAP_FAILED when
 * it does not batch that length); retire: a freed block leaves for good
 * (into a slot, else unmapped); forget: a slot's piece is changing. */
int   fbmm_clean_put(uintptr_t p, struct fbmm_piece *pc, size_t blk);
void *fbmm_clean_take(size_t len, size_t align);
void *fbmm_clean_batch(size_t len);
void  fbmm_block_retire(uintptr_t p, struct fbmm_piece *pc, size_t blk);
void  fbmm_clean_forget(struct fbmm_piece *pc);
/* Unmaps every slot and frees its offsets (punched first, for a lazy fork
 * copy, when `lazy`): a fork child's, with the cache's blocks. */
void  fbmm_clean_drop(int lazy);
/* Unmaps every slot so the allocator has their offsets for any length:
 * after a mapping failed (the arena could not grow). 1 if there were any. */
int   fbmm_clean_release(void);

/* ---- magazine.c: per-thread magazines of freed blocks ------------------
 * Lock-free, owner thread only: a fitting block the thread freed, or NULL;
 * and taking back a block the thread had from its magazine (1 if taken). */
void *fbmm_mag_take(size_t len, size_t align);
int   fbmm_mag_give(void *p);
/* Locked: a block freed the slow way enters the thread's magazine (0) or
 * not (-1, nothing changed); before anything changes a block in a
 * magazine, its slot is revoked: FBMM_MAG_FREED if the program had freed
 * it, FBMM_MAG_LIVE if it holds it (FBMM_MAG_NONE: in no magazine). */
enum { FBMM_MAG_NONE = 0, FBMM_MAG_LIVE = 1, FBMM_MAG_FREED = 2 };
int   fbmm_mag_put(uintptr_t p, struct fbmm_piece *pc, size_t blk);
int   fbmm_mag_revoke(struct fbmm_piece *pc);
void  fbmm_mag_revoke_range(uintptr_t a, size_t len);
int   fbmm_mag_freed(const struct fbmm_piece *pc);
/* Fork: the prepare handler empties every magazine; the child frees the
 * magazines of the threads it does not have. */
void  fbmm_mag_flush_all(void);
void  fbmm_mag_child(void);

#endif
