/*
 * The pre-zeroed pool, shim side (the protocol is in fbmm_pool.h). Locked.
 *
 * A mapping of up to 2 MiB takes a run of clean window pages: the daemon has
 * already allocated them by the policy and zeroed them, so the shim maps them
 * with MAP_POPULATE and the program's first touches cost no page fault at
 * all. Freed window pages are flagged dirty instead of punched; the daemon
 * zeroes them in place and flags them clean again. The only system call on
 * these paths is an occasional eventfd write when the daemon sleeps.
 *
 * The arena enrols lazily, at the first mapping that could use the pool, so
 * programs (and fork children) that never map memory never pay the broker
 * round trip.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../../Sources/CFBMMSys/include/fbmm_broker.h"
#include "../../Sources/CFBMMSys/include/fbmm_pool.h"
#include "shim.h"
#include "sys.h"

/* Kick a sleeping daemon after this many freed pages (256 KiB), or at once
 * on a miss. */
#define KICK_PAGES 64

enum { POOL_NONE = 0, POOL_READY = 1, POOL_OFF = 2 };

static struct {
    int state;
    struct fbmm_pool_ctl *ctl;
    int efd;
    dev_t efd_dev;       /* identity of efd, checked before each kick */
    ino_t efd_ino;
    uint64_t pages;      /* window pages */
    uint64_t win_off;    /* file offset of the window (0: not taken yet) */
    uint64_t cursor;     /* next-fit: word to search from */
    uint64_t pending;    /* pages freed since the last kick check */
} pool = { .efd = -1 };

int fbmm_pool_owns(uint64_t off)
{
    uint64_t w = fbmm_arena.pool_window;
    return w && (off < FBMM_POOL_CTL_BYTES || (pool.win_off && off >= pool.win_off && off < pool.win_off + w));
}

size_t fbmm_pool_window_part(uint64_t off, size_t len)
{
    uint64_t end = pool.win_off + fbmm_arena.pool_window;
    return off + len <= end ? len : (size_t)(end - off);
}

int fbmm_pool_fd(void)
{
    return __atomic_load_n(&pool.state, __ATOMIC_RELAXED) == POOL_READY ? __atomic_load_n(&pool.efd, __ATOMIC_RELAXED) : -1;
}

void fbmm_pool_fd_set(int fd)
{
    pool.efd = fd;
}

static void kick(void)
{
    if (__atomic_exchange_n(&pool.ctl->sleeping, 0, __ATOMIC_SEQ_CST)) {
        uint64_t one = 1;
        /* Never write into a program's file that got the number of ours
         * (closed behind libc's back): without kicks the daemon still
         * refills, on its timer. (All eventfds share one inode, so a
         * program's own eventfd at that number would get a count.) */
        if (!fbmm_fd_is(pool.efd, pool.efd_dev, pool.efd_ino)) {
            pool.efd = -1;
            return;
        }
        ssize_t r = write(pool.efd, &one, sizeof one);
        (void)r;
        __atomic_fetch_add(&pool.ctl->kicks, 1, __ATOMIC_RELAXED);
    }
}

/* Takes clean pages [first, first+n). The daemon takes clean pages back
 * only when the file's policy changed (they may sit on nodes the new policy
 * does not allow); if it took any of these meanwhile, put back what we did
 * take and report failure. */
static int claim(uint64_t first, uint64_t n)
{
    uint64_t f = first, k = n;
    int lost = 0;
    while (k && !lost) {
        uint64_t w = f / 64, b = f % 64, c = 64 - b < k ? 64 - b : k;
        uint64_t m = (c == 64 ? ~0ull : ((1ull << c) - 1)) << b;
        uint64_t old = __atomic_fetch_and(&pool.ctl->clean[w], ~m, __ATOMIC_ACQUIRE);
        if ((old & m) != m) {
            __atomic_fetch_or(&pool.ctl->clean[w], old & m, __ATOMIC_RELEASE);
            lost = 1;
            break;
        }
        f += c;
        k -= c;
    }
    if (!lost) return 0;
    /* Give back the words fully taken before the one that failed. */
    if (f > first) fbmm_pool_mark(pool.ctl->clean, first, f - first, 1);
    return -1;
}

static int enroll(void)
{
    struct fbmm_arena *a = &fbmm_arena;
    if (a->state != ARENA_READY || a->tmpfs || !a->pool_window || !a->sock[0] || !fbmm_arena_fd_ok())
        return -1;
    uint64_t pages = a->pool_window / fbmm_page;
    /* The window, once per arena (a fork child keeps its parent's offsets). */
    if (!pool.win_off) {
        uint64_t w = fbmm_off_alloc(a->pool_window, FBMM_POOL_WINDOW_ALIGN);
        if (w == FBMM_NO_OFF) return -1;
        pool.win_off = w;
    }
    struct fbmm_pool_ctl *ctl = sys_mmap(NULL, FBMM_POOL_CTL_BYTES, PROT_READ | PROT_WRITE,
                                         MAP_SHARED, a->mem_fd, 0);
    if (ctl == MAP_FAILED) return -1;
    memset(ctl, 0, sizeof *ctl);
    ctl->magic = FBMM_POOL_MAGIC;
    ctl->window_pages = pages;
    ctl->page_size = fbmm_page;
    ctl->window_offset = pool.win_off;
    /* Window pages our regions already use (a fork child's copies). */
    for (size_t i = 0; i < fbmm_rt_n; i++) {
        const struct fbmm_piece *p = fbmm_rt_at(i);
        if ((p->flags & P_ANON) || !fbmm_pool_owns(p->off) || p->off < pool.win_off) continue;
        fbmm_pool_mark(ctl->busy, (p->off - pool.win_off) / fbmm_page,
                 fbmm_pool_window_part(p->off, p->len) / fbmm_page, 1);
    }
    char why[160] = "the broker's window differs from user.fbmm.prezero";
    int efd = -1;
    uint64_t got = 0;
    struct stat st;
    /* name_ok has checked the fd is still the arena (inode name_ino). */
    if (!fbmm_arena_name_ok() ||
        fbmm_broker_request(a->sock, FBMM_OP_POOL, 0, a->name_fd, (uint64_t)a->name_ino, 1, &efd, &got,
                            why, sizeof why) < 0 || got != pages) {
        if (efd >= 0) sys_close(efd);
        sys_munmap(ctl, FBMM_POOL_CTL_BYTES);
        static int once;
        fbmm_say_once(&once, "no pre-zeroed pool: ", why, NULL);
        return -1;
    }
    int high = fbmm_fd_move(efd);
    if (high >= 0) { sys_close(efd); efd = high; }
    if (sys_fstat(efd, &st) == 0) {
        pool.efd_dev = st.st_dev;
        pool.efd_ino = st.st_ino;
    }
    pool.ctl = ctl;
    pool.efd = efd;
    pool.pages = pages;
    pool.cursor = 0;
    pool.pending = 0;
    fbmm_say("using the pre-zeroed pool", NULL, NULL);
    return 0;
}

/* First run of n clean pages, searching from the cursor (next fit) and then
 * from the start. Only we clear clean bits, so what we see stays clean. */
static int64_t find_run(uint64_t n)
{
    uint64_t words = (pool.pages + 63) / 64;
    for (int round = 0; round < 2; round++) {
        uint64_t from = round ? 0 : pool.cursor, to = round ? pool.cursor : words;
        uint64_t start = 0, run = 0;
        for (uint64_t w = from; w < to; w++) {
            uint64_t c = __atomic_load_n(&pool.ctl->clean[w], __ATOMIC_RELAXED);
            if (c == 0) { run = 0; continue; }
            if (c == ~0ull) {
                if (!run) start = w * 64;
                run += 64;
                if (run >= n) return (int64_t)start;
                continue;
            }
            for (uint64_t b = 0; b < 64; b++) {
                if (c >> b & 1) {
                    if (!run) start = w * 64 + b;
                    if (++run >= n) return (int64_t)start;
                } else {
                    run = 0;
                }
            }
        }
    }
    return -1;
}

/* The largest run handed out: under 2 MiB (larger mappings are placed
 * huge-page aligned outside the pool) and an eighth of the window. */
static uint64_t max_take(void)
{
    uint64_t eighth = fbmm_arena.pool_window / fbmm_page / 8, below_huge = (2u << 20) / fbmm_page - 1;
    return eighth < below_huge ? eighth : below_huge;
}

int fbmm_pool_take(size_t len, uint64_t *off)
{
    uint64_t n = len / fbmm_page;
    /* Sizes the pool never serves do not enrol (no pool for programs that
     * only map large regions). */
    if (!n || n > max_take() || pool.state == POOL_OFF) return -1;
    if (pool.state == POOL_NONE) pool.state = enroll() == 0 ? POOL_READY : POOL_OFF;
    if (pool.state != POOL_READY) return -1;
    int64_t first = find_run(n);
    if (first < 0) {
        __atomic_fetch_add(&pool.ctl->misses, 1, __ATOMIC_RELAXED);
        kick();
        return -1;
    }
    if (claim((uint64_t)first, n) < 0) {
        __atomic_fetch_add(&pool.ctl->misses, 1, __ATOMIC_RELAXED);
        return -1;
    }
    __atomic_fetch_add(&pool.ctl->handed_pages, n, __ATOMIC_RELAXED);
    pool.cursor = ((uint64_t)first + n) / 64;
    *off = pool.win_off + (uint64_t)first * fbmm_page;
    return 0;
}

void fbmm_pool_untake(uint64_t off, size_t len)
{
    fbmm_pool_mark(pool.ctl->clean, (off - pool.win_off) / fbmm_page, len / fbmm_page, 1);
    __atomic_fetch_sub(&pool.ctl->handed_pages, len / fbmm_page, __ATOMIC_RELAXED);
}

void fbmm_pool_give(uint64_t off, size_t len)
{
    if (pool.state != POOL_READY || off < pool.win_off) {
        /* Not running here (a fork child not yet enrolled, or no daemon):
         * free the memory; at enrolment the page counts as empty. */
        fbmm_arena_punch(off, len);
        return;
    }
    /* The daemon zeroes what we give it: a fork child may still need it. */
    if (fbmm_cow_release(off, len) < 0) return;
    uint64_t n = len / fbmm_page;
    fbmm_pool_mark(pool.ctl->dirty, (off - pool.win_off) / fbmm_page, n, 1);
    __atomic_fetch_add(&pool.ctl->returned_pages, n, __ATOMIC_RELAXED);
    pool.pending += n;
    if (pool.pending >= KICK_PAGES) {
        pool.pending = 0;
        kick();
    }
}

void fbmm_pool_child(int fresh)
{
    if (fresh) pool.win_off = 0;  /* the child starts a new offset space */
    if (pool.state == POOL_READY) {
        sys_munmap(pool.ctl, FBMM_POOL_CTL_BYTES);
        if (fbmm_fd_is(pool.efd, pool.efd_dev, pool.efd_ino)) sys_close(pool.efd);
    }
    pool.ctl = NULL;
    pool.efd = -1;
    pool.state = POOL_NONE;
}

void fbmm_vm_advise_huge(void *p, size_t len)
{
    if (fbmm_arena.huge == HUGE_NEVER)
        sys_madvise(p, len, MADV_NOHUGEPAGE);
    else if (fbmm_arena.huge == HUGE_ALWAYS && len >= (2u << 20))
        sys_madvise(p, len, MADV_HUGEPAGE);
}
