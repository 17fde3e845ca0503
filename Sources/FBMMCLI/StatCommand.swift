import ArgumentParser
import CFBMMSys
import FBMMDaemon
import Foundation

struct StatCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stat",
        abstract: "Show where a mount's memory is: per node, per file, and the policy's counters.")

    @Argument(help: "The mount point.")
    var directory: String

    @Flag(name: .long, help: "Print JSON (keys: policy, nodes, files, pool, prezero, huge, counters).")
    var json = false

    func run() throws {
        let path = absolutePath(directory)
        var request = fbmm_request()
        request.op = UInt32(FBMM_OP_STAT.rawValue)
        let (reply, fd) = try brokerCall(mount: path, request)
        guard reply.status == 0, let fd else {
            throw CLIError("the fbmm daemon of \(path) refused stat: \(String(cString: strerror(reply.status)))")
        }
        defer { try? fd.close() }
        let bytes = try readAll(fd, size: Int(reply.size))
        if json {
            FileHandle.standardOutput.write(Data(bytes))
            print("")
            return
        }
        let stats = try JSONDecoder().decode(MountStatistics.self, from: Data(bytes))
        print("mount \(stats.mountpoint)  policy \(stats.policy)  daemon pid \(stats.daemon_pid)")
        print("pool: \(formatBytes(stats.pool["used_bytes"] ?? 0)) used of \(formatBytes(stats.pool["total_bytes"] ?? 0)), \(formatBytes(stats.pool["free_bytes"] ?? 0)) free")
        if let pz = stats.prezero {
            print("pre-zeroed: \(formatBytes(pz["ready_bytes"] ?? 0)) ready of \(formatBytes(pz["bound_bytes"] ?? 0)) bound"
                  + " in \(pz["arenas"] ?? 0) arena(s); \(formatBytes(pz["handed_out_bytes"] ?? 0)) handed out,"
                  + " \(formatBytes(pz["zeroed_bytes"] ?? 0)) re-zeroed, \(pz["misses"] ?? 0) misses; huge pages: \(stats.huge ?? "advise")")
        } else {
            print("pre-zeroed: off; huge pages: \(stats.huge ?? "advise")")
        }
        let nodeIDs = stats.nodes.keys.sorted { Int($0)! < Int($1)! }
        print("")
        print(pad("node", 6) + pad("resident", 12, right: true) + pad("node total", 14, right: true) + pad("node free", 14, right: true))
        for id in nodeIDs {
            let n = stats.nodes[id]!
            print(pad(id, 6) + pad(formatBytes(n.resident_bytes), 12, right: true)
                  + pad(formatBytes(n.total_bytes), 14, right: true) + pad(formatBytes(n.free_bytes), 14, right: true))
        }
        print("")
        var header = pad("file", 32) + pad("size", 10, right: true) + pad("resident", 10, right: true)
        for id in nodeIDs { header += pad("N\(id)", 10, right: true) }
        print(header + "  pid    policy")
        for file in stats.files {
            var line = pad(file.path, 32) + pad(formatBytes(file.size), 10, right: true)
                + pad(formatBytes(file.resident_bytes), 10, right: true)
            for id in nodeIDs { line += pad(formatBytes(file.nodes[id] ?? 0), 10, right: true) }
            print(line + "  " + pad(String(file.owner_pid), 7) + file.policy)
        }
        let c = stats.counters
        print("")
        print("counters: files_created=\(c.files_created) placements=\(c.placements) broker_handouts=\(c.broker_handouts) broker_refusals=\(c.broker_refusals) migrations=\(c.migrations) migrated_bytes=\(c.migrated_bytes)")
        if let policyCounters = stats.policy_counters, !policyCounters.isEmpty {
            print("policy: " + policyCounters.keys.sorted().map { "\($0)=\(policyCounters[$0]!)" }.joined(separator: " "))
        }
    }
}

func pad(_ text: String, _ width: Int, right: Bool = false) -> String {
    let count = text.count
    guard count < width else { return text + " " }
    let padding = String(repeating: " ", count: width - count)
    return right ? padding + text : text + padding
}
