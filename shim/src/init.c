/*
 * Lazy initialisation, the shim's single lock, and the recursion guard.
 *
 * Initialisation happens at the first call into any interposer or in the
 * constructor, whichever comes first: an allocator preloaded after us (or
 * libc itself) may call malloc or mmap before our constructor runs. Init
 * calls dlsym and pthread_atfork, which may call malloc; those nested calls
 * see fbmm_depth > 0 and are served without the shim's machinery.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>

#include "shim.h"
#include "sys.h"

FBMM_TLS int fbmm_depth;
static FBMM_TLS uint64_t saved_mask;

static pthread_mutex_t lock_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t init_mu = PTHREAD_MUTEX_INITIALIZER;
static int init_done;

void fbmm_init(void)
{
    if (__atomic_load_n(&init_done, __ATOMIC_ACQUIRE) || fbmm_depth) return;
    fbmm_depth++;
    pthread_mutex_lock(&init_mu);
    if (!init_done) {
        fbmm_config_load();
        fbmm_malloc_resolve();
        fbmm_fds_resolve();
        fbmm_fdview_resolve();
        fbmm_fork_register();
        __atomic_store_n(&init_done, 1, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&init_mu);
    fbmm_depth--;
}

/* Signals are blocked while the lock is held: a handler that calls munmap
 * or mmap (both async-signal-safe) on this thread would otherwise deadlock
 * on the lock or see the table half-updated. */
void fbmm_lock(void)
{
    uint64_t all = ~(uint64_t)0, old;
    sys_sigmask(SIG_BLOCK, &all, &old);
    pthread_mutex_lock(&lock_mu);
    saved_mask = old;
    fbmm_depth++;
}

/* Hole punches of freed memory, queued under the lock and done by the
 * unlocking thread after it let the lock go (signals still blocked), so
 * that no other thread waits on a punch that frees gigabytes; the offsets
 * return to the allocator (under the lock again) only once punched, so a
 * reused range still reads zero. Before munmap or free returns, its punch
 * is done: a program sees its memory freed as before. */
#define PUNCH_SLOTS 32
static struct { uint64_t off, len; } punches[PUNCH_SLOTS];
static size_t punch_n;

int fbmm_punch_after_unlock(uint64_t off, uint64_t len)
{
    /* A copy-on-write link asks the daemon first (cow.c): kept inline, as
     * is a full queue. */
    if (punch_n == PUNCH_SLOTS || fbmm_cow_linked() || !fbmm_arena_fd_ok()) return -1;
    punches[punch_n].off = off;
    punches[punch_n++].len = len;
    return 0;
}

static void punch_queued(void)
{
    struct { uint64_t off, len; int ok; } todo[PUNCH_SLOTS];
    size_t n = punch_n;
    for (size_t i = 0; i < n; i++) {
        todo[i].off = punches[i].off;
        todo[i].len = punches[i].len;
    }
    punch_n = 0;
    int fd = fbmm_arena.mem_fd;
    dev_t dev = fbmm_arena.mem_dev;
    ino_t ino = fbmm_arena.mem_ino;
    pthread_mutex_unlock(&lock_mu);
    for (size_t i = 0; i < n; i++)
        todo[i].ok = fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)todo[i].off,
                               (off_t)todo[i].len) == 0;
    pthread_mutex_lock(&lock_mu);
    /* The same arena still (a thread may have replaced it meanwhile): its
     * allocator takes the punched ranges back; else they are simply lost. */
    if (fbmm_arena.mem_fd == fd && fbmm_arena.mem_dev == dev && fbmm_arena.mem_ino == ino)
        for (size_t i = 0; i < n; i++)
            if (todo[i].ok) fbmm_off_free(todo[i].off, todo[i].len);
}

void fbmm_unlock(void)
{
    uint64_t m = saved_mask;
    while (punch_n && fbmm_depth == 1) punch_queued();
    fbmm_depth--;
    pthread_mutex_unlock(&lock_mu);
    sys_sigmask(SIG_SETMASK, &m, NULL);
}

/* Growth ahead of the lock (arena.c): one thread at a time, without the
 * table lock. Callers block signals around it. */
static pthread_mutex_t grow_mu = PTHREAD_MUTEX_INITIALIZER;
void fbmm_grow_lock(void) { pthread_mutex_lock(&grow_mu); }
void fbmm_grow_unlock(void) { pthread_mutex_unlock(&grow_mu); }

/* In a fork child the mutexes may record a parent thread as owner; the
 * child is single-threaded, so re-create them unlocked and restore the
 * signal mask. */
void fbmm_lock_reset_child(void)
{
    uint64_t m = saved_mask;
    pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER, fresh_grow = PTHREAD_MUTEX_INITIALIZER;
    lock_mu = fresh;
    grow_mu = fresh_grow;
    punch_n = 0;  /* none in practice; dropped (offsets lost), never punched in a file they may not name */
    fbmm_depth--;
    sys_sigmask(SIG_SETMASK, &m, NULL);
}

__attribute__((constructor)) static void fbmm_ctor(void)
{
    fbmm_init();
}
