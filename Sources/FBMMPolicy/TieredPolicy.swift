import FBMMCore
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
/// (soft-dirty or DAMON, see `AccessTracking.swift`) says how often each page
/// of each process-owned file was used during the scan. A page used in at
/// least half the tracker's samples is hot for that scan. Slow pages hot in
/// `promote-threshold` scans in a row are promoted, hottest first; when the
/// fast node has no room below capacity minus watermark, fast pages not hot
/// for as many scans are demoted first, coldest first. Everything moves with
/// move_pages on the daemon's own window of the memfd (MPOL_MF_MOVE_ALL), so
/// the program is never stopped; at most `rate-limit` bytes per second move.
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
        PolicyKey("tracker", default: "auto", "access tracker: auto, softdirty (writes only) or damon (6.x with DAMON)"),
    ]
    /// Keys `fbmm set` may change while mounted.
    public static let knobKeys: Set<String> = ["fast-capacity", "scan-interval", "promote-threshold",
                                                "demote-watermark", "rate-limit", "tracker"]

    public let fast: Int
    public let slow: Int
    public var allowedNodes: [Int] { [fast, slow] }

    /// The knobs (changeable while mounted).
    public struct Knobs: Sendable, Hashable {
        public var fastCapacity: UInt64
        public var scanInterval: Double = 1
        public var promoteThreshold: Int = 2
        /// Percent of fastCapacity, or bytes.
        public var watermarkPercent: Double? = 2
        public var watermarkBytes: UInt64 = 0
        public var rateLimit: UInt64 = 128 << 20
        public var tracker: TrackerKind = .auto

        public var watermark: UInt64 {
            if let percent = watermarkPercent {
                let bytes = UInt64(Double(fastCapacity) * percent / 100)
                return bytes / UInt64(pageSize) * UInt64(pageSize)
            }
            return min(watermarkBytes, fastCapacity)
        }
        /// Fast bytes the policy fills up to (placement budget, promotion limit).
        public var fastLimit: UInt64 { fastCapacity - min(watermark, fastCapacity) }

        /// Applies one `KEY=VALUE`; throws the user-facing reason it is refused.
        public mutating func apply(_ key: String, _ value: String) throws(PolicyError) {
            let options = PolicyOptions([(key, value)])
            switch key {
            case "fast-capacity":
                guard let size = try options.size(key), size.bytes >= UInt64(pageSize) else {
                    throw .invalidValue(key: key, value: value, reason: "must be at least one page")
                }
                fastCapacity = size.bytes / UInt64(pageSize) * UInt64(pageSize)
            case "scan-interval":
                guard let seconds = try options.seconds(key), seconds >= 0.05, seconds <= 3600 else {
                    throw .invalidValue(key: key, value: value, reason: "must be from 50ms to 3600s")
                }
                scanInterval = seconds
            case "promote-threshold":
                guard let n = Int(value), n >= 1, n <= 100 else {
                    throw .invalidValue(key: key, value: value, reason: "expected a whole number of scans from 1 to 100")
                }
                promoteThreshold = n
            case "demote-watermark":
                if value.hasSuffix("%") {
                    guard let percent = Double(value.dropLast()), percent >= 0, percent < 100 else {
                        throw .invalidValue(key: key, value: value, reason: "expected a percentage from 0% to 99%")
                    }
                    watermarkPercent = percent
                } else {
                    guard let size = try options.size(key) else { return }
                    watermarkPercent = nil
                    watermarkBytes = size.bytes / UInt64(pageSize) * UInt64(pageSize)
                }
            case "rate-limit":
                guard let size = try options.size(key), size.bytes >= UInt64(pageSize) else {
                    throw .invalidValue(key: key, value: value, reason: "must be at least one page per second")
                }
                rateLimit = size.bytes
            case "tracker":
                guard let kind = TrackerKind(rawValue: value) else {
                    throw .invalidValue(key: key, value: value, reason: "expected auto, softdirty or damon")
                }
                if kind == .damon && tracker != .damon && !DamonTracker.isAvailable {
                    throw .invalidValue(key: key, value: value, reason: "DAMON is not available on this kernel (no /sys/kernel/mm/damon/admin, not root, or in use)")
                }
                if kind == .softdirty && !SoftDirtyTracker.isAvailable {
                    throw .invalidValue(key: key, value: value, reason: "soft-dirty is not available on this kernel (built without CONFIG_MEM_SOFT_DIRTY)")
                }
                tracker = kind
            default:
                throw .unknownKey(policy: TieredPolicy.name, key: key, known: TieredPolicy.knobKeys.sorted())
            }
        }
    }

    private let knobs: Locked<Knobs>

    /// Fast bytes placed per file (inode) by `place`: the placement budget.
    private let budget = Locked<[UInt64: UInt64]>([:])

    private struct PageHistory {
        var heat: [UInt8] = []
        var hotStreak: [UInt8] = []
        var coldStreak: [UInt8] = []
    }
    private struct Maintenance {
        var tracker: (any AccessTracker)?
        var trackerKind: TrackerKind?
        var history: [UInt64: PageHistory] = [:]
        var lastScan: Double?
    }
    private let maintenance = Locked(Maintenance())

    private struct Counters {
        var scans: UInt64 = 0
        var promotedPages: UInt64 = 0
        var demotedPages: UInt64 = 0
        var failures: UInt64 = 0
        var lastError = ""
        var tracker = "none"
        var trackerCPU = 0.0
        var trackedGiBSeconds = 0.0
        var trackedBytes: UInt64 = 0
        var hotBytes: UInt64 = 0
        var fastBytes: UInt64 = 0
        var slowBytes: UInt64 = 0
        var passSeconds = 0.0
    }
    private let stats = Locked(Counters())
    private let stopped = Atomic<Bool>(false)

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
        maintenance.withLock { m in
            m.tracker?.stop()
            m.tracker = nil
        }
    }

    public var isShutDown: Bool { stopped.load(ordering: .relaxed) }

    // MARK: Maintenance

    /// Pages hot in a scan: used in at least half of the tracker's samples.
    public static let hotHeat: UInt8 = 127

    public func maintain(files: [MaintainedFile]) {
        let started = monotonicSeconds()
        let k = currentKnobs
        let page = UInt64(pageSize)
        // Files that are gone give their fast placement budget back.
        let present = Set(files.map(\.inode))
        budget.withLock { placed in for key in placed.keys where !present.contains(key) { placed.removeValue(forKey: key) } }

        maintenance.withLock { m in
            let wanted = k.tracker == .auto ? (m.trackerKind ?? TrackerKind.resolveAuto()) : k.tracker
            if m.tracker == nil || m.trackerKind != wanted {
                m.tracker?.stop()
                m.tracker = wanted.makeTracker()
                m.trackerKind = wanted
            }
            guard let tracker = m.tracker else { return }

            // 1. What the owning processes used during this scan.
            var sizes: [UInt64: UInt64] = [:]
            var tracked: [TrackedFile] = []
            for file in files {
                let size = (try? file.memory.size()) ?? 0
                sizes[file.inode] = size
                guard let pid = file.ownerPID, size > 0 else { continue }
                var st = stat()
                guard fstat(file.memory.descriptor.rawValue, &st) == 0 else { continue }
                tracked.append(TrackedFile(key: file.inode, pid: pid, memfdInode: UInt64(st.st_ino),
                                           pageCount: Int((size + page - 1) / page)))
            }
            let samples = tracker.scan(tracked)
            let cut = Self.hotCut(maxHeat: samples.values.reduce(0) { $0 > 200 ? $0 : max($0, $1.max() ?? 0) })
            let now = monotonicSeconds()
            let elapsed = m.lastScan.map { now - $0 } ?? k.scanInterval
            m.lastScan = now

            // 2. Where each resident page is (move_pages on the daemon's window).
            var windows: [UInt64: FileMapping] = [:]
            var views: [TieredPlanner.FileView] = []
            var failure: String?
            var trackedBytes: UInt64 = 0, hotPages: UInt64 = 0
            for file in files {
                let size = sizes[file.inode] ?? 0
                let pages = Int((size + page - 1) / page)
                guard pages > 0 else { m.history.removeValue(forKey: file.inode); continue }
                var nodes = [Int32](repeating: -1, count: pages)
                do throws(SystemError) {
                    let ranges = try file.memory.dataRanges()
                    guard !ranges.isEmpty else { continue }
                    let window = try file.memory.map(0..<(UInt64(pages) * page))
                    let end = UInt64(pages) * page
                    for data in ranges {
                        // The file may have grown since its size was read.
                        let lower = data.lowerBound / page * page
                        guard lower < end else { continue }
                        let aligned = lower..<min(end, (data.upperBound + page - 1) / page * page)
                        // Present pages only: looking must not refill what a program punched.
                        for run in try window.presentRuns(aligned) {
                            try window.populateRead(run)
                            let status = try window.nodesOfPages(run)
                            let first = Int(run.lowerBound / page)
                            for (i, node) in status.enumerated() where first + i < pages { nodes[first + i] = node }
                        }
                    }
                    windows[file.inode] = window
                } catch {
                    failure = error.description
                    continue
                }
                // 3. Page history: heat (moving average), hot and cold streaks.
                var h = m.history[file.inode] ?? PageHistory()
                if h.heat.count != pages {
                    h.heat = Self.resized(h.heat, pages)
                    h.hotStreak = Self.resized(h.hotStreak, pages)
                    h.coldStreak = Self.resized(h.coldStreak, pages)
                }
                if let sample = samples[file.inode] {
                    trackedBytes += UInt64(pages) * page
                    Self.record(sample, into: &h.heat, &h.hotStreak, &h.coldStreak, hotCut: cut)
                } else {
                    // Nobody to ask (not process-owned, or not mapped now): cooling.
                    Self.record([UInt8](repeating: 0, count: pages), into: &h.heat, &h.hotStreak, &h.coldStreak)
                }
                h.hotStreak.withUnsafeBufferPointer { b in for v in b where v > 0 { hotPages += 1 } }
                m.history[file.inode] = h
                views.append(.init(key: file.inode, nodes: nodes, hotStreak: h.hotStreak, coldStreak: h.coldStreak, heat: h.heat))
            }
            for key in m.history.keys where sizes[key] == nil { m.history.removeValue(forKey: key) }

            // 4. Decide and move.
            let planner = TieredPlanner(
                fastNode: Int32(fast), slowNode: Int32(slow),
                limitPages: Int(k.fastLimit / page), capacityPages: Int(k.fastCapacity / page),
                promoteThreshold: k.promoteThreshold,
                budgetPages: max(1, Int(Double(k.rateLimit) * max(elapsed, k.scanInterval) / Double(page))))
            let plan = planner.plan(views)
            var promoted: UInt64 = 0, demoted: UInt64 = 0
            for (moves, target) in [(plan.demote, Int32(slow)), (plan.promote, Int32(fast))] {
                for (key, pageIndices) in moves where !pageIndices.isEmpty {
                    guard let window = windows[key] else { continue }
                    do throws(SystemError) {
                        let status = try window.migrate(pageOffsets: pageIndices.map { UInt64($0) * page }, to: target)
                        let moved = UInt64(status.lazy.filter { $0 == target }.count)
                        if target == Int32(fast) { promoted += moved } else { demoted += moved }
                    } catch {
                        failure = error.description
                    }
                }
            }
            var fastPages: UInt64 = 0, slowPages: UInt64 = 0
            for v in views {
                v.nodes.withUnsafeBufferPointer { nodes in
                    for node in nodes { if node == Int32(fast) { fastPages += 1 } else if node == Int32(slow) { slowPages += 1 } }
                }
            }
            let cpu = tracker.cpuSeconds
            let name = tracker.name
            stats.withLock { c in
                c.scans += 1
                c.promotedPages += promoted
                c.demotedPages += demoted
                c.tracker = name
                c.trackerCPU = cpu
                c.trackedGiBSeconds += Double(trackedBytes) / Double(1 << 30) * elapsed
                c.trackedBytes = trackedBytes
                c.hotBytes = hotPages * page
                c.fastBytes = (fastPages + promoted - min(fastPages + promoted, demoted)) * page
                c.slowBytes = (slowPages + demoted - min(slowPages + demoted, promoted)) * page
                c.passSeconds = monotonicSeconds() - started
                if let failure { c.failures += 1; c.lastError = failure }
            }
        }
    }

    static func resized(_ array: [UInt8], _ count: Int) -> [UInt8] {
        if array.count >= count { return Array(array.prefix(count)) }
        return array + [UInt8](repeating: 0, count: count - array.count)
    }

    /// The heat from which a page counts as hot in a scan whose hottest
    /// tracked page had `maxHeat`: used in half the samples, or half as often
    /// as the hottest page when nothing reaches that (a slow program, or a
    /// tracker whose samples are sparse), but never below 10%.
    public static func hotCut(maxHeat: UInt8) -> UInt8 {
        max(26, min(hotHeat, maxHeat / 2))
    }

    /// Folds one scan's sample into a page history.
    public static func record(_ sample: [UInt8], into heat: inout [UInt8], _ hotStreak: inout [UInt8], _ coldStreak: inout [UInt8],
                              hotCut: UInt8 = hotHeat) {
        let n = min(sample.count, heat.count, hotStreak.count, coldStreak.count)
        sample.withUnsafeBufferPointer { s in
            heat.withUnsafeMutableBufferPointer { h in
                hotStreak.withUnsafeMutableBufferPointer { hot in
                    coldStreak.withUnsafeMutableBufferPointer { cold in
                        for i in 0..<n {
                            let value = s[i]
                            h[i] = UInt8((UInt16(h[i]) + UInt16(value) + 1) / 2)
                            if value >= hotCut {
                                if hot[i] < 255 { hot[i] += 1 }
                                cold[i] = 0
                            } else {
                                hot[i] = 0
                                if cold[i] < 255 { cold[i] += 1 }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The tiered policy's choice of pages to move, on described inputs (pure).
public struct TieredPlanner: Sendable {
    /// One file: per page its node (negative: not resident) and history.
    public struct FileView: Sendable {
        public var key: UInt64
        public var nodes: [Int32]
        public var hotStreak: [UInt8]
        public var coldStreak: [UInt8]
        public var heat: [UInt8]

        public init(key: UInt64, nodes: [Int32], hotStreak: [UInt8], coldStreak: [UInt8], heat: [UInt8]) {
            self.key = key
            self.nodes = nodes
            self.hotStreak = hotStreak
            self.coldStreak = coldStreak
            self.heat = heat
        }
    }

    /// Page indices to move, per file key.
    public struct Plan: Sendable, Equatable {
        public var promote: [UInt64: [Int]] = [:]
        public var demote: [UInt64: [Int]] = [:]
        public var promotedCount: Int { promote.values.reduce(0) { $0 + $1.count } }
        public var demotedCount: Int { demote.values.reduce(0) { $0 + $1.count } }
    }

    public var fastNode: Int32
    public var slowNode: Int32
    /// Fast pages to fill up to (capacity minus watermark).
    public var limitPages: Int
    /// Fast pages never to exceed: above it even hot pages are demoted.
    public var capacityPages: Int
    /// Scans in a row a slow page must be hot to be promoted; a fast page must
    /// have been cold for as many scans to be demoted to make room.
    public var promoteThreshold: Int
    /// Most pages moved (promotions plus demotions) in one pass.
    public var budgetPages: Int

    public init(fastNode: Int32, slowNode: Int32, limitPages: Int, capacityPages: Int, promoteThreshold: Int, budgetPages: Int) {
        self.fastNode = fastNode
        self.slowNode = slowNode
        self.limitPages = limitPages
        self.capacityPages = capacityPages
        self.promoteThreshold = promoteThreshold
        self.budgetPages = budgetPages
    }

    /// Indices of `keys`, highest key first, equal keys in index order (a
    /// counting sort: cheap for the tens of thousands of pages of a pass).
    static func orderDescending(_ keys: [UInt16]) -> [Int] {
        var counts = [Int](repeating: 0, count: 65537)
        for key in keys { counts[65535 - Int(key) + 1] += 1 }
        for i in 1..<counts.count { counts[i] += counts[i - 1] }
        var order = [Int](repeating: 0, count: keys.count)
        for (index, key) in keys.enumerated() {
            let slot = 65535 - Int(key)
            order[counts[slot]] = index
            counts[slot] += 1
        }
        return order
    }

    public func plan(_ files: [FileView]) -> Plan {
        var plan = Plan()
        var fastUsed = 0
        // Candidates as (file, page) pairs with a sort key each.
        var promote: [(Int, Int)] = [], promoteKeys: [UInt16] = []
        var cold: [(Int, Int)] = [], coldKeys: [UInt16] = []
        var fastAll: [(Int, Int)] = []
        for (f, file) in files.enumerated() {
            file.nodes.withUnsafeBufferPointer { nodes in
                for p in 0..<nodes.count {
                    let node = nodes[p]
                    if node == fastNode {
                        fastUsed += 1
                        fastAll.append((f, p))
                        if file.hotStreak[p] == 0 {
                            cold.append((f, p))
                            // Coldest first: longest cold streak, then lowest heat.
                            coldKeys.append(UInt16(file.coldStreak[p]) << 8 | UInt16(255 - file.heat[p]))
                        }
                    } else if node == slowNode, Int(file.hotStreak[p]) >= promoteThreshold {
                        promote.append((f, p))
                        // Hottest first, then longest hot streak.
                        promoteKeys.append(UInt16(file.heat[p]) << 8 | UInt16(file.hotStreak[p]))
                    }
                }
            }
        }
        let promoteOrder = Self.orderDescending(promoteKeys)
        let coldOrder = Self.orderDescending(coldKeys)
        func heat(_ r: (Int, Int)) -> UInt8 { files[r.0].heat[r.1] }
        func coldness(_ r: (Int, Int)) -> UInt8 { files[r.0].coldStreak[r.1] }
        var budget = budgetPages
        var demoted = Set<Int>()
        func demote(_ r: (Int, Int)) {
            plan.demote[files[r.0].key, default: []].append(r.1)
            demoted.insert(r.0 << 40 | r.1)
            fastUsed -= 1
            budget -= 1
        }
        var next = 0
        // 1. Above the limit (new pages landed fast, or a knob shrank it): demote down to it.
        while fastUsed > limitPages, budget > 0, next < coldOrder.count {
            demote(cold[coldOrder[next]]); next += 1
        }
        // 1b. Still above capacity: even hot pages go, least hot first.
        if fastUsed > capacityPages {
            let rest = fastAll.filter { !demoted.contains($0.0 << 40 | $0.1) }
            let order = Self.orderDescending(rest.map { UInt16(255 - heat($0)) })
            var i = 0
            while fastUsed > capacityPages, budget > 0, i < order.count { demote(rest[order[i]]); i += 1 }
        }
        // 2. Promote hot slow pages; make room by demoting pages cold long enough.
        for index in promoteOrder {
            let candidate = promote[index]
            if budget <= 0 { break }
            if fastUsed < limitPages {
                plan.promote[files[candidate.0].key, default: []].append(candidate.1)
                fastUsed += 1
                budget -= 1
                continue
            }
            guard budget >= 2, next < coldOrder.count else { break }
            let victim = cold[coldOrder[next]]
            guard Int(coldness(victim)) >= promoteThreshold, heat(victim) < heat(candidate) else { break }
            demote(victim); next += 1
            plan.promote[files[candidate.0].key, default: []].append(candidate.1)
            fastUsed += 1
            budget -= 1
        }
        for k in plan.promote.keys { plan.promote[k]!.sort() }
        for k in plan.demote.keys { plan.demote[k]!.sort() }
        return plan
    }
}
