import CFBMMSys
import FBMMCore
import FBMMPolicy
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// The broker's requests about one file (fbmm_broker.h): the backing memfd
/// (GET_BACKING), enrolment in the pre-zeroed pool (POOL), a migration
/// (MIGRATE) and the mount's statistics (STAT). Broker.swift accepts,
/// bounds and validates a request, then hands it here.
extension Broker {
    /// Enrols a process's arena in the pre-zeroed pool; the reply carries the
    /// eventfd its shim kicks. Only an arena its owner claimed qualifies: the
    /// pool's mappings go when its last handle is released.
    func enrollInPool(_ client: Int32, _ request: fbmm_request, peer: BrokerPeer, attached: AttachedFile) {
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

    func getBacking(_ client: Int32, _ request: fbmm_request, peer: BrokerPeer, attached: AttachedFile) {
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

    func sendStatistics(_ client: Int32, peer: BrokerPeer) {
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
    func migrate(_ client: Int32, _ request: fbmm_request, peer: BrokerPeer, attached: AttachedFile) {
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
