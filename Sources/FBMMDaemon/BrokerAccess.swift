import FBMMCore
import FBMMPolicy
import FUSEKit
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Who is asking the broker, as the kernel vouches for it: SO_PEERCRED of
/// the connection (pid is the tgid, at connect time; used for display
/// only, never to find a file) and, when one came, what the descriptor the
/// peer attached is (statx and F_GETFL of the received open file).
struct BrokerPeer: Sendable {
    var pid: Int32
    var uid: UInt32
    var gid: UInt32

    /// Root and the daemon's own user see and touch every file.
    var isPrivileged: Bool { uid == 0 || uid == getuid() }
}

/// The open file a peer attached to its request (SCM_RIGHTS).
struct AttachedFile: Sendable {
    var device: UInt64
    var inode: UInt64
    var mode: UInt32
    var flags: Int32
    var readable: Bool { flags & O_ACCMODE == O_RDONLY || flags & O_ACCMODE == O_RDWR }
    var writable: Bool { flags & O_ACCMODE == O_WRONLY || flags & O_ACCMODE == O_RDWR }
}

/// The narrow API the broker calls: every check of the namespace and every
/// change to it happens here, under the lock, and only Sendable snapshots
/// leave it.
extension MemoryFileSystem {
    /// The backing of a regular file that has a writable handle open (the
    /// peer's own, which it proved by attaching it). With `arena`, the file
    /// becomes `peer`'s process-owned arena, unlinked with its last handle:
    /// only its creator may ask, while the create's handle is the only one
    /// it ever had, so nobody can turn another's file into something that
    /// disappears when they close it.
    func backingForBroker(_ inode: InodeNumber, peer: BrokerPeer, arena: Bool) -> Result<FileRef, Errno> {
        transact { (ns) throws(Errno) -> FileRef in
            guard let record = ns.inodes[inode], let backing = record.backing, record.writableHandles > 0 else {
                throw .noSuchFileOrDirectory
            }
            if arena {
                guard record.processOwned || (record.uid == peer.uid && record.opens == 1 && record.openHandles == 1) else {
                    throw .notPermitted
                }
                if !record.processOwned {
                    record.processOwned = true
                    record.creatorPID = peer.pid
                }
            }
            ns.counters.brokerHandouts += 1
            backing.handOut()
            return FileRef(record, backing)
        }
    }

    /// An arena of `peer`'s (process-owned, still open for writing) for the pool.
    func arenaForPool(_ inode: InodeNumber, peer: BrokerPeer) -> Result<FileRef, Errno> {
        transact { (ns) throws(Errno) -> FileRef in
            guard let record = ns.inodes[inode], let backing = record.backing, record.processOwned,
                  record.writableHandles > 0 else { throw .noSuchFileOrDirectory }
            guard record.uid == peer.uid || peer.uid == 0 else { throw .notPermitted }
            return FileRef(record, backing)
        }
    }

    /// Is the arena still the same open file as when it was enrolled? (Its
    /// program may have exited while the pool mapped it.) Checked under the
    /// lock that releasing its last handle also takes.
    func arenaStillOpen(_ inode: InodeNumber, backing: FileBacking, orElse cleanup: () -> Void) -> Bool {
        state.withLock { ns in
            guard let record = ns.inodes[inode], record.backing === backing, record.openHandles > 0 else {
                cleanup()
                return false
            }
            return true
        }
    }

    /// A file `peer` may migrate: its own, any as root or as the mount's
    /// user, or one it opened for writing (migration changes the file's
    /// policy, a change only a writer or the owner may make).
    func fileForMigration(_ inode: InodeNumber, peer: BrokerPeer, attached: AttachedFile) -> Result<FileRef, Errno> {
        transact { (ns) throws(Errno) -> FileRef in
            guard let record = ns.inodes[inode], let backing = record.backing else { throw .noSuchFileOrDirectory }
            guard peer.isPrivileged || record.uid == peer.uid || attached.writable else { throw .notPermitted }
            return FileRef(record, backing)
        }
    }

    /// A fork child took over the arena its parent made for it: `fbmm stat`
    /// shows the child.
    func claimArena(_ inode: InodeNumber, pid: Int32) {
        state.withLock { ns in
            if let record = ns.inodes[inode], record.processOwned { record.creatorPID = pid }
        }
    }

    /// Records a file's new policy spec (after `fbmm migrate` of the whole file).
    func recordPolicy(_ inode: InodeNumber, _ spec: PolicySpec) {
        state.withLock { ns in ns.inodes[inode]?.policySpec = spec }
    }

    func countMigration(bytes: UInt64) {
        state.withLock { ns in
            ns.counters.migrations &+= 1
            ns.counters.migratedBytes &+= bytes
        }
    }

    func countRefusal() {
        state.withLock { ns in ns.counters.brokerRefusals &+= 1 }
    }
}
