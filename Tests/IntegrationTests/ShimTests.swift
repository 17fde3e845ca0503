import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The LD_PRELOAD shim against the real daemon (broker mode): real programs
/// under `fbmm run` compared with native runs, where their memory lands, what
/// happens when the app or the daemon dies, fallback and strict mode without
/// a mount, and a broker that must refuse everything but honest requests.
@Suite(.serialized)
struct ShimTests {
    // MARK: semantics

    /// The shim's core structures against reference models: the region
    /// table (an order-statistics treap since issue 15: random inserts,
    /// removals, splits, merges and lookups, and a 100,000-piece burst) and
    /// the offset allocator (a treap of free ranges: the same first-fit
    /// answers as a sorted array); once optimised and once under
    /// AddressSanitizer + UndefinedBehaviorSanitizer.
    @Test func coreStructureUnitTests() throws {
        try ShimPrograms.build()
        for (program, ops) in [("regions_test", "300000"), ("regions_test_san", "100000"),
                               ("offsets_test", "300000"), ("offsets_test_san", "100000")] {
            let result = try run(["\(Artefacts.packageRoot)/shim/build/\(program)", ops], timeout: 300)
            #expect(result.ok && result.stdout.contains(" 0 failure(s)"), "\(program): \(result.stdout) \(result.stderr)")
        }
    }

    @Test func semanticsProgramNativeAndUnderShim() throws {
        try ShimPrograms.build()
        let native = try run(unblocked([ShimPrograms.semantics]), environment: ["LD_PRELOAD": "", "FBMM_MOUNT": ""], timeout: 120)
        #expect(native.ok && !native.stdout.contains("FAIL"), "native semantics:\n\(failures(native))")
        #expect(native.stdout.contains("# semantics: native checks"))
        let passes = native.stdout.split(separator: "\n").filter { $0.hasPrefix("PASS ") }.count
        #expect(passes > 40, "native semantics ran \(passes) checks")

        let mount = try TestMount()
        defer { mount.close() }
        for allocator in ["system", "jemalloc"] {
            let shimmed = try run(fbmmRun(mount, ["--allocator", allocator, "--verbose"], [ShimPrograms.semantics]),
                                  timeout: 180)
            #expect(shimmed.ok && !shimmed.stdout.contains("FAIL"), "semantics under the shim (\(allocator)) exited \(shimmed.status):\n\(failures(shimmed))")
            #expect(shimmed.stdout.contains("# semantics: under the shim, checking the mount"))
            #expect(shimmed.stdout.contains("PASS RssShmem grows with malloc"), "memory is in the mount (\(allocator))")
            #expect(shimmed.stderr.contains("fbmm: using fbmm mount \(mount.path)"), "\(shimmed.stderr)")
            #expect(!shimmed.stderr.contains("falling back"), "\(shimmed.stderr)")
            let count = shimmed.stdout.split(separator: "\n").filter { $0.hasPrefix("PASS ") }.count
            #expect(count >= passes, "under the shim \(count) checks passed, natively \(passes)")
            #expect(try mountEmpties(mount), "no arena file left behind after the semantics program")
        }
    }

    /// The whole shim built with UndefinedBehaviorSanitizer and with
    /// AddressSanitizer (`make -C shim sanitized`), preloaded over the
    /// semantics program on a real mount: every check passes and neither
    /// sanitizer reports anything (both abort on their first report). ASan's
    /// runtime must be first in the preload list and owns malloc then, so
    /// that run checks the mmap, munmap, mremap, madvise, fork, thread and
    /// descriptor paths (ASan's mmap interceptor hands every mapping on to
    /// the shim) and the malloc-family paths run under UBSan.
    @Test func semanticsUnderSanitizers() throws {
        try ShimPrograms.build()
        let libasan = try run(["cc", "-print-file-name=libasan.so"], timeout: 30).stdout
            .trimmingCharacters(in: .whitespacesAndNewlines)
        try #require(libasan.hasPrefix("/"), "no libasan.so for the compiler (apt install libasan8 / gcc)")
        let mount = try TestMount()
        defer { mount.close() }
        let build = "\(Artefacts.packageRoot)/shim/build"
        let runs: [(String, String, [String: String])] = [
            ("UndefinedBehaviorSanitizer", "\(build)/ubsan/libfbmm-shim.so", [:]),
            ("AddressSanitizer", "\(libasan) \(build)/asan/libfbmm-shim.so",
             ["SEMANTICS_FOREIGN_MALLOC": "1", "ASAN_OPTIONS": "detect_leaks=0:allocator_may_return_null=1"]),
        ]
        for (sanitizer, preload, extra) in runs {
            let env = ["LD_PRELOAD": preload, "FBMM_MOUNT": mount.path, "FBMM_VERBOSE": "1"].merging(extra) { $1 }
            let result = try run(unblocked([ShimPrograms.semantics]), environment: env, timeout: 240)
            let passes = result.stdout.split(separator: "\n").filter { $0.hasPrefix("PASS ") }.count
            #expect(result.ok && !result.stdout.contains("FAIL") && passes > 40,
                    "semantics under the \(sanitizer) shim exited \(result.status), \(passes) passed:\n\(failures(result))")
            #expect(result.stdout.contains("# semantics: under the shim, checking the mount"))
            #expect(result.stderr.contains("fbmm: using fbmm mount \(mount.path)"), "\(sanitizer): \(result.stderr)")
            for report in ["runtime error:", "ERROR: AddressSanitizer", "ERROR: LeakSanitizer"] {
                #expect(!result.stderr.contains(report) && !result.stdout.contains(report), "\(sanitizer) reported:\n\(result.stderr)")
            }
            #expect(try mountEmpties(mount), "no arena file left behind after the \(sanitizer) run")
        }
    }

    // MARK: real programs, compared with native runs

    static let pythonProgram = """
        import hashlib, os, sys, time
        n = 256 << 20
        b = bytearray(range(256)) * (n // 256)
        b[12345] = 7
        print(len(b), hashlib.sha256(b).hexdigest(), flush=True)
        kb = [int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('RssShmem:')][0]
        ready, go = sys.argv[1], sys.argv[2]
        with open(ready + '.tmp', 'w') as f:
            f.write('%d %d\\n' % (os.getpid(), kb))
        os.rename(ready + '.tmp', ready)
        for _ in range(3000):
            if os.path.exists(go):
                break
            time.sleep(0.01)
        b[0:4096] = bytes(4096)
        print(hashlib.sha256(b).hexdigest(), sum(b[::65536]))
        """

    @Test func pythonBytearrayLandsInTheMount() throws {
        try ShimPrograms.build()
        let work = try TemporaryDirectory()
        // Natively: `go` exists from the start, so it does not wait.
        FileManager.default.createFile(atPath: work.file("go-native"), contents: nil)
        let native = try run(unblocked(["python3", "-c", Self.pythonProgram, work.file("ready-native"), work.file("go-native")]),
                             timeout: 120)
        try #require(native.ok, "native python3: \(native.stderr)")

        let mount = try TestMount()
        defer { mount.close() }
        let app = try Background(fbmmRun(mount, ["--verbose"],
                                         ["python3", "-c", Self.pythonProgram, work.file("ready"), work.file("go")]))
        defer { app.stop() }
        let ready = try #require(waitForContent(work.file("ready"), seconds: 60), "python3 under the shim never got ready: \(app.output)")
        let fields = ready.split(separator: " ").compactMap { Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
        try #require(fields.count == 2)
        let (pid, shmemKB) = (fields[0], fields[1])
        #expect(pid == Int(app.pid), "fbmm run execs the program (same pid)")
        let arrayKB = 256 * 1024
        print("python3 (system allocator): RssShmem \(shmemKB) kB for a \(arrayKB) kB bytearray: \(percent(shmemKB, arrayKB)) in the mount")
        #expect(Double(shmemKB) >= 0.9 * Double(arrayKB), "RssShmem \(shmemKB) kB")
        let files = try mountFiles(mount)
        let mine = files.filter { ($0["name"] as? String)?.hasPrefix("python3.\(pid).") == true }
        #expect(mine.count == 1, "one arena file named python3.\(pid).N: \(files)")
        let resident = mine.reduce(UInt64(0)) { $0 + number($1["resident_bytes"]) }
        #expect(resident >= 256 << 20, "resident_bytes of python3's file: \(resident)")
        FileManager.default.createFile(atPath: work.file("go"), contents: nil)
        let status = app.wait(seconds: 60)
        #expect(status == 0, "python3 under the shim: \(app.output)")
        #expect(app.stdout == native.stdout, "same output as native:\n\(app.stdout)\nvs\n\(native.stdout)")
        #expect(app.stderr.contains("using fbmm mount"), "\(app.stderr)")
        #expect(try mountEmpties(mount), "python3's file is gone after it exits")
    }

    static let sqliteScript = """
        PRAGMA cache_size=-1000000;
        CREATE TABLE t(a INTEGER PRIMARY KEY, b TEXT, c INTEGER);
        WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM s WHERE x < 600000)
        INSERT INTO t SELECT x, printf('%08d-%s', (x * 7919) % 1000003, hex(x * x)), x % 97 FROM s;
        CREATE INDEX tb ON t(b);
        SELECT count(*), sum(length(b)), sum(c) FROM t;
        SELECT a, b FROM t ORDER BY b LIMIT 3;
        SELECT c, count(*) FROM t GROUP BY c ORDER BY 2 DESC, 1 LIMIT 3;
        DELETE FROM t WHERE c < 50;
        SELECT count(*), max(b) FROM t;
        """

    @Test func sqliteInMemoryDatabase() throws {
        try ShimPrograms.build()
        let native = try run(unblocked(["sqlite3", ":memory:", Self.sqliteScript]), timeout: 120)
        try #require(native.ok && native.stdout.contains("600000|"), "native sqlite3: \(native.stderr)")
        let mount = try TestMount()
        defer { mount.close() }
        var fractions: [String: Double] = [:]
        for allocator in ["jemalloc", "system"] {
            let sampled = try runSampled(fbmmRun(mount, ["--allocator", allocator, "--verbose"],
                                                 ["sqlite3", ":memory:", Self.sqliteScript]))
            #expect(sampled.result.ok, "sqlite3 (\(allocator)): \(sampled.result.stderr)")
            #expect(sampled.result.stdout == native.stdout, "sqlite3 (\(allocator)) output differs:\n\(sampled.result.stdout)")
            #expect(!sampled.result.stderr.contains("falling back"), "\(sampled.result.stderr)")
            fractions[allocator] = sampled.fraction
            print("sqlite3 (\(allocator)): peak RssShmem \(sampled.shmemKB) kB, RssAnon \(sampled.anonKB) kB: \(percent(sampled.shmemKB, sampled.shmemKB + sampled.anonKB)) in the mount")
            #expect(try mountEmpties(mount))
        }
        #expect((fractions["jemalloc"] ?? 0) >= 0.9, "with jemalloc most of sqlite3's memory is in the mount: \(fractions)")
    }

    @Test func sortWithLargeBuffer() throws {
        try ShimPrograms.build()
        let work = try TemporaryDirectory()
        let generate = try run(["awk", "-v", "out=\(work.file("in"))", """
            BEGIN { srand(7); for (i = 0; i < 1500000; i++) printf "%d %x line %d\\n", int(rand() * 1e9), i * 2654435761 % 4294967296, i > out }
            """])
        try #require(generate.ok, "\(generate.stderr)")
        let native = try run(unblocked(["sh", "-c", "LC_ALL=C exec sort -S 200M \"$1\" > \"$2\"", "sh", work.file("in"), work.file("native")]))
        try #require(native.ok, "\(native.stderr)")
        let mount = try TestMount()
        defer { mount.close() }
        let sampled = try runSampled(fbmmRun(mount, ["--verbose"], ["sh", "-c", "LC_ALL=C exec sort -S 200M \"$1\" > \"$2\"",
                                                                    "sh", work.file("in"), work.file("shim")]))
        #expect(sampled.result.ok, "\(sampled.result.stderr)")
        let same = try run(["cmp", work.file("native"), work.file("shim")])
        #expect(same.ok, "sort output differs: \(same.stdout)")
        print("sort -S 200M: peak RssShmem \(sampled.shmemKB) kB, RssAnon \(sampled.anonKB) kB: \(percent(sampled.shmemKB, sampled.shmemKB + sampled.anonKB)) in the mount")
        #expect(sampled.fraction >= 0.8 && sampled.shmemKB > 50 * 1024, "sort's buffer is in the mount")
        #expect(try mountEmpties(mount))
    }

    @Test(arguments: [
        ("--vm 1 --vm-bytes 128M --verify", true),
        ("--mmap 1 --mmap-bytes 64M --verify", true),
        ("--mremap 1 --verify", true),
        ("--madvise 1 --verify", true),
        ("--malloc 1 --verify", true),
        ("--fork 2 --verify", false),
        ("--mmapfork 1 --mmapfork-ops 1 --verify", false),
    ])
    func stressNG(_ stressor: String, _ usesMount: Bool) throws {
        try ShimPrograms.build()
        // Stressors run unprivileged (as root, --madvise may MADV_HWPOISON host
        // pages), so the mount lets other users in; modes still apply.
        let mount = try TestMount(options: ["allow_other"], name: "stressNG")
        defer { mount.close() }
        let work = try TemporaryDirectory()
        chmod(work.path, 0o1777)
        let arguments = stressor.split(separator: " ").map(String.init)
            + ["--timeout", "3s", "--metrics", "--temp-path", work.path]
        let started = Date()
        // In the background with a deadline: a stressor that never stops fails the test, never hangs it.
        let app = try Background(["sh", "-c", "cd \"$1\" && shift && exec \"$@\"", "sh", work.path]
                                 + fbmmRun(mount, ["--verbose"], ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                                                                  "stress-ng"] + arguments))
        defer { app.stop() }
        let status = app.wait(seconds: 90)
        let result = CommandResult(status: status, stdout: app.stdout, stderr: app.stderr)
        let output = result.stdout + result.stderr
        #expect(result.ok, "stress-ng \(stressor) exited \(result.status):\n\(output)")
        #expect(!output.lowercased().contains("fail"), "stress-ng \(stressor):\n\(output)")
        #expect(output.contains("metrc:"), "metrics printed")
        #expect(!output.contains("falling back"), "stress-ng \(stressor) fell back:\n\(output)")
        if usesMount { #expect(output.contains("fbmm: using fbmm mount"), "stress-ng \(stressor) used the mount:\n\(output)") }
        print("stress-ng \(stressor): \(String(format: "%.1f", Date().timeIntervalSince(started))) s")
        #expect(try mountEmpties(mount), "stress-ng \(stressor) left files behind")
    }

    // MARK: lifecycle

    @Test func appExitOrKillLeavesNothingBehind() throws {
        try ShimPrograms.build()
        let mount = try TestMount()
        defer { mount.close() }
        // A normal exit.
        let exited = try run(fbmmRun(mount, [], [ShimPrograms.probe, "alloc", "64"]))
        #expect(exited.ok && exited.stdout.contains("malloc ok") && exited.stdout.contains("mmap ok"), "\(exited.stdout)")
        #expect(kb(exited.stdout, "RssShmem") >= 120 * 1024, "the probe's memory was in the mount: \(exited.stdout)")
        #expect(try mountEmpties(mount), "file and memory freed after exit")

        // SIGKILL while holding memory.
        let work = try TemporaryDirectory()
        let app = try Background(fbmmRun(mount, [], [ShimPrograms.probe, "hold", "96", work.file("ready"), work.file("go")]))
        defer { app.stop() }
        try #require(waitForFile(work.file("ready"), seconds: 30) != nil, "\(app.output)")
        let files = try mountFiles(mount)
        let mine = files.filter { ($0["name"] as? String)?.hasPrefix("probe.\(app.pid).") == true }
        #expect(mine.count == 1, "\(files)")
        #expect(mine.reduce(UInt64(0)) { $0 + number($1["resident_bytes"]) } >= 96 << 20, "\(files)")
        kill(app.pid, SIGKILL)
        _ = app.wait(seconds: 10)
        let gone = try mountEmpties(mount, within: 1.0)
        #expect(gone, "a killed app's file and memory are gone within 1 s: \((try? mountFiles(mount)) ?? [])")
    }

    /// The daemon bounds the requests one user has in flight (8) and refuses
    /// past that unread; the shim must wait its turn rather than fall back,
    /// or a burst of processes (stress-ng's mmapfork, a parallel build)
    /// silently leaves the policy. 256 processes released at one instant
    /// each ask for their arena's backing, three times over (before the
    /// shim retried busy answers, 4 runs in 5 had some fall back).
    @Test func aBurstOfProcessesAllGetTheMount() throws {
        try ShimPrograms.build()
        let mount = try TestMount()
        defer { mount.close() }
        for _ in 0..<3 {
            let burst = try run(fbmmRun(mount, ["--verbose"], [ShimPrograms.probe, "burst", "256", "2"]), timeout: 120)
            #expect(burst.ok, "every process of the burst ran: \(burst.stdout.suffix(300)) \(burst.stderr.suffix(300))")
            let fellBack = burst.stderr.split(separator: "\n").filter { $0.contains("falling back") }
            #expect(fellBack.isEmpty, "none fell back to anonymous memory: \(fellBack.count) did: \(fellBack.first ?? "")")
            let placed = burst.stdout.split(separator: "\n").filter { $0.hasPrefix("RssShmem ") }
                .compactMap { Int($0.dropFirst(9)) }
            #expect(placed.count == 256 && placed.allSatisfy { $0 >= 3 * 1024 },
                    "each one's 4 MiB in the mount: \(placed.count) reported, least \(placed.min() ?? 0) KiB")
            if !fellBack.isEmpty || !burst.ok { break }
        }
    }

    @Test func daemonDeathDoesNotKillTheApp() throws {
        try ShimPrograms.build()
        let mount = try TestMount()
        defer { mount.close() }
        let work = try TemporaryDirectory()
        let app = try Background(fbmmRun(mount, ["--verbose"],
                                         [ShimPrograms.probe, "hold", "64", work.file("ready"), work.file("go")]))
        defer { app.stop() }
        try #require(waitForFile(work.file("ready"), seconds: 30) != nil, "\(app.output)")
        let daemon = try #require((try mount.statistics()["daemon_pid"] as? NSNumber)?.int32Value)
        #expect(kill(daemon, SIGKILL) == 0)
        for _ in 0..<100 where processAlive(daemon) { usleep(20_000) }
        #expect(!processAlive(daemon), "the daemon is dead")
        FileManager.default.createFile(atPath: work.file("go"), contents: nil)
        let status = app.wait(seconds: 60)
        let out = app.stdout
        #expect(status == 0, "the app survives the daemon: \(app.output)")
        #expect(out.contains("data ok"), "its data in the mount still reads and writes correctly: \(out)")
        #expect(out.contains("new ok"), "new allocations work: \(out)")
        #expect(app.stderr.contains("falling back to anonymous memory"), "new allocations fell back: \(app.stderr)")
        // The 256 MiB allocated after the daemon died are ordinary memory.
        let anon = out.split(separator: "\n").filter { $0.hasPrefix("RssAnon ") }.compactMap { Int($0.dropFirst(8)) }
        #expect((anon.last ?? 0) >= 230 * 1024, "RssAnon after the daemon died: \(anon)")
        // The dead mount is cleaned up.
        let umount = try run([Artefacts.fbmm, "umount", "--force", mount.path])
        #expect(umount.ok || !isMounted(mount.path), "\(umount.stderr)")
        if isMounted(mount.path) { _ = try run(["umount", "-l", mount.path]) }
        #expect(!isMounted(mount.path), "the dead mount is gone")
    }

    // MARK: no mount, strict mode

    @Test func noMountFallsBackOrFailsInStrictMode() throws {
        try ShimPrograms.build()
        let plain = try TemporaryDirectory()
        let missing = plain.file("not-there")
        for directory in [plain.path, missing] {
            let shim = ["LD_PRELOAD": Artefacts.shim, "FBMM_MOUNT": directory, "FBMM_VERBOSE": "1"]
            let fallback = try run([ShimPrograms.probe, "alloc", "64"], environment: shim)
            #expect(fallback.ok && fallback.stdout.contains("malloc ok") && fallback.stdout.contains("mmap ok"),
                    "\(directory): \(fallback.stdout)\(fallback.stderr)")
            #expect(kb(fallback.stdout, "RssShmem") < 8 * 1024, "ordinary memory: \(fallback.stdout)")
            #expect(kb(fallback.stdout, "RssAnon") >= 120 * 1024, "ordinary memory: \(fallback.stdout)")
            #expect(fallback.stderr.contains("fbmm: falling back to anonymous memory"), "\(fallback.stderr)")

            var strictEnv = shim
            strictEnv["FBMM_STRICT"] = "1"
            let strict = try run([ShimPrograms.probe, "alloc", "64"], environment: strictEnv)
            #expect(strict.status == 3, "strict: both allocations fail: \(strict.stdout)\(strict.stderr)")
            #expect(strict.stdout.contains("malloc errno ENOMEM") && strict.stdout.contains("mmap errno ENOMEM"), "\(strict.stdout)")
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: plain.path).isEmpty,
                "nothing is created in a directory that is not an fbmm mount")
        // fbmm run says so, runs the program on ordinary memory, or refuses in strict mode.
        let cli = try run([Artefacts.fbmm, "run", "--mount", plain.path, "--verbose", "--", ShimPrograms.probe, "alloc", "16"])
        #expect(cli.ok && cli.stderr.contains("is not an fbmm mount"), "\(cli.stderr)")
        let cliStrict = try run([Artefacts.fbmm, "run", "--mount", plain.path, "--strict", "--", ShimPrograms.probe, "alloc", "16"])
        #expect(!cliStrict.ok && cliStrict.stderr.contains("not an fbmm mount"), "\(cliStrict.stderr)")
    }

    // MARK: the broker

    @Test func brokerRefusesAndKeepsAnswering() throws {
        try ShimPrograms.build()
        let mount = try TestMount()
        defer { mount.close() }
        let before = try mount.statistics()
        let client = try run(["python3", "\(Artefacts.packageRoot)/Tests/shim/broker_client.py", mount.path], timeout: 60)
        #expect(client.ok, "broker client:\n\(client.stdout)\(client.stderr)")
        #expect(client.stdout.contains("# 0 failure(s)"), "\(client.stdout)")
        let counters = try mount.statistics()["counters"] as? [String: Any]
        let refusals = number(counters?["broker_refusals"]) - number((before["counters"] as? [String: Any])?["broker_refusals"])
        #expect(refusals >= 15, "refusals are counted: \(refusals)")
        // And the shim still gets its backing afterwards.
        let probe = try run(fbmmRun(mount, ["--verbose"], [ShimPrograms.probe, "alloc", "32"]))
        #expect(probe.ok && kb(probe.stdout, "RssShmem") >= 60 * 1024, "\(probe.stdout)\(probe.stderr)")
        #expect(try mountEmpties(mount))
    }
}
