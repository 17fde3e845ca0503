import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Issue 14, copy-on-write fork: a fork child's private memory is a lazy
/// copy of the parent's (CopyOnWrite.swift, shim/src/cow.c), and fork keeps
/// the kernel's semantics exactly: neither side sees the other's later
/// writes (with a grandchild, with another thread writing through the fork,
/// with the kernel writing into untouched pages by read(2)), memory freed
/// and reused on either side, MADV_WIPEONFORK/DONTFORK, fork+exec.
/// `Tests/shim/cowfork.c` runs natively and under the shim.
@Suite(.serialized)
struct CowForkTests {
    static var cowfork: String { "\(Artefacts.packageRoot)/shim/build/cowfork" }

    private func native(_ mode: [String]) throws -> CommandResult {
        try run(unblocked([Self.cowfork] + mode), environment: ["LD_PRELOAD": "", "FBMM_MOUNT": ""], timeout: 120)
    }

    @Test func semanticsMatchNativeCopyOnWrite() throws {
        try ShimPrograms.build()
        let reference = try native(["checks"])
        try #require(reference.ok && reference.stdout.contains("cowfork: ok"), "native cowfork:\n\(checkFailures(reference))")
        let mount = try TestMount()
        defer { mount.close() }
        for allocator in ["system", "jemalloc"] {
            let shimmed = try run(fbmmRun(mount, ["--allocator", allocator, "--verbose"], [Self.cowfork, "checks"]), timeout: 120)
            #expect(shimmed.ok && shimmed.stdout.contains("cowfork: ok"),
                    "cowfork under the shim (\(allocator)) exited \(shimmed.status):\n\(checkFailures(shimmed))")
            // Root has a userfaultfd that handles kernel faults: no fork may fall back.
            #expect(!shimmed.stderr.contains("copies eagerly") && !shimmed.stderr.contains("copying everything"),
                    "\(allocator): \(shimmed.stderr)")
        }
        #expect(mountListsNothing(mount), "no arena file left behind")
    }

    /// The same checks through the eager copy (`-o cow-chunk=0`), which
    /// says so once with --verbose.
    @Test func eagerFallbackKeepsSemantics() throws {
        try ShimPrograms.build()
        let mount = try TestMount(options: ["cow-chunk=0"])
        defer { mount.close() }
        let shimmed = try run(fbmmRun(mount, ["--verbose"], [Self.cowfork, "checks"]), timeout: 120)
        #expect(shimmed.ok && shimmed.stdout.contains("cowfork: ok"), "\(checkFailures(shimmed))")
        #expect(shimmed.stderr.contains("fork copies eagerly"), "\(shimmed.stderr)")
    }

    /// An unprivileged user gets no /dev/userfaultfd from the daemon
    /// (kernel-mode fault handling is what vm.unprivileged_userfaultfd=0
    /// withholds): its forks copy eagerly, and stay correct.
    @Test func unprivilegedUserForksCorrectly() throws {
        try ShimPrograms.build()
        let user = try TestUser("cw")
        defer { user.remove() }
        let mount = try TestMount(options: ["allow_other"])
        defer { mount.close() }
        let shimmed = try user.run(fbmmRun(mount, ["--verbose"], [Self.cowfork, "checks"]), timeout: 120)
        #expect(shimmed.ok && shimmed.stdout.contains("cowfork: ok"), "\(checkFailures(shimmed))")
        if sysctlValue("vm/unprivileged_userfaultfd") == "0" {
            #expect(shimmed.stderr.contains("fork copies eagerly"), "\(shimmed.stderr)")
        }
    }

    /// While an idle child lives, the mount holds the parent's memory once
    /// (the eager copy held it twice), and fork returned without copying.
    @Test func idleChildCopiesNothing() throws {
        try ShimPrograms.build()
        let mount = try TestMount()
        defer { mount.close() }
        let megabytes = 256
        let result = try run(fbmmRun(mount, [], [Self.cowfork, "resident", String(megabytes)]), timeout: 120)
        try #require(result.ok, "\(checkFailures(result))")
        let bytes = kb(result.stdout, "mount-bytes")  // the line's number
        let parent = megabytes << 20
        #expect(bytes >= parent && bytes < parent + parent / 4,
                "mount holds \(bytes) bytes for a \(parent)-byte parent and an idle child:\n\(result.stdout)")
    }
}

extension CowForkTests {
    /// The daemon killed while a parent's memory is write-protected for an
    /// idle lazy-copy child: the parent's writes must not wait for the dead
    /// daemon (it holds no userfaultfd of its own; the write-protection died
    /// with the daemon's). The old shim kept one and hung here.
    @Test func parentWritesAfterTheDaemonDies() throws {
        try ShimPrograms.build()
        let mount = try TestMount()
        defer { mount.close() }
        let work = try TemporaryDirectory()
        let program = try Background(fbmmRun(mount, [], [Self.cowfork, "orphan", work.file("ready"), work.file("go")]))
        defer { program.stop() }
        try #require(waitForFile(work.file("ready"), seconds: 30) != nil, "\(program.output)")
        let daemon = try #require((try mount.statistics()["daemon_pid"] as? NSNumber)?.int32Value)
        #expect(kill(daemon, SIGKILL) == 0)
        for _ in 0..<100 where kill(daemon, 0) == 0 { usleep(20_000) }
        FileManager.default.createFile(atPath: work.file("go"), contents: nil)
        #expect(program.wait(seconds: 30) == 0, "the parent finished its writes: \(program.output)")
        #expect(program.stdout.contains("parent writes ok"), "\(program.stdout)")
    }
}

private func sysctlValue(_ name: String) -> String? {
    (try? String(contentsOfFile: "/proc/sys/\(name)", encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
}
