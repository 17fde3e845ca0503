/*
 * Copy-on-write fork: the child's private memory becomes a lazy copy of the
 * parent's, filled page by page by the daemon (CopyOnWrite.swift), instead
 * of a copy made before fork returns (fork.c's eager path, which stays the
 * fallback).
 *
 *  prepare (parent, locked): create the child's arena (sized like ours)
 *      and send FBMM_OP_COW_FORK with both arenas and a userfaultfd of our
 *      mm: the daemon registers and write-protects our mappings through it
 *      (a userfaultfd acts on its creator's mm, whoever calls it), keeps
 *      it, and records the new arena as a lazy copy of ours. We keep no
 *      userfaultfd, so if the daemon dies our writes never wait for it.
 *      From here on, a write by any of our threads to a page the child
 *      still needs waits until the daemon has given the child its copy,
 *      and the fork itself copies nothing.
 *  child: adopt the new arena, map it over every private piece (same
 *      offsets), register those mappings for missing-page faults on a new
 *      userfaultfd of its own and hand that to the daemon (COW_CHILD): a
 *      page the child touches and lacks is filled from the parent's view
 *      of it at fork. When any of that fails, the daemon copies everything
 *      at once (COW_FILL): slower, never wrong.
 *  parent: close its copies of the child's arena descriptors.
 *
 * Freeing memory changes the file without a fault, so while the arena has
 * a source or lazy copies (`linked`), every punch first asks the daemon
 * (COW_RELEASE), which pushes what the copies still need; its answer says
 * whether to keep asking.
 *
 * The userfaultfd must also catch faults the kernel takes on our behalf
 * (read(2) into a page the child lacks): that needs CAP_SYS_PTRACE, or
 * vm.unprivileged_userfaultfd=1, or /dev/userfaultfd, which the daemon
 * opens for root and the mount's own user (FBMM_OP_UFFD_DEVICE). Without
 * any of them, forks copy eagerly (said once with FBMM_VERBOSE=1).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "../../Sources/CFBMMSys/include/fbmm_broker.h"
#include "../../Sources/CFBMMSys/include/fbmm_pool.h"
#include "shim.h"
#include "sys.h"

static struct {
    int uffd;                /* this process's userfaultfd (-1: none yet) */
    int dev_fd;              /* /dev/userfaultfd from the daemon, kept for children */
    int off;                 /* unavailable for good: copy eagerly */
    int pending;             /* prepared for the fork under way */
    int linked;              /* the arena has a source or lazy copies */
    struct fbmm_arena next;  /* the child's arena, made by the parent */
} cow = { .uffd = -1, .dev_fd = -1 };

static int is_private(const struct fbmm_piece *p)
{
    return !(p->flags & (P_ANON | P_SHARED | P_FOREIGN));
}

static void give_up(const char *why, int err)
{
    static int once;
    cow.off = 1;
    fbmm_say_once(&once, "fork copies eagerly (no copy-on-write): ", why, err ? strerrorname_np(err) : NULL);
}

/* A userfaultfd of this process that handles kernel-mode faults too, with
 * write-protect on shmem (5.19); -1 with errno. */
static int make_uffd(void)
{
    int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (fd < 0 && errno == EPERM) {
        if (cow.dev_fd < 0) {
            char why[160];
            struct fbmm_request req = { .op = FBMM_OP_UFFD_DEVICE };
            int dev = -1;
            if (fbmm_broker_exchange(fbmm_arena.sock, &req, NULL, 0, 1, &dev, NULL, why, sizeof why) < 0)
                return -1;
            cow.dev_fd = fbmm_fd_high(dev);
        }
        fd = ioctl(cow.dev_fd, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
    }
    if (fd < 0) return -1;
    struct uffdio_api api = { .api = UFFD_API, .features = UFFD_FEATURE_WP_HUGETLBFS_SHMEM };
    if (ioctl(fd, UFFDIO_API, &api) < 0 || !(api.features & UFFD_FEATURE_MISSING_SHMEM)) {
        int e = errno;
        sys_close(fd);
        errno = e ? e : ENOTSUP;
        return -1;
    }
    return fbmm_fd_high(fd);
}

static int reg(int uffd, const struct fbmm_piece *p, uint64_t mode)
{
    struct uffdio_register r = { .range = { .start = p->addr, .len = p->len }, .mode = mode };
    return ioctl(uffd, UFFDIO_REGISTER, &r);
}

/* One copy-on-write request about our arena (retried while the daemon is
 * busy: fbmm_broker_exchange). */
static int exchange(struct fbmm_request *req, const int *fds, int nfds, uint64_t *size, char *why, size_t wl)
{
    return fbmm_broker_exchange(fbmm_arena.sock, req, fds, nfds, 0, &(int){ -1 }, size, why, wl);
}

/* The daemon is gone (its socket refuses or vanished): nobody pushes what
 * our lazy copies still need any more, so freeing goes ahead without it and
 * forks copy eagerly from here on. (A parent holds no userfaultfd: its
 * write-protection died with the daemon's copy, so its writes never wait.
 * A lazy-copy child keeps its own, so that a page it never received blocks
 * rather than reads zero: its memory is gone with the daemon.) */
static void abandon(const char *why)
{
    static int once;
    cow.linked = 0;
    cow.off = 1;
    fbmm_say_once(&once, "copy-on-write stopped: the daemon is gone (", why, ")");
}

/* Nobody listens on the broker's socket any more, or it was removed. */
static int daemon_gone(int e)
{
    return e == ECONNREFUSED || e == ENOENT;
}

/* A release or settle the daemon did not take: with the daemon gone, go
 * ahead without it (0); otherwise keep the memory as it is (-1, EBUSY),
 * saying `what` once. */
static int not_taken(int *once, const char *what, const char *why)
{
    if (daemon_gone(errno)) {
        abandon(why);
        return 0;
    }
    fbmm_say_once(once, what, why, NULL);
    errno = EBUSY;
    return -1;
}

int fbmm_cow_prepare(void)
{
    cow.pending = 0;
    if (cow.off || fbmm_arena.state != ARENA_READY || fbmm_arena.tmpfs) return 0;
    int any = 0;
    for (size_t i = 0; i < fbmm_rt_n; i++) any |= is_private(fbmm_rt_at(i));
    if (!any || !fbmm_arena_fd_ok() || !fbmm_arena_name_ok()) return 0;
    /* The daemon registers and write-protects our mappings through a
     * userfaultfd of our mm and keeps it; we keep none (a lazy-copy child
     * sends its own, which the daemon holds already). */
    int uffd = cow.uffd;
    if (uffd < 0 && (uffd = make_uffd()) < 0) {
        give_up("no userfaultfd that handles kernel faults: ", errno);
        return 0;
    }
    if (fbmm_arena_open(&cow.next) < 0) {
        if (uffd != cow.uffd) sys_close(uffd);
        return 0;
    }
    int ok = 1;
    if (cow.next.size < fbmm_arena.size) {
        ok = ftruncate(cow.next.name_fd, (off_t)fbmm_arena.size) == 0;
        if (ok) cow.next.size = fbmm_arena.size;
    }
    char why[160] = "cannot size the child's arena";
    if (ok) {
        int fds[3] = { cow.next.name_fd, fbmm_arena.name_fd, uffd };
        struct fbmm_request req = { .op = FBMM_OP_COW_FORK, .ino = cow.next.name_ino,
                                    .offset = fbmm_arena.name_ino };
        ok = exchange(&req, fds, 3, NULL, why, sizeof why) == 0;
    }
    int e = errno;
    if (uffd != cow.uffd) sys_close(uffd);
    if (!ok) {
        fbmm_arena_close(&cow.next);
        /* A daemon without copy-on-write (older, cow-chunk=0, an old kernel)
         * says so for good; anything else may pass. */
        if (e == ENOTSUP || e == EINVAL || e == EPERM) give_up(why, 0);
        else fbmm_say("fork copies eagerly this time: ", why, NULL);
        return 0;
    }
    cow.pending = 1;
    return 1;
}

void fbmm_cow_parent(void)
{
    if (!cow.pending) return;
    cow.pending = 0;
    fbmm_arena_close(&cow.next);  /* the child holds its own copies */
    cow.linked = 1;
}

/* Makes [off, off+len) of our arena ours alone: the daemon copies into it
 * what it still reads from its source and gives our lazy copies what they
 * still need of it (len 0: the whole arena). */
static int fill(uint64_t off, uint64_t len, char *why, size_t wl)
{
    struct fbmm_request req = { .op = FBMM_OP_COW_FILL, .ino = fbmm_arena.name_ino, .offset = off, .length = len };
    return exchange(&req, &fbmm_arena.name_fd, 1, NULL, why, wl);
}

/* In the child: ask the daemon to copy everything now. */
static void fill_now(const char *why)
{
    fbmm_say("fork child: ", why, "; copying everything now");
    char w[160];
    if (fill(0, 0, w, sizeof w) < 0)
        fbmm_say("fork child: the copy failed: ", w, "; memory the parent changes may show here");
}

int fbmm_cow_child(void)
{
    if (!cow.pending) return 0;
    cow.pending = 0;
    struct fbmm_arena old = fbmm_arena;
    fbmm_arena = cow.next;
    memset(&cow.next, 0, sizeof cow.next);
    cow.linked = 1;
    /* The parent's userfaultfd is the parent's. */
    if (cow.uffd >= 0) sys_close(cow.uffd);
    cow.uffd = -1;
    fbmm_pool_child(0);
    fbmm_cache_drop_child(1);
    for (size_t i = 0; i < fbmm_rt_n;) {
        struct fbmm_piece *p = fbmm_rt_at(i);
        if (p->flags & P_SHARED) {
            if (p->flags & P_DONTFORK) { fbmm_rt_remove(i, 1); continue; }
            p->flags = (p->flags | P_KEEP | P_FOREIGN) & ~P_WIPEFORK;
        }
        i++;
    }
    int uffd = make_uffd();
    const char *trouble = uffd < 0 ? "no userfaultfd" : NULL;
    for (size_t i = 0; i < fbmm_rt_n;) {
        struct fbmm_piece *p = fbmm_rt_at(i);
        if (!is_private(p)) { i++; continue; }
        if (p->flags & P_DONTFORK) {
            if (p->flags & P_HEAD) fbmm_heads_del(p->addr);
            if (fbmm_arena_punch(p->off, p->len) == 0) fbmm_off_free(p->off, p->len);
            fbmm_rt_remove(i, 1);
            continue;
        }
        if (sys_mmap((void *)p->addr, p->len, (int)p->prot, MAP_SHARED | MAP_FIXED, fbmm_arena.mem_fd,
                     (off_t)p->off) == MAP_FAILED) {
            sys_mmap((void *)p->addr, p->len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
            fbmm_say("fork child: could not map a region; it is now inaccessible", NULL, NULL);
            i++;
            continue;
        }
        if (p->flags & P_WIPEFORK) {
            fbmm_arena_punch(p->off, p->len);  /* zero, and needs nothing of the parent's */
        } else if (!trouble && reg(uffd, p, UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP) < 0) {
            trouble = "cannot register a region for missing pages";
        }
        i++;
    }
    if (!trouble) {
        int fds[2] = { fbmm_arena.name_fd, uffd };
        struct fbmm_request req = { .op = FBMM_OP_COW_CHILD, .ino = fbmm_arena.name_ino };
        char why[160];
        if (exchange(&req, fds, 2, NULL, why, sizeof why) < 0)
            trouble = "the daemon did not take our userfaultfd";
    }
    /* The parent's pool control block (offset 0) is not ours: our own is
     * written there through a new mapping, never through a fault. */
    if (!trouble && fbmm_arena.pool_window) fbmm_cow_release(0, FBMM_POOL_CTL_BYTES);
    if (trouble) {
        if (uffd >= 0) sys_close(uffd);  /* unregisters everything: faults go to the kernel */
        uffd = -1;
        fill_now(trouble);
    }
    cow.uffd = uffd;
    fbmm_arena_close(&old);
    return 1;
}

int fbmm_cow_release(uint64_t off, uint64_t len)
{
    if (!cow.linked || fbmm_arena.tmpfs) return 0;
    struct fbmm_request req = { .op = FBMM_OP_COW_RELEASE, .ino = fbmm_arena.name_ino, .offset = off, .length = len };
    uint64_t linked = 1;
    char why[160];
    if (exchange(&req, &fbmm_arena.name_fd, 1, &linked, why, sizeof why) < 0) {
        static int once;
        return not_taken(&once, "keeping freed memory a fork child may still need: ", why);
    }
    if (!linked) cow.linked = 0;
    return 0;
}

int fbmm_cow_settle(uint64_t off, uint64_t len)
{
    if (!cow.linked || fbmm_arena.tmpfs || !len) return 0;
    char why[160];
    if (fill(off, len, why, sizeof why) == 0) return 0;
    static int once;
    return not_taken(&once, "cannot move memory a fork child shares lazily: ", why);
}

int fbmm_cow_linked(void)
{
    return cow.linked;
}

int fbmm_cow_fds(int *out)
{
    int n = 0;
    int u = __atomic_load_n(&cow.uffd, __ATOMIC_RELAXED), d = __atomic_load_n(&cow.dev_fd, __ATOMIC_RELAXED);
    if (u >= 0) out[n++] = u;
    if (d >= 0) out[n++] = d;
    return n;
}

int fbmm_cow_evict(int fd)
{
    if (fd < 0 || (fd != cow.uffd && fd != cow.dev_fd)) return 0;
    int h = fbmm_fd_move(fd);
    if (fd == cow.uffd) cow.uffd = h;
    else cow.dev_fd = h;
    return 1;
}
