#define _GNU_SOURCE
#include "fbmm_sys.h"
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/xattr.h>
#include <signal.h>
#include <spawn.h>
#include <unistd.h>
#include <linux/falloc.h>

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

int fbmm_memfd_create(const char *name, unsigned int flags) { return memfd_create(name, flags); }
int fbmm_memfd_flag_cloexec(void) { return MFD_CLOEXEC; }
int fbmm_memfd_flag_allow_sealing(void) { return MFD_ALLOW_SEALING; }
int fbmm_seal_shrink(int fd) { return fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK); }

int fbmm_punch_hole(int fd, off_t offset, off_t length) {
    return fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length);
}
int fbmm_fallocate(int fd, int mode, off_t offset, off_t length) {
    return fallocate(fd, mode, offset, length);
}
int fbmm_falloc_keep_size(void) { return FALLOC_FL_KEEP_SIZE; }
off_t fbmm_seek_data(int fd, off_t offset) { return lseek(fd, offset, SEEK_DATA); }
off_t fbmm_seek_hole(int fd, off_t offset) { return lseek(fd, offset, SEEK_HOLE); }
int fbmm_madv_populate_read(void) { return MADV_POPULATE_READ; }
int fbmm_madv_populate_write(void) { return MADV_POPULATE_WRITE; }
int fbmm_madv_remove(void) { return MADV_REMOVE; }

ssize_t fbmm_send_with_fd(int sock, const void *buf, size_t len, int fd_to_send) {
    return fbmm_broker_send(sock, buf, len, fd_to_send);
}

ssize_t fbmm_recv_with_fd(int sock, void *buf, size_t len, int *fd_out) {
    int count;
    return fbmm_recv_counting_fds(sock, buf, len, fd_out, &count);
}

ssize_t fbmm_recv_counting_fds(int sock, void *buf, size_t len, int *fd_out, int *count_out) {
    return fbmm_recv_fds(sock, buf, len, fd_out, 1, count_out);
}

ssize_t fbmm_recv_fds(int sock, void *buf, size_t len, int *fds, int max, int *count_out) {
    struct iovec iov = { .iov_base = buf, .iov_len = len };
    /* Room for several fds: a hostile peer may attach more than asked for;
     * all received fds beyond the first `max` are closed so none leak. */
    union { char buf[CMSG_SPACE(sizeof(int) * 8)]; struct cmsghdr align; } ctl;
    struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1,
                          .msg_control = ctl.buf, .msg_controllen = sizeof ctl.buf };
    int kept = 0;
    for (int i = 0; i < max; i++) fds[i] = -1;
    *count_out = 0;
    ssize_t n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
    if (n < 0) return n;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        *count_out += (int)count;
        for (size_t i = 0; i < count; i++) {
            int fd;
            memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
            if (kept < max) fds[kept++] = fd; else close(fd);
        }
    }
    if (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) {
        for (int i = 0; i < kept; i++) { close(fds[i]); fds[i] = -1; }
        errno = EMSGSIZE;
        return -1;
    }
    return n;
}

int fbmm_fd_identity(int fd, uint64_t *dev, uint64_t *ino, uint32_t *mode, int *flags) {
    struct statx sx;
    if (statx(fd, "", AT_EMPTY_PATH | AT_STATX_DONT_SYNC, STATX_TYPE | STATX_INO, &sx) < 0) return -1;
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0) return -1;
    *dev = makedev(sx.stx_dev_major, sx.stx_dev_minor);
    *ino = sx.stx_ino;
    *mode = sx.stx_mode;
    *flags = fl;
    return 0;
}

int fbmm_is_process(pid_t tid) {
    return tgkill(tid, tid, 0) == 0 || errno == EPERM;
}

ssize_t fbmm_pageout(int pidfd, const uint64_t *addrs, const uint64_t *lens, size_t n) {
    struct iovec iov[512];
    ssize_t total = 0;
    for (size_t i = 0; i < n;) {
        size_t k = 0;
        for (; k < 512 && i + k < n; k++) {
            iov[k].iov_base = (void *)(uintptr_t)addrs[i + k];
            iov[k].iov_len = (size_t)lens[i + k];
        }
        ssize_t r = syscall(SYS_process_madvise, pidfd, iov, k, 21 /* MADV_PAGEOUT */, 0);
        if (r < 0) return total ? total : -1;
        total += r;
        i += k;
    }
    return total;
}

int fbmm_swap_active(void) {
    FILE *f = fopen("/proc/swaps", "re");
    if (!f) return 0;
    char line[512];
    int lines = 0;
    while (fgets(line, sizeof line, f)) lines++;
    fclose(f);
    return lines > 1;  /* the first is the header */
}

int fbmm_peer_cred(int sock, pid_t *pid, uid_t *uid, gid_t *gid) {
    struct ucred cred;
    socklen_t len = sizeof cred;
    if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) return -1;
    *pid = cred.pid; *uid = cred.uid; *gid = cred.gid;
    return 0;
}

int fbmm_accept_cloexec(int listener) { return accept4(listener, NULL, NULL, SOCK_CLOEXEC); }

int fbmm_connect_seqpacket(const char *path) {
    struct sockaddr_un addr = { .sun_family = AF_UNIX };
    if (strlen(path) >= sizeof addr.sun_path) { errno = ENAMETOOLONG; return -1; }
    strcpy(addr.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        int saved = errno; close(fd); errno = saved; return -1;
    }
    return fd;
}

int fbmm_broker_call(const char *path, const struct fbmm_request *request, int attach_fd,
                     struct fbmm_reply *reply, int *fd_out) {
    *fd_out = -1;
    int sock = fbmm_connect_seqpacket(path);
    if (sock < 0) return -1;
    /* Only a broker run by root or by us (or anyone, when we are root) is
     * told about our files and believed. */
    pid_t pid; uid_t uid; gid_t gid;
    if (fbmm_peer_cred(sock, &pid, &uid, &gid) < 0 || (uid != 0 && uid != getuid() && getuid() != 0)) {
        close(sock); errno = EPERM; return -1;
    }
    if (fbmm_send_with_fd(sock, request, sizeof *request, attach_fd) != (ssize_t)sizeof *request) {
        int saved = errno; close(sock); errno = saved ? saved : EPROTO; return -1;
    }
    ssize_t n = fbmm_recv_with_fd(sock, reply, sizeof *reply, fd_out);
    int saved = errno;
    close(sock);
    if (n != (ssize_t)sizeof *reply || reply->magic != FBMM_BROKER_MAGIC) {
        if (*fd_out >= 0) { close(*fd_out); *fd_out = -1; }
        errno = n < 0 ? saved : EPROTO;
        return -1;
    }
    return 0;
}

ssize_t fbmm_getxattr(const char *path, const char *name, void *value, size_t size) {
    return getxattr(path, name, value, size);
}
short fbmm_posix_spawn_setsid(void) { return POSIX_SPAWN_SETSID; }
int fbmm_spawn_close_from(void *actions, int from) {
    return posix_spawn_file_actions_addclosefrom_np((posix_spawn_file_actions_t *)actions, from);
}
int fbmm_setxattr(const char *path, const char *name, const void *value, size_t size, int flags) {
    return setxattr(path, name, value, size, flags);
}
