import CNuma
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

// Access tracking: which pages of a process-owned file a process has used
// lately, without kernel changes. The daemon does not map pages itself for the
// app; it finds the app's own mappings of the memfd (`/proc/PID/maps` lists
// them as `/memfd:NAME (deleted)` with the memfd's inode and file offset) and
// asks the kernel about those virtual addresses. See PRIOR_ART.md, "Hot-page
// detection without kernel changes".

/// One file to track: the process that maps it and the memfd's inode.
public struct TrackedFile: Sendable, Hashable {
    /// The caller's key for the file (the daemon uses its inode number).
    public var key: UInt64
    public var pid: Int32
    /// st_ino of the memfd, as /proc/PID/maps shows it.
    public var memfdInode: UInt64
    /// Pages in the file (results are this long).
    public var pageCount: Int

    public init(key: UInt64, pid: Int32, memfdInode: UInt64, pageCount: Int) {
        self.key = key
        self.pid = pid
        self.memfdInode = memfdInode
        self.pageCount = pageCount
    }
}

/// One VMA of a process that maps a file: [start, end) at `fileOffset`.
public struct VMA: Sendable, Hashable {
    public var start: UInt64
    public var end: UInt64
    public var fileOffset: UInt64
    public var inode: UInt64
    public var path: String

    /// Parses /proc/PID/maps text; keeps memfd mappings only (`/memfd:...`).
    public static func memfdMappings(inMaps text: String) -> [VMA] {
        var result: [VMA] = []
        for line in text.split(separator: "\n") {
            let fields = line.split(separator: " ", maxSplits: 5, omittingEmptySubsequences: true)
            guard fields.count == 6 else { continue }
            let path = fields[5].drop(while: { $0 == " " })
            guard path.hasPrefix("/memfd:") else { continue }
            let bounds = fields[0].split(separator: "-")
            guard bounds.count == 2, let start = UInt64(bounds[0], radix: 16), let end = UInt64(bounds[1], radix: 16),
                  let offset = UInt64(fields[2], radix: 16), let inode = UInt64(fields[4]) else { continue }
            result.append(VMA(start: start, end: end, fileOffset: offset, inode: inode, path: String(path)))
        }
        return result
    }

    public static func memfdMappings(pid: Int32) -> [VMA] {
        guard let text = readText("/proc/\(pid)/maps") else { return [] }
        return memfdMappings(inMaps: text)
    }
}

/// Which tracker to use (`tracker=` key).
public enum TrackerKind: String, Sendable, CaseIterable {
    case auto, softdirty, damon

    /// What `auto` picks on the running kernel: DAMON when its sysfs admin
    /// interface exists and nobody else is using it (it sees reads as well as
    /// writes), else soft-dirty (Debian 12's 6.1 has it; it sees writes only).
    public static func resolveAuto() -> TrackerKind {
        DamonTracker.isAvailable ? .damon : SoftDirtyTracker.isAvailable ? .softdirty : .auto
    }

    /// Kinds the running kernel offers (for `fbmm policies`).
    public static var available: [TrackerKind] {
        var kinds: [TrackerKind] = []
        if SoftDirtyTracker.isAvailable { kinds.append(.softdirty) }
        if DamonTracker.isAvailable { kinds.append(.damon) }
        return kinds
    }

    public func makeTracker() -> any AccessTracker {
        switch self == .auto ? Self.resolveAuto() : self {
        case .damon: return DamonTracker()
        case .softdirty: return SoftDirtyTracker()
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
}

/// CPU time of the calling thread, in seconds.
public func threadCPUSeconds() -> Double { clockSeconds(CLOCK_THREAD_CPUTIME_ID) }

/// Seconds on the monotonic clock (intervals, deadlines, timing).
public func monotonicSeconds() -> Double { clockSeconds(CLOCK_MONOTONIC) }

private func clockSeconds(_ clock: clockid_t) -> Double {
    var ts = timespec()
    clock_gettime(clock, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

func writeText(_ path: String, _ text: String) -> Bool {
    let fd = open(path, O_WRONLY | O_CLOEXEC)
    guard fd >= 0 else { return false }
    defer { close(fd) }
    let bytes = Array(text.utf8)
    return write(fd, bytes, bytes.count) == bytes.count
}

// MARK: - soft-dirty

/// Soft-dirty tracking: `echo 4 > /proc/PID/clear_refs` write-protects the
/// process's pages and clears their soft-dirty bits; the first write to a
/// page afterwards faults and sets bit 55 of its `/proc/PID/pagemap` entry.
/// Each scan takes a few short samples (clear, wait a window, read) and
/// reports per page the share of samples in which it was written, so a page
/// written at 1000/s is told apart from one written at 10/s. The window adapts
/// so that samples neither saturate nor come back empty. Sees writes only;
/// clearing applies to the whole process (a program that uses soft-dirty
/// itself, like CRIU, would be disturbed).
public final class SoftDirtyTracker: AccessTracker {
    public let name = "softdirty"
    /// A kernel with CONFIG_MEM_SOFT_DIRTY marks new VMAs soft-dirty ("sd" in
    /// smaps VmFlags); without it clear_refs 4 is accepted and does nothing.
    public static let isAvailable: Bool = {
        guard access("/proc/self/clear_refs", F_OK) == 0, let smaps = readText("/proc/self/smaps") else { return false }
        return smaps.split(separator: "\n").contains { $0.hasPrefix("VmFlags:") && $0.split(separator: " ").contains("sd") }
    }()

    private struct State {
        var window: Double = 0.010
        var cpu: Double = 0
    }
    private let state = Locked(State())
    public let samples: Int

    public init(samples: Int = 4) { self.samples = samples }

    public var cpuSeconds: Double { state.withLock { $0.cpu } }
    public var window: Double { state.withLock { $0.window } }
    public func stop() {}

    public func scan(_ files: [TrackedFile]) -> [UInt64: [UInt8]] {
        let started = threadCPUSeconds()
        var window = state.withLock { $0.window }
        let byPID = Dictionary(grouping: files, by: \.pid)
        // The VMAs of each file, found once per scan.
        var targets: [(file: TrackedFile, vmas: [VMA])] = []
        for (pid, group) in byPID {
            let vmas = VMA.memfdMappings(pid: pid)
            for file in group {
                let mine = vmas.filter { $0.inode == file.memfdInode }
                if !mine.isEmpty { targets.append((file, mine)) }
            }
        }
        var counts: [UInt64: [UInt8]] = [:]
        for target in targets { counts[target.file.key] = [UInt8](repeating: 0, count: target.file.pageCount) }
        let pids = Set(targets.map(\.file.pid))
        var pagemaps: [Int32: Int32] = [:]
        for pid in pids {
            let fd = open("/proc/\(pid)/pagemap", O_RDONLY | O_CLOEXEC)
            if fd >= 0 { pagemaps[pid] = fd }
        }
        defer { for fd in pagemaps.values { close(fd) } }
        var tracked = 0, dirty = 0
        var sleptCPU = 0.0
        for _ in 0..<samples {
            for pid in pids { _ = writeText("/proc/\(pid)/clear_refs", "4") }
            let beforeSleep = threadCPUSeconds()
            usleep(useconds_t(window * 1e6))
            sleptCPU += threadCPUSeconds() - beforeSleep
            for target in targets {
                guard let fd = pagemaps[target.file.pid] else { continue }
                counts[target.file.key]!.withUnsafeMutableBufferPointer { out in
                    for vma in target.vmas {
                        let entries = Self.readPagemap(fd, vma)
                        let first = Int(vma.fileOffset / UInt64(pageSize))
                        let n = min(entries.count, out.count - first)
                        guard n > 0 else { continue }
                        entries.withUnsafeBufferPointer { e in
                            for i in 0..<n {
                                let entry = e[i]
                                if entry & (1 << 63) == 0 { continue }  // not present
                                tracked += 1
                                if entry & (1 << 55) != 0 { out[first + i] &+= 1; dirty += 1 }
                            }
                        }
                    }
                }
            }
        }
        // Scale counts to 0...255.
        var result: [UInt64: [UInt8]] = [:]
        for (key, array) in counts {
            result[key] = array.map { UInt8(min(255, Int($0) * 255 / max(1, samples))) }
        }
        // Adapt the window: aim for a dirty share between 2% and 40% of present pages.
        if tracked > 0 {
            let share = Double(dirty) / Double(tracked)
            if share > 0.4 { window = max(0.001, window / 2) } else if share < 0.02 { window = min(0.2, window * 2) }
        }
        let spent = threadCPUSeconds() - started - sleptCPU
        state.withLock {
            $0.window = window
            $0.cpu += max(0, spent)
        }
        return result
    }

    static func readPagemap(_ fd: Int32, _ vma: VMA) -> [UInt64] {
        let page = UInt64(pageSize)
        let count = Int((vma.end - vma.start) / page)
        var entries = [UInt64](repeating: 0, count: count)
        let offset = off_t(vma.start / page * 8)
        let read = entries.withUnsafeMutableBytes { raw in pread(fd, raw.baseAddress, raw.count, offset) }
        if read < 0 { return [] }
        if read / 8 < count { entries.removeLast(count - read / 8) }
        return entries
    }
}

// MARK: - DAMON

/// DAMON (6.x, `/sys/kernel/mm/damon/admin`): one kdamond per tracked process
/// monitors its virtual address space (vaddr operations: sampled accessed
/// bits, adaptive regions). A `stat` scheme over every region makes the
/// kernel publish the regions with their access counts; each scan asks for a
/// fresh snapshot (`update_schemes_tried_regions`) and maps each region's
/// `nr_accesses` (out of aggregation/sampling samples) onto the file pages its
/// memfd VMAs cover. Sees reads and writes; region-granular; costs the
/// kdamond threads' CPU, which is counted.
public final class DamonTracker: AccessTracker {
    public let name = "damon"
    static let root = "/sys/kernel/mm/damon/admin/kdamonds"
    public static let sampleMicroseconds = 5_000
    public static let aggregateMicroseconds = 100_000

    /// The admin interface exists, we may write it, and no kdamond is in use.
    public static var isAvailable: Bool {
        guard access("\(root)/nr_kdamonds", W_OK) == 0 else { return false }
        return readText("\(root)/nr_kdamonds")?.trimmed == "0"
    }

    private struct State {
        var pids: [Int32] = []
        var kdamondCPU: [Int32: Double] = [:]  // kdamond thread pid -> last seen CPU seconds
        var cpu: Double = 0
        var failures = 0
    }
    private let state = Locked(State())

    public init() {}

    public var cpuSeconds: Double { state.withLock { $0.cpu } }

    public func stop() {
        state.withLock { s in
            Self.accountKdamonds(&s)
            Self.turnOff(count: s.pids.count)
            _ = writeText("\(Self.root)/nr_kdamonds", "0")
            s.pids = []
        }
    }

    private static func turnOff(count: Int) {
        for i in 0..<count where readText("\(root)/\(i)/state")?.trimmed == "on" {
            _ = writeText("\(root)/\(i)/state", "off")
        }
    }

    private static func configure(_ pids: [Int32]) -> Bool {
        var ok = writeText("\(root)/nr_kdamonds", String(pids.count))
        let ulongMax = "18446744073709551615", uintMax = "4294967295"
        for (i, pid) in pids.enumerated() where ok {
            let k = "\(root)/\(i)"
            let c = "\(k)/contexts/0"
            let s = "\(c)/schemes/0"
            let steps: [(String, String)] = [
                ("\(k)/contexts/nr_contexts", "1"),
                ("\(c)/operations", "vaddr"),
                ("\(c)/monitoring_attrs/intervals/sample_us", String(sampleMicroseconds)),
                ("\(c)/monitoring_attrs/intervals/aggr_us", String(aggregateMicroseconds)),
                ("\(c)/monitoring_attrs/intervals/update_us", "1000000"),
                ("\(c)/monitoring_attrs/nr_regions/min", "10"),
                ("\(c)/monitoring_attrs/nr_regions/max", "1000"),
                ("\(c)/targets/nr_targets", "1"),
                ("\(c)/targets/0/pid_target", String(pid)),
                ("\(c)/schemes/nr_schemes", "1"),
                ("\(s)/action", "stat"),
                ("\(s)/access_pattern/sz/min", "0"),
                ("\(s)/access_pattern/sz/max", ulongMax),
                ("\(s)/access_pattern/nr_accesses/min", "0"),
                ("\(s)/access_pattern/nr_accesses/max", uintMax),
                ("\(s)/access_pattern/age/min", "0"),
                ("\(s)/access_pattern/age/max", uintMax),
                ("\(k)/state", "on"),
            ]
            for (path, value) in steps where ok { ok = writeText(path, value) }
        }
        return ok
    }

    /// Adds the CPU time the kdamond threads used since last seen.
    private static func accountKdamonds(_ s: inout State) {
        for i in 0..<s.pids.count {
            guard let text = readText("\(root)/\(i)/pid")?.trimmed, let tid = Int32(text), tid > 0,
                  let seconds = taskCPUSeconds(tid) else { continue }
            s.cpu += max(0, seconds - (s.kdamondCPU[tid] ?? 0))
            s.kdamondCPU[tid] = seconds
        }
    }

    public func scan(_ files: [TrackedFile]) -> [UInt64: [UInt8]] {
        let started = threadCPUSeconds()
        let pids = Array(Set(files.map(\.pid))).sorted()
        var result: [UInt64: [UInt8]] = [:]
        state.withLock { s in
            let running = (0..<s.pids.count).allSatisfy { readText("\(Self.root)/\($0)/state")?.trimmed == "on" }
            if pids != s.pids || !running {
                Self.accountKdamonds(&s)
                Self.turnOff(count: s.pids.count)
                s.pids = []
                guard !pids.isEmpty else { return }
                if Self.configure(pids) { s.pids = pids } else { s.failures += 1; Self.turnOff(count: pids.count); return }
                // The first snapshot needs one aggregation interval.
                usleep(useconds_t(Self.aggregateMicroseconds * 2))
            }
            let maxAccesses = Double(Self.aggregateMicroseconds / Self.sampleMicroseconds)
            for (i, pid) in s.pids.enumerated() {
                let group = files.filter { $0.pid == pid }
                let vmas = VMA.memfdMappings(pid: pid)
                guard writeText("\(Self.root)/\(i)/state", "update_schemes_tried_regions") else { continue }
                let regionsDir = "\(Self.root)/\(i)/contexts/0/schemes/0/tried_regions"
                var regions: [(UInt64, UInt64, Double)] = []
                var n = 0
                while let start = readText("\(regionsDir)/\(n)/start")?.trimmed.asUInt64,
                      let end = readText("\(regionsDir)/\(n)/end")?.trimmed.asUInt64,
                      let accesses = readText("\(regionsDir)/\(n)/nr_accesses")?.trimmed.asUInt64 {
                    regions.append((start, end, Double(accesses)))
                    n += 1
                }
                for file in group {
                    var heat = [UInt8](repeating: 0, count: file.pageCount)
                    for vma in vmas where vma.inode == file.memfdInode {
                        let page = UInt64(pageSize)
                        heat.withUnsafeMutableBufferPointer { out in
                            for (start, end, accesses) in regions where end > vma.start && start < vma.end && accesses > 0 {
                                let value = UInt8(min(255, (accesses / maxAccesses * 255).rounded()))
                                let lower = max(start, vma.start) / page * page, upper = min(end, vma.end)
                                var filePage = Int((vma.fileOffset + (lower - vma.start)) / page)
                                var va = lower
                                while va < upper && filePage < out.count {
                                    if out[filePage] < value { out[filePage] = value }
                                    va += page
                                    filePage += 1
                                }
                            }
                        }
                    }
                    result[file.key] = heat
                }
            }
            Self.accountKdamonds(&s)
            s.cpu += max(0, threadCPUSeconds() - started)
        }
        return result
    }
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

// MARK: - migration of scattered pages

extension FileMapping {
    /// Moves the pages at file offsets `offsets` (page aligned, inside this
    /// window) to `node` with one move_pages call per batch (MPOL_MF_MOVE_ALL).
    /// Returns the per-page status (node, or a negative errno).
    public func migrate(pageOffsets offsets: [UInt64], to node: Int32) throws(SystemError) -> [Int32] {
        var status = [Int32](repeating: 0, count: offsets.count)
        let batch = 16384
        var index = 0
        while index < offsets.count {
            let n = min(batch, offsets.count - index)
            var pages: [UnsafeMutableRawPointer?] = (0..<n).map { k in
                let offset = offsets[index + k]
                precondition(range.contains(offset), "page outside the window")
                return base + Int(offset - range.lowerBound)
            }
            var targets = [Int32](repeating: node, count: n)
            var partial = [Int32](repeating: 0, count: n)
            let result = pages.withUnsafeMutableBufferPointer { p in
                targets.withUnsafeMutableBufferPointer { t in
                    partial.withUnsafeMutableBufferPointer { s in
                        CNuma.move_pages(0, UInt(n), p.baseAddress, t.baseAddress, s.baseAddress, MPOL_MF_MOVE_ALL)
                    }
                }
            }
            if result < 0 { throw SystemError.current("move_pages(to node \(node))", "\(offsets.count) pages") }
            status.replaceSubrange(index..<(index + n), with: partial)
            index += n
        }
        return status
    }
}
