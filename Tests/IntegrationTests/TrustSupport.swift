import CFBMMSys
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Helpers shared by TrustTests and TrustBoundaryTests.
// MARK: - helpers

/// The reply `hostile ask` printed.
struct AskReply {
    var status = -1
    var fds = 0
    var target = "none"
    var wellFormed = false
    var data = ""

    init(_ result: CommandResult) {
        let lines = result.stdout.components(separatedBy: "\n")
        guard let line = lines.first(where: { $0.hasPrefix("reply ") }) else { return }
        for token in line.split(separator: " ") {
            if token.hasPrefix("status=") { status = Int(token.dropFirst(7)) ?? -1 }
            if token.hasPrefix("fds=") { fds = Int(token.dropFirst(4)) ?? 0 }
            if token.hasPrefix("fd=") { target = String(token.dropFirst(3)) }
        }
        wellFormed = status >= 0 && !line.contains("MALFORMED") && result.status == 0
        if let range = result.stdout.range(of: "\ndata:\n") { data = String(result.stdout[range.upperBound...]) }
    }
}

func daemonPID(_ mount: TestMount) throws -> pid_t {
    try #require((try mount.statistics()["daemon_pid"] as? NSNumber).map { pid_t($0.int32Value) })
}

func isAlive(_ pid: pid_t) -> Bool {
    guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return false }
    return !status.contains("State:\tZ")
}

/// "R", "S", "Z"... from /proc/PID/stat, or "gone".
func processState(_ pid: pid_t) -> String {
    guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
          let close = text.lastIndex(of: ")") else { return "gone" }
    return String(text[text.index(after: close)...].split(separator: " ").first ?? "?") + " (in /proc/\(pid)/stat)"
}

func vmRSSKB(_ pid: pid_t) -> Int {
    guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
          let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }) else { return -1 }
    return Int(line.dropFirst(6).split(whereSeparator: { $0 == " " || $0 == "\t" }).first ?? "") ?? -1
}

func openFDs(_ pid: pid_t) -> Int {
    (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").count) ?? -1
}

/// The last part of the mount's daemon log, for failure messages.
func daemonLog(_ mount: TestMount) -> String {
    let log = (try? String(contentsOfFile: "\(mount.path).log", encoding: .utf8)) ?? "(no log)"
    return "daemon log:\n" + log.suffix(3000)
}

/// Exactly one non-empty line.
func oneLine(_ text: String) -> Bool {
    let trimmed = text.trimmingCharacters(in: .whitespacesAndNewlines)
    return !trimmed.isEmpty && !trimmed.contains("\n")
}

func waitUntil(seconds: Double, _ condition: () -> Bool) -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    repeat {
        if condition() { return true }
        usleep(20_000)
    } while Date() < deadline
    return condition()
}

func brokerSocket(of mount: String) throws -> String {
    var buffer = [UInt8](repeating: 0, count: 4096)
    let n = fbmm_getxattr(mount, FBMM_XATTR_BROKER, &buffer, buffer.count)
    try #require(n > 0, "\(mount) publishes its broker socket")
    return String(decoding: buffer[0..<n], as: UTF8.self)
}

/// A scratch directory every test user may write in (ready and go files).
func sharedScratch() throws -> TemporaryDirectory {
    let directory = try TemporaryDirectory()
    try #require(chmod(directory.path, 0o1777) == 0)
    return directory
}

func jsonFiles(_ text: String) -> [[String: Any]]? {
    guard let object = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any] else { return nil }
    return object["files"] as? [[String: Any]]
}

/// The names `fbmm stat --json` (as root) lists.
func fileNames(_ mount: TestMount) throws -> [String] {
    (try mount.statistics()["files"] as? [[String: Any]] ?? []).compactMap { $0["name"] as? String }
}

func poolArenas(_ mount: TestMount) throws -> UInt64 {
    ((try mount.statistics()["prezero"] as? [String: Any])?["arenas"] as? NSNumber)?.uint64Value ?? 0
}

/// Sets `perFile` xattrs of `value` on each file in turn until one fails;
/// returns how many were set and the errno that stopped it (nil: none did).
func setXattrs(_ value: [UInt8], on files: [String], perFile: Int, prefix: String) -> (set: Int, errno: Int32?) {
    var set = 0
    for (f, file) in files.enumerated() {
        for k in 0..<perFile {
            let rc = value.withUnsafeBytes { fbmm_setxattr(file, "\(prefix)\(f).\(k)", $0.baseAddress, $0.count, 0) }
            if rc != 0 { return (set, errno) }
            set += 1
        }
    }
    return (set, nil)
}

/// The daemon is alive and `fbmm stat` answers.
func expectDaemonServes(_ mount: TestMount, _ pid: pid_t, _ when: String,
                                sourceLocation: SourceLocation = #_sourceLocation) throws {
    #expect(isAlive(pid), "the daemon (pid \(pid)) is alive \(when):\n\(daemonLog(mount))", sourceLocation: sourceLocation)
    let stat = try run([Artefacts.fbmm, "stat", mount.path, "--json"], timeout: 20)
    #expect(stat.ok && (try? JSONSerialization.jsonObject(with: Data(stat.stdout.utf8))) != nil,
            "fbmm stat answers \(when): \(stat.stderr)", sourceLocation: sourceLocation)
}

/// The usual scene of an attack: unprivileged users (A, and B when two tags
/// are given) and a root mount reachable by them (allow_other, plus
/// `options`), all removed by `close()` (call it in a defer).
final class UserScene {
    let users: [TestUser]
    let mount: TestMount
    let daemon: pid_t
    var a: TestUser { users[0] }
    var b: TestUser { users[1] }

    init(_ tags: String..., options: [String] = []) throws {
        try TrustTests.prepare()
        var made: [TestUser] = []
        do {
            for tag in tags { made.append(try TestUser(tag)) }
            users = made
            mount = try TestMount(options: ["allow_other"] + options)
        } catch {
            made.reversed().forEach { $0.remove() }
            throw error
        }
        do { daemon = try daemonPID(mount) } catch { mount.close(); made.reversed().forEach { $0.remove() }; throw error }
    }

    func close() {
        mount.close()
        users.reversed().forEach { $0.remove() }
    }
}
