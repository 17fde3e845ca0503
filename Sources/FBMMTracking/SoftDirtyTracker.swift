import CNuma
import FBMMCore
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

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
        let targets = mappedFiles(files)
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
        // Adapt the window to the dirty share of present pages.
        window = adaptedWindow(window, used: dirty, of: tracked, shortest: 0.001)
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
