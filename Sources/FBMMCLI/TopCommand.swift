import FBMMProtocol
import ArgumentParser
import FBMMCore
import FBMMPolicy
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// `fbmm top DIR`: the mount over time. Why: `fbmm stat` is a snapshot, and
/// what tiering users watch is movement: pages promoted and demoted per
/// second, the hot set against the fast node's room, the pool keeping up.
/// Each frame is one stat round trip; rates are differences between frames
/// divided by the time between them.
struct TopCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "top",
        abstract: "Watch a mount: per node and per process memory, migrations and pool activity per second.")

    @Argument(help: "The mount point.")
    var directory: String

    @Option(name: .long, help: "Seconds between frames.")
    var interval: Double = 2

    @Option(name: .long, help: "Frames to show, then exit (0: until interrupted).")
    var iterations: Int = 0

    @Option(name: .long, help: "Files and processes shown per frame (the largest).")
    var rows: Int = 15

    func validate() throws {
        guard interval >= 0.05, interval <= 3600 else { throw ValidationError("--interval must be between 0.05 and 3600 seconds") }
        guard iterations >= 0 else { throw ValidationError("--iterations must be 0 or more") }
        guard rows > 0 else { throw ValidationError("--rows must be at least 1") }
    }

    func run() throws {
        let path = waitingOnDaemon(of: directory) { absolutePath(directory) }
        let clear = isatty(STDOUT_FILENO) != 0
        var previous: (MountStatistics, Double)?
        var frame = 0
        while iterations == 0 || frame < iterations {
            if frame > 0 { usleep(useconds_t(interval * 1_000_000)) }
            let (_, stats) = try waitingOnDaemon(of: path) { try fetchStatistics(mount: path) }
            let now = monotonicSeconds()
            var text = clear ? "\u{1B}[H\u{1B}[2J" : (frame > 0 ? "\n" : "")
            text += topFrame(stats, since: previous.map { ($0.0, now - $0.1) }, rows: rows)
            FileHandle.standardOutput.write(Data(text.utf8))
            previous = (stats, now)
            frame += 1
        }
    }
}

/// One frame of `fbmm top`: `since` is the previous frame and the seconds
/// between the two (rates need both).
func topFrame(_ s: MountStatistics, since: (MountStatistics, Double)?, rows: Int) -> String {
    var out = ""
    func line(_ text: String = "") { out += text + "\n" }
    let clock = DateFormatter()
    clock.dateFormat = "HH:mm:ss"
    line("fbmm top  \(s.mountpoint)  policy \(s.policy)  daemon \(s.daemon_pid)  \(clock.string(from: Date()))")
    func rate(_ value: (MountStatistics) -> Double?) -> String {
        guard let (old, seconds) = since, seconds > 0, let now = value(s), let before = value(old) else { return "-" }
        return String(format: "%.1f", max(0, now - before) / seconds)
    }
    func policyNumber(_ key: String) -> (MountStatistics) -> Double? {
        { stats in
            switch stats.policy_counters?[key] {
            case .count(let n): return Double(n)
            case .real(let x): return x
            default: return nil
            }
        }
    }
    if let policy = s.policy_counters, !policy.isEmpty {
        let text = { (key: String) -> String in policy[key].map { "\($0)" } ?? "-" }
        line("tiering: promoted \(rate(policyNumber("promoted_pages"))) pages/s, demoted \(rate(policyNumber("demoted_pages"))) pages/s;"
             + " hot \(bytes(policyNumber("hot_bytes")(s))) of \(bytes(policyNumber("tracked_bytes")(s))) tracked;"
             + " fast \(bytes(policyNumber("fast_bytes")(s))) (limit \(bytes(policyNumber("fast_limit_bytes")(s))));"
             + " tracker \(text("tracker")), pass \(text("pass_seconds")) s")
    }
    line("migrated on request: \(rate { Double($0.counters.migrated_bytes) }) B/s;"
         + " broker: \(rate { Double($0.counters.broker_handouts) }) handouts/s, \(rate { Double($0.counters.broker_refusals) }) refusals/s")
    if let pz = s.prezero {
        line("pre-zeroed: \(formatBytes(pz["ready_bytes"] ?? 0)) ready of \(formatBytes(pz["bound_bytes"] ?? 0)) in \(pz["arenas"] ?? 0) arena(s);"
             + " handed out \(rate { Double($0.prezero?["handed_out_bytes"] ?? 0) }) B/s, re-zeroed \(rate { Double($0.prezero?["zeroed_bytes"] ?? 0) }) B/s,"
             + " misses \(rate { Double($0.prezero?["misses"] ?? 0) })/s")
    }
    line()
    let nodeIDs = s.nodes.keys.sorted { (Int($0) ?? 0) < (Int($1) ?? 0) }
    line(pad("node", 6) + pad("in mount", 12, right: true) + pad("change/s", 12, right: true) + pad("free", 12, right: true))
    for id in nodeIDs {
        let n = s.nodes[id]!
        let change: String
        if let (old, seconds) = since, seconds > 0, let before = old.nodes[id] {
            change = formatBytes(UInt64(abs(Double(n.resident_bytes) - Double(before.resident_bytes)) / seconds))
                + (n.resident_bytes < before.resident_bytes ? "-" : "+")
        } else {
            change = "-"
        }
        line(pad(id, 6) + pad(formatBytes(n.resident_bytes), 12, right: true) + pad(change, 12, right: true)
             + pad(formatBytes(n.free_bytes), 12, right: true))
    }
    if let processes = s.processes, !processes.isEmpty {
        line()
        line(pad("pid", 8) + pad("command", 16) + pad("in mount", 10, right: true) + pad("outside", 10, right: true) + pad("coverage", 10, right: true))
        for p in processes.sorted(by: { $0.mount_bytes > $1.mount_bytes }).prefix(rows) {
            line(pad(String(p.pid), 8) + pad(p.command, 16) + pad(formatBytes(p.mount_bytes), 10, right: true)
                 + pad(formatBytes(p.anon_bytes + p.other_shmem_bytes), 10, right: true)
                 + pad(String(format: "%.0f%%", p.coverage * 100), 10, right: true))
        }
    }
    line()
    var header = pad("file", 32) + pad("resident", 10, right: true)
    for id in nodeIDs { header += pad("N\(id)", 10, right: true) }
    line(header)
    for f in s.files.sorted(by: { $0.resident_bytes > $1.resident_bytes }).prefix(rows) {
        var text = pad(f.path, 32) + pad(formatBytes(f.resident_bytes), 10, right: true)
        for id in nodeIDs { text += pad(formatBytes(f.nodes[id] ?? 0), 10, right: true) }
        line(text)
    }
    if s.files.count > rows { line("(\(s.files.count - rows) more files)") }
    return out
}

private func bytes(_ value: Double?) -> String {
    value.map { formatBytes(UInt64(max(0, $0))) } ?? "-"
}

