import FBMMCore
import FBMMTracking
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The tiered policy's maintenance pass: scan, locate, record, plan, move.
extension TieredPolicy {
    public func maintain(files: [MaintainedFile]) {
        let started = monotonicSeconds()
        let k = currentKnobs
        let page = UInt64(pageSize)
        // Files that are gone give their fast placement budget back.
        let present = Set(files.map(\.inode))
        budget.withLock { placed in for key in placed.keys where !present.contains(key) { placed.removeValue(forKey: key) } }

        // The pass works on its state taken out of the lock, so nothing waits
        // while the tracker samples or move_pages runs: a shutdown meanwhile
        // only marks the policy stopped (and this pass stops the tracker when
        // it puts the state back); a second pass at the same time is a no-op.
        guard var m = maintenance.withLock({ (state: inout Maintenance) -> Maintenance? in
            guard !state.inPass else { return nil }
            let taken = state
            state = Maintenance()
            state.inPass = true
            return taken
        }) else { return }
        defer {
            let back = m
            let leftover = maintenance.withLock { (state: inout Maintenance) -> (any AccessTracker)? in
                state = back
                state.inPass = false
                guard isShutDown else { return nil }
                defer { state.tracker = nil }
                return state.tracker
            }
            leftover?.stop()
        }
        var wanted = k.tracker == .auto ? (m.trackerKind ?? TrackerKind.resolveAuto()) : k.tracker
        if k.tracker != .auto {
            m.autoFellBack = false
        } else if m.tracker?.pausedReason != nil {
            // The tracker auto picked cannot see now (refault with swap on):
            // take what auto picks now instead...
            wanted = TrackerKind.resolveAuto()
            m.autoFellBack = true
        } else if m.autoFellBack {
            // ...and go back to the first choice once it can see again.
            wanted = TrackerKind.resolveAuto()
            if wanted != m.trackerKind { m.autoFellBack = false }
        }
        if m.tracker == nil || m.trackerKind != wanted {
            m.tracker?.stop()
            m.tracker = wanted.makeTracker()
            m.trackerKind = wanted
        }
        guard let tracker = m.tracker else { return }
        // A tracker that sees nothing now reports no samples, which would
        // cool every page and demote the hot set: the pass stops here, page
        // history and placement as they were, and says why.
        if let reason = tracker.pausedReason {
            let name = tracker.name
            stats.withLock { c in
                c.tracker = name
                c.trackerState = "paused: \(reason)"
            }
            return
        }

        // 1. What the owning processes used during this scan. Files are
        // opened one at a time and let go (MaintainedFile says why); a
        // process-owned one is never idle, so this opens nothing new.
        var sizes: [UInt64: UInt64] = [:]
        var tracked: [TrackedFile] = []
        for file in files {
            sizes[file.inode] = file.size
            guard let pid = file.ownerPID, let memory = file.open() else { continue }
            let size = (try? memory.size()) ?? file.size
            sizes[file.inode] = size
            var st = stat()
            guard size > 0, fstat(memory.descriptor.rawValue, &st) == 0 else { continue }
            tracked.append(TrackedFile(key: file.inode, pid: pid, inode: UInt64(st.st_ino), device: UInt64(st.st_dev),
                                       pageCount: Int((size + page - 1) / page)))
        }
        let samples = tracker.scan(tracked)
        let cut = Self.hotCut(maxHeat: samples.values.reduce(0) { $0 > 200 ? $0 : max($0, $1.max() ?? 0) })
        let now = monotonicSeconds()
        let elapsed = m.lastScan.map { now - $0 } ?? k.scanInterval
        m.lastScan = now

        // 2. Where each resident page is (move_pages on the daemon's window).
        // An idle file's pages stay where they were seen until it is used
        // again (or this policy moves them): what was seen is kept, and the
        // file is not opened again meanwhile.
        // A file in use keeps its window (populated) for the moves below; an
        // idle one's goes at once, so that a pass over many idle files holds
        // no mapping per file either.
        var windows: [UInt64: FileMapping] = [:]
        var views: [TieredPlanner.FileView] = []
        var failure: String?
        var trackedBytes: UInt64 = 0, hotPages: UInt64 = 0
        for file in files {
            let size = sizes[file.inode] ?? 0
            let pages = Int((size + page - 1) / page)
            guard pages > 0 else {
                m.history.removeValue(forKey: file.inode)
                m.idleNodes.removeValue(forKey: file.inode)
                continue
            }
            let nodes: [Int32]
            if file.idle, let seen = m.idleNodes[file.inode], seen.generation == file.generation, seen.nodes.count == pages {
                nodes = seen.nodes
            } else {
                do throws(SystemError) {
                    guard let memory = file.open() else { continue }
                    let found = try Self.nodes(of: memory, pages: pages)
                    nodes = found.nodes
                    if !file.idle { windows[file.inode] = found.window }
                } catch {
                    failure = error.description
                    continue
                }
                if file.idle { m.idleNodes[file.inode] = (file.generation, nodes) } else { m.idleNodes.removeValue(forKey: file.inode) }
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
        for key in m.idleNodes.keys where sizes[key] == nil { m.idleNodes.removeValue(forKey: key) }

        // 4. Decide and move.
        let planner = TieredPlanner(
            fastNode: Int32(fast), slowNode: Int32(slow),
            limitPages: Int(k.fastLimit / page), capacityPages: Int(k.fastCapacity / page),
            promoteThreshold: k.promoteThreshold,
            budgetPages: max(1, Int(Double(k.rateLimit) * max(elapsed, k.scanInterval) / Double(page))))
        let plan = planner.plan(views)
        let byInode = Dictionary(files.map { ($0.inode, $0) }, uniquingKeysWith: { first, _ in first })
        var promoted: UInt64 = 0, demoted: UInt64 = 0
        for (moves, target) in [(plan.demote, Int32(slow)), (plan.promote, Int32(fast))] {
            for (key, pageIndices) in moves where !pageIndices.isEmpty {
                do throws(SystemError) {
                    var window = windows[key]
                    if window == nil { window = try Self.window(for: byInode[key], size: sizes[key] ?? 0, pages: pageIndices) }
                    guard let window else { continue }
                    let status = try window.migrate(pageOffsets: pageIndices.map { UInt64($0) * page }, to: target)
                    let moved = UInt64(status.lazy.filter { $0 == target }.count)
                    if target == Int32(fast) { promoted += moved } else { demoted += moved }
                    if var seen = m.idleNodes[key] {
                        for (index, node) in zip(pageIndices, status) where node >= 0 && index < seen.nodes.count {
                            seen.nodes[index] = node
                        }
                        m.idleNodes[key] = seen
                    }
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
            c.trackerState = "running"
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

    /// The node of each of a file's first `pages` pages (-1: not present),
    /// looked up with move_pages on a window of the daemon's, which is
    /// returned with its present pages mapped (nil: the file has no data).
    /// Only present pages are looked at: looking must not refill what a
    /// program punched.
    static func nodes(of memory: MemoryFile, pages: Int) throws(SystemError) -> (nodes: [Int32], window: FileMapping?) {
        let page = UInt64(pageSize)
        var nodes = [Int32](repeating: -1, count: pages)
        let ranges = try memory.dataRanges()
        guard !ranges.isEmpty else { return (nodes, nil) }
        let end = UInt64(pages) * page
        let window = try memory.map(0..<end)
        for data in ranges {
            // The file may have grown since its size was read.
            let lower = data.lowerBound / page * page
            guard lower < end else { continue }
            let aligned = lower..<min(end, (data.upperBound + page - 1) / page * page)
            for run in try window.mapPresent(aligned) {
                let status = try window.nodesOfPages(run)
                let first = Int(run.lowerBound / page)
                for (i, node) in status.enumerated() where first + i < pages { nodes[first + i] = node }
            }
        }
        return (nodes, window)
    }

    /// A window for moving `pages` (page indices) of an idle file, whose
    /// window went after looking: opened and mapped again, the present pages
    /// among them mapped (move_pages moves only what the window maps; a
    /// punched page is not filled again).
    static func window(for file: MaintainedFile?, size: UInt64, pages: [Int]) throws(SystemError) -> FileMapping? {
        let page = UInt64(pageSize)
        guard let file, size > 0, let lowest = pages.min(), let highest = pages.max(), let memory = file.open() else { return nil }
        let window = try memory.map(0..<((size + page - 1) / page * page))
        let span = (UInt64(lowest) * page)..<min(window.range.upperBound, UInt64(highest + 1) * page)
        _ = try window.mapPresent(span)
        return window
    }
}
