import Foundation
import FBMMCore
import FBMMTracking
import Synchronization
import Testing
@testable import FBMMPolicy

@Suite struct TieredPolicyTests {
    static let page = UInt64(pageSize)
    static let mib: UInt64 = 1 << 20

    func tiered(_ options: String = "fast=0,slow=2,fast-capacity=48M") throws -> TieredPolicy {
        try #require(try Fixtures.make("tiered,\(options)", Fixtures.threeNodes) as? TieredPolicy)
    }

    func file(_ inode: UInt64, size: UInt64 = 1 << 30) -> FileContext {
        FileContext(inode: inode, name: "f\(inode)", size: size)
    }

    // MARK: options and knobs

    @Test func defaultsAndDescription() throws {
        let policy = try tiered()
        let k = policy.currentKnobs
        #expect(k.fastCapacity == 48 * Self.mib)
        #expect(k.scanInterval == 1)
        #expect(k.promoteThreshold == 2)
        #expect(k.rateLimit == 128 * Self.mib)
        #expect(k.tracker == .auto)
        // 2% of 48 MiB, page aligned.
        #expect(k.watermark == UInt64(Double(48 * Self.mib) * 0.02) / Self.page * Self.page)
        #expect(k.fastLimit == 48 * Self.mib - k.watermark)
        #expect(policy.allowedNodes == [0, 2])
        #expect(policy.description.hasPrefix("tiered,fast=0,slow=2,fast-capacity=48"))
        #expect(policy.maintenanceInterval == 1)
    }

    @Test func badOptionsAreRefused() {
        #expect(Fixtures.policyError { _ = try Fixtures.make("tiered,fast=0,fast-capacity=1G", Fixtures.threeNodes) }
                == .missingKey(policy: "tiered", key: "slow"))
        #expect(Fixtures.policyError { _ = try Fixtures.make("tiered,fast=0,slow=2", Fixtures.threeNodes) }
                == .missingKey(policy: "tiered", key: "fast-capacity"))
        #expect(Fixtures.policyError { _ = try Fixtures.make("tiered,fast=0,slow=0,fast-capacity=1G", Fixtures.threeNodes) } != nil)
        #expect(Fixtures.policyError { _ = try Fixtures.make("tiered,fast=0,slow=7,fast-capacity=1G", Fixtures.threeNodes) } != nil)
        for bad in ["promote-threshold=0", "scan-interval=0", "demote-watermark=150%", "rate-limit=0", "tracker=psychic",
                    "fast-capacity=12"] {
            #expect(Fixtures.policyError { _ = try Fixtures.make("tiered,fast=0,slow=2,fast-capacity=1G,\(bad)", Fixtures.threeNodes) } != nil,
                    "\(bad) accepted")
        }
        #expect(Fixtures.policyError { _ = try Fixtures.make("tiered,fast=0,slow=2,fast-capacity=1G,colour=red", Fixtures.threeNodes) }
                == .unknownKey(policy: "tiered", key: "colour", known: TieredPolicy.keys.map(\.name)))
    }

    @Test func knobsChangeWhileMounted() throws {
        let policy = try tiered()
        try policy.setKnob("scan-interval", "250ms")
        try policy.setKnob("promote-threshold", "3")
        try policy.setKnob("demote-watermark", "4M")
        try policy.setKnob("rate-limit", "1G")
        let k = policy.currentKnobs
        #expect(k.scanInterval == 0.25 && policy.maintenanceInterval == 0.25)
        #expect(k.promoteThreshold == 3)
        #expect(k.watermark == 4 * Self.mib && k.fastLimit == 44 * Self.mib)
        #expect(k.rateLimit == 1 << 30)
        #expect(throws: PolicyError.self) { try policy.setKnob("promote-threshold", "zero") }
        #expect(throws: PolicyError.self) { try policy.setKnob("fast", "1") }  // not a knob
        #expect(policy.currentKnobs.promoteThreshold == 3, "a refused value leaves the knob alone")
        #expect(policy.description.contains("rate-limit=1"))
    }

    // MARK: placement budget

    @Test func newPagesFillTheFastBudgetThenGoSlow() throws {
        let policy = try tiered("fast=0,slow=2,fast-capacity=48M,demote-watermark=1M")
        let fast = MemoryPolicy(.preferred, nodes: [0]), slow = MemoryPolicy(.preferred, nodes: [2])
        // 32 MiB fits in the 47 MiB budget.
        #expect(policy.place(0..<32 * Self.mib, of: file(2)) == [Placement(0..<32 * Self.mib, fast)])
        // A second file gets the remaining 15 MiB fast, the rest slow.
        #expect(policy.place(0..<64 * Self.mib, of: file(3)) == [
            Placement(0..<15 * Self.mib, fast), Placement(15 * Self.mib..<64 * Self.mib, slow),
        ])
        // The budget is spent: the first file's growth goes slow.
        #expect(policy.place(32 * Self.mib..<40 * Self.mib, of: file(2)) == [Placement(32 * Self.mib..<40 * Self.mib, slow)])
        #expect(policy.placedFastBytes == 47 * Self.mib)
    }

    @Test func deletedFilesGiveTheirBudgetBack() throws {
        let policy = try tiered("fast=0,slow=2,fast-capacity=8M,demote-watermark=0,tracker=auto")
        _ = policy.place(0..<8 * Self.mib, of: file(2))
        #expect(policy.place(0..<Self.mib, of: file(3)).map(\.policy.nodes) == [[2]])
        policy.maintain(files: [])  // file 2 and 3 are gone
        #expect(policy.placedFastBytes == 0)
        #expect(policy.place(0..<Self.mib, of: file(4)).map(\.policy.nodes) == [[0]])
        policy.shutdown()
    }

    /// A pass over many idle files (parked on the private tmpfs: the daemon
    /// holds no descriptor for them) opens them one at a time, so it never
    /// holds a descriptor per file (with tens of thousands of files that
    /// took every descriptor the daemon may have from the users it serves),
    /// and an idle file is not opened again until it is used
    /// (its generation moves).
    @Test func idleFilesAreOpenedOneAtATimeAndOnceWhileIdle() throws {
        let instance = try TmpfsInstance(size: 64 << 20, huge: .never)
        let policy = try tiered("fast=0,slow=2,fast-capacity=48M")
        defer { policy.shutdown() }
        let count = 300
        var names: [String] = []
        for i in 0..<count {
            let made = try MemoryFile(name: "f\(i)", on: instance)
            try [UInt8](repeating: 7, count: Int(Self.page)).withUnsafeBytes { try made.write($0, at: 0) }
            names.append(try #require(made.instanceName))
        }
        @Sendable func descriptors() -> Int { ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []).count }
        let baseline = descriptors()
        let opens = Mutex(0), peak = Mutex(0)
        func files(generation first: UInt64 = 0) -> [MaintainedFile] {
            names.enumerated().map { i, name in
                MaintainedFile(inode: UInt64(i + 2), name: "f\(i)", size: Self.page, ownerPID: nil, idle: true,
                               generation: i == 0 ? first : 0) {
                    opens.withLock { $0 += 1 }
                    let file = try? MemoryFile(reopening: name, name: "f\(i)", on: instance)
                    let now = descriptors()
                    peak.withLock { $0 = max($0, now) }
                    return file
                }
            }
        }
        policy.maintain(files: files())
        #expect(opens.withLock { $0 } == count, "each idle file looked at once")
        #expect(peak.withLock { $0 } - baseline < 50, "one at a time: \(peak.withLock { $0 }) descriptors at most, \(baseline) before")
        // The host has one node: every page is on node 0, the "fast" one.
        let everyPage = PolicyCounter.count(UInt64(count) * Self.page)
        #expect(policy.counters["fast_bytes"] == everyPage)
        policy.maintain(files: files())
        #expect(opens.withLock { $0 } == count, "still idle, same generation: not opened again")
        #expect(policy.counters["fast_bytes"] == everyPage, "what was seen still counts")
        policy.maintain(files: files(generation: 1))
        #expect(opens.withLock { $0 } == count + 1, "the one used since is looked at again")
        #expect(descriptors() - baseline < 50, "nothing kept open after the passes")
    }

    /// A tracker that cannot see for a while (refault sampling with swap
    /// on) reports no samples; the pass must not read that as "all cold":
    /// it stops, says why in `tracker_state` (and the daemon logs the
    /// change), and the page history stays as it was. With `tracker=auto`
    /// the pass takes what auto picks instead of a paused tracker.
    @Test func aPausedTrackerCoolsNothing() throws {
        final class Fake: AccessTracker {
            let name = "fake"
            let paused = Mutex<String?>(nil)
            var cpuSeconds: Double { 0 }
            func scan(_ files: [TrackedFile]) -> [UInt64: [UInt8]] {
                Dictionary(uniqueKeysWithValues: files.map { ($0.key, [UInt8](repeating: 255, count: $0.pageCount)) })
            }
            func stop() {}
            var pausedReason: String? { paused.withLock { $0 } }
        }
        let instance = try TmpfsInstance(size: 16 << 20, huge: .never)
        let memory = try MemoryFile(name: "hot", on: instance)
        try [UInt8](repeating: 1, count: 16 * Int(Self.page)).withUnsafeBytes { try memory.write($0, at: 0) }
        // Owned by this process, which maps it: the fake tracker calls every page hot.
        let file = MaintainedFile(inode: 2, name: "hot", memory: memory, ownerPID: getpid())
        let policy = try tiered("fast=0,slow=2,fast-capacity=48M,tracker=refault")
        defer { policy.shutdown() }
        let fake = Fake()
        policy.maintenance.withLock { m in
            m.tracker = fake
            m.trackerKind = .refault
        }
        policy.maintain(files: [file])
        policy.maintain(files: [file])
        #expect(policy.counters["hot_bytes"] == .count(16 * Self.page), "every page hot")
        #expect(policy.counters["tracker_state"] == .text("running"))
        fake.paused.withLock { $0 = "swap is active" }
        policy.maintain(files: [file])
        #expect(policy.counters["tracker_state"] == .text("paused: swap is active"))
        #expect(policy.counters["scans"] == .count(2), "a paused pass is no scan")
        let heat = policy.maintenance.withLock { $0.history[2]?.heat ?? [] }
        #expect(heat.count == 16 && heat.allSatisfy { $0 > 100 }, "the history did not cool: \(heat)")
        fake.paused.withLock { $0 = nil }
        policy.maintain(files: [file])
        #expect(policy.counters["tracker_state"] == .text("running") && policy.counters["scans"] == .count(3))
    }

    /// With swap really on (a 16 MiB swap file, switched off again after),
    /// refault sampling says it is paused, `auto` no longer picks it, and a
    /// tiered pass under `tracker=auto` moves off it to what auto picks
    /// then, and back to it once swap is off again.
    @Test func autoLeavesRefaultWhileSwapIsOn() throws {
        try #require(RefaultTracker.isAvailable, "refault sampling must be available here first (no swap active)")
        let path = "/var/tmp/fbmm-test-swap-\(getpid())"
        func sh(_ command: String) -> Int32 {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/bin/sh")
            p.arguments = ["-c", command]
            p.standardOutput = FileHandle.nullDevice
            try? p.run()
            p.waitUntilExit()
            return p.terminationStatus
        }
        // What auto picks with no swap: refault sampling, or DAMON where the kernel offers it.
        let first = TrackerKind.resolveAuto()
        let firstName = first == .auto ? "none" : first.rawValue
        let policy = try tiered("fast=0,slow=2,fast-capacity=48M,tracker=auto")
        defer { policy.shutdown() }
        policy.maintain(files: [])
        #expect(policy.counters["tracker"] == .text(firstName))
        try #require(sh("dd if=/dev/zero of=\(path) bs=1M count=16 status=none && chmod 600 \(path) && mkswap \(path) >/dev/null && swapon \(path)") == 0,
                     "cannot switch a swap file on here (root, a filesystem that takes swap files)")
        defer { _ = sh("swapoff \(path); rm -f \(path)") }
        #expect(RefaultTracker().pausedReason == "swap is active")
        #expect(TrackerKind.resolveAuto() != .refault)
        policy.maintain(files: [])
        policy.maintain(files: [])
        // DAMON sees with swap on: auto stays on it. Refault cannot: auto leaves it.
        #expect((first == .refault) == (policy.counters["tracker"] != .text(firstName)), "\(policy.counters)")
        #expect(policy.counters["tracker_state"] == .text("running"))
        #expect(sh("swapoff \(path)") == 0)
        policy.maintain(files: [])
        #expect(policy.counters["tracker"] == .text(firstName), "back once swap is off: \(policy.counters)")
    }

    // MARK: page history

    @Test func hotCutFollowsTheHottestPage() {
        #expect(TieredPolicy.hotCut(maxHeat: 255) == 127)
        #expect(TieredPolicy.hotCut(maxHeat: 120) == 60)
        #expect(TieredPolicy.hotCut(maxHeat: 10) == 26)
    }

    @Test func historyCountsHotAndColdStreaks() {
        var heat: [UInt8] = [0, 0, 0], hot: [UInt8] = [0, 0, 0], cold: [UInt8] = [0, 0, 0]
        TieredPolicy.record([255, 60, 0], into: &heat, &hot, &cold)
        TieredPolicy.record([255, 200, 0], into: &heat, &hot, &cold)
        #expect(hot == [2, 1, 0])
        #expect(cold == [0, 0, 2])
        #expect(heat[0] > heat[1] && heat[1] > heat[2])
        TieredPolicy.record([0, 0, 255], into: &heat, &hot, &cold)
        #expect(hot == [0, 0, 1] && cold == [1, 1, 0])
    }

    // MARK: promotion and demotion selection

    /// One file of `nodes` (0 fast, 2 slow, -1 absent) with per-page streaks and heat.
    func view(_ nodes: [Int32], hot: [UInt8], cold: [UInt8], heat: [UInt8], key: UInt64 = 7) -> TieredPlanner.FileView {
        TieredPlanner.FileView(key: key, nodes: nodes, hotStreak: hot, coldStreak: cold, heat: heat)
    }

    func planner(limit: Int, capacity: Int? = nil, threshold: Int = 2, budget: Int = 1000) -> TieredPlanner {
        TieredPlanner(fastNode: 0, slowNode: 2, limitPages: limit, capacityPages: capacity ?? limit + 1,
                      promoteThreshold: threshold, budgetPages: budget)
    }

    @Test func promotesSlowPagesHotLongEnoughIntoFreeRoom() {
        // Pages: 0 fast; 1 slow hot 2 scans; 2 slow hot 1 scan (too short); 3 slow cold; 4 absent.
        let v = view([0, 2, 2, 2, -1], hot: [0, 2, 1, 0, 5], cold: [3, 0, 0, 4, 0], heat: [0, 255, 255, 0, 255])
        let plan = planner(limit: 4).plan([v])
        #expect(plan.promote == [7: [1]])
        #expect(plan.demote.isEmpty)
    }

    @Test func makesRoomByDemotingTheColdestFastPages() {
        // The fast node is full (limit 3): pages 0-2 fast, 0 cold for 5 scans, 1 for 2, 2 hot now.
        // Slow pages 3 and 4 are hot (heat 250 and 200), 5 is hot but only for one scan.
        let v = view([0, 0, 0, 2, 2, 2], hot: [0, 0, 3, 2, 4, 1], cold: [5, 2, 0, 0, 0, 0],
                     heat: [10, 20, 255, 250, 200, 255])
        let plan = planner(limit: 3).plan([v])
        #expect(plan.promote == [7: [3, 4]])
        #expect(plan.demote == [7: [0, 1]])
    }

    @Test func doesNotDemotePagesColdForFewerScansThanTheThreshold() {
        // Fast page 0 was hot until the last scan (cold streak 1 < threshold 2): it stays.
        let v = view([0, 2], hot: [0, 3], cold: [1, 0], heat: [120, 255])
        let plan = planner(limit: 1).plan([v])
        #expect(plan.promote.isEmpty && plan.demote.isEmpty)
    }

    @Test func rateLimitBoundsPagesMovedPerPass() {
        // Room for everything, but a budget of 3 pages.
        let v = view([2, 2, 2, 2, 2], hot: [2, 2, 2, 2, 2], cold: [0, 0, 0, 0, 0], heat: [100, 250, 150, 200, 120])
        let plan = planner(limit: 10, budget: 3).plan([v])
        #expect(plan.promote == [7: [1, 2, 3]], "hottest first")
        // Swaps cost two moves each.
        let full = view([0, 0, 2, 2], hot: [0, 0, 2, 2], cold: [4, 4, 0, 0], heat: [0, 0, 200, 250])
        let swap = planner(limit: 2, budget: 3).plan([full])
        #expect(swap.promotedCount == 1 && swap.demotedCount == 1)
        #expect(swap.promote == [7: [3]])
    }

    @Test func aboveTheLimitDemotesDownToIt() {
        // 5 fast pages, limit 3, capacity 4: two cold pages go even with nothing to promote.
        let v = view([0, 0, 0, 0, 0], hot: [0, 1, 0, 1, 0], cold: [1, 0, 6, 0, 2], heat: [50, 255, 5, 255, 40])
        let plan = planner(limit: 3, capacity: 4).plan([v])
        #expect(plan.demote == [7: [2, 4]], "coldest (longest cold streak) first")
        // Above capacity with only hot pages: the least hot go anyway.
        let hot = view([0, 0, 0], hot: [3, 3, 3], cold: [0, 0, 0], heat: [255, 130, 200])
        #expect(planner(limit: 1, capacity: 2).plan([hot]).demote == [7: [1]])
    }

    @Test func selectionSpansFiles() {
        let a = view([0, 0], hot: [0, 0], cold: [9, 3], heat: [0, 30], key: 1)
        let b = view([2, 2], hot: [2, 5], cold: [0, 0], heat: [180, 255], key: 2)
        let plan = planner(limit: 2).plan([a, b])
        #expect(plan.promote == [2: [0, 1]])
        #expect(plan.demote == [1: [0, 1]])
    }

    @Test func backingMappingsAreFoundInProcMaps() {
        let maps = """
            55d0c0a00000-55d0c0a21000 r--p 00000000 fd:01 1234                       /usr/bin/cat
            7f41aa7a9000-7f41b27a9000 rw-s 00200000 00:01 582                        /memfd:hotset (deleted)
            7f41b27a9000-7f41b27aa000 rw-p 00000000 00:00 0 
            7ffd1000-7ffd2000 rw-s 00000000 00:01 77                         /memfd:fbmm arena (deleted)
            7f5000000000-7f5000400000 rw-s 00000000 00:2d 582                /fbmm-backing.3.4242 (deleted)
            7f6000000000-7f6000001000 rw-s 00000000 00:2e 583                /dev/shm/other
            """
        let vmas = VMA.backingMappings(inMaps: maps)
        #expect(vmas.count == 3, "memfds and the private tmpfs's files, nothing else")
        #expect(vmas[0].start == 0x7f41aa7a9000 && vmas[0].end == 0x7f41b27a9000)
        #expect(vmas[0].fileOffset == 0x200000 && vmas[0].inode == 582 && vmas[0].path == "/memfd:hotset (deleted)")
        #expect(vmas[1].inode == 77)
        // Inode 582 twice, on two filesystems: the device tells them apart.
        let tmpfsFile = TrackedFile(key: 9, pid: 1, inode: 582, device: makeDevice(major: 0, minor: 0x2d), pageCount: 1024)
        #expect(vmas.filter { $0.maps(tmpfsFile) }.map(\.path) == ["/fbmm-backing.3.4242 (deleted)"])
        #expect(vmas.filter { $0.maps(TrackedFile(key: 9, pid: 1, inode: 582, pageCount: 1)) }.count == 2)
    }

    /// The refault tracker on a real process (issue 16): a python program
    /// maps a 32 MiB memfd shared, writes all of it once, then only reads
    /// its first 4 MiB; the tracker must score that region hot and the rest
    /// cold, and the data must be intact afterwards (taking pages out of the
    /// page table keeps them).
    @Test func refaultTrackerSeesAReadOnlyHotRegion() throws {
        try #require(RefaultTracker.isAvailable,
                     "refault sampling is not available on this machine (needs process_madvise and no active swap)")
        let script = """
            import mmap, os, sys, time
            n, hot = 32 << 20, 4 << 20
            fd = os.memfd_create("refault-test")
            os.ftruncate(fd, n)
            m = mmap.mmap(fd, n, mmap.MAP_SHARED)
            for i in range(0, n, 4096): m[i] = i // 4096 % 251
            print("ready", flush=True)
            end = time.time() + 20
            while time.time() < end and not os.path.exists(sys.argv[1]):
                s = 0
                for i in range(0, hot, 4096): s += m[i]
            ok = all(m[i] == i // 4096 % 251 for i in range(0, n, 4096))
            print("intact" if ok else "corrupt", flush=True)
            """
        let stop = FileManager.default.temporaryDirectory.path + "/refault-stop-\(getpid())"
        defer { unlink(stop) }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        process.arguments = ["-c", script, stop]
        let out = Pipe()
        process.standardOutput = out
        try process.run()
        defer { if process.isRunning { process.terminate() } }
        let firstLine = String(decoding: out.fileHandleForReading.availableData, as: UTF8.self)
        try #require(firstLine.contains("ready"), "the python program did not start: \(firstLine)")
        let pid = process.processIdentifier
        let vma = try #require(VMA.backingMappings(pid: pid).first { $0.path.hasPrefix("/memfd:refault-test") })
        let file = TrackedFile(key: 1, pid: pid, inode: vma.inode, device: vma.device, pageCount: 8192)
        let tracker = RefaultTracker()
        var scores: [UInt8] = []
        for _ in 0..<3 { scores = tracker.scan([file])[1] ?? [] }
        FileManager.default.createFile(atPath: stop, contents: nil)
        process.waitUntilExit()
        let rest = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        try #require(scores.count == 8192, "no scores for the file")
        let hot = scores[0..<1024].reduce(0) { $0 + Int($1) } / 1024
        let cold = scores[1024...].reduce(0) { $0 + Int($1) } / 7168
        #expect(hot >= 128 && cold <= 16, "mean score: read region \(hot), the rest \(cold)")
        #expect(rest.contains("intact"), "the program's data after sampling: \(rest)")
        #expect(tracker.cpuSeconds > 0)
    }

    @Test func registryKnowsTiered() throws {
        #expect(PolicyRegistry().names.contains("tiered"))
        let policy = try Fixtures.make("tiered,fast=0,slow=1,fast-capacity=1G,tracker=auto", Fixtures.twoNodes)
        #expect(policy is any MaintainingPolicy)
    }
}
