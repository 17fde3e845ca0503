import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Issue 14: `MAP_SHARED|MAP_ANONYMOUS` memory is redirected into the mount
/// and keeps the kernel's semantics: shared with fork children and
/// grandchildren both ways, MADV_DONTNEED keeps the data, MADV_REMOVE frees
/// it for everyone, munmap in a child leaves the parent's data, mremap keeps
/// data and sharing (`Tests/shim/sharedanon.c`, natively and under the shim);
/// python3's `mmap.mmap(-1, n, flags=MAP_SHARED)` across `os.fork`; and a
/// postgres server's shared_buffers, when Debian's postgresql is installed.
@Suite(.serialized)
struct SharedAnonTests {
    static var program: String { "\(Artefacts.packageRoot)/shim/build/sharedanon" }

    @Test func sharedAnonymousMemoryKeepsItsSemanticsInTheMount() throws {
        try ShimPrograms.build()
        let native = try run(unblocked([Self.program, "check"]), environment: ["LD_PRELOAD": "", "FBMM_MOUNT": ""], timeout: 60)
        #expect(native.ok && native.stdout.contains("sharedanon: ok"), "natively:\n\(checkFailures(native))")
        #expect(native.stdout.contains("INFO backing devzero"), "natively it is /dev/zero: \(native.stdout.prefix(400))")
        let mount = try TestMount()
        defer { mount.close() }
        for allocator in ["system", "jemalloc"] {
            let shimmed = try run(fbmmRun(mount, ["--allocator", allocator, "--verbose"], [Self.program, "check"]), timeout: 60)
            #expect(shimmed.ok && shimmed.stdout.contains("sharedanon: ok"),
                    "under the shim (\(allocator)) exited \(shimmed.status):\n\(checkFailures(shimmed))")
            #expect(shimmed.stdout.contains("INFO backing memfd") || shimmed.stdout.contains("INFO backing mount"),
                    "the shared region maps the arena (\(allocator)): \(shimmed.stdout.split(separator: "\n").filter { $0.hasPrefix("INFO") })")
            #expect(!shimmed.stderr.contains("falling back"), "\(allocator): \(shimmed.stderr)")
            // Same checks, same order, same verdicts as natively.
            #expect(passLines(shimmed.stdout) == passLines(native.stdout), "\(allocator): check lines differ from native")
        }
        #expect(mountListsNothing(mount), "no arena file left: \((try? FileManager.default.contentsOfDirectory(atPath: mount.path)) ?? [])")
    }

    /// While the program holds 64 MiB of shared memory (written by its fork
    /// child), the mount holds it: `fbmm stat --json`.
    @Test func heldSharedRegionIsInTheMount() throws {
        try ShimPrograms.build()
        // No pre-zeroed pool: its window would count as resident too.
        let mount = try TestMount(options: ["prezero=0"])
        defer { mount.close() }
        let work = try TemporaryDirectory()
        let app = try Background(fbmmRun(mount, ["--verbose"], [Self.program, "hold", work.file("ready"), work.file("go")]))
        defer { app.stop() }
        let ready = try #require(waitForContent(work.file("ready"), seconds: 30), "never got ready: \(app.output)")
        let pid = try #require(Int(ready.trimmingCharacters(in: .whitespacesAndNewlines)))
        let resident = try residentOf(mount, prefix: "sharedanon.\(pid).")
        #expect(resident >= 64 << 20, "the program's arena file holds the 64 MiB shared region: \(resident) bytes")
        FileManager.default.createFile(atPath: work.file("go"), contents: nil)
        #expect(app.wait(seconds: 30) == 0, "\(app.output)")
        #expect(app.stdout.contains("sharedanon: ok") && app.stdout.contains("INFO backing memfd"), "\(app.output)")
    }

    static let pythonProgram = """
        import mmap, multiprocessing, os, sys, time
        ready, go = sys.argv[1], sys.argv[2]
        n = 64 << 20
        m = mmap.mmap(-1, n, flags=mmap.MAP_SHARED)
        m[0:5] = b'hello'
        c2p, p2c = os.pipe(), os.pipe()
        pid = os.fork()
        if pid == 0:
            ok = m[0:5] == b'hello'
            for i in range(4096, n, 4096):
                m[i] = 99
            os.write(c2p[1], b'x')
            os.read(p2c[0], 1)
            ok = ok and m[8:13] == b'world'
            os._exit(0 if ok else 3)
        os.read(c2p[0], 1)
        seen = all(m[i] == 99 for i in range(4096, n, 4096))
        m[8:13] = b'world'
        with open(ready, 'w') as f:
            f.write(str(os.getpid()))
        while not os.path.exists(go):
            time.sleep(0.02)
        os.write(p2c[1], b'x')
        child = os.waitpid(pid, 0)[1]
        def bump(v):
            with v.get_lock():
                v.value += 41
        ctx = multiprocessing.get_context('fork')
        v = ctx.Value('i', 1)
        p = ctx.Process(target=bump, args=(v,))
        p.start(); p.join()
        ok = seen and child == 0 and m[0:5] == b'hello' and v.value == 42 and p.exitcode == 0
        print('shared mmap across fork:', 'ok' if ok else 'FAIL', seen, child, v.value)
        sys.exit(0 if ok else 1)
        """

    /// python3: `mmap.mmap(-1, 64 MiB, flags=MAP_SHARED)` written by an
    /// `os.fork` child and read by the parent (and back), held in the mount
    /// meanwhile; a multiprocessing Value across a fork Process as well.
    @Test func pythonSharedMmapAcrossFork() throws {
        try ShimPrograms.build()
        let work = try TemporaryDirectory()
        FileManager.default.createFile(atPath: work.file("go-native"), contents: nil)
        let native = try run(unblocked(["python3", "-c", Self.pythonProgram, work.file("ready-native"), work.file("go-native")]),
                             environment: ["LD_PRELOAD": "", "FBMM_MOUNT": ""], timeout: 120)
        try #require(native.ok && native.stdout.contains("shared mmap across fork: ok"), "native python3: \(native.stdout) \(native.stderr)")
        let mount = try TestMount(options: ["prezero=0"])  // the pool's window would count as resident
        defer { mount.close() }
        for allocator in ["system", "jemalloc"] {
            let ready = work.file("ready-\(allocator)"), go = work.file("go-\(allocator)")
            let app = try Background(fbmmRun(mount, ["--allocator", allocator, "--verbose"], ["python3", "-c", Self.pythonProgram, ready, go]))
            defer { app.stop() }
            let text = try #require(waitForContent(ready, seconds: 60), "python3 (\(allocator)) never got ready: \(app.output)")
            let pid = try #require(Int(text.trimmingCharacters(in: .whitespacesAndNewlines)))
            let resident = try residentOf(mount, prefix: "python3.\(pid).")
            #expect(resident >= 64 << 20, "python3 (\(allocator)): its arena file holds the 64 MiB shared mmap: \(resident) bytes")
            FileManager.default.createFile(atPath: go, contents: nil)
            #expect(app.wait(seconds: 60) == 0, "python3 (\(allocator)): \(app.output)")
            #expect(app.stdout == native.stdout, "python3 (\(allocator)): \(app.stdout) vs \(native.stdout)")
            #expect(!app.stderr.contains("falling back"), "\(app.stderr.suffix(2000))")
        }
        #expect(mountListsNothing(mount))
    }

    /// A postgres server (Debian's postgresql, started by the test as an
    /// unprivileged user) under the shim: its shared_buffers (an mmap of
    /// MAP_SHARED|MAP_ANONYMOUS memory shared with every backend it forks)
    /// are in the mount while pgbench runs, and pgbench succeeds.
    @Test func postgresSharedBuffersAreInTheMount() throws {
        try ShimPrograms.build()
        let versions = (try? FileManager.default.contentsOfDirectory(atPath: "/usr/lib/postgresql")) ?? []
        let bins = versions.sorted().map { "/usr/lib/postgresql/\($0)/bin" }
            .filter { FileManager.default.isExecutableFile(atPath: "\($0)/postgres") }
        let bin = try #require(bins.last, "Debian's postgresql is needed (scripts/setup.sh installs it): \(versions)")
        let mount = try TestMount(options: ["allow_other", "prezero=0"])  // no pool window counted as resident
        defer { mount.close() }
        let user = try TestUser("pg")
        defer { user.remove() }
        let work = try TemporaryDirectory()
        try #require(chown(work.path, user.uid, user.gid) == 0)
        let data = work.file("data"), socket = work.path, port = "5499"
        let initdb = try user.run(["\(bin)/initdb", "-D", data, "--auth=trust", "-U", "pg", "--no-sync"], timeout: 60)
        try #require(initdb.ok, "initdb: \(initdb.stdout) \(initdb.stderr)")
        let server = try Background(user.command(fbmmRun(mount, ["--verbose"], [
            "\(bin)/postgres", "-D", data, "-k", socket, "-c", "listen_addresses=", "-c", "port=\(port)",
            "-c", "shared_buffers=64MB", "-c", "huge_pages=off", "-c", "fsync=off"])), environment: ["HOME": "/"])
        defer {
            _ = try? user.run(["\(bin)/pg_ctl", "-D", data, "stop", "-m", "immediate"], timeout: 30)
            server.stop()
        }
        let client = ["-h", socket, "-p", port, "-U", "pg"]
        var up = false
        for _ in 0..<150 where !up {
            up = (try? user.run(["\(bin)/pg_isready"] + client, timeout: 10))?.ok == true
            if !up { usleep(100_000) }
        }
        try #require(up, "postgres under the shim never accepted connections: \(server.output.suffix(3000))")
        let initBench = try user.run(["\(bin)/pgbench"] + client + ["-i", "-s", "5", "-q", "postgres"], timeout: 120)
        try #require(initBench.ok, "pgbench -i: \(initBench.stderr.suffix(2000))")
        // Read the accounts table (~64 MiB) into shared_buffers.
        let prewarm = try user.run(["/usr/bin/psql"] + client + ["-d", "postgres", "-Atc",
                                    "CREATE EXTENSION IF NOT EXISTS pg_prewarm; SELECT pg_prewarm('pgbench_accounts');"], timeout: 60)
        #expect(prewarm.ok, "pg_prewarm: \(prewarm.stderr)")
        let bench = try Background(user.command(unblocked(["\(bin)/pgbench"] + client + ["-T", "5", "-c", "4", "postgres"])), environment: ["HOME": "/"])
        defer { bench.stop() }
        usleep(2_000_000)
        let postmaster = try #require(Int((try String(contentsOfFile: "\(data)/postmaster.pid", encoding: .utf8))
                                              .split(separator: "\n").first ?? ""), "postmaster.pid")
        let resident = try residentOf(mount, prefix: "postgres.\(postmaster).")
        print("postgres under the shim: its arena file holds \(resident >> 20) MiB (shared_buffers=64MB)")
        #expect(resident >= 64 << 20, "the postmaster's arena file holds shared_buffers: \(resident) bytes")
        #expect(bench.wait(seconds: 60) == 0, "pgbench -T 5: \(bench.output.suffix(2000))")
        #expect(bench.stdout.contains("number of failed transactions: 0"), "\(bench.stdout)")
        let stop = try user.run(["\(bin)/pg_ctl", "-D", data, "stop", "-m", "fast"], timeout: 60)
        #expect(stop.ok, "pg_ctl stop: \(stop.stderr)")
        #expect(server.wait(seconds: 30) == 0, "postgres exits 0: \(server.output.suffix(3000))")
        #expect(!server.stderr.contains("falling back"), "\(server.stderr.suffix(2000))")
        #expect(mountListsNothing(mount), "no arena file left after postgres stopped")
    }
}

/// Resident bytes of the mount's files whose name starts with `prefix`.
private func residentOf(_ mount: TestMount, prefix: String) throws -> UInt64 {
    let files = try mount.statistics()["files"] as? [[String: Any]] ?? []
    return files.filter { ($0["name"] as? String)?.hasPrefix(prefix) == true }
        .reduce(UInt64(0)) { $0 + ((($1["resident_bytes"]) as? NSNumber)?.uint64Value ?? 0) }
}

private func passLines(_ out: String) -> [Substring] {
    out.split(separator: "\n").filter { $0.hasPrefix("PASS") || $0.hasPrefix("FAIL") }.sorted()
}


