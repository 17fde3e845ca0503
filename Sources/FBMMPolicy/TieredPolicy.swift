import FBMMProtocol
import FBMMCore
import FBMMTracking
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// `tiered fast=N slow=N fast-capacity=SIZE`: the TieredMFS of the kernel
/// prototype, in user space.
///
/// Placement: new ranges go to the fast node (MPOL_PREFERRED) until the fast
/// budget — capacity minus the demotion watermark — is placed, across all the
/// mount's files; after that to the slow node.
///
/// Maintenance (a daemon thread, every `scan-interval`): an access tracker
/// (soft-dirty or DAMON, the FBMMTracking module) says how often each page
/// of each process-owned file was used during the scan. A page used in at
/// least half the tracker's samples is hot for that scan. Slow pages hot in
/// `promote-threshold` scans in a row are promoted, hottest first; when the
/// fast node has no room below capacity minus watermark, fast pages not hot
/// for as many scans are demoted first, coldest first. Everything moves with
/// move_pages on the daemon's own window of the memfd (MPOL_MF_MOVE_ALL), so
/// the program is never stopped; at most `rate-limit` bytes per second move.
///
/// Files: this one (placement, lifecycle, counters), `TieredKnobs.swift` (the
/// knobs `fbmm set` changes), `TieredMaintenance.swift` (the pass),
/// `TieredPlanner.swift` (page histories and the pure choice of moves).
public final class TieredPolicy: MaintainingPolicy {
    public static let name = "tiered"
    public static let summary = "hot pages on a fast node, the rest on a slow one (tracked by soft-dirty or DAMON, migrated with move_pages)"
    public static let keys = [
        PolicyKey("fast", "the fast node"),
        PolicyKey("slow", "the slow node"),
        PolicyKey("fast-capacity", "most of the mount's memory kept on the fast node, e.g. 4G"),
        PolicyKey("scan-interval", default: "1s", "time between access scans and migration passes"),
        PolicyKey("promote-threshold", default: "2", "scans in a row a slow page must be hot to be promoted"),
        PolicyKey("demote-watermark", default: "2%", "fast memory kept free for new pages (size, or % of fast-capacity)"),
        PolicyKey("rate-limit", default: "128M", "most bytes migrated per second"),
        PolicyKey("tracker", default: "auto", "access tracker: auto, damon (6.x with DAMON), refault (reads and writes, no swap) or softdirty (writes only)"),
    ]
    /// Keys `fbmm set` may change while mounted.
    public static let knobKeys: Set<String> = ["fast-capacity", "scan-interval", "promote-threshold",
                                                "demote-watermark", "rate-limit", "tracker"]

    public let fast: Int
    public let slow: Int
    public var allowedNodes: [Int] { [fast, slow] }
    /// Promotes and demotes the pages its tracker saw, one by one.
    public var placementGranularity: UInt64? { UInt64(pageSize) }

    public typealias Knobs = TieredKnobs

    /// Pages hot in a scan: used in at least half of the tracker's samples.
    public static let hotHeat: UInt8 = 127

    let knobs: Locked<Knobs>

    /// Fast bytes placed per file (inode) by `place`: the placement budget.
    let budget = Locked<[UInt64: UInt64]>([:])

    struct PageHistory {
        var heat: [UInt8] = []
        var hotStreak: [UInt8] = []
        var coldStreak: [UInt8] = []
    }
    struct Maintenance {
        var tracker: (any AccessTracker)?
        var trackerKind: TrackerKind?
        var history: [UInt64: PageHistory] = [:]
        /// Where an idle file's pages were seen, and its generation then
        /// (MaintainedFile.idle): kept until it is used again.
        var idleNodes: [UInt64: (generation: UInt64, nodes: [Int32])] = [:]
        var lastScan: Double?
        /// A maintenance pass holds the state (TieredMaintenance.swift).
        var inPass = false
        /// `auto` fell back from a tracker that paused (refault with swap
        /// on): it goes back to what `auto` picks once that one can see again.
        var autoFellBack = false
    }
    let maintenance = Locked(Maintenance())

    struct Counters {
        var scans: UInt64 = 0
        var promotedPages: UInt64 = 0
        var demotedPages: UInt64 = 0
        var failures: UInt64 = 0
        var lastError = ""
        var tracker = "none"
        /// "running", or why the tracker sees nothing now ("paused: ...").
        var trackerState = "running"
        var trackerCPU = 0.0
        var trackedGiBSeconds = 0.0
        var trackedBytes: UInt64 = 0
        var hotBytes: UInt64 = 0
        var fastBytes: UInt64 = 0
        var slowBytes: UInt64 = 0
        var passSeconds = 0.0
    }
    let stats = Locked(Counters())
    let stopped = Atomic<Bool>(false)

    public init(options: PolicyOptions, topology: Topology) throws(PolicyError) {
        guard let fast = try options.node("fast", in: topology) else { throw .missingKey(policy: Self.name, key: "fast") }
        guard let slow = try options.node("slow", in: topology) else { throw .missingKey(policy: Self.name, key: "slow") }
        guard fast != slow else {
            throw .invalidValue(key: "slow", value: options["slow"]!, reason: "must differ from fast=\(fast)")
        }
        guard let capacityText = options["fast-capacity"] else { throw .missingKey(policy: Self.name, key: "fast-capacity") }
        self.fast = fast
        self.slow = slow
        var knobs = Knobs(fastCapacity: 0)
        try knobs.apply("fast-capacity", capacityText)
        for key in ["scan-interval", "promote-threshold", "demote-watermark", "rate-limit", "tracker"] {
            if let value = options[key] { try knobs.apply(key, value) }
        }
        self.knobs = Locked(knobs)
    }

    public var currentKnobs: Knobs { knobs.withLock { $0 } }

    public var description: String {
        let k = currentKnobs
        let watermark = k.watermarkPercent.map { "\(format6($0))%" } ?? ByteSize(bytes: k.watermarkBytes).description
        return "tiered,fast=\(fast),slow=\(slow),fast-capacity=\(ByteSize(bytes: k.fastCapacity)),scan-interval=\(format6(k.scanInterval))s,promote-threshold=\(k.promoteThreshold),demote-watermark=\(watermark),rate-limit=\(ByteSize(bytes: k.rateLimit)),tracker=\(k.tracker.rawValue)"
    }

    // MARK: Placement

    public func place(_ range: Range<UInt64>, of file: FileContext) -> [Placement] {
        let limit = knobs.withLock { $0.fastLimit }
        let page = UInt64(pageSize)
        let fastBytes = budget.withLock { placed -> UInt64 in
            let used = placed.values.reduce(0, +)
            let free = limit > used ? (limit - used) / page * page : 0
            let bytes = min(free, UInt64(range.count))
            if bytes > 0 { placed[file.inode, default: 0] += bytes }
            return bytes
        }
        return Self.split(range, fastBytes: fastBytes, fast: fast, slow: slow)
    }

    /// The first `fastBytes` of `range` preferred on `fast`, the rest on `slow`.
    static func split(_ range: Range<UInt64>, fastBytes: UInt64, fast: Int, slow: Int) -> [Placement] {
        var placements: [Placement] = []
        let cut = range.lowerBound + min(fastBytes, UInt64(range.count))
        if cut > range.lowerBound { placements.append(Placement(range.lowerBound..<cut, MemoryPolicy(.preferred, nodes: [fast]))) }
        if cut < range.upperBound { placements.append(Placement(cut..<range.upperBound, MemoryPolicy(.preferred, nodes: [slow]))) }
        return placements
    }

    /// Fast bytes placed so far (all files).
    public var placedFastBytes: UInt64 { budget.withLock { $0.values.reduce(0, +) } }

    // MARK: Knobs, counters, lifecycle

    public var maintenanceInterval: Double { knobs.withLock { $0.scanInterval } }

    public func setKnob(_ key: String, _ value: String) throws(PolicyError) {
        var copy = currentKnobs
        try copy.apply(key, value)
        let final = copy
        knobs.withLock { $0 = final }
    }

    public var counters: [String: PolicyCounter] {
        let k = currentKnobs
        let c = stats.withLock { $0 }
        let page = UInt64(pageSize)
        return [
            "tracker": .text(c.tracker),
            "tracker_state": .text(c.trackerState),
            "scans": .count(c.scans),
            "promoted_pages": .count(c.promotedPages),
            "promoted_bytes": .count(c.promotedPages * page),
            "demoted_pages": .count(c.demotedPages),
            "demoted_bytes": .count(c.demotedPages * page),
            "tracker_cpu_seconds": .real(c.trackerCPU),
            "tracker_cpu_per_gib_second": .real(c.trackedGiBSeconds > 0 ? c.trackerCPU / c.trackedGiBSeconds : 0),
            "tracked_bytes": .count(c.trackedBytes),
            "hot_bytes": .count(c.hotBytes),
            "fast_bytes": .count(c.fastBytes),
            "slow_bytes": .count(c.slowBytes),
            "fast_capacity_bytes": .count(k.fastCapacity),
            "fast_limit_bytes": .count(k.fastLimit),
            "watermark_bytes": .count(k.watermark),
            "placed_fast_bytes": .count(placedFastBytes),
            "pass_seconds": .real(c.passSeconds),
            "failures": .count(c.failures),
            "last_error": .text(c.lastError),
        ]
    }

    public func shutdown() {
        stopped.store(true, ordering: .relaxed)
        // A pass in progress holds the tracker and stops it when it ends.
        let tracker = maintenance.withLock { (m: inout Maintenance) -> (any AccessTracker)? in
            defer { m.tracker = nil }
            return m.tracker
        }
        tracker?.stop()
    }

    public var isShutDown: Bool { stopped.load(ordering: .relaxed) }
}
