#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "fbmm_tmpfs.h"

/* linux/mount.h's values (Debian 12's glibc has no wrappers). */
#define FBMM_FSCONFIG_SET_FLAG 0
#define FBMM_FSCONFIG_SET_STRING 1
#define FBMM_FSCONFIG_CMD_CREATE 6
#define FBMM_FSOPEN_CLOEXEC 0x1
#define FBMM_FSMOUNT_CLOEXEC 0x1

int fbmm_tmpfs_mount(const char *options, const char **bad)
{
    static char refused[256];
    *bad = NULL;
    int fs = (int)syscall(SYS_fsopen, "tmpfs", FBMM_FSOPEN_CLOEXEC);
    if (fs < 0) return -1;
    char copy[1024];
    snprintf(copy, sizeof copy, "%s", options ? options : "");
    char *save = NULL;
    for (char *kv = strtok_r(copy, ",", &save); kv; kv = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(kv, '=');
        if (eq) *eq = 0;  /* key=value, or a flag such as noswap */
        long r = eq ? syscall(SYS_fsconfig, fs, FBMM_FSCONFIG_SET_STRING, kv, eq + 1, 0)
                    : syscall(SYS_fsconfig, fs, FBMM_FSCONFIG_SET_FLAG, kv, NULL, 0);
        if (r < 0) {
            int e = errno;
            snprintf(refused, sizeof refused, "%s%s%s", kv, eq ? "=" : "", eq ? eq + 1 : "");
            *bad = refused;
            close(fs);
            errno = e;
            return -1;
        }
    }
    if (syscall(SYS_fsconfig, fs, FBMM_FSCONFIG_CMD_CREATE, NULL, NULL, 0) < 0) {
        int e = errno;
        close(fs);
        errno = e;
        return -1;
    }
    int mnt = (int)syscall(SYS_fsmount, fs, FBMM_FSMOUNT_CLOEXEC, 0);
    int e = errno;
    close(fs);
    errno = e;
    return mnt;
}

int fbmm_tmpfs_named_file(int mount_fd, char name[64])
{
    static unsigned long seq;
    for (int tries = 0; tries < 16; tries++) {
        snprintf(name, 64, "fbmm-backing.%lu.%d", __atomic_fetch_add(&seq, 1, __ATOMIC_RELAXED), getpid());
        int fd = openat(mount_fd, name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (fd >= 0 || errno != EEXIST) return fd;
    }
    errno = EEXIST;
    return -1;
}

/* ---- the SIGBUS guard ---------------------------------------------------- */

#define GUARDS 4096
static struct { uintptr_t start, end; int used, hit; } guards[GUARDS];
static struct sigaction previous;

static void on_sigbus(int sig, siginfo_t *info, void *context)
{
    uintptr_t a = (uintptr_t)info->si_addr;
    for (int i = 0; i < GUARDS; i++) {
        if (__atomic_load_n(&guards[i].used, __ATOMIC_ACQUIRE) != 1) continue;
        if (a >= guards[i].start && a < guards[i].end) {
            long page = sysconf(_SC_PAGESIZE);
            /* A scratch page in place of the vanished one: the access
             * completes (harmlessly) and the pool retires the arena. */
            mmap((void *)(a & ~(uintptr_t)(page - 1)), (size_t)page, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
            __atomic_store_n(&guards[i].hit, 1, __ATOMIC_RELEASE);
            return;
        }
    }
    /* Not ours: what would have happened without the guard. */
    if (previous.sa_flags & SA_SIGINFO && previous.sa_sigaction) {
        previous.sa_sigaction(sig, info, context);
        return;
    }
    if (previous.sa_handler != SIG_DFL && previous.sa_handler != SIG_IGN && previous.sa_handler) {
        previous.sa_handler(sig);
        return;
    }
    signal(SIGBUS, SIG_DFL);
    raise(SIGBUS);
}

int fbmm_guard_install(void)
{
    static int done;
    if (__atomic_exchange_n(&done, 1, __ATOMIC_ACQ_REL)) return 0;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_sigbus;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    return sigaction(SIGBUS, &sa, &previous);
}

int fbmm_guard_add(void *start, size_t len)
{
    /* used: 0 free, 2 being filled in (the handler skips it), 1 active. */
    for (int i = 0; i < GUARDS; i++) {
        int expected = 0;
        if (!__atomic_compare_exchange_n(&guards[i].used, &expected, 2, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
            continue;
        guards[i].start = (uintptr_t)start;
        guards[i].end = (uintptr_t)start + len;
        guards[i].hit = 0;
        __atomic_store_n(&guards[i].used, 1, __ATOMIC_RELEASE);
        return i;
    }
    return -1;
}

void fbmm_guard_remove(int slot)
{
    if (slot >= 0 && slot < GUARDS) __atomic_store_n(&guards[slot].used, 0, __ATOMIC_RELEASE);
}

int fbmm_guard_hit(int slot)
{
    return slot >= 0 && slot < GUARDS && __atomic_load_n(&guards[slot].hit, __ATOMIC_ACQUIRE);
}
