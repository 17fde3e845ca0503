/*
 * fbmm broker wire protocol: shared by the Swift daemon and the C shim.
 *
 * Why a broker: the page-fault path must never cross FUSE (the page cache of
 * a FUSE file cannot be placed by the filesystem), so a process that opened a
 * file through the mount asks the daemon for the file's backing memfd and maps
 * that directly. The daemon hands the fd out only to a peer (SO_PEERCRED) that
 * itself holds that very file open for writing through the mount.
 *
 * Transport: AF_UNIX SOCK_SEQPACKET; one request message, one reply message.
 * The socket path is published as the xattr "user.fbmm.broker" on the mount's
 * root directory (so a process finds the broker from the mount path alone).
 *
 * This header must stay plain C with fixed-size fields: the shim includes it
 * and runs inside arbitrary processes.
 */
#ifndef FBMM_BROKER_H
#define FBMM_BROKER_H

#include <stdint.h>

#define FBMM_BROKER_MAGIC   0x4642u /* "FB" */
#define FBMM_BROKER_VERSION 1u

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
    /* Give me the backing memfd of the file I hold open as `fd`.
     * Reply carries the memfd via SCM_RIGHTS when status == 0. */
    FBMM_OP_GET_BACKING = 1,
    /* Report statistics: reply carries a memfd holding UTF-8 JSON
     * (same document as `fbmm stat --json`), length in `size`. */
    FBMM_OP_STAT = 2,
    /* Migrate resident pages of the file the peer holds open as `fd`
     * (any access mode) in [offset, offset+length) to node `node`;
     * length 0 means to end of file. Reply `size` = bytes moved. */
    FBMM_OP_MIGRATE = 3,
    /* Enrol the file the peer holds open for writing as `fd` (its arena) in
     * the pre-zeroed pool. The peer has grown the file past the window and
     * written the control block (fbmm_pool.h) first. Reply `size` = window
     * pages; the reply carries the pool's eventfd. */
    FBMM_OP_POOL = 4,
};

/* Request: exactly sizeof(struct fbmm_request) bytes, no fds attached. */
struct fbmm_request {
    uint16_t magic;    /* FBMM_BROKER_MAGIC */
    uint16_t version;  /* FBMM_BROKER_VERSION */
    uint32_t op;       /* enum fbmm_broker_op */
    int32_t  fd;       /* the peer's own fd number for the file (GET_BACKING, MIGRATE) */
    int32_t  node;     /* MIGRATE: target node */
    uint64_t ino;      /* st_ino of that fd as the peer sees it (must match) */
    uint64_t offset;   /* MIGRATE */
    uint64_t length;   /* MIGRATE */
};

/* Reply: exactly sizeof(struct fbmm_reply) bytes, optionally one fd attached. */
struct fbmm_reply {
    uint16_t magic;    /* FBMM_BROKER_MAGIC */
    uint16_t version;  /* FBMM_BROKER_VERSION */
    int32_t  status;   /* 0, or a positive errno value (EPERM, EINVAL, ENOENT...) */
    uint64_t size;     /* GET_BACKING: current file size; STAT: JSON length; MIGRATE: bytes moved */
};

#endif /* FBMM_BROKER_H */
