import CFBMMSys
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// An anonymous shared-memory file: the backing store of one fbmm file. A
/// file of the daemon's tmpfs instance where it has one (TmpfsInstance.swift),
/// a memfd otherwise.
///
/// Why a memfd and not the FUSE file's page cache: shmem honours a per-file
/// shared memory policy (set with mbind on any mapping of it), so pages faulted
/// by *any* process that maps the file land where the policy says. The page
/// cache of a FUSE file cannot be placed by the filesystem.
public final class MemoryFile: Sendable {
    public let descriptor: FileDescriptor
    public let name: String
    /// A memfd made sealable; a file of a tmpfs instance cannot be sealed
    /// (its holder can shrink it: see fbmm_tmpfs.h's guard).
    public let sealable: Bool
    /// Its name on the tmpfs instance (it can be opened again there after
    /// this descriptor is closed); nil for a memfd.
    public let instanceName: String?

    /// Creates a new, empty, close-on-exec memfd (sealable, see `sealAgainstShrinking`).
    public init(name: String) throws(SystemError) {
        // The name only labels the memfd in /proc; the kernel takes at most
        // 249 bytes (NAME_MAX less "memfd:") and a file may have 255.
        let label = Self.label(name)
        let fd = try retryingSyscall("memfd_create", name) {
            fbmm_memfd_create(label, UInt32(fbmm_memfd_flag_cloexec() | fbmm_memfd_flag_allow_sealing()))
        }
        self.descriptor = FileDescriptor(rawValue: fd)
        self.name = name
        sealable = true
        instanceName = nil
    }

    /// A new, empty file on the daemon's tmpfs instance, keeping a name there
    /// (`reopening`; `TmpfsInstance.remove` frees it).
    public init(name: String, on instance: TmpfsInstance, owner: (uid: UInt32, gid: UInt32)? = nil) throws(SystemError) {
        (descriptor, instanceName) = try instance.newNamedFile(owner: owner)
        self.name = name
        sealable = false
    }

    /// The named file `instanceName` of the tmpfs instance, opened again.
    public init(reopening instanceName: String, name: String, on instance: TmpfsInstance) throws(SystemError) {
        descriptor = try instance.reopen(instanceName)
        self.instanceName = instanceName
        self.name = name
        sealable = false
    }

    deinit { try? descriptor.close() }

    /// `name` cut to the whole characters that fit in a memfd name.
    static func label(_ name: String) -> String {
        let most = 249
        guard name.utf8.count > most else { return name }
        var label = ""
        var bytes = 0
        for scalar in name.unicodeScalars {
            let size = String(scalar).utf8.count
            if bytes + size > most { break }
            label.unicodeScalars.append(scalar)
            bytes += size
        }
        return label
    }

    private var context: String { "\(sealable ? "memfd" : "tmpfs file") '\(name)'" }

    /// From now on nobody can make the file shorter, not even a process that
    /// was handed the memfd: a lasting daemon mapping of it then never reaches
    /// past its end (which would be SIGBUS in the daemon).
    public func sealAgainstShrinking() throws(SystemError) {
        _ = try retryingSyscall("fcntl(F_ADD_SEALS, F_SEAL_SHRINK)", context) { fbmm_seal_shrink(descriptor.rawValue) }
    }

    /// The size and the bytes of memory actually allocated (st_blocks * 512),
    /// from one fstat (the memfd is the source of truth: a process holding
    /// the fd may have changed either).
    public func extent() throws(SystemError) -> (size: UInt64, allocated: UInt64) {
        var st = stat()
        _ = try retryingSyscall("fstat", context) { fstat(descriptor.rawValue, &st) }
        return (UInt64(st.st_size), UInt64(st.st_blocks) * 512)
    }

    /// The current size in bytes.
    public func size() throws(SystemError) -> UInt64 { try extent().size }

    /// Bytes of memory actually allocated to the file.
    public func allocatedBytes() throws(SystemError) -> UInt64 { try extent().allocated }

    /// Sets the size; shrinking frees the memory past the new end.
    public func resize(to size: UInt64) throws(SystemError) {
        guard size <= UInt64(Int64.max) else { throw SystemError("ftruncate", context, errno: .fileTooLarge) }
        _ = try retryingSyscall("ftruncate(\(size))", context) { ftruncate(descriptor.rawValue, off_t(size)) }
    }

    /// Frees the memory of a range; it reads back as zeros afterwards.
    public func punchHole(offset: UInt64, length: UInt64) throws(SystemError) {
        guard length > 0 else { return }
        _ = try retryingSyscall("fallocate(PUNCH_HOLE, \(offset), \(length))", context) {
            fbmm_punch_hole(descriptor.rawValue, off_t(offset), off_t(length))
        }
    }

    /// `fallocate(2)` with the caller's mode bits (0 allocates and may grow the file).
    public func allocate(mode: Int32, offset: UInt64, length: UInt64) throws(SystemError) {
        _ = try retryingSyscall("fallocate(mode \(mode), \(offset), \(length))", context) {
            fbmm_fallocate(descriptor.rawValue, mode, off_t(offset), off_t(length))
        }
    }

    /// The ranges that hold data (allocated pages), found with SEEK_DATA/SEEK_HOLE,
    /// clipped to `range`. Stats and migration must only touch these: faulting a
    /// hole in through a shared mapping would allocate it.
    public func dataRanges(in range: Range<UInt64>? = nil) throws(SystemError) -> [Range<UInt64>] {
        let end: UInt64
        if let range { end = range.upperBound } else { end = try size() }
        var offset = range?.lowerBound ?? 0
        var result: [Range<UInt64>] = []
        while offset < end {
            let data = fbmm_seek_data(descriptor.rawValue, off_t(offset))
            if data < 0 {
                if Glibc.errno == ENXIO { break }
                throw SystemError.current("lseek(SEEK_DATA, \(offset))", context)
            }
            if UInt64(data) >= end { break }
            let hole = fbmm_seek_hole(descriptor.rawValue, data)
            if hole < 0 { throw SystemError.current("lseek(SEEK_HOLE, \(data))", context) }
            let upper = min(UInt64(hole), end)
            result.append(UInt64(data)..<upper)
            offset = upper
        }
        return result
    }

    /// Reads up to `count` bytes at `offset` (short at end of file).
    public func read(at offset: UInt64, count: Int) throws(SystemError) -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: count)
        var done = 0
        let fd = descriptor.rawValue
        while done < count {
            let n = buffer.withUnsafeMutableBytes { raw in
                pread(fd, raw.baseAddress! + done, count - done, off_t(offset) + off_t(done))
            }
            if n < 0 {
                if Glibc.errno == EINTR { continue }
                throw SystemError.current("pread(\(offset + UInt64(done)))", context)
            }
            if n == 0 { break }
            done += n
        }
        buffer.removeLast(count - done)
        return buffer
    }

    /// Writes all of `bytes` at `offset`, growing the file as needed.
    public func write(_ bytes: UnsafeRawBufferPointer, at offset: UInt64) throws(SystemError) {
        var done = 0
        while done < bytes.count {
            let n = try retryingSyscall("pwrite(\(offset + UInt64(done)))", context) {
                pwrite(descriptor.rawValue, bytes.baseAddress! + done, bytes.count - done, off_t(offset) + off_t(done))
            }
            done += n
        }
    }

    /// Maps `range` of the file shared into this process.
    public func map(_ range: Range<UInt64>) throws(SystemError) -> FileMapping {
        try FileMapping(file: self, range: range)
    }
}
