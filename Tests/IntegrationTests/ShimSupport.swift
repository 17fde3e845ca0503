import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// What the tests that run programs under the shim share: the shim's C
/// test programs, `fbmm run` command lines, output parsing, waiting for
/// files, temporary directories and background processes.
/// The shim's C test programs, built by `make -C shim test-programs` (scripts/build.sh does it too).
enum ShimPrograms {
    static var semantics: String { "\(Artefacts.packageRoot)/shim/build/semantics" }
    static var probe: String { "\(Artefacts.packageRoot)/shim/build/probe" }

    static func build() throws {
        let make = try run(["make", "-s", "-C", "\(Artefacts.packageRoot)/shim", "all", "test-programs"], timeout: 120)
        try #require(make.ok, "cannot build the shim's test programs: \(make.stderr)")
        try #require(FileManager.default.fileExists(atPath: Artefacts.shim), "the shim is not next to fbmm: run scripts/build.sh")
    }
}

/// `fbmm run` of `command` on `mount`, started with an ordinary signal mask (see `unblocked`).
func fbmmRun(_ mount: TestMount, _ options: [String], _ command: [String]) -> [String] {
    unblocked([Artefacts.fbmm, "run", "--mount", mount.path] + options + ["--"] + command)
}

/// `command` with all signals unblocked and default dispositions: Foundation's
/// Process hands its children the signal mask of the test's worker thread,
/// which blocks SIGALRM, SIGCHLD, SIGTERM... (stress-ng then never stops).
func unblocked(_ command: [String]) -> [String] {
    [ShimPrograms.probe, "unblock"] + command
}

/// The check lines that failed, and stderr, for a failure message.
func failures(_ result: CommandResult) -> String {
    result.stdout.split(separator: "\n").filter { !$0.hasPrefix("PASS") }.joined(separator: "\n") + "\n" + result.stderr
}


func percent(_ part: Int, _ whole: Int) -> String {
    String(format: "%.1f%%", whole > 0 ? 100 * Double(part) / Double(whole) : 0)
}

/// The value of "KEY N" in the probe's output (kB).
func kb(_ output: String, _ key: String) -> Int {
    output.split(separator: "\n").last { $0.hasPrefix(key + " ") }.flatMap { Int($0.dropFirst(key.count + 1)) } ?? -1
}

func mountFiles(_ mount: TestMount) throws -> [[String: Any]] {
    try mount.statistics()["files"] as? [[String: Any]] ?? []
}

/// Whether, within `seconds`, the mount lists no file and holds no memory.
func mountEmpties(_ mount: TestMount, within seconds: Double = 1.0) throws -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    repeat {
        let stats = try mount.statistics()
        let files = stats["files"] as? [[String: Any]] ?? []
        let used = number((stats["pool"] as? [String: Any])?["used_bytes"])
        let nodes = stats["nodes"] as? [String: [String: Any]] ?? [:]
        let resident = nodes.values.reduce(UInt64(0)) { $0 + number($1["resident_bytes"]) }
        let listed = (try? FileManager.default.contentsOfDirectory(atPath: mount.path)) ?? ["?"]
        if files.isEmpty && used == 0 && resident == 0 && listed.isEmpty { return true }
        usleep(20_000)
    } while Date() < deadline
    return false
}

func processAlive(_ pid: pid_t) -> Bool {
    guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return false }
    return !status.contains("State:\tZ")
}

/// The file's contents once it exists (polling), or nil after `seconds`.
func waitForFile(_ path: String, seconds: Double) -> String? {
    waitFor(path, seconds: seconds) { _ in true }
}

/// The file's text once it has some: a writer that creates the file and then
/// writes (python's `open(path, 'w')`) is seen between the two otherwise.
func waitForContent(_ path: String, seconds: Double) -> String? {
    waitFor(path, seconds: seconds) { !$0.isEmpty }
}

func waitFor(_ path: String, seconds: Double, until done: (String) -> Bool) -> String? {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if let text = try? String(contentsOfFile: path, encoding: .utf8), done(text) { return text }
        usleep(20_000)
    }
    return nil
}

func statusKB(_ pid: pid_t, _ key: String) -> Int? {
    guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
    return text.split(separator: "\n").first { $0.hasPrefix(key + ":") }
        .flatMap { Int($0.dropFirst(key.count + 1).split(whereSeparator: { $0 == " " || $0 == "\t" }).first ?? "") }
}

/// A scratch directory removed when the value goes away.
final class TemporaryDirectory {
    let path: String
    init() throws {
        path = "\(FileManager.default.temporaryDirectory.path)/fbmm-shimtest-\(getpid())-\(UInt32.random(in: 0..<UInt32.max))"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }
    func file(_ name: String) -> String { "\(path)/\(name)" }
    deinit { try? FileManager.default.removeItem(atPath: path) }
}

/// A command running in the background, its output going to files.
final class Background {
    let process = Process()
    private let scratch: TemporaryDirectory

    init(_ arguments: [String], environment: [String: String] = [:]) throws {
        scratch = try TemporaryDirectory()
        process.executableURL = URL(fileURLWithPath: arguments[0].hasPrefix("/") ? arguments[0] : "/usr/bin/env")
        process.arguments = arguments[0].hasPrefix("/") ? Array(arguments.dropFirst()) : arguments
        var env = ProcessInfo.processInfo.environment
        for (k, v) in environment { env[k] = v }
        process.environment = env
        FileManager.default.createFile(atPath: scratch.file("out"), contents: nil)
        FileManager.default.createFile(atPath: scratch.file("err"), contents: nil)
        process.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: scratch.file("out")))
        process.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: scratch.file("err")))
        process.standardInput = FileHandle.nullDevice
        try process.run()
    }

    var pid: pid_t { process.processIdentifier }
    var stdout: String { (try? String(contentsOfFile: scratch.file("out"), encoding: .utf8)) ?? "" }
    var stderr: String { (try? String(contentsOfFile: scratch.file("err"), encoding: .utf8)) ?? "" }
    var output: String { stdout + stderr }

    /// The exit status (or terminating signal), killing the command after `seconds`.
    func wait(seconds: Double) -> Int32 {
        let deadline = Date().addingTimeInterval(seconds)
        while process.isRunning && Date() < deadline { usleep(10_000) }
        if process.isRunning { kill(pid, SIGKILL) }
        process.waitUntilExit()
        return process.terminationStatus
    }

    func stop() { if process.isRunning { kill(pid, SIGKILL); process.waitUntilExit() } }
    deinit { stop() }
}

/// Runs a command to completion while sampling its RssShmem and RssAnon
/// (the pid is the program's own: `fbmm run` execs it); reports the sample
/// where their sum peaked.
func runSampled(_ arguments: [String], timeout: Double = 180) throws
    -> (result: CommandResult, shmemKB: Int, anonKB: Int, fraction: Double) {
    let app = try Background(arguments)
    defer { app.stop() }
    var best = (shmem: 0, anon: 0)
    let deadline = Date().addingTimeInterval(timeout)
    while app.process.isRunning && Date() < deadline {
        if let s = statusKB(app.pid, "RssShmem"), let a = statusKB(app.pid, "RssAnon"), s + a > best.shmem + best.anon {
            best = (s, a)
        }
        usleep(20_000)
    }
    let status = app.wait(seconds: 0)
    let total = best.shmem + best.anon
    return (CommandResult(status: status, stdout: app.stdout, stderr: app.stderr), best.shmem, best.anon,
            total > 0 ? Double(best.shmem) / Double(total) : 0)
}
