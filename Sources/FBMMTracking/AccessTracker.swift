import CFBMMSys
import CNuma
import FBMMCore
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

// Access tracking: which pages of a process-owned file a process has used
// lately, without kernel changes. The daemon does not map pages itself for the
// app; it finds the app's own mappings of the backing file (`/proc/PID/maps`
// lists them as `/memfd:NAME (deleted)`, or `/fbmm-backing.N.PID (deleted)`
// for a file on the daemon's private tmpfs, with device, inode and offset) and
// asks the kernel about those virtual addresses. See PRIOR_ART.md, "Hot-page
// detection without kernel changes".

/// One file to track: the process that maps it and the backing file's identity.
public struct TrackedFile: Sendable, Hashable {
    /// The caller's key for the file (the daemon uses its inode number).
    public var key: UInt64
    public var pid: Int32
    /// st_ino of the backing file (memfd or private tmpfs file), as
    /// /proc/PID/maps shows it.
    public var inode: UInt64
    /// Its st_dev (nil: any device; inodes are unique per filesystem only).
    public var device: UInt64?
    /// Pages in the file (results are this long).
    public var pageCount: Int

    public init(key: UInt64, pid: Int32, inode: UInt64, device: UInt64? = nil, pageCount: Int) {
        self.key = key
        self.pid = pid
        self.inode = inode
        self.device = device
        self.pageCount = pageCount
    }
}

/// One VMA of a process that maps a file: [start, end) at `fileOffset`.
public struct VMA: Sendable, Hashable {
    public var start: UInt64
    public var end: UInt64
    public var fileOffset: UInt64
    public var inode: UInt64
    public var device: UInt64
    public var path: String

    /// Whether this VMA maps the tracked file.
    public func maps(_ file: TrackedFile) -> Bool {
        inode == file.inode && (file.device == nil || device == file.device)
    }

    /// Parses /proc/PID/maps text; keeps mappings of backing files only
    /// (memfds, `/memfd:...`, and the private tmpfs's `/fbmm-backing....`).
    public static func backingMappings(inMaps text: String) -> [VMA] {
        var result: [VMA] = []
        for line in text.split(separator: "\n") {
            let fields = line.split(separator: " ", maxSplits: 5, omittingEmptySubsequences: true)
            guard fields.count == 6 else { continue }
            let path = fields[5].drop(while: { $0 == " " })
            guard path.hasPrefix("/memfd:") || path.hasPrefix("/fbmm-backing.") else { continue }
            let bounds = fields[0].split(separator: "-")
            guard bounds.count == 2, let start = UInt64(bounds[0], radix: 16), let end = UInt64(bounds[1], radix: 16),
                  let offset = UInt64(fields[2], radix: 16), let inode = UInt64(fields[4]),
                  let device = deviceNumber(hexPair: fields[3]) else { continue }
            result.append(VMA(start: start, end: end, fileOffset: offset, inode: inode, device: device, path: String(path)))
        }
        return result
    }

    public static func backingMappings(pid: Int32) -> [VMA] {
        guard let text = readText("/proc/\(pid)/maps") else { return [] }
        return backingMappings(inMaps: text)
    }
}

/// Which tracker to use (`tracker=` key).
public enum TrackerKind: String, Sendable, CaseIterable {
    case auto, softdirty, damon, refault

    /// What `auto` picks on the running kernel: DAMON when its sysfs admin
    /// interface exists and nobody else is using it (it sees reads as well as
    /// writes); else refault sampling (Debian 12's 6.1: no DAMON; it sees
    /// reads and writes, and needs no active swap); else soft-dirty (writes
    /// only).
    public static func resolveAuto() -> TrackerKind {
        DamonTracker.isAvailable ? .damon : RefaultTracker.isAvailable ? .refault
            : SoftDirtyTracker.isAvailable ? .softdirty : .auto
    }

    /// What this choice amounts to on the running kernel and what it cannot
    /// see (said when a tiered mount starts and by `fbmm policies`).
    public var consequence: String {
        switch self == .auto ? Self.resolveAuto() : self {
        case .damon: return "damon: sees reads and writes, by region (DAMON's adaptive regions, not single pages)"
        case .refault:
            return "refault: sees reads and writes (reads by 64 KiB) by taking sampled pages out of the page table and watching them come back; pauses while swap is active"
        case .softdirty:
            if !DamonTracker.isAvailable && fbmm_swap_active() != 0 {
                return "softdirty: sees writes only, so a hot set that is only read is never promoted (this kernel has no DAMON, and refault sampling needs swap off)"
            }
            return "softdirty: sees writes only, so a hot set that is only read is never promoted (this kernel has no DAMON)"
        case .auto:
            return "none: this kernel has neither DAMON nor soft-dirty, so nothing is promoted or demoted; pages stay where first placed"
        }
    }

    /// Kinds the running kernel offers (for `fbmm policies`).
    public static var available: [TrackerKind] {
        var kinds: [TrackerKind] = []
        if SoftDirtyTracker.isAvailable { kinds.append(.softdirty) }
        if DamonTracker.isAvailable { kinds.append(.damon) }
        if RefaultTracker.isAvailable { kinds.append(.refault) }
        return kinds
    }

    public func makeTracker() -> any AccessTracker {
        switch self == .auto ? Self.resolveAuto() : self {
        case .damon: return DamonTracker()
        case .softdirty: return SoftDirtyTracker()
        case .refault: return RefaultTracker()
        case .auto: return NoTracker()
        }
    }
}

/// What `auto` gets on a kernel with neither tracker: nothing is ever hot, so
/// the tiered policy only places and keeps the fast node within capacity.
public final class NoTracker: AccessTracker {
    public let name = "none"
    public init() {}
    public func scan(_ files: [TrackedFile]) -> [UInt64: [UInt8]] { [:] }
    public var cpuSeconds: Double { 0 }
    public func stop() {}
}

/// Finds the pages a process used lately. One `scan` per maintenance pass.
public protocol AccessTracker: AnyObject, Sendable {
    var name: String { get }
    /// Per file key: per page, how often it was found accessed during this
    /// scan, 0 (never) ... 255 (in every sample). Pages not mapped by the
    /// process read 0. Files whose process cannot be inspected are left out.
    func scan(_ files: [TrackedFile]) -> [UInt64: [UInt8]]
    /// CPU seconds spent on tracking so far, in this process and in kernel
    /// threads the tracker started.
    var cpuSeconds: Double { get }
    /// Releases kernel resources (DAMON contexts).
    func stop()
    /// Why the tracker cannot see anything now (nil: it can). A scan while
    /// paused reports nothing, which must not be read as "all cold".
    var pausedReason: String? { get }
}

extension AccessTracker {
    public var pausedReason: String? { nil }
}

/// Each file with its process's mappings of it, read once per scan (one
/// /proc/PID/maps per process); files their process does not map are left
/// out. For the trackers that sample pages by virtual address.
func mappedFiles(_ files: [TrackedFile]) -> [(file: TrackedFile, vmas: [VMA])] {
    var targets: [(file: TrackedFile, vmas: [VMA])] = []
    for (pid, group) in Dictionary(grouping: files, by: \.pid) {
        let vmas = VMA.backingMappings(pid: pid)
        for file in group {
            let mine = vmas.filter { $0.maps(file) }
            if !mine.isEmpty { targets.append((file, mine)) }
        }
    }
    return targets
}

/// A sampling window adapted to what the last scan's samples saw: halved
/// (down to `shortest`) when over 40% of the sampled pages were used,
/// doubled (up to 200 ms) under 2%, so samples neither saturate nor come
/// back empty.
func adaptedWindow(_ window: Double, used: Int, of sampled: Int, shortest: Double) -> Double {
    guard sampled > 0 else { return window }
    let share = Double(used) / Double(sampled)
    if share > 0.4 { return max(shortest, window / 2) }
    if share < 0.02 { return min(0.2, window * 2) }
    return window
}

/// Writes `text` to a sysfs or procfs file (DAMON's knobs, clear_refs).
func writeText(_ path: String, _ text: String) -> Bool {
    let fd = open(path, O_WRONLY | O_CLOEXEC)
    guard fd >= 0 else { return false }
    defer { close(fd) }
    let bytes = Array(text.utf8)
    return write(fd, bytes, bytes.count) == bytes.count
}

extension String {
    var trimmed: String {
        var s = Substring(self)
        while let c = s.last, c.isWhitespace { s = s.dropLast() }
        while let c = s.first, c.isWhitespace { s = s.dropFirst() }
        return String(s)
    }
    var asUInt64: UInt64? { UInt64(self) }
}
