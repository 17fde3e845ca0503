import CFBMMSys
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif
// Over 400 lines: one suite per side of the trust model, as TrustTests.
/// Issue 13, the boundaries of the trust model: what a user may see (stat,
/// migrate), how much of the daemon's memory a user may take (xattrs), the
/// sockets (runtime directory, a broker of another user), and what the
/// daemon records and accepts (owner pids, names, stale sockets). Same
/// method as `TrustTests`: unprivileged users made by the test, real mounts.
/// (One file over 400 lines: one serialized suite whose cases share the
/// test users' setup; each MARK is one bullet of the issue.)
@Suite(.serialized)
struct TrustBoundaryTests {
    static var hostile: String { TrustTests.hostile }
    static var brokerClient: String { TrustTests.brokerClient }
    static let python = TrustTests.python
    static func prepare() throws { try TrustTests.prepare() }

    // MARK: - A user the mount does not let in is told why

    /// A user on a root mount without allow_other gets no fbmm memory at all;
    /// `fbmm run` says so on stderr, naming the fix (`-o allow_other`), even
    /// without --verbose; with --strict it refuses in one line; the shim's
    /// own verbose fallback line names it too (issue 18's first case).
    @Test func userWithoutAccessIsToldToUseAllowOther() throws {
        try Self.prepare()
        let a = try TestUser("tA")
        defer { a.remove() }
        let mount = try TestMount()
        defer { mount.close() }
        let plain = try a.run([Artefacts.fbmm, "run", "--mount", mount.path, "--", "/bin/true"], timeout: 30)
        #expect(plain.ok, "the program still runs: \(plain.stderr)")
        #expect(plain.stderr.contains("-o allow_other"), "fbmm run names the fix: \(plain.stderr)")
        let strict = try a.run([Artefacts.fbmm, "run", "--strict", "--mount", mount.path, "--", "/bin/true"], timeout: 30)
        #expect(!strict.ok && oneLine(strict.stderr) && strict.stderr.contains("allow_other"),
                "--strict refuses in one line: \(strict.stderr)")
        let shim = try a.run(["/usr/bin/python3", "-c", "b = bytearray(8 << 20)"],
                             environment: ["LD_PRELOAD": Artefacts.shim, "FBMM_MOUNT": mount.path, "FBMM_VERBOSE": "1"], timeout: 30)
        #expect(shim.ok && shim.stderr.contains("allow_other"), "the shim says why it falls back: \(shim.stderr)")
    }

    // MARK: - "Information leak"

    /// Issue 13, bullet "Information leak", without allow_other: root's mount
    /// and root's files; user A connects straight to the broker socket and
    /// sends STAT. What comes back lists none of root's files (no names, no
    /// owner pids) — or is a refusal. Root still sees them with `fbmm stat`.
    @Test func statLeaksNothingWithoutAllowOther() throws {
        try Self.prepare()
        let a = try TestUser("tA")
        defer { a.remove() }
        let mount = try TestMount()
        defer { mount.close() }
        let names = ["root-secret-name-\(UInt32.random(in: 0..<UInt32.max))", "root-other-file"]
        for name in names { try Data("root's data".utf8).write(to: URL(fileURLWithPath: mount.file(name))) }
        let socketPath = try brokerSocket(of: mount.path)
        let ask = try a.run([Self.hostile, "ask", "stat", "--sock", socketPath, "--dump"], timeout: 20)
        let reply = AskReply(ask)
        #expect(reply.wellFormed, "A's STAT gets a well-formed reply: \(ask.stdout)\(ask.stderr)")
        for name in names { #expect(!ask.stdout.contains(name), "A's STAT shows root's file \(name): \(ask.stdout)") }
        #expect(!ask.stdout.contains("owner_pid"), "A's STAT shows owner pids: \(ask.stdout)")
        if reply.status == 0 {
            let files = jsonFiles(reply.data)
            #expect(files != nil && files!.isEmpty, "the files A's STAT lists: \(reply.data)")
        }
        // The old protocol's STAT (what leaked before).
        let old = try a.run([Self.hostile, "ask", "stat", "--sock", socketPath, "--dump", "--v1"], timeout: 20)
        for name in names { #expect(!old.stdout.contains(name), "A's version-1 STAT shows root's file \(name): \(old.stdout)") }
        #expect(!old.stdout.contains("owner_pid"), "A's version-1 STAT shows owner pids: \(old.stdout)")
        let root = try fileNames(mount)
        #expect(Set(names).isSubset(of: Set(root)), "root sees its files with fbmm stat: \(root)")
    }

    /// Issue 13, bullet "Information leak", with allow_other: files of users
    /// A and B and root; each user's `fbmm stat` lists only their own files;
    /// root sees all. MIGRATE on B's file opened read-only by A is refused;
    /// on A's own file, or B's 0666 file opened for writing, it works.
    @Test func statAndMigrateShowAndTouchOnlyOwnFiles() throws {
        let scene = try UserScene("tA", "tB")
        defer { scene.close() }
        let (a, b, mount, daemon) = (scene.a, scene.b, scene.mount, scene.daemon)
        try Data("root's".utf8).write(to: URL(fileURLWithPath: mount.file("root-file")))
        try #require(try a.run(["/bin/sh", "-c", "umask 022; printf a > \(mount.file("a-file"))"]).ok)
        try #require(try b.run(["/bin/sh", "-c", "umask 022; printf b > \(mount.file("b-file")); umask 0; printf b > \(mount.file("b-open"))"]).ok)

        for (user, own, others) in [(a, ["a-file"], ["b-file", "b-open", "root-file"]), (b, ["b-file", "b-open"], ["a-file", "root-file"])] {
            let stat = try user.run([Artefacts.fbmm, "stat", mount.path, "--json"], timeout: 20)
            #expect(stat.ok, "\(user.name)'s fbmm stat: \(stat.stderr)")
            let names = (jsonFiles(stat.stdout) ?? []).compactMap { $0["name"] as? String }
            #expect(Set(own).isSubset(of: Set(names)), "\(user.name) sees its own files: \(names)")
            for other in others {
                #expect(!names.contains(other) && !stat.stdout.contains(other), "\(user.name)'s stat shows \(other): \(names)")
            }
        }
        let all = try fileNames(mount)
        #expect(Set(["root-file", "a-file", "b-file", "b-open"]).isSubset(of: Set(all)), "root sees every file: \(all)")

        let foreign = try a.run([Self.hostile, "ask", "migrate", "--mount", mount.path, "--open", mount.file("b-file"),
                                 "--access", "r", "--node", "0"], timeout: 20)
        #expect([Int(EPERM), Int(EACCES)].contains(AskReply(foreign).status),
                "MIGRATE of B's file opened read-only by A is refused (EPERM/EACCES): \(foreign.stdout)\(foreign.stderr)")
        let foreignOld = try a.run([Self.hostile, "ask", "migrate", "--mount", mount.path, "--open", mount.file("b-file"),
                                    "--access", "r", "--node", "0", "--v1"], timeout: 20)
        #expect(AskReply(foreignOld).status > 0, "a version-1 MIGRATE of B's file by A is refused: \(foreignOld.stdout)\(foreignOld.stderr)")
        let cli = try a.run([Artefacts.fbmm, "migrate", mount.file("b-file"), "--to", "0"], timeout: 20)
        #expect(!cli.ok && oneLine(cli.stderr), "fbmm migrate of B's file as A fails with one line: \(cli.stdout)\(cli.stderr)")
        let mine = try a.run([Self.hostile, "ask", "migrate", "--mount", mount.path, "--open", mount.file("a-file"),
                              "--access", "r", "--node", "0"], timeout: 20)
        #expect(AskReply(mine).status == 0, "MIGRATE of A's own file opened read-only works: \(mine.stdout)\(mine.stderr)")
        let writable = try a.run([Self.hostile, "ask", "migrate", "--mount", mount.path, "--open", mount.file("b-open"),
                                  "--access", "w", "--node", "0"], timeout: 20)
        #expect(AskReply(writable).status == 0, "MIGRATE of B's 0666 file opened for writing by A works: \(writable.stdout)\(writable.stderr)")
        try expectDaemonServes(mount, daemon, "after the stat and migrate requests")
    }

    // MARK: - "Unbounded daemon memory"

    /// Issue 13, bullet "Unbounded daemon memory": 64 KiB `user.*` xattrs on
    /// one file stop with ENOSPC/E2BIG after a few (per-file bound 256 KiB of
    /// names and values), and removing one frees its room; spread over many
    /// files they stop at the per-mount bound (default 16M, `-o
    /// xattr-size=SIZE`); the daemon's RSS grows by less than 40 MB over all
    /// of it.
    @Test func xattrStorageIsBounded() throws {
        try Self.prepare()
        let mount = try TestMount()
        defer { mount.close() }
        let daemon = try daemonPID(mount)
        let value = [UInt8](repeating: 0x78, count: 64 << 10)
        let rssBefore = vmRSSKB(daemon)

        // One file.
        let one = mount.file("xattr-one")
        FileManager.default.createFile(atPath: one, contents: Data("x".utf8))
        let single = setXattrs(value, on: [one], perFile: 100, prefix: "user.big.")
        print("xattrs: \(single.set) of 64 KiB set on one file, then \(single.errno.map { String(cString: strerror($0)) } ?? "no error")")
        #expect(single.errno.map { $0 == ENOSPC || $0 == E2BIG } == true,
                "64 KiB xattrs on one file stop with ENOSPC/E2BIG: \(single.set) set, errno \(single.errno.map(String.init) ?? "none")")
        #expect(single.set >= 1 && single.set <= 4, "a 256 KiB per-file bound holds 1 to 4 of them: \(single.set)")
        if single.set >= 1 {
            let removed = try run(["setfattr", "-x", "user.big.0.0", one])
            #expect(removed.ok, "removexattr: \(removed.stderr)")
            let again = value.withUnsafeBytes { fbmm_setxattr(one, "user.big.again", $0.baseAddress, $0.count, 0) }
            #expect(again == 0, "after removing one, its room is free again: \(String(cString: strerror(errno)))")
        }

        // Many files: the per-mount bound (16M by default).
        let files = (0..<200).map { mount.file("xattr-spread-\($0)") }
        for file in files { FileManager.default.createFile(atPath: file, contents: nil) }
        let spread = setXattrs(value, on: files, perFile: 3, prefix: "user.spread.")
        let stored = UInt64(spread.set) * UInt64(value.count)
        print("xattrs: \(spread.set) of 64 KiB (\(stored >> 20) MiB) set over \(files.count) files, then \(spread.errno.map { String(cString: strerror($0)) } ?? "no error")")
        #expect(spread.errno.map { $0 == ENOSPC || $0 == E2BIG } == true,
                "spread over many files they stop at the mount's bound with ENOSPC/E2BIG: \(spread.set) set")
        #expect(stored <= 16 << 20, "at most 16 MiB of xattr values per mount by default: \(stored)")
        #expect(stored >= 8 << 20, "the default mount bound lets at least 8 MiB in: \(stored)")
        let rssAfter = vmRSSKB(daemon)
        print("xattrs: daemon VmRSS \(rssBefore) kB -> \(rssAfter) kB")
        #expect(rssBefore > 0 && rssAfter - rssBefore < 40 * 1024, "the daemon's RSS grew by \(rssAfter - rssBefore) kB (< 40 MB)")
        try expectDaemonServes(mount, daemon, "after the xattr flood")

        // A mount's own bound, and removal freeing it.
        let small = try TestMount(options: ["xattr-size=1M"])
        defer { small.close() }
        let smallFiles = (0..<20).map { small.file("x\($0)") }
        for file in smallFiles { FileManager.default.createFile(atPath: file, contents: nil) }
        let bounded = setXattrs(value, on: smallFiles, perFile: 3, prefix: "user.s.")
        let smallStored = UInt64(bounded.set) * UInt64(value.count)
        #expect(bounded.errno.map { $0 == ENOSPC || $0 == E2BIG } == true && smallStored <= 1 << 20 && bounded.set >= 8,
                "-o xattr-size=1M holds 8 to 16 values of 64 KiB: \(bounded.set), errno \(bounded.errno.map(String.init) ?? "none")")
        // A file with no xattrs of its own (the per-file bound cannot stop
        // it) meets the mount's budget, until a value elsewhere is removed.
        let fresh = small.file("fresh")
        FileManager.default.createFile(atPath: fresh, contents: nil)
        let full = value.withUnsafeBytes { fbmm_setxattr(fresh, "user.s.before", $0.baseAddress, $0.count, 0) }
        #expect(full != 0, "the mount's budget is full: a fresh file cannot take a 64 KiB value either")
        let freed = try run(["setfattr", "-x", "user.s.1.0", smallFiles[1]])
        #expect(freed.ok, "removexattr: \(freed.stderr)")
        let after = value.withUnsafeBytes { fbmm_setxattr(fresh, "user.s.after", $0.baseAddress, $0.count, 0) }
        #expect(after == 0, "removing a value frees room in the mount's budget: \(String(cString: strerror(errno)))")
    }

    // MARK: - "Non-root mounts"

    /// Issue 13, bullet "Non-root mounts" (runtime directory): a user's own
    /// mount creates /tmp/fbmm-UID 0700 and owned by the user, its broker
    /// socket inside; when that directory exists owned by someone else, or
    /// with group/other permissions, `fbmm mount` by the user fails with one
    /// line naming it and leaves nothing mounted.
    @Test func nonRootRuntimeDirectoryIsPrivate() throws {
        try Self.prepare()
        try #require(FileManager.default.isExecutableFile(atPath: "/usr/bin/fusermount3"), "fusermount3 (package fuse3) is needed for non-root mounts")
        let a = try TestUser("tA")
        defer { a.remove() }
        let work = try TemporaryDirectory()
        let mnt = work.file("mnt")
        try FileManager.default.createDirectory(atPath: mnt, withIntermediateDirectories: false)
        try #require(chown(mnt, a.uid, a.gid) == 0)
        defer { if isMounted(mnt) { _ = try? run(["umount", "-l", mnt]) } }
        let runtime = a.runtimeDirectory
        _ = try run(["rm", "-rf", runtime])

        let mounted = try a.run([Artefacts.fbmm, "mount", mnt], timeout: 30)
        try #require(mounted.ok, "a plain user mounts on its own directory (fusermount3): \(mounted.stderr)")
        #expect(isMounted(mnt))
        var st = stat()
        #expect(lstat(runtime, &st) == 0 && st.st_mode & S_IFMT == S_IFDIR, "\(runtime) is a directory")
        #expect(st.st_mode & 0o7777 == 0o700, "\(runtime) is 0700: \(String(st.st_mode & 0o7777, radix: 8))")
        #expect(st.st_uid == a.uid, "\(runtime) belongs to the user: uid \(st.st_uid)")
        let socket = try a.run(["getfattr", "--only-values", "-n", "user.fbmm.broker", mnt])
        #expect(socket.ok && socket.stdout.hasPrefix(runtime + "/"), "the broker socket is in \(runtime): \(socket.stdout)\(socket.stderr)")
        let ownStat = try a.run([Artefacts.fbmm, "stat", mnt])
        #expect(ownStat.ok, "the user's own stat works: \(ownStat.stderr)")
        let umount = try a.run([Artefacts.fbmm, "umount", mnt], timeout: 30)
        #expect(umount.ok && !isMounted(mnt), "the user unmounts: \(umount.stderr)")
        if isMounted(mnt) { _ = try? run(["umount", "-l", mnt]) }

        for (owner, mode) in [(uid_t(0), mode_t(0o700)), (a.uid, mode_t(0o755)), (a.uid, mode_t(0o770)), (a.uid, mode_t(0o707))] {
            _ = try run(["rm", "-rf", runtime])
            try #require(mkdir(runtime, mode) == 0 && chmod(runtime, mode) == 0 && chown(runtime, owner, owner == 0 ? 0 : a.gid) == 0)
            let what = "\(runtime) owned by uid \(owner), mode \(String(mode, radix: 8))"
            let refused = try a.run([Artefacts.fbmm, "mount", mnt], timeout: 30)
            #expect(!refused.ok, "fbmm mount by the user with \(what) is refused: \(refused.stdout)")
            #expect(oneLine(refused.stderr) && refused.stderr.contains(runtime), "one line naming \(runtime): \(refused.stderr.debugDescription)")
            #expect(!isMounted(mnt), "nothing is mounted with \(what)")
            if isMounted(mnt) { _ = try? run(["umount", "-l", mnt]) }
            #expect(waitUntil(seconds: 2) { a.processes().isEmpty }, "no daemon of the user is left with \(what): \(a.processes())")
        }
        _ = try run(["rm", "-rf", runtime])
    }

    /// Issue 13, bullet "Non-root mounts" (the shim's side): root's
    /// allow_other mount, whose broker socket path the test points at a fake
    /// broker run by user A (it answers everything with status 0 and an fd of
    /// a file A controls). A program under the shim run as user B must not use
    /// that fd: it falls back, saying the broker's uid, and A's file gets none
    /// of its memory. With the real broker back, B's program uses the mount.
    @Test func shimRefusesABrokerOfAnotherUser() throws {
        try Self.prepare()
        let a = try TestUser("tA")
        defer { a.remove() }
        let b = try TestUser("tB")
        defer { b.remove() }
        let mount = try TestMount(options: ["allow_other"])
        defer { mount.close() }
        let real = try brokerSocket(of: mount.path)
        try #require(real.hasPrefix("/run/fbmm/"), "root's broker socket lives in /run/fbmm: \(real)")
        let work = try TemporaryDirectory()
        try #require(chown(work.path, a.uid, a.gid) == 0 && chmod(work.path, 0o755) == 0)
        let fake = work.file("fake.sock"), stolen = work.file("stolen")
        let server = try Background(a.command([Self.python, "-c", Self.fakeBroker, fake, stolen, work.file("ready"), work.file("log")]),
                                    environment: ["HOME": "/"])
        defer { server.stop() }
        try #require(waitForFile(work.file("ready"), seconds: 20) != nil, "the fake broker never started: \(server.output)")
        // Point the mount's broker path at A's socket; put the real one back after.
        try #require(rename(real, real + ".real") == 0, "cannot move \(real) aside: \(String(cString: strerror(errno)))")
        var replaced = true
        func restore() {
            guard replaced else { return }
            replaced = false
            unlink(real)
            rename(real + ".real", real)
        }
        defer { restore() }
        try #require(symlink(fake, real) == 0, "cannot point \(real) at the fake broker: \(String(cString: strerror(errno)))")
        let probe = try b.run(fbmmRun(mount, ["--verbose"], [ShimPrograms.probe, "alloc", "32"]), timeout: 60)
        let log = (try? String(contentsOfFile: work.file("log"), encoding: .utf8)) ?? ""
        #expect(probe.ok, "B's program runs (on ordinary memory): \(probe.stdout)\(probe.stderr)")
        #expect(probe.stderr.contains("falling back") && probe.stderr.contains("uid \(a.uid)"),
                "the shim says it falls back because the broker is uid \(a.uid)'s: \(probe.stderr)")
        #expect(kb(probe.stdout, "RssAnon") >= 60 * 1024, "B's memory is anonymous: \(probe.stdout)")
        #expect(!log.contains("request"), "the shim sent the fake broker no request: \(log)")
        var st = stat()
        #expect(stat(stolen, &st) == 0 && st.st_blocks == 0, "A's file got none of B's memory: \(st.st_blocks) blocks")

        restore()  // (`fbmm stat` itself asks the broker at that path)
        #expect(try fileNames(mount).allSatisfy { !$0.hasPrefix("probe.") }, "the refused arena file is removed")
        let honest = try b.run(fbmmRun(mount, ["--verbose"], [ShimPrograms.probe, "alloc", "32"]), timeout: 60)
        #expect(honest.ok && kb(honest.stdout, "RssShmem") >= 60 * 1024 && !honest.stderr.contains("falling back"),
                "with root's broker back, B's program uses the mount: \(honest.stdout)\(honest.stderr)")
    }

    /// A broker as a hostile user would run it: every request answered with
    /// status 0 and an fd of the attacker's own file, in the request's own
    /// protocol version.
    static let fakeBroker = """
        import array, os, socket, struct, sys
        path, backing, ready, log = sys.argv[1:5]
        fd = os.open(backing, os.O_RDWR | os.O_CREAT, 0o600)
        os.ftruncate(fd, 64 << 20)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        s.bind(path)
        os.chmod(path, 0o777)
        s.listen(16)
        out = open(log, "a", buffering=1)
        with open(ready + ".tmp", "w") as f:
            f.write("%d\\n" % os.getpid())
        os.rename(ready + ".tmp", ready)
        while True:
            c, _ = s.accept()
            c.settimeout(2)
            try:
                msg, anc, _f, _a = c.recvmsg(64, socket.CMSG_SPACE(16))
            except OSError as e:
                out.write("connection, error %r\\n" % e)
                c.close()
                continue
            for level, kind, data in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    for i in range(len(data) // 4):
                        os.close(struct.unpack_from("i", data, 4 * i)[0])
            if not msg:
                out.write("connection, no message\\n")
                c.close()
                continue
            version, op = struct.unpack_from("=HHI", msg)[1:] if len(msg) >= 8 else (2, -1)
            out.write("request op %d (version %d): answered with our fd\\n" % (op, version))
            try:
                # In the client's own version: whatever it speaks, it gets our fd.
                c.sendmsg([struct.pack("=HHiQ", 0x4642, version if version in (1, 2) else 2, 0, 64 << 20)],
                          [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
            except OSError as e:
                out.write("reply failed %r\\n" % e)
            c.close()
        """

    // MARK: - "Data races": the recorded owner

    /// Issue 13, bullet "Data races" (the recorded owner): a program under
    /// the shim whose first large allocation happens on a non-main thread:
    /// `fbmm stat --json` shows its arena's owner_pid as the process id
    /// (tgid), not the thread's id. Killed, its arena is gone within 1 s.
    @Test func ownerPidIsTheProcessEvenWhenAThreadAllocates() throws {
        try Self.prepare()
        let a = try TestUser("tA")
        defer { a.remove() }
        let mount = try TestMount(options: ["allow_other"])
        defer { mount.close() }
        let work = try sharedScratch()
        let app = try Background(a.command(fbmmRun(mount, ["--verbose"], [Self.hostile, "threadalloc", work.file("ready")])),
                                 environment: ["HOME": "/"])
        defer { app.stop() }
        let ready = try #require(waitForContent(work.file("ready"), seconds: 30), "threadalloc never got ready: \(app.output)")
        let ids = ready.split(whereSeparator: { $0 == " " || $0 == "\n" }).compactMap { Int32($0) }
        try #require(ids.count == 2, "\(ready)")
        let (pid, tid) = (ids[0], ids[1])
        try #require(pid != tid, "the allocation ran on another thread (tid \(tid), pid \(pid))")
        #expect(pid == app.pid, "fbmm run execs the program")
        let files = try mount.statistics()["files"] as? [[String: Any]] ?? []
        let mine = files.filter { ($0["name"] as? String)?.hasPrefix("hostile.\(pid).") == true }
        #expect(mine.count == 1, "one arena named hostile.\(pid).N: \(files)")
        let owners = mine.map { ($0["owner_pid"] as? NSNumber)?.int32Value ?? -1 }
        #expect(owners == [pid], "owner_pid is the process id \(pid), not the thread id \(tid): \(owners)")
        kill(pid, SIGKILL)
        _ = app.wait(seconds: 10)
        #expect(waitUntil(seconds: 1) { (try? fileNames(mount))?.contains { $0.hasPrefix("hostile.") } == false },
                "a killed program's arena is gone within 1 s: \((try? fileNames(mount)) ?? [])")
    }

    // MARK: - "Names"

    /// Issue 13, bullet "Names": regular files named with 250 to 255 bytes
    /// (ASCII and two-byte UTF-8) are created, written, read back, listed,
    /// renamed and removed, by an unprivileged user, as the kernel allows;
    /// a 256-byte name is ENAMETOOLONG.
    @Test func namesUpTo255BytesWork() throws {
        try Self.prepare()
        let a = try TestUser("tA")
        defer { a.remove() }
        let mount = try TestMount(options: ["allow_other"])
        defer { mount.close() }
        let result = try a.run([Self.python, "-c", Self.longNames, mount.path], timeout: 60)
        #expect(result.ok && !result.stdout.contains("FAIL"), "long names:\n\(result.stdout)\(result.stderr)")
        #expect(result.stdout.components(separatedBy: "PASS").count - 1 >= 9, "\(result.stdout)")
        #expect(try fileNames(mount).isEmpty, "everything was removed")
    }

    static let longNames = """
        import errno, os, sys
        m = sys.argv[1]
        def check(what, ok, detail=""):
            print(("PASS %s" % what) if ok else ("FAIL %s: %s" % (what, detail)), flush=True)
        def roundtrip(name, other, what):
            p, q = os.path.join(m, name), os.path.join(m, other)
            try:
                data = ("data of %s" % what).encode()
                with open(p, "wb") as f:
                    f.write(data)
                back = open(p, "rb").read()
                listed = name in os.listdir(m)
                os.rename(p, q)
                renamed = not os.path.exists(p) and open(q, "rb").read() == data and other in os.listdir(m)
                os.unlink(q)
                check(what, back == data and listed and renamed and not os.path.exists(q),
                      "read %r listed %s renamed %s" % (back[:20], listed, renamed))
            except OSError as e:
                check(what, False, repr(e))
        for n in range(250, 256):
            a, b = ("n%d-" % n) + "x" * (n - 5), ("r%d-" % n) + "y" * (n - 5)
            assert len(a.encode()) == n and len(b.encode()) == n
            roundtrip(a, b, "%d-byte name" % n)
        u = "\\u00e9" * 127 + "x"
        assert len(u.encode()) == 255
        roundtrip(u, "\\u00e8" * 127 + "y", "255-byte UTF-8 name")
        d = os.path.join(m, "d" * 255)
        try:
            os.mkdir(d)
            with open(os.path.join(d, "f" * 255), "w") as f:
                f.write("inside")
            ok = open(os.path.join(d, "f" * 255)).read() == "inside"
            os.unlink(os.path.join(d, "f" * 255))
            os.rmdir(d)
            check("255-byte file in a 255-byte directory", ok)
        except OSError as e:
            check("255-byte file in a 255-byte directory", False, repr(e))
        try:
            open(os.path.join(m, "z" * 256), "w").close()
            check("256-byte name is ENAMETOOLONG", False, "created")
        except OSError as e:
            check("256-byte name is ENAMETOOLONG", e.errno == errno.ENAMETOOLONG, repr(e))
        """

    /// Issue 13, bullet "Names" (stale sockets): a daemon killed with SIGKILL
    /// leaves its broker socket in /run/fbmm; the next mount removes it,
    /// and leaves a live daemon's socket alone.
    @Test func staleBrokerSocketsAreRemovedAtStart() throws {
        try requireFUSE()
        let live = try TestMount()
        defer { live.close() }
        let liveSocket = try brokerSocket(of: live.path)
        let doomed = try TestMount()
        defer { doomed.close() }
        let doomedDaemon = try daemonPID(doomed)
        let stale = try brokerSocket(of: doomed.path)
        try #require(kill(doomedDaemon, SIGKILL) == 0)
        #expect(waitUntil(seconds: 5) { !isAlive(doomedDaemon) }, "the daemon died")
        try #require(FileManager.default.fileExists(atPath: stale), "a SIGKILLed daemon leaves its socket \(stale) behind")
        _ = try run([Artefacts.fbmm, "umount", "--force", doomed.path])
        if isMounted(doomed.path) { _ = try run(["umount", "-l", doomed.path]) }

        let stateAtMount = processState(doomedDaemon)
        let next = try TestMount()
        defer { next.close() }
        // (Where nothing reaps orphans promptly — a container's pid 1 — the
        // killed daemon may still be a zombie: dead, its socket refusing.)
        #expect(waitUntil(seconds: 2) { !FileManager.default.fileExists(atPath: stale) },
                "the new mount removed the stale socket \(stale) (daemon \(doomedDaemon) when the new mount started: \(stateAtMount))")
        #expect(FileManager.default.fileExists(atPath: liveSocket), "a live daemon's socket stays: \(liveSocket)")
        let stat = try run([Artefacts.fbmm, "stat", live.path])
        #expect(stat.ok, "the live mount still answers: \(stat.stderr)")
    }

}
