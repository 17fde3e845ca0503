/*
 * Client side of the broker protocol (fbmm_broker.h): one SEQPACKET request
 * carrying our own fd of the file (SCM_RIGHTS: possession is the proof of
 * ownership), one reply carrying an fd (the backing memfd, or the pool's
 * eventfd). The broker is trusted only when its SO_PEERCRED uid is root or
 * ours: a socket bound by anyone else gets no say over our memory. Only
 * system calls: this runs under the shim's lock, possibly in a fork child.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "../../Sources/CFBMMSys/include/fbmm_broker.h"
#include "shim.h"
#include "sys.h"

/* A daemon that accepted the connection but never answers must not hang the
 * application forever; after this long we fall back instead. */
#define BROKER_TIMEOUT_S 10

static void set_why(char *why, size_t n, const char *a, int err)
{
    const char *e = err ? strerrorname_np(err) : NULL;
    const char *parts[] = { a, e ? ": " : NULL, e };
    fbmm_join(why, n, parts, 3);
}

static void set_why_uid(char *why, size_t n, unsigned uid)
{
    char digits[24];
    const char *parts[] = { "the broker socket belongs to uid ", fbmm_utoa(digits, uid) };
    fbmm_join(why, n, parts, 2);
}

int fbmm_broker_request(const char *sock, uint32_t op, uint32_t flags, int fd, uint64_t ino, int want_fd,
                        int *fd_out, uint64_t *size, char *why, size_t whylen)
{
    struct fbmm_request req = { .op = op, .flags = flags, .ino = ino };
    return fbmm_broker_exchange(sock, &req, &fd, fd >= 0 ? 1 : 0, want_fd, fd_out, size, why, whylen);
}

static int exchange_once(const char *sock, const struct fbmm_request *request, const int *fds, int nfds,
                         int want_fd, int *fd_out, uint64_t *size, char *why, size_t whylen)
{
    uint32_t op = request->op;
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    size_t sl = strlen(sock);
    if (sl >= sizeof sa.sun_path) {
        set_why(why, whylen, "broker socket path too long", 0);
        errno = ENAMETOOLONG;
        return -1;
    }
    memcpy(sa.sun_path, sock, sl + 1);

    int s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (s < 0) {
        set_why(why, whylen, "broker socket", errno);
        return -1;
    }
    struct timeval tv = { .tv_sec = BROKER_TIMEOUT_S };
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);

    int err = 0;
    if (connect(s, (struct sockaddr *)&sa, sizeof sa) < 0) {
        err = errno;
        set_why(why, whylen, "cannot connect to the broker", err);
        goto out;
    }
    struct ucred peer;
    socklen_t pl = sizeof peer;
    if (getsockopt(s, SOL_SOCKET, SO_PEERCRED, &peer, &pl) < 0) {
        err = errno;
        set_why(why, whylen, "broker credentials", err);
        goto out;
    }
    if (peer.uid != 0 && peer.uid != getuid()) {
        err = EPERM;
        set_why_uid(why, whylen, (unsigned)peer.uid);
        goto out;
    }
    struct fbmm_request req = *request;
    req.magic = FBMM_BROKER_MAGIC;
    req.version = FBMM_BROKER_VERSION;
    if (fbmm_broker_send_fds(s, &req, sizeof req, fds, nfds) != (ssize_t)sizeof req) {
        err = errno ? errno : EPROTO;
        set_why(why, whylen, "broker send", err);
        goto out;
    }

    struct fbmm_reply rep;
    struct iovec iov = { .iov_base = &rep, .iov_len = sizeof rep };
    union { struct cmsghdr h; char buf[CMSG_SPACE(4 * sizeof(int))]; } ctl;
    struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1,
                         .msg_control = ctl.buf, .msg_controllen = sizeof ctl.buf };
    memset(ctl.buf, 0, sizeof ctl.buf);
    ssize_t n = recvmsg(s, &mh, MSG_CMSG_CLOEXEC);
    if (n < 0) err = errno;

    /* Collect every fd passed, so that none leaks whatever happens next.
     * A failed recvmsg (ECONNRESET when the daemon refused us unread) fills
     * in no control data: what the buffer holds then is no descriptor, and
     * "closing" it would close one of ours. */
    int got = -1;
    if (n < 0) mh.msg_controllen = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < k; i++) {
            int f;
            memcpy(&f, CMSG_DATA(c) + i * sizeof(int), sizeof f);
            if (got < 0) got = f; else sys_close(f);
        }
    }
    if (n < 0) {
        set_why(why, whylen, "broker receive", err);
    } else if (n != (ssize_t)sizeof rep || rep.magic != FBMM_BROKER_MAGIC ||
               rep.version != FBMM_BROKER_VERSION) {
        err = EPROTO;
        set_why(why, whylen, "broker reply malformed or of another version", 0);
    } else if (rep.status != 0) {
        err = rep.status > 0 ? rep.status : EPROTO;
        set_why(why, whylen, op == FBMM_OP_POOL ? "broker refused the pool"
                             : op == FBMM_OP_GET_BACKING ? "broker refused the backing"
                             : "broker refused copy-on-write", err);
    } else if (got < 0 && want_fd) {
        err = EPROTO;
        set_why(why, whylen, "broker reply carried no fd", 0);
    }
    if (err && got >= 0) { sys_close(got); got = -1; }
    if (!err) {
        *fd_out = got;
        if (size) *size = rep.size;
    }
out:
    sys_close(s);
    errno = err;
    return err ? -1 : 0;
}

/* Whether a failed exchange may succeed if sent again: the daemon bounds
 * the requests a user has in flight (and the connections waiting) and
 * refuses past that without reading the request: EAGAIN, or ECONNRESET /
 * EPIPE when it closes on our unread message. */
static int busy(int e)
{
    return e == EAGAIN || e == EINTR || e == ECONNRESET || e == EPIPE;
}

/* Every request the shim sends may be repeated (a backing or pool request
 * answers the same fd again, copy-on-write release and fill are idempotent,
 * a repeated fork or child registration is refused), so a busy answer is
 * retried, backing off to 20 ms, for up to ~40 s: a burst of processes
 * (stress-ng's mmapfork starts dozens at once) must not turn the daemon's
 * fairness bound into a silent fall back to anonymous memory. */
int fbmm_broker_exchange(const char *sock, const struct fbmm_request *request, const int *fds, int nfds,
                         int want_fd, int *fd_out, uint64_t *size, char *why, size_t whylen)
{
    struct timespec pause = { 0, 100000 };
    for (int tries = 0;; tries++) {
        int r = exchange_once(sock, request, fds, nfds, want_fd, fd_out, size, why, whylen);
        if (r == 0 || !busy(errno) || tries >= 2000) return r;
        int e = errno;
        nanosleep(&pause, NULL);
        if (pause.tv_nsec < 20000000) pause.tv_nsec *= 2;
        errno = e;
    }
}
