/*
 * fbmm broker wire protocol: shared by the Swift daemon and the C shim.
 *
 * Why a broker: the page-fault path must never cross FUSE (the page cache of
 * a FUSE file cannot be placed by the filesystem), so a process that opened a
 * file through the mount asks the daemon for the file's backing memfd and maps
 * that directly.
 *
 * Trust model (version 2): ownership is proved by possession, never by pid.
 * A request about a file carries the peer's own open fd of that file through
 * the mount, attached with SCM_RIGHTS. The daemon checks the received open
 * file itself (statx: this mount's device and the inode named in `ino`;
 * F_GETFL: its access mode), so a pid that died and was reused, an fd number
 * guessed in another process, or a file opened write-only cannot yield
 * anything. GET_BACKING and POOL need an fd opened O_RDWR (the memfd gives
 * read and write access both); MIGRATE needs any fd of the file, and is
 * refused unless the peer owns the file, is root, or opened it for writing.
 * STAT carries no fd and reports only the files whose owner is the peer's
 * uid (root and the mount's own user see all).
 *
 * Transport: AF_UNIX SOCK_SEQPACKET; one request message, one reply message.
 * The socket path is published as the xattr "user.fbmm.broker" on the mount's
 * root directory (so a process finds the broker from the mount path alone).
 * A client checks the broker's SO_PEERCRED (root, or its own uid) before it
 * trusts a reply.
 *
 * This header must stay plain C with fixed-size fields: the shim includes it
 * and runs inside arbitrary processes.
 */
#ifndef FBMM_BROKER_H
#define FBMM_BROKER_H

#include <stdint.h>
#include <string.h>
#include <sys/socket.h>

#define FBMM_BROKER_MAGIC   0x4642u /* "FB" */
#define FBMM_BROKER_VERSION 2u

/* xattr on the mount root whose value is the broker socket path. */
#define FBMM_XATTR_BROKER   "user.fbmm.broker"
/* xattrs on the mount root: the pre-zeroed pool window per arena in bytes
 * ("0": no pool), and the huge-page mode ("always", "advise", "never"). */
#define FBMM_XATTR_PREZERO  "user.fbmm.prezero"
#define FBMM_XATTR_HUGE     "user.fbmm.huge"
/* xattr on every file: per-node bytes, "0:4096 1:8192". */
#define FBMM_XATTR_NODES    "user.fbmm.nodes"
/* xattr on every file: the policy override (same syntax as --policy/-o). */
#define FBMM_XATTR_POLICY   "user.fbmm.policy"

enum fbmm_broker_op {
    /* Give me the backing memfd of the file whose fd (opened O_RDWR through
     * the mount) is attached. Reply carries the memfd via SCM_RIGHTS when
     * status == 0. With FBMM_BACKING_ARENA in `flags` the file also becomes
     * the peer's arena: it is unlinked when its last handle closes. Only the
     * file's creator may ask that, with the handle that created it still its
     * only open (the shim's O_CREAT|O_EXCL arena, asked for at once). */
    FBMM_OP_GET_BACKING = 1,
    /* Report statistics: reply carries a memfd holding UTF-8 JSON
     * (same document as `fbmm stat --json`, limited to what the peer may
     * see), length in `size`. No fd attached. */
    FBMM_OP_STAT = 2,
    /* Migrate resident pages of the file whose fd (any access mode) is
     * attached, in [offset, offset+length), to node `node`; length 0 means
     * to end of file (offset 0 and length 0: the whole file, and its policy
     * follows). Reply `size` = bytes moved. */
    FBMM_OP_MIGRATE = 3,
    /* Enrol the arena whose fd (O_RDWR) is attached in the pre-zeroed pool.
     * The peer has grown the file past the window and written the control
     * block (fbmm_pool.h) first. Reply `size` = window pages; the reply
     * carries the pool's eventfd. */
    FBMM_OP_POOL = 4,
    /* Copy-on-write fork (CopyOnWrite.swift; the shim's cow.c), asked by
     * the parent in its fork prepare handler. Attached, in order: the new
     * arena for the child (O_RDWR, `ino`), the peer's own arena (O_RDWR,
     * inode in `offset`), both process-owned arenas of the peer's uid, and
     * the peer's userfaultfd with its arena's private mappings registered
     * for write-protect faults. The daemon write-protects the peer's
     * mappings of its arena and makes the new arena a lazy copy of it:
     * every page the new arena lacks reads as the peer's arena did at this
     * moment. Reply status 0, or an errno (the shim copies eagerly then). */
    FBMM_OP_COW_FORK = 5,
    /* From the fork child, once it mapped the new arena (attached first,
     * `ino`) and registered those mappings for missing-page and
     * write-protect faults on its own userfaultfd (attached second): the
     * daemon fills each page on first touch. */
    FBMM_OP_COW_CHILD = 6,
    /* The peer is about to free [offset, offset+length) of its arena
     * (attached, `ino`): pages a lazy copy still needs from there are
     * copied first, and the range stops depending on its own source.
     * Reply `size`: 1 while the arena still has a source or lazy copies
     * (ask again next time), 0 once it has neither. */
    FBMM_OP_COW_RELEASE = 7,
    /* Makes [offset, offset+length) of the attached arena its own (0, 0:
     * all of it): lazy copies of it get what they still need there, and
     * what it still reads from its source is copied in. For a child that
     * could not make a userfaultfd, and before a mapping moves (mremap
     * leaves the userfaultfd). */
    FBMM_OP_COW_FILL = 8,
    /* A descriptor of /dev/userfaultfd (reply fd), for a peer that may not
     * create a userfaultfd that also handles kernel-mode faults: root and
     * the mount's own user only. No fd attached. */
    FBMM_OP_UFFD_DEVICE = 9,
};

/* fbmm_request.flags */
#define FBMM_BACKING_ARENA 1u

/* Request: exactly sizeof(struct fbmm_request) bytes; at most one fd
 * attached (GET_BACKING, MIGRATE, POOL, COW_RELEASE, COW_FILL: the file's;
 * STAT, UFFD_DEVICE: none), except COW_FORK (three) and COW_CHILD (two). */
#define FBMM_BROKER_MAX_FDS 3
struct fbmm_request {
    uint16_t magic;    /* FBMM_BROKER_MAGIC */
    uint16_t version;  /* FBMM_BROKER_VERSION */
    uint32_t op;       /* enum fbmm_broker_op */
    uint32_t flags;    /* GET_BACKING: FBMM_BACKING_ARENA; otherwise 0 */
    int32_t  node;     /* MIGRATE: target node */
    uint64_t ino;      /* st_ino of the attached fd as the peer sees it (must match) */
    uint64_t offset;   /* MIGRATE, COW_RELEASE, COW_FILL; COW_FORK: the peer's arena inode */
    uint64_t length;   /* MIGRATE, COW_RELEASE, COW_FILL */
};

/* Reply: exactly sizeof(struct fbmm_reply) bytes, optionally one fd attached. */
struct fbmm_reply {
    uint16_t magic;    /* FBMM_BROKER_MAGIC */
    uint16_t version;  /* FBMM_BROKER_VERSION */
    int32_t  status;   /* 0, or a positive errno value (EPERM, EINVAL, ENOENT...) */
    uint64_t size;     /* GET_BACKING: current file size; STAT: JSON length; MIGRATE: bytes moved */
};

/* Sends one message of `len` bytes with the `n` fds attached (SCM_RIGHTS;
 * none if n == 0), as both sides of the protocol do. */
static inline ssize_t fbmm_broker_send_fds(int sock, const void *buf, size_t len, const int *fds, int n)
{
    struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
    union { char buf[CMSG_SPACE(sizeof(int) * FBMM_BROKER_MAX_FDS)]; struct cmsghdr align; } ctl;
    struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
    if (n > FBMM_BROKER_MAX_FDS) n = FBMM_BROKER_MAX_FDS;
    if (n > 0) {
        memset(&ctl, 0, sizeof ctl);
        msg.msg_control = ctl.buf;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)n);
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)n);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * (size_t)n);
    }
    return sendmsg(sock, &msg, MSG_NOSIGNAL);
}

/* The same with one fd (none if fd < 0). */
static inline ssize_t fbmm_broker_send(int sock, const void *buf, size_t len, int fd)
{
    return fbmm_broker_send_fds(sock, buf, len, &fd, fd >= 0 ? 1 : 0);
}

#endif /* FBMM_BROKER_H */
