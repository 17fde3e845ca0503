#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/sysmacros.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "fbmm_uffd.h"

/* PROCMAP_QUERY (linux/fs.h since 6.11; Debian 12's headers predate it).
 * The layout is the kernel's ABI; `size` lets it grow compatibly. */
struct fbmm_procmap_query {
    uint64_t size, query_flags, query_addr, vma_start, vma_end, vma_flags, vma_page_size, vma_offset, inode;
    uint32_t dev_major, dev_minor, vma_name_size, build_id_size;
    uint64_t vma_name_addr, build_id_addr;
};
#define FBMM_PROCMAP_QUERY _IOWR('f', 17, struct fbmm_procmap_query)
#define FBMM_PROCMAP_COVERING_OR_NEXT 0x10
#define FBMM_PROCMAP_FILE_BACKED      0x20
#define FBMM_PROCMAP_SHARED           0x08

int fbmm_uffd_read(int uffd, struct fbmm_fault *out, int max)
{
    struct uffd_msg msg[16];
    int n = 0;
    while (n < max) {
        size_t want = (size_t)(max - n) < 16 ? (size_t)(max - n) : 16;
        ssize_t r = read(uffd, msg, want * sizeof msg[0]);
        if (r < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) break;
            return n ? n : -1;
        }
        size_t got = (size_t)r / sizeof msg[0];
        for (size_t i = 0; i < got; i++) {
            if (msg[i].event != UFFD_EVENT_PAGEFAULT) continue;
            uint64_t f = msg[i].arg.pagefault.flags;
            out[n].address = msg[i].arg.pagefault.address;
            out[n].write = (f & UFFD_PAGEFAULT_FLAG_WRITE) != 0;
            out[n].wp = (f & UFFD_PAGEFAULT_FLAG_WP) != 0;
            n++;
        }
        if (got < want) break;
    }
    return n;
}

int fbmm_uffd_register_wp(int uffd, uint64_t start, uint64_t len)
{
    struct uffdio_register r = { .range = { .start = start, .len = len }, .mode = UFFDIO_REGISTER_MODE_WP };
    return ioctl(uffd, UFFDIO_REGISTER, &r);
}

int fbmm_uffd_writeprotect(int uffd, uint64_t start, uint64_t len, int protect)
{
    struct uffdio_writeprotect wp = { .range = { .start = start, .len = len },
                                      .mode = protect ? UFFDIO_WRITEPROTECT_MODE_WP : 0 };
    int r;
    while ((r = ioctl(uffd, UFFDIO_WRITEPROTECT, &wp)) < 0 && errno == EAGAIN) {}
    return r;
}

int fbmm_uffd_copy(int uffd, uint64_t dst, const void *src, uint64_t len, uint64_t *copied)
{
    uint64_t done = 0;
    while (done < len) {
        struct uffdio_copy c = { .dst = dst + done, .src = (uint64_t)(uintptr_t)src + done, .len = len - done };
        if (ioctl(uffd, UFFDIO_COPY, &c) == 0) { done = len; break; }
        int e = errno;
        if (c.copy > 0) done += (uint64_t)c.copy;
        if (e == EAGAIN || (e == EINTR)) continue;
        *copied = done;
        errno = e;
        return -1;
    }
    *copied = done;
    return 0;
}

int fbmm_uffd_wake(int uffd, uint64_t start, uint64_t len)
{
    struct uffdio_range r = { .start = start, .len = len };
    return ioctl(uffd, UFFDIO_WAKE, &r);
}

int fbmm_is_userfaultfd(int fd)
{
    char path[64], link[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(path, link, sizeof link - 1);
    if (n < 0) return 0;
    link[n] = 0;
    return strcmp(link, "anon_inode:[userfaultfd]") == 0;
}

int fbmm_open_userfaultfd_device(void)
{
    return open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
}

int fbmm_vma_query(int maps_fd, uint64_t address, int next, struct fbmm_vma *out)
{
    struct fbmm_procmap_query q;
    memset(&q, 0, sizeof q);
    q.size = sizeof q;
    q.query_addr = address;
    q.query_flags = next ? FBMM_PROCMAP_COVERING_OR_NEXT | FBMM_PROCMAP_FILE_BACKED : 0;
    if (ioctl(maps_fd, FBMM_PROCMAP_QUERY, &q) < 0) return -1;
    out->start = q.vma_start;
    out->end = q.vma_end;
    out->offset = q.vma_offset;
    out->inode = q.inode;
    out->dev = makedev(q.dev_major, q.dev_minor);
    out->shared = (q.vma_flags & FBMM_PROCMAP_SHARED) != 0;
    return 0;
}

int fbmm_pidfd_open(pid_t pid)
{
    return (int)syscall(SYS_pidfd_open, pid, 0);
}

int fbmm_epoll_create(void) { return epoll_create1(EPOLL_CLOEXEC); }

int fbmm_epoll_add(int ep, int fd, uint64_t key)
{
    struct epoll_event ev = { .events = EPOLLIN, .data.u64 = key };
    return epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
}

int fbmm_epoll_del(int ep, int fd) { return epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL); }

int fbmm_epoll_wait(int ep, uint64_t *keys, int max, int timeout_ms)
{
    struct epoll_event ev[64];
    if (max > 64) max = 64;
    int n = epoll_wait(ep, ev, max, timeout_ms);
    for (int i = 0; i < n; i++) keys[i] = ev[i].data.u64;
    return n;
}
