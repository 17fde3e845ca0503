import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Paths of the built artefacts under test. `scripts/build.sh` puts the shim
/// next to the executable; FBMM_BIN overrides the executable.
enum Artefacts {
    static let packageRoot: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.path
    }()

    static var fbmm: String {
        if let bin = ProcessInfo.processInfo.environment["FBMM_BIN"] { return bin }
        for config in ["debug", "release"] {
            let path = "\(packageRoot)/.build/\(config)/fbmm"
            if FileManager.default.isExecutableFile(atPath: path) { return path }
        }
        return "\(packageRoot)/.build/debug/fbmm"
    }

    static var shim: String { (fbmm as NSString).deletingLastPathComponent + "/libfbmm-shim.so" }
}

/// The outcome of a finished command.
struct CommandResult {
    var status: Int32
    var stdout: String
    var stderr: String
    var ok: Bool { status == 0 }
}

/// Runs a command to completion, with an optional environment overlay.
@discardableResult
func run(_ arguments: [String], environment: [String: String] = [:], input: Data? = nil,
         timeout: TimeInterval = 300) throws -> CommandResult {
    let process = Process()
    // coreutils timeout puts the command in its own process group and kills the
    // whole group when time is up, so grandchildren holding our pipes open
    // cannot hang the test run.
    process.executableURL = URL(fileURLWithPath: "/usr/bin/timeout")
    process.arguments = ["-k", "5", "\(Int(timeout.rounded(.up)))s"] + (arguments[0].hasPrefix("/") ? [] : ["/usr/bin/env"]) + arguments
    var env = ProcessInfo.processInfo.environment
    for (k, v) in environment { env[k] = v }
    process.environment = env
    let out = Pipe(), err = Pipe()
    process.standardOutput = out
    process.standardError = err
    let inPipe = Pipe()
    process.standardInput = input == nil ? FileHandle.nullDevice : inPipe
    // Swift Testing's worker threads block most signals and a spawned child
    // inherits that mask: stress-ng would never see its SIGALRM, nor timeout
    // its own. Spawn with nothing blocked.
    var empty = sigset_t(), saved = sigset_t()
    sigemptyset(&empty)
    pthread_sigmask(SIG_SETMASK, &empty, &saved)
    defer { pthread_sigmask(SIG_SETMASK, &saved, nil) }
    try process.run()
    if let input {
        inPipe.fileHandleForWriting.write(input)
        try? inPipe.fileHandleForWriting.close()
    }
    // Drain both pipes concurrently so a chatty child never blocks.
    nonisolated(unsafe) var errData = Data()
    let group = DispatchGroup()
    group.enter()
    DispatchQueue.global().async {
        errData = err.fileHandleForReading.readDataToEndOfFile()
        group.leave()
    }
    let outData = out.fileHandleForReading.readDataToEndOfFile()
    group.wait()
    process.waitUntilExit()
    return CommandResult(status: process.terminationStatus,
                         stdout: String(decoding: outData, as: UTF8.self),
                         stderr: String(decoding: errData, as: UTF8.self))
}

/// Fails the test (never skips it) when the environment cannot run real mounts.
func requireFUSE() throws {
    try #require(access("/dev/fuse", R_OK | W_OK) == 0,
                 "/dev/fuse is not available: real-mount tests cannot run here (they fail rather than skip)")
    try #require(geteuid() == 0, "integration tests mount filesystems and must run as root")
    try #require(FileManager.default.isExecutableFile(atPath: Artefacts.fbmm),
                 "fbmm is not built at \(Artefacts.fbmm): run scripts/build.sh first")
}

/// Whether `path` is currently a mount point of an fbmm filesystem.
func isMounted(_ path: String) -> Bool {
    let text = (try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)) ?? ""
    return text.split(separator: "\n").contains { line in
        let fields = line.split(separator: " ")
        return fields.count > 4 && fields[4] == path && line.contains(" - fuse.fbmm ")
    }
}

/// A real fbmm mount on a fresh temporary directory, unmounted and removed
/// by `close()` — which tests call from `defer`, so it happens on failure too.
final class TestMount {
    let path: String
    private(set) var closed = false

    init(policy: String = "local", options: [String] = [], name: String = #function) throws {
        try requireFUSE()
        let base = FileManager.default.temporaryDirectory.path
        let clean = name.filter { $0.isLetter || $0.isNumber }
        path = "\(base)/fbmm-test-\(clean)-\(getpid())-\(UInt32.random(in: 0..<UInt32.max))"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        var arguments = [Artefacts.fbmm, "mount", path, "--policy", policy, "--log-level", "debug",
                         "--log-file", "\(path).log"]
        for option in options { arguments += ["-o", option] }
        let result = try run(arguments)
        guard result.ok else {
            try? FileManager.default.removeItem(atPath: path)
            throw MountFailure(message: "fbmm mount failed (\(result.status)): \(result.stderr)")
        }
    }

    struct MountFailure: Error, CustomStringConvertible { let message: String; var description: String { message } }

    func file(_ name: String) -> String { "\(path)/\(name)" }

    /// Statistics as `fbmm stat --json` reports them.
    func statistics() throws -> [String: Any] {
        let result = try run([Artefacts.fbmm, "stat", path, "--json"])
        guard result.ok, let object = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any] else {
            throw MountFailure(message: "fbmm stat failed: \(result.stderr)")
        }
        return object
    }

    func close() {
        guard !closed else { return }
        closed = true
        // A daemon that died under a test leaves a dead mount: show its log in
        // the test output (and keep the file) so the failure can be diagnosed.
        var fs = statvfs()
        if isMounted(path) && statvfs(path, &fs) != 0 && errno == ENOTCONN {
            let log = (try? String(contentsOfFile: "\(path).log", encoding: .utf8)) ?? "(no log)"
            FileHandle.standardError.write(Data("fbmm daemon of \(path) died; its log:\n\(log.suffix(4000))\n".utf8))
            _ = try? run([Artefacts.fbmm, "umount", "--force", path])
            rmdir(path)
            return
        }
        if isMounted(path) {
            _ = try? run([Artefacts.fbmm, "umount", path])
            if isMounted(path) { _ = try? run([Artefacts.fbmm, "umount", "--force", path]) }
        }
        rmdir(path)
        unlink("\(path).log")
    }

    deinit { close() }
}

/// An unprivileged user made for one test (`useradd --system`, no home, no
/// shell), so that a test can act as a hostile local user. `remove()` — which
/// tests call from `defer`, so it happens on failure too — kills every process
/// still running as the user (by pid, found in /proc), deletes the user with
/// `userdel` and removes its fbmm runtime directory `/tmp/fbmm-UID`.
final class TestUser {
    let name: String
    let uid: uid_t
    let gid: gid_t
    private(set) var removed = false

    /// `tag` names the user's role in the test (tA, tB...): fbmm-tA-1a2b3c4d.
    init(_ tag: String) throws {
        try #require(geteuid() == 0, "creating test users needs root")
        try #require(FileManager.default.isExecutableFile(atPath: "/usr/sbin/useradd")
                     && FileManager.default.isExecutableFile(atPath: "/usr/sbin/userdel"),
                     "useradd/userdel (package passwd) are needed to create the test's unprivileged users")
        try #require(FileManager.default.isExecutableFile(atPath: TestUser.setpriv),
                     "setpriv (package util-linux) is needed to run commands as the test's users")
        let name = "fbmm-\(tag)-\(String(UInt32.random(in: 0..<UInt32.max), radix: 16))"
        let made = try IntegrationTests.run(["/usr/sbin/useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name])
        try #require(made.ok, "useradd \(name) failed (\(made.status)): \(made.stderr)")
        guard let entry = getpwnam(name) else {
            _ = try? IntegrationTests.run(["/usr/sbin/userdel", name])
            throw TestMount.MountFailure(message: "useradd made \(name) but getpwnam does not find it")
        }
        self.name = name
        uid = entry.pointee.pw_uid
        gid = entry.pointee.pw_gid
    }

    static let setpriv = "/usr/bin/setpriv"

    /// `arguments` run as this user, with no supplementary groups.
    func command(_ arguments: [String]) -> [String] {
        [TestUser.setpriv, "--reuid=\(uid)", "--regid=\(gid)", "--clear-groups", "--"] + arguments
    }

    /// Runs `arguments` to completion as this user (HOME=/: root's home is not theirs).
    @discardableResult
    func run(_ arguments: [String], environment: [String: String] = [:], input: Data? = nil,
             timeout: TimeInterval = 120) throws -> CommandResult {
        var env = ["HOME": "/"]
        for (k, v) in environment { env[k] = v }
        return try IntegrationTests.run(command(arguments), environment: env, input: input, timeout: timeout)
    }

    /// The processes whose real or effective uid is this user's, now.
    func processes() -> [pid_t] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.compactMap { entry -> pid_t? in
            guard let pid = pid_t(entry), pid != getpid(),
                  let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
                  let line = status.split(separator: "\n").first(where: { $0.hasPrefix("Uid:") }) else { return nil }
            let ids = line.dropFirst(4).split(whereSeparator: { $0 == " " || $0 == "\t" }).prefix(2).compactMap { uid_t($0) }
            return ids.contains(uid) ? pid : nil
        }
    }

    /// Its fbmm runtime directory when it runs a daemon itself.
    var runtimeDirectory: String { "/tmp/fbmm-\(uid)" }

    func remove() {
        guard !removed else { return }
        removed = true
        // Kill by pid until none is left (a dying process may still fork).
        for _ in 0..<50 {
            let left = processes()
            if left.isEmpty { break }
            left.forEach { kill($0, SIGKILL) }
            usleep(20_000)
        }
        _ = try? IntegrationTests.run(["/usr/sbin/userdel", name])
        _ = try? IntegrationTests.run(["rm", "-rf", runtimeDirectory])
    }

    deinit { remove() }
}

/// The check lines of a PASS/FAIL test program that did not pass, and its
/// stderr, for a failure message.
func checkFailures(_ result: CommandResult) -> String {
    result.stdout.split(separator: "\n").filter { !$0.hasPrefix("PASS") }.joined(separator: "\n") + "\n" + result.stderr
}

/// Whether, within a few seconds, the mount lists no file (every arena file
/// went away with its process).
func mountListsNothing(_ mount: TestMount, within seconds: Double = 3.0) -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    repeat {
        if let listed = try? FileManager.default.contentsOfDirectory(atPath: mount.path), listed.isEmpty { return true }
        usleep(20_000)
    } while Date() < deadline
    return false
}

/// A JSON number as UInt64 (0 when absent or not a number).
func number(_ value: Any?) -> UInt64 { (value as? NSNumber)?.uint64Value ?? 0 }
