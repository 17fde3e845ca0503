/*
 * Daemon side of copy-on-write fork: userfaultfd and PROCMAP_QUERY, the two
 * kernel interfaces CopyOnWrite.swift needs, as plain calls that return -1
 * with errno (the Swift side makes typed errors of them).
 *
 * Why userfaultfd: a fork child's memory is a new arena file that starts
 * empty; the kernel reports the child's first touch of a page it lacks
 * (MISSING mode, filled with UFFDIO_COPY) and the parent's first write to
 * a page the child still needs (write-protect mode, shmem since 5.19), and
 * the daemon copies exactly those pages. Why PROCMAP_QUERY (6.11): a fault
 * reports an address; which file offset it is depends on the process's
 * mappings at that instant (mremap moves them), and one ioctl on the
 * process's /proc/PID/maps answers that without parsing text.
 */
#ifndef FBMM_UFFD_H
#define FBMM_UFFD_H

#include <stdint.h>
#include <sys/types.h>

/* One fault the kernel reported. */
struct fbmm_fault {
    uint64_t address;
    uint32_t write;     /* the access was a write */
    uint32_t wp;        /* a write-protect fault (else: a missing page) */
};

/* Reads up to `max` pending page-fault events of `uffd` (non-blocking);
 * other events are dropped. Returns the count, 0 when none is pending, -1. */
int fbmm_uffd_read(int uffd, struct fbmm_fault *out, int max);
/* UFFDIO_REGISTER of [start, start+len) for write-protect faults. The
 * range is in the mm of the process that created the userfaultfd, not the
 * caller's: so the daemon registers a parent's mappings itself, and the
 * parent keeps no userfaultfd whose faults would wait for a dead daemon. */
int fbmm_uffd_register_wp(int uffd, uint64_t start, uint64_t len);
/* UFFDIO_WRITEPROTECT of [start, start+len): protect 1 or 0 (which wakes). */
int fbmm_uffd_writeprotect(int uffd, uint64_t start, uint64_t len, int protect);
/* UFFDIO_COPY of len bytes from src to dst (in the uffd's process). Returns
 * 0, or -1 with errno (EEXIST: a page is already there; *copied says how
 * far it got). */
int fbmm_uffd_copy(int uffd, uint64_t dst, const void *src, uint64_t len, uint64_t *copied);
/* UFFDIO_WAKE of [start, start+len). */
int fbmm_uffd_wake(int uffd, uint64_t start, uint64_t len);
/* Whether `fd` is a userfaultfd (its /proc/self/fd link says so). */
int fbmm_is_userfaultfd(int fd);
/* open("/dev/userfaultfd", O_RDWR | O_CLOEXEC). */
int fbmm_open_userfaultfd_device(void);

/* One mapping of a process, as PROCMAP_QUERY reports it. */
struct fbmm_vma {
    uint64_t start, end;   /* addresses */
    uint64_t offset;       /* file offset of start */
    uint64_t inode;        /* 0: not file-backed */
    uint64_t dev;          /* st_dev of the file (makedev) */
    uint32_t shared;       /* MAP_SHARED */
};
/* The mapping containing `address` (next == 0), or the first one at or
 * after it (next == 1), of the process whose /proc/PID/maps is `maps_fd`.
 * -1 with ENOENT when there is none; ENOTTY on kernels before 6.11. */
int fbmm_vma_query(int maps_fd, uint64_t address, int next, struct fbmm_vma *out);
/* pidfd_open(pid, 0) (close-on-exec). */
int fbmm_pidfd_open(pid_t pid);

/* epoll helpers for the fault thread: create (cloexec), add/remove fd with
 * EPOLLIN and `key` as its data, wait for up to `max` keys. */
int fbmm_epoll_create(void);
int fbmm_epoll_add(int ep, int fd, uint64_t key);
int fbmm_epoll_del(int ep, int fd);
int fbmm_epoll_wait(int ep, uint64_t *keys, int max, int timeout_ms);

#endif
