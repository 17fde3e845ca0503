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
/// permission check of its own. A peer gets it only if, at the time of the
/// request, the peer (by SO_PEERCRED pid) itself holds the very file open for
/// writing through this mount: its fd `request.fd` must resolve (via
/// /proc/PID/fd) to this mount's device and the inode it names, with a
/// writable access mode in /proc/PID/fdinfo. The kernel has already checked
/// the file's permissions when that fd was opened, so the broker adds no
/// permission model of its own. Anything else gets a refusal and no effect.
final class Broker: Sendable {
    let path: String
    private let listener: Int32
    private let filesystem: MemoryFileSystem
    private let logger: Logger
    private let stopping = Atomic<Bool>(false)
    /// Connections being handled right now.
    private let active = Atomic<Int>(0)
    static let maxConcurrent = 64
    static let maxWaiting = 4096
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

    /// Answers a connection whose request has arrived, on its own thread
    /// while fewer than `maxConcurrent` are busy (stat and migrate can take a while).
    private func dispatch(_ client: Int32) {
        if active.wrappingAdd(1, ordering: .relaxed).newValue <= Self.maxConcurrent,
           startThread({ [self] in
               handle(client)
               close(client)
               active.wrappingSubtract(1, ordering: .relaxed)
           }) {
            return
        }
        handle(client)
        close(client)
        active.wrappingSubtract(1, ordering: .relaxed)
    }

    private func handle(_ client: Int32) {
        var request = fbmm_request()
        var received: Int32 = -1
        let count = withUnsafeMutableBytes(of: &request) { raw in
            fbmm_recv_with_fd(client, raw.baseAddress, raw.count, &received)
        }
        if received >= 0 { close(received) }  // requests carry no fds
        guard count == MemoryLayout<fbmm_request>.size,
              request.magic == UInt16(FBMM_BROKER_MAGIC), request.version == UInt16(FBMM_BROKER_VERSION) else {
            refuse(client, .invalidArgument, "malformed request (\(count) bytes)")
            return
        }
        var pid: pid_t = 0, uid: uid_t = 0, gid: gid_t = 0
        guard fbmm_peer_cred(client, &pid, &uid, &gid) == 0 else {
            refuse(client, .notPermitted, "no peer credentials")
            return
        }
        switch request.op {
        case UInt32(FBMM_OP_GET_BACKING.rawValue):
            getBacking(client, request, pid: pid)
        case UInt32(FBMM_OP_STAT.rawValue):
            sendStatistics(client)
        case UInt32(FBMM_OP_MIGRATE.rawValue):
            migrate(client, request, pid: pid)
        case UInt32(FBMM_OP_POOL.rawValue):
            enrollInPool(client, request, pid: pid)
        default:
            refuse(client, .invalidArgument, "unknown op \(request.op)")
        }
    }

    private func reply(_ client: Int32, status: Int32, size: UInt64 = 0, fd: Int32 = -1) {
        var message = fbmm_reply(magic: UInt16(FBMM_BROKER_MAGIC), version: UInt16(FBMM_BROKER_VERSION),
                                 status: status, size: size)
        _ = withUnsafeBytes(of: &message) { raw in fbmm_send_with_fd(client, raw.baseAddress, raw.count, fd) }
    }

    private func refuse(_ client: Int32, _ errno: Errno, _ why: String) {
        logger.notice("broker refused: \(why)")
        filesystem.state.withLock { $0.counters.brokerRefusals += 1 }
        reply(client, status: errno.rawValue)
    }

    /// Checks that `pid` holds `fd` open on this mount's inode `ino`; returns its open flags.
    private func verifyOpen(pid: pid_t, fd: Int32, ino: UInt64) -> Result<Int32, Errno> {
        guard fd >= 0 else { return .failure(.badFileDescriptor) }
        var st = stat()
        guard stat("/proc/\(pid)/fd/\(fd)", &st) == 0 else { return .failure(.badFileDescriptor) }
        let device = mountDevice.load(ordering: .relaxed)
        guard device != 0, UInt64(st.st_dev) == device, UInt64(st.st_ino) == ino else {
            return .failure(.notPermitted)
        }
        guard let info = readText("/proc/\(pid)/fdinfo/\(fd)") else { return .failure(.badFileDescriptor) }
        for line in info.split(separator: "\n") where line.hasPrefix("flags:") {
            let value = line.dropFirst("flags:".count).trimmingPrefix(while: { $0 == " " || $0 == "\t" })
            if let flags = Int32(value, radix: 8) { return .success(flags) }
        }
        return .failure(.badFileDescriptor)
    }

    /// The checks GET_BACKING and POOL share: the peer holds the file open
    /// for writing through this mount. Refuses and returns false otherwise.
    private func verifyWritable(_ client: Int32, _ request: fbmm_request, pid: pid_t) -> Bool {
        let flags: Int32
        switch verifyOpen(pid: pid, fd: request.fd, ino: request.ino) {
        case .success(let f): flags = f
        case .failure(let e): refuse(client, e, "pid \(pid) fd \(request.fd) is not inode \(request.ino) of this mount"); return false
        }
        guard flags & O_ACCMODE != O_RDONLY else {
            refuse(client, .permissionDenied, "pid \(pid) has inode \(request.ino) open read-only")
            return false
        }
        return true
    }

    /// Enrols a process's arena in the pre-zeroed pool; the reply carries the
    /// eventfd its shim kicks. Only a file whose backing the peer already got
    /// (process-owned) qualifies: the pool's mappings go when it is released.
    private func enrollInPool(_ client: Int32, _ request: fbmm_request, pid: pid_t) {
        guard verifyWritable(client, request, pid: pid) else { return }
        guard let pool = filesystem.pool else { refuse(client, Errno(rawValue: ENODEV), "prezero pool is off (prezero=0)"); return }
        let backing = filesystem.state.withLock { ns -> FileBacking? in
            guard let record = ns.inodes[request.ino], record.processOwned, record.writableHandles > 0 else { return nil }
            return record.backing
        }
        guard let backing else { refuse(client, .noSuchFileOrDirectory, "pool: inode \(request.ino) is not an arena"); return }
        do {
            let pages = try pool.enroll(inode: request.ino, backing: backing)
            // The program may have exited (its last handle released, which
            // removes the arena from the pool) while we were enrolling: check
            // again under the namespace lock that release also takes.
            let alive = filesystem.state.withLock { ns in
                guard let record = ns.inodes[request.ino], record.backing === backing, record.openHandles > 0 else {
                    pool.remove(inode: request.ino)
                    return false
                }
                return true
            }
            guard alive else { refuse(client, .noSuchFileOrDirectory, "pool: inode \(request.ino) was released while enrolling"); return }
            reply(client, status: 0, size: pages, fd: pool.eventDescriptor)
            logger.debug("pool enrolled inode \(request.ino) of pid \(pid)")
        } catch {
            refuse(client, error.errno, "pool: \(error)")
        }
    }

    private func getBacking(_ client: Int32, _ request: fbmm_request, pid: pid_t) {
        guard verifyWritable(client, request, pid: pid) else { return }
        let backing = filesystem.state.withLock { ns -> FileBacking? in
            guard let record = ns.inodes[request.ino], let backing = record.backing, record.writableHandles > 0 else { return nil }
            record.processOwned = true
            ns.counters.brokerHandouts += 1
            return backing
        }
        guard let backing else { refuse(client, .noSuchFileOrDirectory, "inode \(request.ino) has no writable handle"); return }
        reply(client, status: 0, size: (try? backing.memory.size()) ?? 0, fd: backing.memory.descriptor.rawValue)
        logger.debug("broker gave inode \(request.ino) to pid \(pid)")
    }

    private func sendStatistics(_ client: Int32) {
        do {
            let data = try filesystem.statistics().json()
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

    /// Moves a file's resident pages to a node and makes the file's policy
    /// follow, so pages allocated later land there too. The peer must hold the
    /// file open (any mode) through the mount.
    private func migrate(_ client: Int32, _ request: fbmm_request, pid: pid_t) {
        if case .failure(let e) = verifyOpen(pid: pid, fd: request.fd, ino: request.ino) {
            refuse(client, e, "migrate: pid \(pid) fd \(request.fd) is not inode \(request.ino) of this mount")
            return
        }
        let found = filesystem.state.withLock { ns -> (InodeRecord, FileBacking)? in
            guard let record = ns.inodes[request.ino], let backing = record.backing else { return nil }
            return (record, backing)
        }
        guard let (record, backing) = found else { refuse(client, .noSuchFileOrDirectory, "migrate: no such file"); return }
        guard filesystem.topology.node(Int(request.node))?.hasMemory == true else {
            refuse(client, .invalidArgument, "migrate: node \(request.node) has no memory")
            return
        }
        do {
            let node = Int(request.node)
            let range: Range<UInt64>? = request.length == 0 && request.offset == 0 ? nil
                : request.offset..<(request.length == 0 ? UInt64(Int64.max) : request.offset &+ request.length)
            // Policy first, so pages faulted during the move already land on the target.
            if range == nil {
                let spec = FBMMPolicy.PolicySpec(name: "preferred", options: .init([("nodes", String(node))]))
                let policy = try filesystem.registry.make(spec, topology: filesystem.topology)
                try backing.replacePolicy(policy, context: .init(inode: record.number, name: record.name.description, size: backing.memory.size()))
                filesystem.pool?.policyChanged(record.number)
                filesystem.state.withLock { _ in record.policySpec = spec }
            }
            let moved = try backing.migrate(range, to: node)
            filesystem.state.withLock { ns in
                ns.counters.migrations += 1
                ns.counters.migratedBytes += moved
            }
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
