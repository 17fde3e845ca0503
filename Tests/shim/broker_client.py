#!/usr/bin/env python3
"""Hostile and honest clients of the fbmm broker (fbmm_broker.h), for ShimTests.

Usage: broker_client.py MOUNT. Prints "PASS name" / "FAIL name: detail" per
check; exit status is the number of failures. Every refusal must come back as
a reply with a positive errno and no fd, and the broker must keep answering.
"""
import errno
import os
import socket
import struct
import subprocess
import sys
import time

MAGIC, VERSION = 0x4642, 1
OP_GET_BACKING, OP_STAT, OP_MIGRATE = 1, 2, 3
REQUEST = struct.Struct("=HHIiiQQQ")   # struct fbmm_request: 40 bytes
REPLY = struct.Struct("=HHiQ")          # struct fbmm_reply: 16 bytes
assert REQUEST.size == 40 and REPLY.size == 16

mount = sys.argv[1]
broker = os.getxattr(mount, "user.fbmm.broker").decode().rstrip("\0")
failures = 0


def result(name, ok, detail=""):
    global failures
    print(("PASS %s" % name) if ok else ("FAIL %s: %s" % (name, detail)), flush=True)
    failures += 0 if ok else 1


def exchange(payload, timeout=5.0):
    """Sends one raw message; returns (status, size, fd or None) or raises."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.settimeout(timeout)
    try:
        s.connect(broker)
        if payload is not None:
            s.send(payload)
        msg, anc, _flags, _addr = s.recvmsg(64, socket.CMSG_SPACE(4 * 4))
        fds = []
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds += list(struct.unpack("%di" % (len(data) // 4), data[: len(data) // 4 * 4]))
        if len(msg) != REPLY.size:
            for fd in fds:
                os.close(fd)
            raise ValueError("reply of %d bytes" % len(msg))
        magic, version, status, size = REPLY.unpack(msg)
        if magic != MAGIC or version != VERSION:
            raise ValueError("bad reply header")
        if len(fds) > 1:
            raise ValueError("%d fds" % len(fds))
        return status, size, (fds[0] if fds else None)
    finally:
        s.close()


def request(op=OP_GET_BACKING, fd=-1, ino=0, node=0, offset=0, length=0, magic=MAGIC, version=VERSION):
    return REQUEST.pack(magic, version, op, fd, node, ino, offset, length)


def expect_refusal(name, payload, statuses):
    try:
        status, _size, fd = exchange(payload)
    except Exception as e:  # noqa: BLE001
        result(name, False, "no reply: %r" % e)
        return
    if fd is not None:
        os.close(fd)
    result(name, status in statuses and fd is None,
           "status %d (%s), fd %r; wanted one of %s" % (status, errno.errorcode.get(status, "?"), fd,
                                                         [errno.errorcode[s] for s in statuses]))


def expect_backing(name, fd_num, ino):
    try:
        status, size, fd = exchange(request(fd=fd_num, ino=ino))
    except Exception as e:  # noqa: BLE001
        result(name, False, "no reply: %r" % e)
        return
    target = os.readlink("/proc/self/fd/%d" % fd) if fd is not None else None
    result(name, status == 0 and fd is not None and target.startswith("/memfd:"),
           "status %d fd %r -> %r" % (status, fd, target))
    if fd is not None:
        os.close(fd)


path = os.path.join(mount, "broker-client.%d" % os.getpid())
rw = os.open(path, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
os.ftruncate(rw, 1 << 20)
ino = os.fstat(rw).st_ino
ro = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
outside = os.open("/proc/self/exe", os.O_RDONLY | os.O_CLOEXEC)
outside_rw = os.open("/tmp", os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)

expect_backing("honest request gets the memfd", rw, ino)
expect_refusal("read-only open is refused", request(fd=ro, ino=ino), {errno.EACCES, errno.EPERM})
expect_refusal("fd not open is refused", request(fd=987, ino=ino), {errno.EBADF, errno.EPERM, errno.ENOENT})
expect_refusal("negative fd is refused", request(fd=-5, ino=ino), {errno.EBADF, errno.EPERM, errno.EINVAL})
expect_refusal("wrong inode is refused", request(fd=rw, ino=ino + 1000), {errno.EPERM, errno.ENOENT})
expect_refusal("file outside the mount is refused", request(fd=outside, ino=os.fstat(outside).st_ino),
               {errno.EPERM, errno.EACCES})
expect_refusal("writable file outside the mount is refused", request(fd=outside_rw, ino=os.fstat(outside_rw).st_ino),
               {errno.EPERM, errno.EACCES})

# Another process holds the file open for writing at some fd number; asking
# with that number, without holding it ourselves, must be refused (SO_PEERCRED).
other_path = os.path.join(mount, "broker-other.%d" % os.getpid())
child = subprocess.Popen(
    [sys.executable, "-c",
     "import os,sys,time\nfd=os.open(sys.argv[1],os.O_CREAT|os.O_RDWR,0o600)\n"
     "print(fd, os.fstat(fd).st_ino, flush=True)\ntime.sleep(30)", other_path],
    stdout=subprocess.PIPE, text=True)
try:
    child_fd, child_ino = map(int, child.stdout.readline().split())
    while True:  # make sure our own fd table has nothing at that number
        try:
            os.fstat(child_fd)
        except OSError:
            break
        child_fd += 1  # (not the child's fd then; still refused as not ours)
    expect_refusal("another process's fd is refused", request(fd=child_fd, ino=child_ino),
                   {errno.EBADF, errno.EPERM, errno.ENOENT})
finally:
    child.kill()
    child.wait()

# Garbage and truncated messages.
expect_refusal("empty message", b"", {errno.EINVAL})
expect_refusal("truncated message (5 bytes)", request(fd=rw, ino=ino)[:5], {errno.EINVAL})
expect_refusal("truncated message (39 bytes)", request(fd=rw, ino=ino)[:39], {errno.EINVAL})
expect_refusal("oversized message", request(fd=rw, ino=ino) + b"\0" * 64, {errno.EINVAL})
expect_refusal("bad magic", request(fd=rw, ino=ino, magic=0x1234), {errno.EINVAL})
expect_refusal("bad version", request(fd=rw, ino=ino, version=99), {errno.EINVAL})
expect_refusal("unknown op", request(op=99, fd=rw, ino=ino), {errno.EINVAL})
expect_refusal("random bytes", os.urandom(40), {errno.EINVAL})
expect_refusal("migrate to a node that does not exist", request(op=OP_MIGRATE, fd=rw, ino=ino, node=4096),
               {errno.EINVAL})

# A message with an fd attached: the fd is dropped, the request still judged.
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
s.settimeout(5)
s.connect(broker)
s.sendmsg([request(fd=ro, ino=ino)], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", rw))])
msg, anc, _f, _a = s.recvmsg(64, socket.CMSG_SPACE(4))
s.close()
status = REPLY.unpack(msg)[2] if len(msg) == REPLY.size else -1
result("request with an fd attached is judged on its own", status in (errno.EACCES, errno.EPERM) and not anc,
       "status %d anc %r" % (status, anc))

# Clients that connect and say nothing, or hang up at once, stall nobody.
silent = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
silent.connect(broker)
hangup = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
hangup.connect(broker)
hangup.close()
start = time.monotonic()
expect_backing("answers while a silent client is connected", rw, ino)
waited = time.monotonic() - start
result("a silent client delays others at most 3 s", waited < 3.0, "waited %.2f s" % waited)
silent.close()

# Still answering, and the stat op works.
expect_backing("still answers after the abuse", rw, ino)
try:
    status, size, fd = exchange(request(op=OP_STAT))
    text = os.pread(fd, size, 0).decode() if fd is not None else ""
    if fd is not None:
        os.close(fd)
    result("stat op answers", status == 0 and '"broker_refusals"' in text, "status %d" % status)
except Exception as e:  # noqa: BLE001
    result("stat op answers", False, repr(e))

for fd in (rw, ro, outside, outside_rw):
    os.close(fd)
# Files whose backing was handed out are unlinked with their last handle.
for leftover in (path, other_path):
    try:
        os.unlink(leftover)
    except FileNotFoundError:
        pass
print("# %d failure(s)" % failures)
sys.exit(min(failures, 100))
