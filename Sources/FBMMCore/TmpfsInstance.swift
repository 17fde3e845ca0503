import CFBMMSys
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// The daemon's own tmpfs, mounted nowhere (fsopen/fsconfig/fsmount): the
/// backing of every file of a mount where the kernel allows it.
///
/// Why not memfds: a memfd lives on the kernel's internal shm mount, whose
/// huge-page setting is the system-wide `shmem_enabled` (often `never`), so
/// a program under the shim loses the huge pages it gets natively; and the
/// kernel enforces no limit on what a process holding a memfd allocates. A
/// tmpfs instance has its own `huge=` (honoured whatever `shmem_enabled`
/// says, except its emergency values `deny` and `force`) and its own
/// `size=`, enforced whoever allocates. It goes away with the daemon's last
/// reference; nothing appears in /proc/mounts.
public final class TmpfsInstance: Sendable {
    public let mountDescriptor: Int32
    /// The options it was made with ("size=...,huge=...").
    public let options: String
    public let huge: HugePageMode

    /// `size`: bytes the instance may hold (nil: all of RAM, "100%").
    /// `noSwap`: its pages are never swapped out (tmpfs `noswap`, 6.4+; an
    /// older kernel refuses the option, and the error names it).
    /// `userQuota`: each user's files together hold at most this many bytes
    /// (tmpfs `usrquota_block_hardlimit`, 6.6+); backing files must then
    /// belong to their users (`newFile(owner:)`).
    public init(size: UInt64?, huge: HugePageMode, noSwap: Bool = false, userQuota: UInt64? = nil) throws(SystemError) {
        // huge=always is `advise` on the instance, with the shim marking every
        // mapping of 2 MiB or more MADV_HUGEPAGE: on an `always` tmpfs a write
        // through the file (the daemon's copy-on-write push) allocates a huge
        // folio and so fills the holes around it, which a lazy fork copy
        // still needs to fault on (found by poolcheck/cowfork on huge=always).
        let tmpfsHuge = huge == .never ? "never" : "advise"
        var options = "size=\(size.map { String(max($0, UInt64(pageSize))) } ?? "100%"),huge=\(tmpfsHuge),mode=0700"
        options += ",nr_inodes=0"  // files are bounded by the mount's max-files, not by tmpfs
        if noSwap { options += ",noswap" }
        if let userQuota { options += ",usrquota,usrquota_block_hardlimit=\(max(userQuota, UInt64(pageSize)))" }
        var refused: UnsafePointer<CChar>?
        let fd = fbmm_tmpfs_mount(options, &refused)
        guard fd >= 0 else {
            let e = Errno(rawValue: errno)
            throw SystemError("fsmount(tmpfs)", refused.map { "option \(String(cString: $0))" } ?? options, errno: e)
        }
        mountDescriptor = fd
        self.options = options
        self.huge = huge
        self.userQuota = userQuota
    }

    /// Whether the kernel enforces a per-user quota on this instance.
    public let userQuota: UInt64?

    deinit { close(mountDescriptor) }

    /// A new empty file that keeps its name on the instance: the daemon may
    /// close it while idle and `reopen` it (FileBacking's parking); `remove`
    /// frees it. With a user quota it is owned by `owner`, so its pages
    /// count against that user.
    public func newNamedFile(owner: (uid: UInt32, gid: UInt32)? = nil) throws(SystemError) -> (FileDescriptor, String) {
        var name = [CChar](repeating: 0, count: 64)
        let fd = try retryingSyscall("openat(tmpfs instance)", options) { fbmm_tmpfs_named_file(mountDescriptor, &name) }
        let file = FileDescriptor(rawValue: fd)
        let text = String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        if userQuota != nil, let owner {
            do { try chown(file, to: owner) } catch { try? file.close(); remove(text); throw error }
        }
        return (file, text)
    }

    /// Opens a named file of the instance again.
    public func reopen(_ name: String) throws(SystemError) -> FileDescriptor {
        let fd = try retryingSyscall("openat(tmpfs instance)", name) {
            openat(mountDescriptor, name, O_RDWR | O_CLOEXEC | O_NOFOLLOW)
        }
        return FileDescriptor(rawValue: fd)
    }

    /// Size and allocated bytes of a named file, without opening it (nil: gone).
    public func extent(of name: String) -> (size: UInt64, allocated: UInt64)? {
        var st = stat()
        guard fstatat(mountDescriptor, name, &st, AT_SYMLINK_NOFOLLOW) == 0 else { return nil }
        return (UInt64(st.st_size), UInt64(st.st_blocks) * 512)
    }

    /// Frees a named file (its memory goes with its last open descriptor or mapping).
    public func remove(_ name: String) {
        unlinkat(mountDescriptor, name, 0)
    }

    /// A backing file changes hands (chown in the mount): its pages follow.
    public func chown(_ file: FileDescriptor, to owner: (uid: UInt32, gid: UInt32)) throws(SystemError) {
        guard userQuota != nil else { return }
        guard fchown(file.rawValue, owner.uid, owner.gid) == 0 else {
            throw SystemError("fchown(tmpfs file)", "uid \(owner.uid)", errno: Errno(rawValue: errno))
        }
    }
}

extension HugePageMode {
    /// What the host gives anonymous memory (/sys/kernel/mm/transparent_hugepage/enabled):
    /// `always` -> always, `madvise` -> advise, `never` -> never. The mount's
    /// file memory follows it unless `-o huge=` says otherwise.
    public static func hostAnonymous() -> HugePageMode {
        switch readText("\(ShmemHugePageSupport.directory)/enabled").flatMap(ShmemHugePageSupport.selected) {
        case "always": return .always
        case "never": return .never
        default: return .advise
        }
    }
}
