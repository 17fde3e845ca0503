import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The command-line contract: bad input exits non-zero with one clear line
/// and leaves nothing mounted; umount refuses a busy mount.
@Suite(.serialized)
struct CommandLineTests {
    struct BadInput: CustomTestStringConvertible, Sendable {
        var label: String
        var policy: String
        var options: [String]
        var expected: String
        var testDescription: String { label }
    }

    static let badInputs: [BadInput] = [
        BadInput(label: "unknown policy", policy: "nosuch", options: [], expected: "unknown policy 'nosuch'"),
        BadInput(label: "unknown key", policy: "bind", options: ["nodes=0,colour=red"], expected: "no option 'colour'"),
        BadInput(label: "missing key", policy: "bind", options: [], expected: "needs option 'nodes'"),
        BadInput(label: "node that does not exist", policy: "bind", options: ["nodes=7"], expected: "node 7 does not exist"),
        BadInput(label: "unparseable nodes", policy: "interleave", options: ["nodes=0:x"], expected: "nodes=0:x"),
        BadInput(label: "unparseable weights", policy: "interleave", options: ["nodes=0,weights=three"], expected: "weights=three"),
        BadInput(label: "weights not matching nodes", policy: "interleave", options: ["nodes=0,weights=3:1"], expected: "2 weights for 1 nodes"),
        BadInput(label: "bad size", policy: "local", options: ["capacity=lots"], expected: "capacity=lots"),
        BadInput(label: "preferred with two nodes", policy: "preferred", options: ["nodes=0:0"], expected: "listed twice"),
        BadInput(label: "bad pool size", policy: "local", options: ["prezero=lots"], expected: "prezero=lots"),
        BadInput(label: "pool too large", policy: "local", options: ["prezero=2G"], expected: "at most 512M"),
        BadInput(label: "bad huge mode", policy: "local", options: ["huge=sometimes"], expected: "expected always, advise or never"),
        BadInput(label: "contig on a node that does not exist", policy: "contig", options: ["nodes=9"], expected: "node 9 does not exist"),
    ]

    /// `--help` and `-h` are the first thing a new user types: every
    /// subcommand answers them with its usage, on stdout, exit 0.
    @Test(arguments: ["mount", "umount", "run", "stat", "top", "policies", "migrate", "bench", "set", "track"])
    func everySubcommandAnswersHelp(_ subcommand: String) throws {
        for flag in ["--help", "-h"] {
            let result = try run([Artefacts.fbmm, subcommand, flag], timeout: 30)
            #expect(result.ok, "fbmm \(subcommand) \(flag) exits 0: \(result.stderr)")
            #expect(result.stdout.contains("USAGE: fbmm \(subcommand)"), "fbmm \(subcommand) \(flag) prints its usage: \(result.stdout.prefix(200))")
        }
    }

    @Test(arguments: badInputs)
    func badPolicyInputIsOneLineAndMountsNothing(_ input: BadInput) throws {
        try requireFUSE()
        let dir = "/tmp/fbmm-bad-\(getpid())-\(UInt32.random(in: 0..<UInt32.max))"
        mkdir(dir, 0o755)
        defer { if isMounted(dir) { _ = try? run([Artefacts.fbmm, "umount", "--force", dir]) }; rmdir(dir) }
        var arguments = [Artefacts.fbmm, "mount", dir, "--policy", input.policy]
        for option in input.options { arguments += ["-o", option] }
        let result = try run(arguments)
        #expect(result.status != 0)
        let lines = result.stderr.split(separator: "\n")
        #expect(lines.count == 1, "one line: \(result.stderr)")
        #expect(result.stderr.contains(input.expected), "names the problem: \(result.stderr)")
        #expect(!isMounted(dir), "nothing left mounted")
    }

    /// A daemon that is stopped (SIGSTOP, a debugger) answers neither FUSE
    /// nor its socket: `stat`, `set` and `top` end with one line after
    /// FBMM_DAEMON_TIMEOUT seconds (default 60) instead of hanging, and
    /// the mount serves again once the daemon runs.
    @Test func aStoppedDaemonGetsOneLineNotAHang() throws {
        let mount = try TestMount()
        defer { mount.close() }
        let pid = pid_t(number(try mount.statistics()["daemon_pid"]))
        try #require(pid > 0)
        try #require(kill(pid, SIGSTOP) == 0)
        defer { kill(pid, SIGCONT) }
        for command in [["stat", mount.path], ["set", mount.path, "scan-interval=2s"], ["top", mount.path, "--iterations", "1"]] {
            let started = Date()
            let result = try run([Artefacts.fbmm] + command, environment: ["FBMM_DAEMON_TIMEOUT": "2"], timeout: 30)
            let took = Date().timeIntervalSince(started)
            #expect(!result.ok && took < 15, "\(command[0]): \(took) s")
            #expect(result.stderr.split(separator: "\n").count == 1 && result.stderr.contains("gave no answer in 2 s"),
                    "\(command[0]): \(result.stderr)")
        }
        kill(pid, SIGCONT)
        #expect((try? mount.statistics()) != nil, "it answers again")
    }

    @Test func missingAndNonEmptyMountPoints() throws {
        try requireFUSE()
        let missing = try run([Artefacts.fbmm, "mount", "/tmp/fbmm-does-not-exist-\(getpid())"])
        #expect(missing.status != 0 && missing.stderr.contains("does not exist"))
        #expect(missing.stderr.split(separator: "\n").count == 1)
        let dir = "/tmp/fbmm-nonempty-\(getpid())"
        mkdir(dir, 0o755)
        FileManager.default.createFile(atPath: "\(dir)/x", contents: Data())
        defer { unlink("\(dir)/x"); rmdir(dir) }
        let nonEmpty = try run([Artefacts.fbmm, "mount", dir])
        #expect(nonEmpty.status != 0 && nonEmpty.stderr.contains("not empty"))
        #expect(!isMounted(dir))
        let notDir = try run([Artefacts.fbmm, "mount", "\(dir)/x"])
        #expect(notDir.status != 0 && notDir.stderr.contains("not a directory"))
    }

    @Test func mountingTwiceOnTheSamePointIsRefused() throws {
        let mount = try TestMount()
        defer { mount.close() }
        let again = try run([Artefacts.fbmm, "mount", mount.path])
        #expect(again.status != 0)
        #expect(again.stderr.split(separator: "\n").count == 1, "\(again.stderr)")
    }

    @Test func umountOfABusyMountIsRefusedUnlessForced() throws {
        let mount = try TestMount()
        defer { mount.close() }
        let holder = Process()
        holder.executableURL = URL(fileURLWithPath: "/bin/sh")
        holder.arguments = ["-c", "exec 3>'\(mount.file("held"))'; exec sleep 8"]
        try holder.run()
        defer { holder.terminate(); holder.waitUntilExit() }
        for _ in 0..<100 where !FileManager.default.fileExists(atPath: mount.file("held")) { usleep(20_000) }
        let busy = try run([Artefacts.fbmm, "umount", mount.path])
        #expect(busy.status != 0)
        #expect(busy.stderr.contains("busy"), "\(busy.stderr)")
        #expect(isMounted(mount.path))
        holder.terminate()
        holder.waitUntilExit()
        let done = try run([Artefacts.fbmm, "umount", mount.path])
        #expect(done.ok, "\(done.stderr)")
        #expect(!isMounted(mount.path))
    }

    @Test func umountOfSomethingElseIsRefused() throws {
        try requireFUSE()
        let result = try run([Artefacts.fbmm, "umount", "/tmp"])
        #expect(result.status != 0 && result.stderr.contains("not an fbmm mount"))
    }

    @Test func policiesListsBuiltinsWithKeys() throws {
        try requireFUSE()
        let result = try run([Artefacts.fbmm, "policies"])
        #expect(result.ok)
        for name in ["local:", "bind:", "preferred:", "interleave:", "weights", "capacity"] {
            #expect(result.stdout.contains(name), "lists \(name)")
        }
    }

    @Test func statOfANonMountFails() throws {
        try requireFUSE()
        let result = try run([Artefacts.fbmm, "stat", "/tmp"])
        #expect(result.status != 0 && result.stderr.contains("not an fbmm mount"))
    }
}
