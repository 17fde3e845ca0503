import FBMMCore
import FBMMPolicy
import FUSEKit

#if canImport(Glibc)
import Glibc
#endif

/// One node of the namespace: a directory, a regular file (memory), or a
/// special file (fifo/socket, metadata only).
/// Mutable state; only ever touched under `MemoryFileSystem.state`'s lock.
final class InodeRecord {
    enum Content {
        case directory(children: [FileName: InodeNumber])
        case regular(FileBacking)
        case special(device: UInt64)
    }

    let number: InodeNumber
    var content: Content
    var mode: UInt32
    var uid: UInt32
    var gid: UInt32
    var linkCount: UInt32
    var accessTime: timespec
    var modificationTime: timespec
    var changeTime: timespec
    var xattrs: [String: [UInt8]] = [:]
    /// Bytes of names and values in `xattrs` (bounded per file and per mount).
    var xattrBytes: UInt64 = 0
    /// The kernel's lookup count: the inode must live until it drops to zero.
    var lookups: UInt64 = 0
    /// Open handles, and how many of them can write.
    var openHandles = 0
    var writableHandles = 0
    /// Opens ever (create counts as one): a file may become an arena only
    /// while the handle that created it is the only one it ever had.
    var opens = 0
    /// The process shown by `fbmm stat`: the creator's FUSE thread id until
    /// an arena is claimed, then the claiming process's tgid (SO_PEERCRED).
    var creatorPID: Int32
    /// Set when its creator claimed it as its arena through the broker
    /// (FBMM_BACKING_ARENA): the file then lives as long as that process
    /// holds it open.
    var processOwned = false
    /// Created by a shim for its arena and not claimed yet (FUSE create with
    /// the sticky bit, its name carrying the creator's pid): if the creator
    /// lets go before claiming it (it died in between), the file goes as a
    /// claimed arena would, instead of staying behind empty.
    var provisionalArena = false
    /// A policy override set with the `user.fbmm.policy` xattr (directories:
    /// inherited by files created in them).
    var policySpec: PolicySpec?
    /// Directory parent (for "..") and the name under which it was created.
    var parent: InodeNumber
    var name: FileName

    init(number: InodeNumber, content: Content, mode: UInt32, uid: UInt32, gid: UInt32,
         parent: InodeNumber, name: FileName, creatorPID: Int32) {
        self.number = number
        self.content = content
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.parent = parent
        self.name = name
        self.creatorPID = creatorPID
        if case .directory = content { linkCount = 2 } else { linkCount = 1 }
        let now = currentTime()
        accessTime = now
        modificationTime = now
        changeTime = now
    }

    var isDirectory: Bool { if case .directory = content { return true } else { return false } }
    var backing: FileBacking? { if case .regular(let b) = content { return b } else { return nil } }

    /// A directory's entries. `_modify` moves the dictionary out of the
    /// enum while it is changed: with get/set, `children[name] = n` copied the
    /// whole dictionary (the enum still held it), so each create in a
    /// directory of n files cost O(n) — 1 ms per create at 20,000 files.
    var children: [FileName: InodeNumber] {
        get { if case .directory(let c) = content { return c } else { return [:] } }
        set { if isDirectory { content = .directory(children: newValue) } }
        _modify {
            guard case .directory(var c) = content else {
                var scratch: [FileName: InodeNumber] = [:]
                yield &scratch
                return
            }
            content = .directory(children: [:])  // drop the enum's reference: c is now unique
            defer { content = .directory(children: c) }
            yield &c
        }
    }

    func touchModified() {
        let now = currentTime()
        modificationTime = now
        changeTime = now
    }

    /// The attributes the kernel sees. Sizes come from the memfd, which a
    /// process holding it may have changed behind FUSE's back.
    func attributes() -> stat {
        var st = stat()
        st.st_ino = ino_t(number)
        st.st_mode = mode
        st.st_nlink = nlink_t(linkCount)
        st.st_uid = uid
        st.st_gid = gid
        st.st_blksize = blksize_t(pageSize)
        st.st_atim = accessTime
        st.st_mtim = modificationTime
        st.st_ctim = changeTime
        switch content {
        case .directory(let children):
            st.st_size = off_t(4096 + 0 * children.count)
            st.st_blocks = 8
        case .regular(let backing):
            let extent = backing.extent()
            st.st_size = off_t(extent.size)
            st.st_blocks = blkcnt_t(extent.allocated / 512)
        case .special(let device):
            st.st_rdev = dev_t(device)
        }
        return st
    }
}

/// A regular file as code outside the namespace lock may hold it: what it
/// was when copied under the lock (number, name, owner) and its backing,
/// which is thread-safe. Records themselves never leave the lock (they are
/// not Sendable, so the compiler checks that).
struct FileRef: Sendable {
    let inode: InodeNumber
    let name: String
    let uid: UInt32
    let backing: FileBacking

    init(_ record: InodeRecord, _ backing: FileBacking) {
        inode = record.number
        name = record.name.description
        uid = record.uid
        self.backing = backing
    }

    func context(size: UInt64) -> FileContext { FileContext(inode: inode, name: name, size: size) }
}

func currentTime() -> timespec {
    var now = timespec()
    clock_gettime(CLOCK_REALTIME, &now)
    return now
}
