#!/usr/bin/env python3
"""Hostile and honest clients of the fbmm broker (fbmm_broker.h, protocol v2).

Usage:
  broker_client.py MOUNT
      The fixed checks (ShimTests.brokerRefusesAndKeepsAnswering).
  broker_client.py --fuzz N [--seed S] MOUNT
      N seeded, replayable random requests (TrustTests, issue 13) from a
      client that holds real, authorised fds: a file it created and opened
      O_RDWR, and an arena it made as the shim does (GET_BACKING with
      FBMM_BACKING_ARENA, control block written, POOL), so that every
      operation is exercised past its ownership check. Random op, flags,
      node, inode, offset and length; the real fds, other fds, several fds or
      none attached; truncated, oversized and random messages; the arena's
      control block scribbled on now and then. Every reply must be a
      well-formed success or refusal, a memfd must only ever come back for
      an fd that proves it, and the broker must still answer an honest
      GET_BACKING and STAT at the end.

Prints "PASS name" / "FAIL name: detail" per check; exit status is the number
of failures (at most 100). Every refusal must come back as a reply with a
positive errno and no fd, and the broker must keep answering.

v2: a request about a file carries the client's own fd of it (SCM_RIGHTS);
there is no fd number in the request.
"""
import array
import errno
import json
import os
import random
import socket
import struct
import subprocess
import sys
import time

MAGIC, VERSION = 0x4642, 2
OP_GET_BACKING, OP_STAT, OP_MIGRATE, OP_POOL = 1, 2, 3, 4
BACKING_ARENA = 1
REQUEST = struct.Struct("=HHIIiQQQ")   # struct fbmm_request: magic version op flags node ino offset length
REPLY = struct.Struct("=HHiQ")          # struct fbmm_reply: 16 bytes
assert REQUEST.size == 40 and REPLY.size == 16

POOL_MAGIC = 0x4642504F4F4C0001
POOL_CTL_BYTES = 64 << 10
POOL_WINDOW_ALIGN = 2 << 20
PAGE = os.sysconf("SC_PAGE_SIZE")

args = sys.argv[1:]
fuzz_cases, seed = 0, None
while args and args[0].startswith("--"):
    if args[0] == "--fuzz":
        fuzz_cases = int(args[1])
        args = args[2:]
    elif args[0] == "--seed":
        seed = int(args[1], 0)
        args = args[2:]
    else:
        sys.exit("unknown option %s" % args[0])
if len(args) != 1:
    sys.exit(__doc__)
mount = args[0]
broker = os.getxattr(mount, "user.fbmm.broker").decode().rstrip("\0")
failures = 0


def result(name, ok, detail=""):
    global failures
    print(("PASS %s" % name) if ok else ("FAIL %s: %s" % (name, detail)), flush=True)
    failures += 0 if ok else 1


class Reply:
    def __init__(self, length, status, size, fds, well_formed):
        self.length, self.status, self.size, self.fds, self.well_formed = length, status, size, fds, well_formed

    @property
    def fd(self):
        return self.fds[0] if self.fds else None

    def close(self):
        for fd in self.fds:
            os.close(fd)
        self.fds = []


def exchange_raw(payload, fds=(), timeout=10.0):
    """Sends one raw message with `fds` attached; returns a Reply (fds not
    closed) or raises OSError/socket.timeout when no reply came."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.settimeout(timeout)
    try:
        s.connect(broker)
        if payload is not None:
            anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
            s.sendmsg([payload], anc)
        msg, anc, _flags, _addr = s.recvmsg(64, socket.CMSG_SPACE(8 * 4))
        got = []
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                got += list(struct.unpack("%di" % (len(data) // 4), data[: len(data) // 4 * 4]))
        if len(msg) != REPLY.size:
            return Reply(len(msg), -1, 0, got, False)
        magic, version, status, size = REPLY.unpack(msg)
        ok = magic == MAGIC and version == VERSION and status >= 0 and len(got) <= 1 and not (status and got)
        return Reply(len(msg), status, size, got, ok)
    finally:
        s.close()


def exchange(payload, fds=(), timeout=5.0):
    """Sends one raw message; returns (status, size, fd or None) or raises
    when no well-formed reply came."""
    r = exchange_raw(payload, fds, timeout)
    if not r.well_formed:
        detail = "%d-byte reply, status %d, %d fd(s)" % (r.length, r.status, len(r.fds))
        r.close()
        raise ValueError(detail)
    return r.status, r.size, r.fd


def request(op=OP_GET_BACKING, ino=0, flags=0, node=0, offset=0, length=0, magic=MAGIC, version=VERSION):
    return REQUEST.pack(magic, version, op, flags, node, ino, offset, length)


def name_of(status):
    return errno.errorcode.get(status, "?") if status > 0 else ("OK" if status == 0 else "?")


def expect_refusal(name, payload, statuses, fds=()):
    try:
        status, _size, fd = exchange(payload, fds)
    except Exception as e:  # noqa: BLE001
        result(name, False, "no well-formed reply: %r" % e)
        return
    if fd is not None:
        os.close(fd)
    result(name, status in statuses and fd is None,
           "status %d (%s), fd %r; wanted one of %s" % (status, name_of(status), fd,
                                                         [errno.errorcode[s] for s in statuses]))


def expect_backing(name, fd_num, ino, flags=0):
    try:
        status, size, fd = exchange(request(ino=ino, flags=flags), [fd_num])
    except Exception as e:  # noqa: BLE001
        result(name, False, "no reply: %r" % e)
        return None
    target = os.readlink("/proc/self/fd/%d" % fd) if fd is not None else None
    ok = status == 0 and fd is not None and target.startswith(("/memfd:", "/fbmm-backing."))
    result(name, ok, "status %d (%s) fd %r -> %r" % (status, name_of(status), fd, target))
    if fd is not None and not ok:
        os.close(fd)
        return None
    return fd


def stat_json():
    status, size, fd = exchange(request(op=OP_STAT))
    text = os.pread(fd, size, 0).decode() if fd is not None else ""
    if fd is not None:
        os.close(fd)
    return status, text


# ---------------------------------------------------------------------------
# The fixed checks.

def fixed_checks():
    path = os.path.join(mount, "broker-client.%d" % os.getpid())
    rw = os.open(path, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
    os.ftruncate(rw, 1 << 20)
    ino = os.fstat(rw).st_ino
    ro = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    wo = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    outside = os.open("/proc/self/exe", os.O_RDONLY | os.O_CLOEXEC)
    outside_rw = os.open("/tmp", os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    root_dir = os.open(mount, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    own_memfd = os.memfd_create("not-the-daemons", os.MFD_CLOEXEC)
    os.ftruncate(own_memfd, 1 << 20)

    memfd = expect_backing("honest request gets the memfd", rw, ino)
    if memfd is not None:
        os.pwrite(memfd, b"through the memfd", 0)
        result("the memfd is the file's memory", os.pread(rw, 17, 0) == b"through the memfd",
               repr(os.pread(rw, 17, 0)))
        os.close(memfd)
    expect_refusal("read-only open is refused", request(ino=ino), {errno.EACCES, errno.EPERM}, [ro])
    expect_refusal("write-only open is refused (the memfd would give read access)", request(ino=ino),
                   {errno.EACCES, errno.EPERM}, [wo])
    expect_refusal("no fd attached is refused", request(ino=ino), {errno.EBADF, errno.EPERM, errno.EINVAL})
    expect_refusal("wrong inode is refused", request(ino=ino + 1000), {errno.EPERM, errno.ENOENT, errno.EINVAL}, [rw])
    expect_refusal("file outside the mount is refused", request(ino=os.fstat(outside).st_ino),
                   {errno.EPERM, errno.EACCES, errno.EINVAL}, [outside])
    expect_refusal("writable file outside the mount is refused", request(ino=os.fstat(outside_rw).st_ino),
                   {errno.EPERM, errno.EACCES, errno.EINVAL}, [outside_rw])
    expect_refusal("a memfd of our own is refused", request(ino=os.fstat(own_memfd).st_ino),
                   {errno.EPERM, errno.EACCES, errno.EINVAL}, [own_memfd])
    expect_refusal("the mount's root directory is refused", request(ino=os.fstat(root_dir).st_ino),
                   {errno.EPERM, errno.EACCES, errno.EINVAL, errno.EISDIR, errno.ENOENT}, [root_dir])
    expect_refusal("the arena flag on a file not created as an arena is refused", request(ino=ino, flags=BACKING_ARENA),
                   {errno.EPERM, errno.EACCES, errno.EBUSY, errno.EINVAL}, [rw])

    # Another process holds a file of the mount open for writing. Naming its
    # inode with no fd, or with an fd of another file (ours), is refused:
    # only possession of the file's own fd counts.
    other_path = os.path.join(mount, "broker-other.%d" % os.getpid())
    child = subprocess.Popen(
        [sys.executable, "-c",
         "import os,sys,time\nfd=os.open(sys.argv[1],os.O_CREAT|os.O_RDWR,0o600)\n"
         "print(os.fstat(fd).st_ino, flush=True)\ntime.sleep(30)", other_path],
        stdout=subprocess.PIPE, text=True)
    try:
        child_ino = int(child.stdout.readline())
        expect_refusal("another process's file, no fd attached, is refused", request(ino=child_ino),
                       {errno.EBADF, errno.EPERM, errno.ENOENT, errno.EINVAL})
        expect_refusal("another process's file, an fd of another file attached, is refused", request(ino=child_ino),
                       {errno.EPERM, errno.ENOENT, errno.EINVAL}, [rw])
        expect_refusal("migrate of another process's file with an fd of another file is refused",
                       request(op=OP_MIGRATE, ino=child_ino), {errno.EPERM, errno.ENOENT, errno.EINVAL, errno.EACCES}, [rw])
    finally:
        child.kill()
        child.wait()

    # Garbage and truncated messages.
    expect_refusal("empty message", b"", {errno.EINVAL})
    expect_refusal("truncated message (5 bytes)", request(ino=ino)[:5], {errno.EINVAL}, [rw])
    expect_refusal("truncated message (39 bytes)", request(ino=ino)[:39], {errno.EINVAL}, [rw])
    expect_refusal("oversized message", request(ino=ino) + b"\0" * 64, {errno.EINVAL}, [rw])
    expect_refusal("bad magic", request(ino=ino, magic=0x1234), {errno.EINVAL}, [rw])
    expect_refusal("bad version", request(ino=ino, version=99), {errno.EINVAL}, [rw])
    expect_refusal("version 1 (fd numbers in the request) is refused", request(ino=ino, version=1), {errno.EINVAL}, [rw])
    expect_refusal("unknown op", request(op=99, ino=ino), {errno.EINVAL}, [rw])
    expect_refusal("random bytes", os.urandom(40), {errno.EINVAL})
    expect_refusal("migrate to a node that does not exist", request(op=OP_MIGRATE, ino=ino, node=4096),
                   {errno.EINVAL}, [ro])
    expect_refusal("migrate of a range past any file size", request(op=OP_MIGRATE, ino=ino, offset=(1 << 64) - 4096,
                                                                      length=1 << 20),
                   {errno.EINVAL, errno.ERANGE, errno.EOVERFLOW, errno.EFBIG}, [ro])
    expect_refusal("pool without an arena is refused", request(op=OP_POOL, ino=ino),
                   {errno.ENOENT, errno.EPERM, errno.EINVAL, errno.EACCES}, [rw])
    # Two fds attached: at most one is allowed; both must be closed by the daemon.
    expect_refusal("two fds attached are refused", request(ino=ino), {errno.EINVAL, errno.EPERM, errno.EBADF}, [rw, rw])

    # Clients that connect and say nothing, or hang up at once, stall nobody.
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    silent.connect(broker)
    hangup = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    hangup.connect(broker)
    hangup.close()
    start = time.monotonic()
    fd = expect_backing("answers while a silent client is connected", rw, ino)
    if fd is not None:
        os.close(fd)
    waited = time.monotonic() - start
    result("a silent client delays others at most 3 s", waited < 3.0, "waited %.2f s" % waited)
    silent.close()

    # Still answering, and the stat op works.
    fd = expect_backing("still answers after the abuse", rw, ino)
    if fd is not None:
        os.close(fd)
    try:
        status, text = stat_json()
        result("stat op answers", status == 0 and '"broker_refusals"' in text, "status %d" % status)
    except Exception as e:  # noqa: BLE001
        result("stat op answers", False, repr(e))

    for fd in (rw, ro, wo, outside, outside_rw, root_dir, own_memfd):
        os.close(fd)
    # A file whose backing was handed out without the arena flag is not
    # process-owned: it outlives its handles.
    time.sleep(0.05)
    result("a file whose memfd was handed out (no arena flag) still exists after its handles close",
           os.path.exists(path), path)
    for leftover in (path, other_path):
        try:
            os.unlink(leftover)
        except FileNotFoundError:
            pass


# ---------------------------------------------------------------------------
# The fuzz harness.

EDGE64 = [0, 1, 4095, 4096, 1 << 20, (1 << 31) - 1, 1 << 32, 1 << 40, 9000000 << 40, (1 << 62), 1 << 63,
          (1 << 63) - 1, (1 << 64) - 4096, (1 << 64) - 1]


def make_arena():
    """An arena as the shim makes one: created O_CREAT|O_EXCL|O_RDWR, at once
    asked for with FBMM_BACKING_ARENA; then the pool's control block and
    POOL, if the mount has a pool. Returns (fd, ino, memfd or None, window pages)."""
    path = os.path.join(mount, "fuzz-arena.%d.0" % os.getpid())
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_CLOEXEC, 0o600)
    ino = os.fstat(fd).st_ino
    memfd = expect_backing("an arena made as the shim makes one gets its memfd", fd, ino, flags=BACKING_ARENA)
    window = 0
    try:
        window = int(os.getxattr(mount, "user.fbmm.prezero").decode().strip("\0") or "0")
    except OSError:
        pass
    pages = window // PAGE
    if memfd is not None and pages:
        os.ftruncate(fd, POOL_WINDOW_ALIGN + window)
        header = struct.pack("=QQQQ", POOL_MAGIC, pages, PAGE, POOL_WINDOW_ALIGN)
        os.pwrite(memfd, header + bytes(POOL_CTL_BYTES - len(header)), 0)
        try:
            status, size, efd = exchange(request(op=OP_POOL, ino=ino), [fd])
            result("the arena enrols in the pool as the shim's does", status == 0 and size == pages and efd is not None,
                   "status %d (%s) size %d (window %d pages) fd %r" % (status, name_of(status), size, pages, efd))
            if efd is not None:
                os.close(efd)
        except Exception as e:  # noqa: BLE001
            result("the arena enrols in the pool as the shim's does", False, repr(e))
    return path, fd, ino, memfd, pages


def fuzz(cases, seed):
    rng = random.Random(seed)
    print("# fuzz: %d cases, seed %d (replay: broker_client.py --fuzz %d --seed %d MOUNT)" % (cases, seed, cases, seed),
          flush=True)
    path = os.path.join(mount, "fuzz-file.%d" % os.getpid())
    rw = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_CLOEXEC, 0o600)
    os.pwrite(rw, os.urandom(1 << 16), 0)
    os.ftruncate(rw, 4 << 20)
    ino = os.fstat(rw).st_ino
    ro = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    wo = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    arena_path, arena, arena_ino, arena_mem, _pages = make_arena()
    root_dir = os.open(mount, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    opath = os.open(path, os.O_PATH | os.O_CLOEXEC)
    devnull = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
    own_memfd = os.memfd_create("fuzz-own", os.MFD_CLOEXEC)
    os.ftruncate(own_memfd, 1 << 20)
    sock_a, sock_b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    # fd -> (inode it proves, may it be granted the memfd (O_RDWR), is it a fd of the mount)
    proof = {rw: (ino, True, True), ro: (ino, False, True), wo: (ino, False, True), arena: (arena_ino, True, True),
             root_dir: (os.fstat(root_dir).st_ino, False, True), opath: (ino, False, True)}
    attachable = [rw] * 4 + [arena] * 3 + [None] * 3 + [ro, wo, root_dir, opath, devnull, own_memfd, sock_a.fileno()]
    inodes = [ino] * 4 + [arena_ino] * 3 + [1, 0, 2, ino + 1, arena_ino + 1, (1 << 64) - 1, (1 << 63)]
    stats = {"granted": 0, "refused": 0, "bytes": 0}
    by_status = {}
    try:
        for case in range(cases):
            if rng.random() < 0.5:
                # Authorised: the right fd for the inode, a known op, sane
                # flags; only the numbers are hostile (past the ownership check).
                op = rng.choice([OP_GET_BACKING, OP_MIGRATE, OP_MIGRATE, OP_MIGRATE, OP_POOL, OP_STAT])
                one, req_ino = rng.choice([(rw, ino), (arena, arena_ino), (ro, ino)])
                fds = [one] if op != OP_STAT or rng.random() < 0.2 else []
                flags = BACKING_ARENA if op == OP_GET_BACKING and one == arena and rng.random() < 0.5 else 0
                node = rng.choice([0] * 8 + [-1, 1, 4096, rng.randint(-(1 << 31), (1 << 31) - 1)])
            else:
                op = rng.choice([OP_GET_BACKING] * 3 + [OP_MIGRATE] * 3 + [OP_POOL] * 2 + [OP_STAT] +
                                [0, 5, 6, 255, rng.getrandbits(32)])
                flags = rng.choice([0] * 6 + [BACKING_ARENA] * 2 + [2, 3, 1 << 31, rng.getrandbits(32)])
                node = rng.choice([0] * 5 + [-1, 1, 2, 63, 64, 1024, 4096, -(1 << 31), (1 << 31) - 1,
                                             rng.randint(-(1 << 31), (1 << 31) - 1)])
                req_ino = rng.choice(inodes + [rng.getrandbits(64)])
                if rng.random() < 0.08:
                    fds = [rw, ro] if rng.random() < 0.5 else [arena, rw, devnull]
                else:
                    one = rng.choice(attachable)
                    fds = [] if one is None else [one]
            offset = rng.choice([0] * 6 + EDGE64 + [rng.getrandbits(64), rng.randrange(8 << 20)])
            length = rng.choice([0] * 6 + EDGE64 + [rng.getrandbits(64), rng.randrange(8 << 20)])
            magic, version = MAGIC, VERSION
            if rng.random() < 0.04:
                magic = rng.getrandbits(16)
            if rng.random() < 0.04:
                version = rng.choice([0, 1, 3, rng.getrandbits(16)])
            payload = REQUEST.pack(magic, version, op, flags, node, req_ino, offset, length)
            shape = rng.random()
            if shape < 0.05:
                payload = payload[: rng.randrange(len(payload))]
            elif shape < 0.08:
                payload += bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 200)))
            elif shape < 0.11:
                payload = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 120)))
            exact = len(payload) == REQUEST.size and magic == MAGIC and version == VERSION
            # Now and then scribble on the arena's control block (the daemon reads it).
            if arena_mem is not None and rng.random() < 0.1:
                if rng.random() < 0.5:
                    os.pwrite(arena_mem, struct.pack("=QQQQ", *[rng.choice(EDGE64 + [POOL_MAGIC]) for _ in range(4)]), 0)
                else:
                    where = rng.randrange(POOL_CTL_BYTES - 256)
                    os.pwrite(arena_mem, bytes(rng.getrandbits(8) for _ in range(256)), where)
            where = "case %d: op %d flags %#x node %d ino %d offset %d length %d, %d-byte message, fds %s" % (
                case, op, flags, node, req_ino, offset, length, len(payload),
                [os.readlink("/proc/self/fd/%d" % f) for f in fds])
            # A peer with 8 requests in flight is refused before its message
            # is read (EAGAIN, and the close resets the connection): the busy
            # answer the shim retries on. A sequential client meets it when
            # the daemon's threads have replied but not yet counted themselves
            # out (seen under CI load), so it retries too; any other failure,
            # or a reset that persists, is the broker not answering.
            r, error = None, None
            for attempt in range(50):
                try:
                    r = exchange_raw(payload, fds, timeout=10.0)
                    break
                except ConnectionResetError as e:
                    error = e
                    time.sleep(0.02)
                except Exception as e:  # noqa: BLE001
                    error = e
                    break
            if r is None:
                result("fuzz: the broker answers every request", False,
                       "%s: no reply (%r); replay with --seed %d" % (where, error, seed))
                return
            try:
                if not r.well_formed:
                    result("fuzz: every reply is well-formed", False,
                           "%s: %d-byte reply, status %d, %d fd(s)" % (where, r.length, r.status, len(r.fds)))
                    return
                by_status[r.status] = by_status.get(r.status, 0) + 1
                if r.status != 0:
                    stats["refused"] += 1
                    if r.status >= 4096:
                        result("fuzz: refusals are errno values", False, "%s: status %d" % (where, r.status))
                        return
                    continue
                stats["granted"] += 1
                # What a success may be given for.
                # Some attached fd must prove it (the header allows one fd;
                # a daemon that judged one of several would still be safe).
                proofs = [proof[f] for f in fds if f in proof]
                if not exact:
                    result("fuzz: a malformed message is never granted", False, where)
                    return
                if op in (OP_GET_BACKING, OP_POOL):
                    if not any(p[1] and p[0] == req_ino for p in proofs):
                        result("fuzz: the memory goes only to an O_RDWR fd of that very file", False,
                               "%s: granted, %d fd(s) back" % (where, len(r.fds)))
                        return
                    if op == OP_GET_BACKING:
                        target = os.readlink("/proc/self/fd/%d" % r.fd) if r.fd is not None else None
                        if target is None or not target.startswith(("/memfd:", "/fbmm-backing.")):
                            result("fuzz: GET_BACKING hands the backing file", False, "%s: fd -> %r" % (where, target))
                            return
                elif op == OP_MIGRATE:
                    if not any(p[2] and p[0] == req_ino for p in proofs):
                        result("fuzz: migrate acts only on the file whose fd is attached", False, where)
                        return
                    if r.fds:
                        result("fuzz: migrate hands out no fd", False, where)
                        return
                    stats["bytes"] += r.size
                elif op == OP_STAT:
                    if r.fd is None:
                        result("fuzz: stat hands its JSON", False, where)
                        return
                    text = os.pread(r.fd, min(r.size, 16 << 20), 0)
                    try:
                        json.loads(text)
                    except ValueError as e:
                        result("fuzz: stat's JSON parses", False, "%s: %r" % (where, e))
                        return
                else:
                    result("fuzz: unknown ops are refused", False, where)
                    return
            finally:
                r.close()
        result("fuzz: %d requests, every reply well-formed" % cases, True)
        print("# fuzz: %d granted, %d refused, statuses %s, %d bytes migrated" % (
            stats["granted"], stats["refused"],
            {name_of(k): v for k, v in sorted(by_status.items())}, stats["bytes"]), flush=True)
        # Still serving honest requests.
        honest = os.path.join(mount, "fuzz-honest.%d" % os.getpid())
        hfd = os.open(honest, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
        os.ftruncate(hfd, 1 << 20)
        fd = expect_backing("fuzz: an honest GET_BACKING still works", hfd, os.fstat(hfd).st_ino)
        if fd is not None:
            os.close(fd)
        try:
            status, text = stat_json()
            names = [f.get("name") for f in json.loads(text).get("files", [])] if status == 0 else []
            result("fuzz: STAT still works and lists our file", status == 0 and os.path.basename(honest) in names,
                   "status %d, files %s" % (status, names))
        except Exception as e:  # noqa: BLE001
            result("fuzz: STAT still works and lists our file", False, repr(e))
        os.close(hfd)
        os.unlink(honest)
    finally:
        for fd in (rw, ro, wo, arena, root_dir, opath, devnull, own_memfd) + ((arena_mem,) if arena_mem is not None else ()):
            os.close(fd)
        sock_a.close()
        sock_b.close()
        for leftover in (path, arena_path):
            try:
                os.unlink(leftover)
            except FileNotFoundError:
                pass


if fuzz_cases:
    fuzz(fuzz_cases, seed if seed is not None else int(time.time()))
else:
    fixed_checks()
print("# %d failure(s)" % failures)
sys.exit(min(failures, 100))
