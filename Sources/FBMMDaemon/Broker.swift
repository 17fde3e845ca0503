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

    /// Enrols a process's arena in the pre-zeroed pool; the reply carries the
    /// eventfd its shim kicks. Only an arena its owner claimed qualifies: the
    /// pool's mappings go when its last handle is released.
    private func enrollInPool(_ client: Int32, _ request: fbmm_request, peer: BrokerPeer, attached: AttachedFile) {
        guard requireReadWrite(client, attached, peer: peer) else { return }
        guard let pool = filesystem.pool else { refuse(client, Errno(rawValue: ENODEV), "prezero pool is off (prezero=0)"); return }
        let file: FileRef
        switch filesystem.arenaForPool(attached.inode, peer: peer) {
        case .success(let f): file = f
        case .failure(let e): refuse(client, e, "pool: inode \(attached.inode) is not an arena of uid \(peer.uid)"); return
        }
        do {
            let pages = try pool.enroll(inode: file.inode, backing: file.backing)
            // The program may have exited (its last handle released, which
            // removes the arena from the pool) while we were enrolling.
            guard filesystem.arenaStillOpen(file.inode, backing: file.backing, orElse: { pool.remove(inode: file.inode) }) else {
                refuse(client, .noSuchFileOrDirectory, "pool: inode \(file.inode) was released while enrolling")
                return
            }
            reply(client, status: 0, size: pages, fd: pool.eventDescriptor)
            logger.debug("pool enrolled inode \(file.inode) of pid \(peer.pid)")
        } catch {
            refuse(client, error.errno, "pool: \(error)")
        }
    }

    private func getBacking(_ client: Int32, _ request: fbmm_request, peer: BrokerPeer, attached: AttachedFile) {
        guard requireReadWrite(client, attached, peer: peer) else { return }
        let arena = request.flags & UInt32(FBMM_BACKING_ARENA) != 0
        switch filesystem.backingForBroker(attached.inode, peer: peer, arena: arena) {
        case .success(let file):
            let memory: MemoryFile
            do { memory = try file.backing.memory } catch {
                refuse(client, error.errno, "inode \(attached.inode) has no memory to give: \(error)")
                return
            }
            reply(client, status: 0, size: (try? memory.size()) ?? 0, fd: memory.descriptor.rawValue)
            logger.debug("broker gave inode \(file.inode)\(arena ? " (arena)" : "") to pid \(peer.pid)")
        case .failure(let e):
            refuse(client, e, arena ? "inode \(attached.inode) cannot become an arena of pid \(peer.pid) uid \(peer.uid)"
                                    : "inode \(attached.inode) has no writable handle")
        }
    }

    private func sendStatistics(_ client: Int32, peer: BrokerPeer) {
        do {
            let data = try filesystem.statistics(visibleTo: peer.isPrivileged ? nil : peer.uid).json()
            let file = try MemoryFile(name: "fbmm-stat")
            let bytes = [UInt8](data)
            var failure: SystemError?
            bytes.withUnsafeBytes { raw in
                do throws(SystemError) { try file.write(raw, at: 0) } catch { failure = error }
            }
            if let failure { throw failure }
            reply(client, status: 0, size: UInt64(data.count), fd: file.descriptor.rawValue)
        } catch let error as SystemError {
            reply(client, status: error.errno.rawValue)
        } catch {
            reply(client, status: Errno.ioError.rawValue)
        }
    }

    /// The byte range a MIGRATE request names, checked: nil for the whole
    /// file (offset 0, length 0); length 0 otherwise means to the end.
    /// Offsets past what a file can have (off_t) are refused, not wrapped.
    static func migrationRange(offset: UInt64, length: UInt64) -> Result<Range<UInt64>?, Errno> {
        let limit = UInt64(Int64.max)
        if offset == 0 && length == 0 { return .success(nil) }
        guard offset <= limit, length <= limit else { return .failure(.invalidArgument) }
        let (end, overflow) = offset.addingReportingOverflow(length == 0 ? limit - offset : length)
        guard !overflow, end <= limit else { return .failure(.invalidArgument) }
        return .success(offset..<end)
    }

    /// Moves a file's resident pages to a node and makes the file's policy
    /// follow, so pages allocated later land there too. The peer must hold the
    /// file open (any mode) through the mount, and own it or have it open
    /// for writing.
    private func migrate(_ client: Int32, _ request: fbmm_request, peer: BrokerPeer, attached: AttachedFile) {
        let file: FileRef
        switch filesystem.fileForMigration(attached.inode, peer: peer, attached: attached) {
        case .success(let f): file = f
        case .failure(let e): refuse(client, e, "migrate: inode \(attached.inode) is not uid \(peer.uid)'s to move"); return
        }
        guard filesystem.topology.node(Int(request.node))?.hasMemory == true else {
            refuse(client, .invalidArgument, "migrate: node \(request.node) has no memory")
            return
        }
        let range: Range<UInt64>?
        switch Self.migrationRange(offset: request.offset, length: request.length) {
        case .success(let r): range = r
        case .failure(let e):
            refuse(client, e, "migrate: offset \(request.offset) length \(request.length) is past any file's end")
            return
        }
        do {
            let node = Int(request.node)
            let size = try file.backing.memory.size()
            // Policy first, so pages faulted during the move already land on the target.
            if range == nil {
                let spec = FBMMPolicy.PolicySpec(name: "preferred", options: .init([("nodes", String(node))]))
                let policy = try filesystem.registry.make(spec, topology: filesystem.topology)
                try file.backing.replacePolicy(policy, context: .init(inode: file.inode, name: file.name, size: size))
                filesystem.pool?.policyChanged(file.inode)
                filesystem.recordPolicy(file.inode, spec)
            }
            // Only what the file has: a range past its end moves nothing.
            let clamped = range.map { min($0.lowerBound, size)..<min($0.upperBound, size) }
            let moved = clamped?.isEmpty == true ? 0 : try file.backing.migrate(clamped, to: node)
            filesystem.countMigration(bytes: moved)
            reply(client, status: 0, size: moved)
        } catch let error as SystemError {
            reply(client, status: error.errno.rawValue)
        } catch {
            reply(client, status: Errno.invalidArgument.rawValue)
        }
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
