import CNuma
import FBMMCore
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

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
                let vmas = VMA.backingMappings(pid: pid)
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
                    for vma in vmas where vma.maps(file) {
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
