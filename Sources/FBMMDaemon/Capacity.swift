import CFBMMSys
import FBMMCore
import FBMMPolicy
import FUSEKit
import Logging
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// What the mount commits and what `df` shows: the `capacity` bound is on
/// committed bytes (a file's size, or its allocation if larger, counted by
/// `CommitLedger`), because pages programs fault through their own mappings
/// never pass through the daemon; they can only fault within a file's size,
/// and the daemon grows sizes only through `admitGrowth`.
extension MemoryFileSystem: FilesystemUsage {
    public func statfs(_ ctx: RequestContext, inode: InodeNumber, reply: consuming StatfsReply) {
        let pool = poolUsage(withUsed: false)
        let block = UInt64(pageSize)
        let files = state.withLock { $0.inodes.count }
        let maxFiles = UInt64(configuration.maxFiles)
        reply.statistics(FilesystemStatistics(
            blockSize: block, totalBlocks: pool.total / block, freeBlocks: pool.free / block,
            availableBlocks: pool.free / block, totalFiles: maxFiles,
            freeFiles: maxFiles > UInt64(files) ? maxFiles - UInt64(files) : 0))
    }

    /// What all files together commit the pool to, their extended
    /// attributes (held in the daemon's memory) included: O(1).
    func committedTotal() -> UInt64 {
        ledger.committed &+ state.withLock { $0.xattrBytes }
    }

    /// `-o capacity`: reserves `backing`'s growth to `size` in the ledger, or
    /// answers ENOSPC. The bound is on committed bytes because pages that
    /// programs fault through their own mappings never pass through the
    /// daemon; they can only fault within a file's size, and the daemon
    /// grows sizes only after this. Also refuses sizes past `max-file-size`
    /// (EFBIG). Every admitted growth ends with `growthEnded`.
    func admitGrowth(_ backing: FileBacking, to size: UInt64) -> Errno? {
        if size > configuration.maxFileSize { return .fileTooLarge }
        guard configuration.capacity != nil || configuration.userCapacity != nil else { return nil }
        ledger.reconcileIfDue { state.withLock { ns in ns.inodes.values.compactMap(\.backing) } }
        let xattrs = state.withLock { $0.xattrBytes }
        switch ledger.reserve(backing, to: size, others: xattrs, limit: configuration.capacity,
                              userLimit: configuration.userCapacity) {
        case nil: return nil
        case .mountLimit?: return .noSpace
        case .userLimit?: return .diskQuotaExceeded
        }
    }

    /// After a growth (done or failed) or a shrink: the file's record
    /// follows it down where it holds less than was reserved (a failed
    /// growth, fallocate of a range short of the end, a truncation).
    func growthEnded(_ backing: FileBacking) {
        if configuration.capacity != nil || configuration.userCapacity != nil { ledger.settle(backing) }
    }

    /// The pool `df` shows: the memory of the nodes the mount's policy may use
    /// (or `capacity`), what of it is free, and (`fbmm stat` only, which asks
    /// for it: one fstat per file) what the files hold.
    func poolUsage(withUsed: Bool = true) -> (total: UInt64, used: UInt64, free: UInt64) {
        let used = !withUsed ? 0 : state.withLock { ns in
            ns.inodes.values.reduce(UInt64(0)) { sum, record in
                sum + (record.backing?.extent().allocated ?? 0)
            }
        }
        let nodes = nodeMemory.current(fallback: topology).nodes.filter { mountPolicy.allowedNodes.contains($0.id) }
        var total = nodes.reduce(UInt64(0)) { $0 + $1.memTotal }
        var free = nodes.reduce(UInt64(0)) { $0 + $1.memFree }
        if let capacity = configuration.capacity {
            let committed = committedTotal()
            total = min(total, capacity)
            free = min(free, capacity > committed ? capacity - committed : 0)
        }
        return (total, used, free)
    }
}

/// The nodes' memory as sysfs last said, re-read at most once a second:
/// `df` in a loop (monitoring agents do) would otherwise read every node's
/// meminfo per statfs.
final class NodeMemoryCache: Sendable {
    private let cached = Locked<(topology: Topology, at: ContinuousClock.Instant)?>(nil)
    private let maxAge: Duration

    init(maxAge: Duration = .seconds(1)) { self.maxAge = maxAge }

    func current(fallback: Topology) -> Topology {
        let now = ContinuousClock.now
        if let hit = cached.withLock({ $0 }), now - hit.at < maxAge { return hit.topology }
        guard let fresh = try? Topology() else { return fallback }
        cached.withLock { $0 = (fresh, now) }
        return fresh
    }
}
