import FBMMProtocol
import ArgumentParser
import CFBMMSys
import Foundation

struct StatCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stat",
        abstract: "Show where a mount's memory is: per node, per file, and the policy's counters.")

    @Argument(help: "The mount point.")
    var directory: String

    @Flag(name: .long, help: "Print JSON (keys: policy, nodes, files, processes, pool, prezero, huge, counters).")
    var json = false

    @Flag(name: .long, help: "Print Prometheus' text exposition format (for node_exporter's textfile collector).")
    var prometheus = false

    func validate() throws {
        if json && prometheus { throw ValidationError("--json and --prometheus exclude each other") }
    }

    func run() throws {
        let (bytes, stats) = try waitingOnDaemon(of: directory) { try fetchStatistics(mount: absolutePath(directory)) }
        if json {
            FileHandle.standardOutput.write(bytes)
            print("")
        } else if prometheus {
            print(stats.prometheus(), terminator: "")
        } else {
            print(statReport(stats), terminator: "")
        }
    }
}

/// The statistics of the mount at `path`, as the daemon sent them (JSON) and
/// decoded.
func fetchStatistics(mount path: String) throws -> (Data, MountStatistics) {
    var request = fbmm_request()
    request.op = UInt32(FBMM_OP_STAT.rawValue)
    let (reply, fd) = try brokerCall(mount: path, request)
    guard reply.status == 0, let fd else {
        throw CLIError("the fbmm daemon of \(path) refused stat: \(String(cString: strerror(reply.status)))")
    }
    defer { try? fd.close() }
    let bytes = Data(try readAll(fd, size: Int(reply.size)))
    return (bytes, try JSONDecoder().decode(MountStatistics.self, from: bytes))
}

/// `fbmm stat`'s text: the mount, its nodes, its files, its processes'
/// coverage and the counters.
func statReport(_ stats: MountStatistics) -> String {
    var out = ""
    func line(_ text: String = "") { out += text + "\n" }
    line("mount \(stats.mountpoint)  policy \(stats.policy)  daemon pid \(stats.daemon_pid)")
    if let backing = stats.backing { line("backing: \(backing)") }
    line("pool: \(formatBytes(stats.pool["used_bytes"] ?? 0)) used of \(formatBytes(stats.pool["total_bytes"] ?? 0)), \(formatBytes(stats.pool["free_bytes"] ?? 0)) free")
    if let pz = stats.prezero {
        line("pre-zeroed: \(formatBytes(pz["ready_bytes"] ?? 0)) ready of \(formatBytes(pz["bound_bytes"] ?? 0)) bound"
             + " in \(pz["arenas"] ?? 0) arena(s); \(formatBytes(pz["handed_out_bytes"] ?? 0)) handed out,"
             + " \(formatBytes(pz["zeroed_bytes"] ?? 0)) re-zeroed, \(pz["misses"] ?? 0) misses; huge pages: \(stats.huge ?? "advise")")
    } else {
        line("pre-zeroed: off; huge pages: \(stats.huge ?? "advise")")
    }
    let nodeIDs = stats.nodes.keys.sorted { Int($0)! < Int($1)! }
    line()
    line(pad("node", 6) + pad("resident", 12, right: true) + pad("node total", 14, right: true) + pad("node free", 14, right: true))
    for id in nodeIDs {
        let n = stats.nodes[id]!
        line(pad(id, 6) + pad(formatBytes(n.resident_bytes), 12, right: true)
             + pad(formatBytes(n.total_bytes), 14, right: true) + pad(formatBytes(n.free_bytes), 14, right: true))
    }
    line()
    var header = pad("file", 32) + pad("size", 10, right: true) + pad("resident", 10, right: true)
    for id in nodeIDs { header += pad("N\(id)", 10, right: true) }
    line(header + "  pid    policy")
    for file in stats.files {
        var text = pad(file.path, 32) + pad(formatBytes(file.size), 10, right: true)
            + pad(formatBytes(file.resident_bytes), 10, right: true)
        for id in nodeIDs { text += pad(formatBytes(file.nodes[id] ?? 0), 10, right: true) }
        line(text + "  " + pad(String(file.owner_pid), 7) + file.policy)
    }
    if let processes = stats.processes, !processes.isEmpty {
        line()
        line(pad("pid", 8) + pad("command", 16) + pad("in mount", 10, right: true) + pad("anon", 10, right: true)
             + pad("heap", 10, right: true) + pad("stack", 10, right: true) + pad("shmem", 10, right: true) + pad("coverage", 10, right: true))
        for p in processes {
            line(pad(String(p.pid), 8) + pad(p.command, 16) + pad(formatBytes(p.mount_bytes), 10, right: true)
                 + pad(formatBytes(p.anon_bytes), 10, right: true) + pad(formatBytes(p.heap_bytes), 10, right: true)
                 + pad(formatBytes(p.stack_bytes), 10, right: true) + pad(formatBytes(p.other_shmem_bytes), 10, right: true)
                 + pad(String(format: "%.0f%%", p.coverage * 100), 10, right: true))
        }
        let low = processes.filter { $0.coverage < 0.5 }
        if !low.isEmpty {
            line("(anon: private memory outside the mount, of which heap (brk) and stack; shmem: shared memory outside it.")
            line(" Most of \(low.map { "\($0.command)[\($0.pid)]" }.joined(separator: ", ")) is outside the mount: see README, Troubleshooting.)")
        }
    }
    let c = stats.counters
    line()
    line("counters: files_created=\(c.files_created) placements=\(c.placements) broker_handouts=\(c.broker_handouts) broker_refusals=\(c.broker_refusals) migrations=\(c.migrations) migrated_bytes=\(c.migrated_bytes)")
    if let policyCounters = stats.policy_counters, !policyCounters.isEmpty {
        line("policy: " + policyCounters.keys.sorted().map { "\($0)=\(policyCounters[$0]!)" }.joined(separator: " "))
    }
    return out
}

func pad(_ text: String, _ width: Int, right: Bool = false) -> String {
    let count = text.count
    guard count < width else { return text + " " }
    let padding = String(repeating: " ", count: width - count)
    return right ? padding + text : text + padding
}
