/*
 * Thin C helpers for what Swift cannot express directly: macros (CMSG_*),
 * Linux-only constants that glibc headers hide behind _GNU_SOURCE, and
 * variadic or struct-heavy calls. Each returns -1 with errno set on failure,
 * exactly like the syscall it wraps, so the Swift side turns errno into a
 * typed error in one place.
 */
#ifndef FBMM_SYS_H
#define FBMM_SYS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include "fbmm_broker.h"

int fbmm_memfd_create(const char *name, unsigned int flags);
int fbmm_memfd_flag_cloexec(void);
int fbmm_memfd_flag_allow_sealing(void);
/* fcntl(F_ADD_SEALS, F_SEAL_SHRINK): nobody, holder of the fd or not, can shrink it. */
int fbmm_seal_shrink(int fd);
int fbmm_punch_hole(int fd, off_t offset, off_t length);
int fbmm_fallocate(int fd, int mode, off_t offset, off_t length);
int fbmm_falloc_keep_size(void);
off_t fbmm_seek_data(int fd, off_t offset);
off_t fbmm_seek_hole(int fd, off_t offset);
int fbmm_madv_populate_read(void);
int fbmm_madv_populate_write(void);
int fbmm_madv_remove(void);

/* Send `len` bytes and, if fd_to_send >= 0, that fd (SCM_RIGHTS). */
ssize_t fbmm_send_with_fd(int sock, const void *buf, size_t len, int fd_to_send);
/* Receive up to `len` bytes; *fd_out gets a received fd or -1. MSG_CMSG_CLOEXEC. */
ssize_t fbmm_recv_with_fd(int sock, void *buf, size_t len, int *fd_out);
/* The same, and *count_out gets how many fds came (all but *fd_out closed). */
ssize_t fbmm_recv_counting_fds(int sock, void *buf, size_t len, int *fd_out, int *count_out);
/* The same keeping up to `max` fds in fds[] (the rest closed; unused slots
 * -1); *count_out gets how many came. */
ssize_t fbmm_recv_fds(int sock, void *buf, size_t len, int *fds, int max, int *count_out);
/* What a descriptor a peer sent us is, without asking any filesystem's
 * daemon (statx AT_STATX_DONT_SYNC: a FUSE fd of a hung daemon cannot stall
 * us here): its st_dev, st_ino, file type bits and open flags (F_GETFL).
 * Returns 0 or -1 with errno. */
int fbmm_fd_identity(int fd, uint64_t *dev, uint64_t *ino, uint32_t *mode, int *flags);
/* Whether `tid` leads its thread group (is a process, tgid == tid):
 * tgkill(tid, tid, 0) in one system call; EPERM still means it does. */
int fbmm_is_process(pid_t tid);
/* process_madvise(pidfd, ranges, MADV_PAGEOUT) (5.10+) over `n` ranges of
 * `len` bytes each at `addrs`; returns the bytes advised or -1/errno. */
ssize_t fbmm_pageout(int pidfd, const uint64_t *addrs, const uint64_t *lens, size_t n);
/* Whether any swap area is active (/proc/swaps lists one). */
int fbmm_swap_active(void);
/* SO_PEERCRED of a connected unix socket. */
int fbmm_peer_cred(int sock, pid_t *pid, uid_t *uid, gid_t *gid);

/* accept4(..., SOCK_CLOEXEC). */
int fbmm_accept_cloexec(int listener);
/* A connected AF_UNIX SOCK_SEQPACKET client socket (close-on-exec). */
int fbmm_connect_seqpacket(const char *path);
/* One request/reply exchange with the broker at `path`, with `attach_fd`
 * (the file the request is about; -1: none) attached; *fd_out gets an
 * attached fd or -1. A broker whose SO_PEERCRED uid is neither root nor
 * ours is not talked to (EPERM) unless we are root. Returns 0 or -1 with
 * errno set (transport errors only; the broker's verdict is reply->status). */
int fbmm_broker_call(const char *path, const struct fbmm_request *request, int attach_fd,
                     struct fbmm_reply *reply, int *fd_out);

/* getxattr(2) (sys/xattr.h is not in Swift's Glibc module). */
ssize_t fbmm_getxattr(const char *path, const char *name, void *value, size_t size);
/* POSIX_SPAWN_SETSID, hidden behind _GNU_SOURCE. */
short fbmm_posix_spawn_setsid(void);
/* setxattr(2). */
int fbmm_setxattr(const char *path, const char *name, const void *value, size_t size, int flags);
/* posix_spawn_file_actions_addclosefrom_np: close every fd >= from in the child,
 * so a daemon never holds a caller's pipes open. */
int fbmm_spawn_close_from(void *actions, int from);

/* ---- the pre-zeroed pool (fbmm_pool.h), daemon side ----------------- */
struct fbmm_pool_ctl;

/* What one pass over an enrolled arena did. */
struct fbmm_pool_pass {
    uint64_t zeroed_pages;   /* freed pages zeroed in place and made clean */
    uint64_t filled_pages;   /* empty pages allocated, zero, made clean */
    uint64_t punched_pages;  /* freed pages returned to the kernel (over budget) */
    uint64_t clean_pages;    /* clean pages after the pass */
    int      fill_errno;     /* why a fill stopped early (ENOMEM...), or 0 */
};

/* Prepares the daemon's private `empty` bitmap at enrolment: every window
 * page the shim did not mark busy; clears the shared clean/dirty bitmaps. */
void fbmm_pool_enroll(struct fbmm_pool_ctl *ctl, uint64_t *empty, uint64_t window_pages);
/* Zeroes what the shim freed while at most `budget_pages` are clean (the
 * rest is punched), then fills empty pages until `fill_to` are clean, at
 * most `fill_max` of them. `window` maps the window (file offsets
 * window_offset...) of `memfd`. */
void fbmm_pool_run(struct fbmm_pool_ctl *ctl, uint64_t *empty, char *window,
                   uint64_t window_pages, int memfd, uint64_t window_offset, uint64_t budget_pages,
                   uint64_t fill_to, uint64_t fill_max, struct fbmm_pool_pass *out);
/* Punches every empty page (a no-op for holes): pages that something else
 * faulted in there (a concurrent look by `fbmm stat`) go back. */
void fbmm_pool_trim(const uint64_t *empty, uint64_t window_pages, int memfd, uint64_t window_offset);
/* Takes back every clean page (the file's policy changed: they may be on
 * nodes it no longer allows) and frees it; refilling follows the new policy.
 * Returns the pages revoked. */
uint64_t fbmm_pool_revoke(struct fbmm_pool_ctl *ctl, uint64_t *empty, uint64_t window_pages, int memfd,
                          uint64_t window_offset);
/* Freed pages the daemon has not settled yet. */
uint64_t fbmm_pool_dirty_pages(const struct fbmm_pool_ctl *ctl, uint64_t window_pages);
/* Marks the daemon asleep (1) or awake (0). */
void fbmm_pool_set_sleeping(struct fbmm_pool_ctl *ctl, uint32_t value);
/* The shim's counters, read atomically. */
void fbmm_pool_counters(const struct fbmm_pool_ctl *ctl, uint64_t *handed, uint64_t *returned,
                        uint64_t *misses, uint64_t *kicks);
/* eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK); drains it with fbmm_eventfd_drain. */
int fbmm_eventfd(void);
void fbmm_eventfd_drain(int fd);
/* poll(fd, POLLIN, timeout_ms): 1 readable, 0 timeout, -1 error. */
int fbmm_poll_in(int fd, int timeout_ms);

#endif
