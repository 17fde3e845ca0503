import FBMMCore
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The pre-zeroed pool (`-o prezero=SIZE`) and huge pages (`-o huge=`,
/// `--policy contig`) on real mounts: every range the pool hands out reads
/// zero, the pool never holds more than its bound, and the huge-page settings
/// either work or are refused with the line that says what to change.
@Suite(.serialized)
struct PoolTests {
    static var poolcheck: String { "\(Artefacts.packageRoot)/shim/build/poolcheck" }

    /// Threads and fork children churning mappings and calloc blocks under
    /// the shim, on a small pool so that pages go round many times (taken,
    /// freed, zeroed by the daemon, taken again): every byte handed out is
    /// checked to be zero, natively and under the shim.
    @Test func everyHandedOutRangeReadsZero() throws {
        try ShimPrograms.build()
        let native = try run(unblocked([Self.poolcheck, "--iters", "1500"]), timeout: 300)
        #expect(native.ok && native.stdout.contains("poolcheck: ok"), "natively: \(native.stdout) \(native.stderr)")

        let mount = try TestMount(options: ["prezero=8M"])
        defer { mount.close() }
        let shimmed = try run(fbmmRun(mount, ["--min-size", "4K", "--verbose"], [Self.poolcheck, "--iters", "1500"]), timeout: 300)
        #expect(shimmed.ok && shimmed.stdout.contains("poolcheck: ok"), "under the shim: \(shimmed.stdout) \(shimmed.stderr)")
        #expect(shimmed.stderr.contains("using the pre-zeroed pool"), "\(shimmed.stderr)")
        #expect(!shimmed.stderr.contains("falling back"), "\(shimmed.stderr)")

        let pool = try #require(try mount.statistics()["prezero"] as? [String: Any], "fbmm stat shows the pool")
        let handed = number(pool["handed_out_bytes"]), zeroed = number(pool["zeroed_bytes"])
        // The program's own mappings went through the pool, and freed pages came
        // back and were zeroed again: the run exercised the reuse path, not just
        // the first fill.
        #expect(handed > 64 << 20, "bytes handed out from the pool: \(handed)")
        #expect(zeroed > 16 << 20, "freed bytes zeroed by the daemon: \(zeroed)")
        #expect(number(pool["enrolled_total"]) >= 5, "the parent and its 4 fork children enrolled: \(pool)")
        #expect(number(pool["arenas"]) == 0, "no arena stays enrolled after the programs exit: \(pool)")
    }

    /// A new arena is filled to what it has shown it takes, not to its share
    /// of the bound: a program that took one mapping from the pool and then
    /// idles leaves at most a few MiB filled for it (it was its full share,
    /// the whole 64 MiB when alone: allocated and zeroed for every compiler
    /// process of a `make`, and freed unused).
    @Test func anIdleNewArenaIsFilledToItsDemandNotItsShare() throws {
        try ShimPrograms.build()
        let mount = try TestMount(options: ["prezero=64M"])
        defer { mount.close() }
        let work = try TemporaryDirectory()
        // 1 MiB: one mapping under 2 MiB, served from the pool.
        let app = try Background(fbmmRun(mount, ["--verbose"], [ShimPrograms.probe, "hold", "1", work.file("ready"), work.file("go")]))
        defer { app.stop() }
        try #require(waitForFile(work.file("ready"), seconds: 30) != nil, "\(app.output)")
        usleep(1_500_000)  // the zeroing thread's passes (it fills at 512 pages a pass) have settled
        let pool = try #require(try mount.statistics()["prezero"] as? [String: Any], "\(app.output)")
        #expect(app.stderr.contains("using the pre-zeroed pool"), "\(app.stderr)")
        #expect(number(pool["arenas"]) == 1, "\(pool)")
        #expect(number(pool["filled_bytes"]) <= 8 << 20, "filled for an arena that took 1 MiB: \(pool)")
        FileManager.default.createFile(atPath: work.file("go"), contents: nil)
        #expect(app.wait(seconds: 30) == 0, "\(app.output)")
    }

    /// Three idle programs each holding a pool after heavy churn: what `fbmm
    /// stat` calls ready never exceeds the bound, and neither does the memory
    /// really allocated in their pool windows once the programs have freed
    /// everything (SEEK_DATA over each window, not the daemon's own count).
    @Test func poolNeverExceedsItsBound() throws {
        try ShimPrograms.build()
        let bound: UInt64 = 6 << 20
        let mount = try TestMount(options: ["prezero=6M"])
        defer { mount.close() }
        let work = try TemporaryDirectory()
        var apps: [Background] = []
        defer { apps.forEach { $0.stop() } }
        for i in 0..<3 {
            // No malloc block cache: freed calloc blocks would otherwise stay
            // mapped in the arena as the program's own memory.
            apps.append(try Background(fbmmRun(mount, ["--min-size", "4K"],
                ["env", "FBMM_MALLOC_CACHE=0", Self.poolcheck, "--iters", "800", "--forks", "0", "--threads", "2",
                 "--ready", work.file("ready\(i)"), "--go", work.file("go")])))
        }
        var worst: UInt64 = 0
        var samples = 0
        var readyCount = 0
        let deadline = Date().addingTimeInterval(240)
        while readyCount < 3 && Date() < deadline {
            let pool = (try mount.statistics()["prezero"] as? [String: Any]) ?? [:]
            worst = max(worst, number(pool["ready_bytes"]))
            samples += 1
            readyCount = (0..<3).filter { FileManager.default.fileExists(atPath: work.file("ready\($0)")) }.count
            usleep(50_000)
        }
        try #require(readyCount == 3, "the programs never finished churning: \(apps.map(\.output))")
        #expect(samples > 3)
        #expect(worst <= bound, "ready bytes peaked at \(worst), bound \(bound)")
        // Let the daemon settle what was freed last (freed pages waiting to be
        // zeroed are the programs' memory, not yet the pool's), then look at
        // real memory.
        var stats = try mount.statistics()
        let settle = Date().addingTimeInterval(10)
        while number((stats["prezero"] as? [String: Any])?["pending_bytes"]) > 0 && Date() < settle {
            usleep(100_000)
            stats = try mount.statistics()
        }
        // The pass that took the last of them may still be zeroing or punching.
        usleep(1_000_000)
        stats = try mount.statistics()
        let pool = try #require(stats["prezero"] as? [String: Any])
        #expect(number(pool["arenas"]) == 3, "\(pool)")
        #expect(number(pool["ready_bytes"]) <= bound, "\(pool)")
        // Each idle program keeps a page or two of its own (stdio buffers:
        // every allocation of a page or more is redirected).
        let own: UInt64 = 16 << 10
        // The memory in the arenas' pool windows: the ready pages, and what the
        // idle programs still hold from the pool (a page or two each).
        func heldBytes(_ stats: [String: Any]) -> UInt64 {
            (stats["files"] as? [[String: Any]] ?? []).reduce(UInt64(0)) { $0 + number($1["prezero_window_bytes"]) }
        }
        // What the daemon was still settling when the programs went idle (and
        // pages a concurrent `fbmm stat` faulted into window ranges being
        // punched, which its idle pass frees) goes within seconds.
        let quiet = Date().addingTimeInterval(10)
        while heldBytes(stats) > bound + 3 * own && Date() < quiet {
            usleep(200_000)
            stats = try mount.statistics()
        }
        let files = stats["files"] as? [[String: Any]] ?? []
        #expect(files.count == 3)
        let held = heldBytes(stats)
        #expect(files.allSatisfy { $0["prezero_window_bytes"] != nil }, "every arena enrolled: \(files)")
        #expect(held <= bound + 3 * own, "idle programs' pool windows hold \(held) bytes; bound \(bound); \(pool); \(files.map { "\($0["path"] ?? "") window \(number($0["prezero_window_bytes"])) file \(number($0["allocated_bytes"]))" })")
        #expect(held >= number(pool["ready_bytes"]), "ready pages are real memory: \(held) vs \(pool)")
        FileManager.default.createFile(atPath: work.file("go"), contents: nil)
        for app in apps {
            #expect(app.wait(seconds: 60) == 0, "poolcheck under the shim: \(app.output)")
            #expect(app.stdout.contains("poolcheck: ok"), "\(app.output)")
        }
    }

    /// prezero=0 turns the pool off (the shim is told so and maps lazily), and
    /// FBMM_PREZERO=0 keeps one program out of a mount's pool.
    @Test func poolCanBeTurnedOff() throws {
        try ShimPrograms.build()
        let off = try TestMount(options: ["prezero=0"])
        defer { off.close() }
        let value = try run(["getfattr", "--only-values", "-n", "user.fbmm.prezero", off.path])
        #expect(value.ok && value.stdout == "0", "user.fbmm.prezero on a mount without pool: \(value.stdout) \(value.stderr)")
        let plain = try run(fbmmRun(off, ["--min-size", "4K", "--verbose"], [Self.poolcheck, "--iters", "300", "--forks", "1"]), timeout: 300)
        #expect(plain.ok && plain.stdout.contains("poolcheck: ok"), "\(plain.stdout) \(plain.stderr)")
        #expect(!plain.stderr.contains("pre-zeroed pool"), "\(plain.stderr)")
        #expect(try off.statistics()["prezero"] == nil, "no pool section without a pool")

        let on = try TestMount()
        defer { on.close() }
        let optedOut = try run(fbmmRun(on, ["--min-size", "4K", "--verbose"], [Self.poolcheck, "--iters", "300", "--forks", "0"]),
                               environment: ["FBMM_PREZERO": "0"], timeout: 300)
        #expect(optedOut.ok && optedOut.stdout.contains("poolcheck: ok"), "\(optedOut.stdout) \(optedOut.stderr)")
        let pool = try #require(try on.statistics()["prezero"] as? [String: Any])
        #expect(number(pool["handed_out_bytes"]) == 0 && number(pool["enrolled_total"]) == 0, "\(pool)")
    }

    /// huge=always and the contig policy: on memfds (backing=memfd) they
    /// need shmem THP, and where the system forbids it the mount is
    /// refused in one line naming the sysfs setting (and backing=tmpfs);
    /// on the daemon's private tmpfs, which honours its own huge= whatever
    /// shmem_enabled says, both mount on a stock system and a program's
    /// memory is PMD-mapped.
    @Test(arguments: [["-o", "huge=always"], ["--policy", "contig"]])
    func hugePagesWorkWithoutSysfsChanges(_ arguments: [String]) throws {
        try requireFUSE()
        let dir = FileManager.default.temporaryDirectory.path + "/fbmm-test-huge-\(getpid())-\(UInt32.random(in: 0..<UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { _ = try? run([Artefacts.fbmm, "umount", dir]); rmdir(dir) }
        if !ShmemHugePageSupport.current().allowsAdvisedMappings {
            let refused = try run([Artefacts.fbmm, "mount", dir, "-o", "backing=memfd"] + arguments)
            #expect(!refused.ok && refused.stderr.split(separator: "\n").count == 1 && refused.stderr.contains("shmem_enabled")
                    && refused.stderr.contains("backing=tmpfs"), "memfds: one clear line: \(refused.stderr)")
            #expect(!isMounted(dir), "nothing mounted")
        }
        let result = try run([Artefacts.fbmm, "mount", dir, "-o", "backing=tmpfs"] + arguments)
        try #require(result.ok, "\(arguments) must mount on a stock system: \(result.stderr)")
        let stat = try run([Artefacts.fbmm, "stat", dir])
        #expect(stat.stdout.contains("backing: private tmpfs") && stat.stdout.contains("huge pages: always"), "\(stat.stdout)")
        let value = try run(["getfattr", "--only-values", "-n", "user.fbmm.huge", dir])
        #expect(value.stdout == "always")
        try ShimPrograms.build()
        // 64 MiB touched under the shim, not asking for huge pages: the
        // instance's huge=always gives PMD-mapped shmem huge pages.
        let probe = try run(unblocked([Artefacts.fbmm, "run", "--mount", dir, "--", ShimPrograms.probe, "hugepmd", "64"]), timeout: 120)
        #expect(probe.ok, "\(probe.stdout) \(probe.stderr)")
        let kb = Int(probe.stdout.split(separator: " ").last.map { String($0).trimmingCharacters(in: .whitespacesAndNewlines) } ?? "") ?? 0
        #expect(kb >= 32 * 1024, "ShmemPmdMapped/FilePmdMapped kB of the program: \(probe.stdout)")
    }

    /// With backing=tmpfs the mount's file memory gets huge pages exactly as
    /// the host gives anonymous memory by default: a program that asks (MADV_HUGEPAGE, as
    /// JVMs and jemalloc's thp:always do) gets them under the shim as it
    /// does natively (unless the host's THP is `never`); `-o huge=never`
    /// gives none even when asked.
    @Test func hugePagesFollowTheHostsAnonymousSetting() throws {
        try ShimPrograms.build()
        func pmdKB(_ result: CommandResult) -> Int {
            Int(result.stdout.split(separator: " ").last.map { String($0).trimmingCharacters(in: .whitespacesAndNewlines) } ?? "") ?? -1
        }
        let native = try run(unblocked([ShimPrograms.probe, "hugepmd", "64", "ask"]), timeout: 120)
        try #require(native.ok, "\(native.stderr)")
        let mount = try TestMount(options: ["backing=tmpfs"])
        defer { mount.close() }
        let shimmed = try run(fbmmRun(mount, [], [ShimPrograms.probe, "hugepmd", "64", "ask"]), timeout: 120)
        try #require(shimmed.ok, "\(shimmed.stderr)")
        let host = HugePageMode.hostAnonymous()
        if host == .never {
            #expect(pmdKB(shimmed) == 0, "the host gives no huge pages, nor does the mount: \(shimmed.stdout)")
        } else {
            #expect(pmdKB(native) >= 32 * 1024, "natively the asking program gets huge pages: \(native.stdout)")
            #expect(pmdKB(shimmed) >= 32 * 1024, "under the shim too (host THP \(host)): \(shimmed.stdout)")
        }
        let never = try TestMount(options: ["backing=tmpfs", "huge=never"])
        defer { never.close() }
        let refused = try run(fbmmRun(never, [], [ShimPrograms.probe, "hugepmd", "64", "ask"]), timeout: 120)
        #expect(refused.ok && pmdKB(refused) == 0, "huge=never: none even when asked: \(refused.stdout)")
    }
}

