import CFBMMSys
import FBMMCore
import FBMMPolicy
import Logging
import Synchronization
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Hands backing memfds to processes that opened a file through the mount.
///
/// Why it exists: a process maps the memfd itself so page faults never cross
/// FUSE. Why it checks so much: the memfd is the file's memory with no
/// permission check of its own. Ownership is proved by possession: a request
/// about a file carries the peer's own open fd of it (SCM_RIGHTS), and the
/// broker checks that open file itself (this mount's device, the inode the
/// request names, the access mode it was opened with), so neither a reused
/// pid nor a guessed fd number can stand in for it. The kernel checked the
/// file's permissions when that fd was opened; the memfd, which gives read
/// and write access both, goes only with an O_RDWR open. Every number in a
/// request is hostile input. A connection is answered on its own thread,
/// at most `maxConcurrent` in all and `maxPerUser` per uid, so a peer whose
/// attached fd hangs on close (a FUSE file of a daemon that never answers)
/// ties up only its own share.
final class Broker: Sendable {
    let path: String
    private let listener: Int32
    let filesystem: MemoryFileSystem
    let logger: Logger
    private let stopping = Atomic<Bool>(false)
    /// Connections being handled right now.
    private let active = Atomic<Int>(0)
    static let maxConcurrent = 64
    static let maxPerUser = 8
    static let maxWaiting = 4096
    /// Connections being answered per peer uid.
    private let perUser = Locked<[UInt32: Int]>([:])
    /// The mount's st_dev, learnt once mounted (files are recognised by (dev, ino)).
    private let mountDevice = Atomic<UInt64>(0)

    init(path: String, filesystem: MemoryFileSystem, logger: Logger) throws(SystemError) {
        self.path = path
        self.filesystem = filesystem
        self.logger = logger
        let fd = try retryingSyscall("socket(AF_UNIX, SOCK_SEQPACKET)", path) {
            socket(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
            close(fd)
            throw SystemError("bind", path, errno: .fileNameTooLong)
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        unlink(path)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard bound == 0 else { let e = SystemError.current("bind", path); close(fd); throw e }
        // Anyone may connect; what they get is decided per request.
        chmod(path, 0o666)
        guard listen(fd, 128) == 0 else { let e = SystemError.current("listen", path); close(fd); throw e }
        listener = fd
    }

    func setMountDevice(_ device: UInt64) { mountDevice.store(device, ordering: .relaxed) }

    func start() {
        startThread { [self] in serve() }
    }

    func stop() {
        stopping.store(true, ordering: .relaxed)
        shutdown(listener, Int32(SHUT_RDWR))
        unlink(path)
    }

    /// One thread multiplexes the listener and every connection that has not
    /// sent its request yet (poll with deadlines), so silent peers cost a slot
    /// in a table, not a thread, and never delay others. A connection whose
    /// request has arrived is answered on its own short-lived thread.
    private func serve() {
        _ = fcntl(listener, F_SETFL, fcntl(listener, F_GETFL) | O_NONBLOCK)
        var waiting: [(fd: Int32, deadline: timespec)] = []
        while !stopping.load(ordering: .relaxed) {
            var fds = [pollfd(fd: listener, events: Int16(POLLIN), revents: 0)]
            fds += waiting.map { pollfd(fd: $0.fd, events: Int16(POLLIN), revents: 0) }
            let ready = poll(&fds, nfds_t(fds.count), 250)
            if ready < 0 && errno != EINTR { logger.error("broker poll: \(Errno(rawValue: errno))"); usleep(10_000) }
            let now = monotonicNow()
            var still: [(fd: Int32, deadline: timespec)] = []
            for (index, entry) in waiting.enumerated() {
                let events = fds[index + 1].revents
                if events & Int16(POLLIN | POLLHUP | POLLERR) != 0 {
                    dispatch(entry.fd)
                } else if isBefore(entry.deadline, now) {
                    refuse(entry.fd, .timedOut, "peer sent no request in time")
                    close(entry.fd)
                } else {
                    still.append(entry)
                }
            }
            waiting = still
            if fds[0].revents & Int16(POLLIN) != 0 {
                while true {
                    let client = fbmm_accept_cloexec(listener)
                    if client < 0 {
                        if errno == EMFILE || errno == ENFILE {
                            logger.warning("broker: out of file descriptors")
                            usleep(20_000)  // the listener stays readable: do not spin
                        }
                        break
                    }
                    guard waiting.count < Self.maxWaiting else {
                        refuse(client, .resourceTemporarilyUnavailable, "too many connections waiting")
                        close(client)
                        continue
                    }
                    var timeout = timeval(tv_sec: 2, tv_usec: 0)
                    setsockopt(client, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
                    var deadline = now
                    deadline.tv_sec += 2
                    waiting.append((client, deadline))
                }
            }
        }
        waiting.forEach { close($0.fd) }
        close(listener)
    }

    /// Answers a connection whose request has arrived, on its own thread.
    /// A peer over its share, or any peer when `maxConcurrent` are busy, is
    /// refused before its message is read: closing the socket then drops
    /// any fds it attached without this process closing them (no FUSE flush).
    private func dispatch(_ client: Int32) {
        var credentials = BrokerPeer(pid: 0, uid: 0, gid: 0)
        guard fbmm_peer_cred(client, &credentials.pid, &credentials.uid, &credentials.gid) == 0 else {
            refuse(client, .notPermitted, "no peer credentials")
            close(client)
            return
        }
        let peer = credentials
        let admitted = perUser.withLock { counts -> Bool in
            guard counts[peer.uid, default: 0] < Self.maxPerUser else { return false }
            counts[peer.uid, default: 0] += 1
            return true
        }
        guard admitted else {
            refuse(client, .resourceTemporarilyUnavailable, "uid \(peer.uid) has \(Self.maxPerUser) requests in flight")
            close(client)
            return
        }
        let finish: @Sendable () -> Void = { [self] in
            close(client)
            active.wrappingSubtract(1, ordering: .relaxed)
            perUser.withLock { counts in
                counts[peer.uid, default: 1] -= 1
                if counts[peer.uid] == 0 { counts[peer.uid] = nil }
            }
        }
        if active.wrappingAdd(1, ordering: .relaxed).newValue <= Self.maxConcurrent,
           startThread({ [self] in handle(client, peer: peer); finish() }) {
            return
        }
        refuse(client, .resourceTemporarilyUnavailable, "\(Self.maxConcurrent) requests in flight")
        finish()
    }

    private func handle(_ client: Int32, peer: BrokerPeer) {
        var request = fbmm_request()
        var received = [Int32](repeating: -1, count: Int(FBMM_BROKER_MAX_FDS))
        var attachedCount: Int32 = 0
        let count = withUnsafeMutableBytes(of: &request) { raw in
            fbmm_recv_fds(client, raw.baseAddress, raw.count, &received, FBMM_BROKER_MAX_FDS, &attachedCount)
        }
        // The attached fds are the peer's proof; we only look at them (statx
        // without syncing, F_GETFL) and close them when done. (What is kept,
        // a userfaultfd, is duplicated first.)
        defer { for fd in received where fd >= 0 { close(fd) } }
        // A peer that hung up without a request (`fbmm umount` asking the
        // kernel who listens here: SO_PEERCRED) has nothing to refuse; an
        // empty message from a peer still there is refused like any other.
        if count == 0 && attachedCount == 0 && Self.hungUp(client) { return }
        guard count == MemoryLayout<fbmm_request>.size,
              request.magic == UInt16(FBMM_BROKER_MAGIC), request.version == UInt16(FBMM_BROKER_VERSION) else {
            refuse(client, .invalidArgument, "malformed request (\(count) bytes)")
            return
        }
        let op = request.op
        let expected = Self.attachments(op)
        guard attachedCount <= expected else {
            refuse(client, .invalidArgument, "\(attachedCount) fds attached to op \(op) (at most \(expected))")
            return
        }
        guard op == UInt32(FBMM_OP_GET_BACKING.rawValue) || request.flags == 0,
              request.flags & ~UInt32(FBMM_BACKING_ARENA) == 0 else {
            refuse(client, .invalidArgument, "unknown flags \(request.flags) for op \(op)")
            return
        }
        if op == UInt32(FBMM_OP_STAT.rawValue) {
            sendStatistics(client, peer: peer)
            return
        }
        if op == UInt32(FBMM_OP_UFFD_DEVICE.rawValue) {
            giveUserfaultfdDevice(client, peer: peer)
            return
        }
        guard expected > 0 else {
            refuse(client, .invalidArgument, "unknown op \(op)")
            return
        }
        let attached: AttachedFile
        switch identify(received[0], inode: request.ino) {
        case .success(let file): attached = file
        case .failure(let e):
            refuse(client, e, "op \(op) from pid \(peer.pid) uid \(peer.uid): attached fd is not inode \(request.ino) of this mount")
            return
        }
        switch op {
        case UInt32(FBMM_OP_GET_BACKING.rawValue):
            getBacking(client, request, peer: peer, attached: attached)
        case UInt32(FBMM_OP_MIGRATE.rawValue):
            migrate(client, request, peer: peer, attached: attached)
        case UInt32(FBMM_OP_POOL.rawValue):
            enrollInPool(client, request, peer: peer, attached: attached)
        case UInt32(FBMM_OP_COW_FORK.rawValue):
            cowFork(client, request, peer: peer, attached: attached, parentFD: received[1], uffd: received[2])
        case UInt32(FBMM_OP_COW_CHILD.rawValue):
            cowChild(client, peer: peer, attached: attached, uffd: received[1])
        default:
            cowRelease(client, request, peer: peer, attached: attached)
        }
    }

    /// How many fds op may carry (0 for an op without a file, or unknown).
    private static func attachments(_ op: UInt32) -> Int32 {
        switch op {
        case UInt32(FBMM_OP_GET_BACKING.rawValue), UInt32(FBMM_OP_MIGRATE.rawValue), UInt32(FBMM_OP_POOL.rawValue),
             UInt32(FBMM_OP_COW_RELEASE.rawValue), UInt32(FBMM_OP_COW_FILL.rawValue):
            return 1
        case UInt32(FBMM_OP_COW_CHILD.rawValue): return 2
        case UInt32(FBMM_OP_COW_FORK.rawValue): return 3
        default: return 0
        }
    }

    func reply(_ client: Int32, status: Int32, size: UInt64 = 0, fd: Int32 = -1) {
        var message = fbmm_reply(magic: UInt16(FBMM_BROKER_MAGIC), version: UInt16(FBMM_BROKER_VERSION),
                                 status: status, size: size)
        _ = withUnsafeBytes(of: &message) { raw in fbmm_send_with_fd(client, raw.baseAddress, raw.count, fd) }
    }

    /// Whether the peer of `client` has closed its end.
    static func hungUp(_ client: Int32) -> Bool {
        var p = pollfd(fd: client, events: Int16(POLLIN), revents: 0)
        return poll(&p, 1, 0) == 1 && p.revents & Int16(POLLHUP) != 0
    }

    func refuse(_ client: Int32, _ errno: Errno, _ why: String) {
        logger.notice("broker refused: \(why)")
        filesystem.countRefusal()
        reply(client, status: errno.rawValue)
    }

    /// What the peer attached, if it is a regular file of this mount with
    /// inode `inode`.
    func identify(_ fd: Int32, inode: UInt64) -> Result<AttachedFile, Errno> {
        guard fd >= 0 else { return .failure(.badFileDescriptor) }
        var file = AttachedFile(device: 0, inode: 0, mode: 0, flags: 0)
        guard fbmm_fd_identity(fd, &file.device, &file.inode, &file.mode, &file.flags) == 0 else {
            return .failure(.badFileDescriptor)
        }
        let device = mountDevice.load(ordering: .relaxed)
        guard device != 0, file.device == device, file.inode == inode, file.mode & S_IFMT == S_IFREG else {
            return .failure(.notPermitted)
        }
        return .success(file)
    }

    /// GET_BACKING and POOL give the file's memory itself, which reads and
    /// writes alike: only for an fd opened O_RDWR.
    func requireReadWrite(_ client: Int32, _ attached: AttachedFile, peer: BrokerPeer) -> Bool {
        guard attached.readable && attached.writable else {
            refuse(client, .permissionDenied, "pid \(peer.pid) uid \(peer.uid): inode \(attached.inode) not open for reading and writing")
            return false
        }
        return true
    }
}


private func monotonicNow() -> timespec {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return now
}

private func isBefore(_ a: timespec, _ b: timespec) -> Bool {
    a.tv_sec < b.tv_sec || (a.tv_sec == b.tv_sec && a.tv_nsec < b.tv_nsec)
}
