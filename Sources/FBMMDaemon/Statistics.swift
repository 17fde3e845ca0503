import FBMMProtocol
import FBMMCore
import FUSEKit
import FBMMPolicy
import Foundation


extension MemoryFileSystem {
    /// One file as stat sees it, copied under the namespace lock.
    private struct FileSnapshot: Sendable {
        var file: FileRef
        var path: String
        var ownerPID: Int32
        var openHandles: Int
    }

    /// Gathers where every file's memory is. Page nodes come from move_pages on
    /// short-lived windows over the files' data ranges. With `visibleTo`, only
    /// the files that uid owns are listed and counted in the node totals (a
    /// user learns nothing of other users' files: not their names, sizes,
    /// placement or owners).
    public func statistics(visibleTo uid: UInt32? = nil) -> MountStatistics {
        let snapshot = state.withLock { ns -> ([FileSnapshot], Namespace.Counters) in
            var files: [FileSnapshot] = []
            for record in ns.inodes.values where record.linkCount > 0 && (uid == nil || record.uid == uid) {
                guard let backing = record.backing else { continue }
                files.append(FileSnapshot(file: FileRef(record, backing), path: ns.path(of: record.number),
                                          ownerPID: record.creatorPID, openHandles: record.openHandles))
            }
            return (files, ns.counters)
        }
        let topology = (try? Topology()) ?? self.topology
        var nodeTotals: [Int: UInt64] = [:]
        var files: [MountStatistics.FileUsage] = []
        for file in snapshot.0.sorted(by: { $0.path < $1.path }) {
            let backing = file.file.backing
            let byNode = (try? backing.residentByNode()) ?? [:]
            let extent = backing.extent()
            for (node, bytes) in byNode { nodeTotals[node, default: 0] &+= bytes }
            files.append(MountStatistics.FileUsage(
                name: file.file.name, path: file.path,
                size: extent.size,
                allocated_bytes: extent.allocated,
                resident_bytes: byNode.values.reduce(0, &+),
                nodes: Dictionary(uniqueKeysWithValues: byNode.map { (String($0.key), $0.value) }),
                owner_pid: file.ownerPID,
                policy: backing.policy.description,
                open_handles: file.openHandles,
                prezero_window_bytes: self.pool?.windowAllocated(file.file.inode)))
        }
        var nodes: [String: MountStatistics.NodeUsage] = [:]
        for node in topology.nodes {
            nodes[String(node.id)] = MountStatistics.NodeUsage(
                resident_bytes: nodeTotals[node.id] ?? 0, total_bytes: node.memTotal, free_bytes: node.memFree)
        }
        let pool = poolUsage()
        let c = snapshot.1
        var statistics = MountStatistics(
            mountpoint: configuration.mountpoint, daemon_pid: getpid(), policy: mountPolicy.description,
            nodes: nodes, files: files,
            pool: ["total_bytes": pool.total, "used_bytes": pool.used, "free_bytes": pool.free],
            counters: .init(files_created: c.filesCreated, placements: c.placements,
                            broker_handouts: c.brokerHandouts, broker_refusals: c.brokerRefusals,
                            migrations: c.migrations, migrated_bytes: c.migratedBytes))
        var backings = Set<BackingIdentity>()
        var owners = Set<Int32>()
        for file in snapshot.0 {
            if let memory = file.file.backing.existing, let identity = BackingIdentity(descriptor: memory.descriptor.rawValue) {
                backings.insert(identity)
            }
            if file.openHandles > 0 && file.ownerPID > 0 { owners.insert(file.ownerPID) }
        }
        statistics.processes = owners.sorted().compactMap { ProcessCoverage.usage(of: $0, backings: backings) }
        statistics.policy_counters = policyCounters
        statistics.prezero = self.pool?.usage()
        statistics.huge = configuration.huge.rawValue
        statistics.backing = backingNote
        return statistics
    }
}
