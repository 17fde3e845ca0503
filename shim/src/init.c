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

void fbmm_unlock(void)
{
    uint64_t m = saved_mask;
    fbmm_depth--;
    pthread_mutex_unlock(&lock_mu);
    sys_sigmask(SIG_SETMASK, &m, NULL);
}

/* In a fork child the mutex may record the parent thread as owner; the child
 * is single-threaded, so re-create it unlocked and restore the signal mask. */
void fbmm_lock_reset_child(void)
{
    uint64_t m = saved_mask;
    pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
    lock_mu = fresh;
    fbmm_depth--;
    sys_sigmask(SIG_SETMASK, &m, NULL);
}

__attribute__((constructor)) static void fbmm_ctor(void)
{
    fbmm_init();
}
