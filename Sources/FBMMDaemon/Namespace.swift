import FBMMCore
import FBMMPolicy
import FUSEKit
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// The filesystem's tables, always accessed under the daemon's lock: inodes,
/// open handles and counters. Memory operations (pread/pwrite/fallocate/mbind)
/// run outside the lock on the `FileBacking`, which is thread-safe.
struct Namespace: ~Copyable {
    var inodes: [InodeNumber: InodeRecord] = [:]
    var nextInode: InodeNumber = 2
    var handles: [UInt64: OpenHandle] = [:]
    var nextHandle: UInt64 = 1
    var counters = Counters()
    /// Bytes of `user.*` xattr names and values held by all inodes.
    var xattrBytes: UInt64 = 0
    /// Inodes per owner (the root directory not counted), for `-o user-files`.
    var filesByUser: [UInt32: Int] = [:]

    struct OpenHandle {
        var inode: InodeNumber
        var flags: Int32
        var pid: Int32
        var writable: Bool { flags & O_ACCMODE != O_RDONLY }
    }

    struct Counters {
        var filesCreated: UInt64 = 0
        var placements: UInt64 = 0
        var brokerHandouts: UInt64 = 0
        var brokerRefusals: UInt64 = 0
        var migratedBytes: UInt64 = 0
        var migrations: UInt64 = 0
    }

    init(rootUID: UInt32, rootGID: UInt32, rootMode: UInt32) {
        let root = InodeRecord(number: 1, content: .directory(children: [:]), mode: S_IFDIR | rootMode,
                               uid: rootUID, gid: rootGID, parent: 1, name: FileName("/"), creatorPID: getpid())
        root.lookups = 1 << 40  // the root is never forgotten
        inodes[1] = root
    }

    func record(_ inode: InodeNumber) throws(Errno) -> InodeRecord {
        guard let record = inodes[inode] else { throw .noSuchFileOrDirectory }
        return record
    }

    func directory(_ inode: InodeNumber) throws(Errno) -> InodeRecord {
        let record = try record(inode)
        guard record.isDirectory else { throw .notDirectory }
        return record
    }

    func child(_ parent: InodeNumber, _ name: FileName) throws(Errno) -> InodeRecord {
        guard let inode = try directory(parent).children[name], let record = inodes[inode] else {
            throw .noSuchFileOrDirectory
        }
        return record
    }

    mutating func allocateInode() -> InodeNumber {
        defer { nextInode += 1 }
        return nextInode
    }

    /// Drops an inode once it has no name, no kernel reference and no open handle.
    mutating func collect(_ inode: InodeNumber) {
        guard inode != 1, let record = inodes[inode] else { return }
        let unlinked = record.isDirectory ? record.linkCount <= 1 : record.linkCount == 0
        if unlinked && record.lookups == 0 && record.openHandles == 0 {
            xattrBytes -= min(xattrBytes, record.xattrBytes)
            changeOwner(of: record, to: nil)
            inodes[inode] = nil
        }
    }

    /// Moves an inode's count in `filesByUser` from its owner to `uid` (nil:
    /// the inode goes away) and sets its owner.
    mutating func changeOwner(of record: InodeRecord, to uid: UInt32?) {
        guard record.number != 1 else {
            if let uid { record.uid = uid }
            return
        }
        if let count = filesByUser[record.uid] {
            filesByUser[record.uid] = count > 1 ? count - 1 : nil
        }
        guard let uid else { return }
        record.uid = uid
        filesByUser[uid, default: 0] += 1
    }

    /// The full path of an inode inside the mount, for stats ("/dir/file").
    func path(of inode: InodeNumber) -> String {
        var parts: [String] = []
        var current = inode
        var guardCount = 0
        while current != 1, let record = inodes[current], guardCount < 4096 {
            parts.append(record.name.description)
            current = record.parent
            guardCount += 1
        }
        return "/" + parts.reversed().joined(separator: "/")
    }
}

/// A file name the filesystem accepts: what Linux accepts (no '/', no NUL,
/// not "." or "..", at most 255 bytes).
func validateName(_ name: FileName) throws(Errno) {
    let bytes = name.bytes
    if bytes.isEmpty || bytes == [46] || bytes == [46, 46] || bytes.contains(47) || bytes.contains(0) {
        throw .invalidArgument
    }
    if bytes.count > 255 { throw .fileNameTooLong }
}
