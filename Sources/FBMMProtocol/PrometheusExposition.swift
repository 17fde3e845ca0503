
import Foundation

/// `fbmm stat --prometheus` and the daemon's metrics endpoint: the mount's
/// statistics in Prometheus' text exposition format (version 0.0.4), so
/// node_exporter's textfile collector or a scrape can keep them as time
/// series. Why both: a textfile written from cron needs no open port, a
/// scrape needs no cron.
///
/// Cumulative numbers are counters (`_total`), levels are gauges; every
/// series carries the mount point as `mount`, so several mounts can share
/// one textfile directory.
extension MountStatistics {
    public func prometheus() -> String {
        var out = Exposition(mount: mountpoint)
        out.gauge("fbmm_info", "The mount's policy and huge-page mode (value 1).",
                  [(["policy": policy, "huge": huge ?? "advise", "daemon_pid": String(daemon_pid)], 1)])
        let nodeIDs = nodes.keys.sorted { (Int($0) ?? 0) < (Int($1) ?? 0) }
        out.gauge("fbmm_node_resident_bytes", "Bytes of the mount's files resident on the node.",
                  nodeIDs.map { (["node": $0], Double(nodes[$0]!.resident_bytes)) })
        out.gauge("fbmm_node_total_bytes", "The node's memory.", nodeIDs.map { (["node": $0], Double(nodes[$0]!.total_bytes)) })
        out.gauge("fbmm_node_free_bytes", "The node's free memory.", nodeIDs.map { (["node": $0], Double(nodes[$0]!.free_bytes)) })
        out.gauge("fbmm_pool_bytes", "The mount's memory pool (df): total, used, free.",
                  pool.keys.sorted().map { (["kind": String($0.dropLast("_bytes".count))], Double(pool[$0]!)) })

        let fileLabels = { (f: FileUsage) in ["file": f.path, "pid": String(f.owner_pid)] }
        out.gauge("fbmm_file_size_bytes", "A file's size.", files.map { (fileLabels($0), Double($0.size)) })
        out.gauge("fbmm_file_resident_bytes", "A file's resident bytes.", files.map { (fileLabels($0), Double($0.resident_bytes)) })
        out.gauge("fbmm_file_node_resident_bytes", "A file's resident bytes per node.",
                  files.flatMap { f in f.nodes.keys.sorted().map { (["file": f.path, "node": $0], Double(f.nodes[$0]!)) } })

        let processes = self.processes ?? []
        let processLabels = { (p: ProcessUsage) in ["pid": String(p.pid), "command": p.command] }
        out.gauge("fbmm_process_memory_bytes",
                  "A process's resident memory by where it is: in the mount, anonymous outside it (of which heap and stack), other shared memory, files.",
                  processes.flatMap { p in
                      [("mount", p.mount_bytes), ("anon", p.anon_bytes), ("heap", p.heap_bytes), ("stack", p.stack_bytes),
                       ("other_shmem", p.other_shmem_bytes), ("file", p.file_bytes)].map { where_, bytes in
                          (processLabels(p).merging(["where": where_]) { a, _ in a }, Double(bytes))
                      }
                  })
        out.gauge("fbmm_process_coverage_ratio", "The share of a process's anonymous and shared memory that the mount holds.",
                  processes.map { (processLabels($0), $0.coverage) })

        let c = counters
        out.counter("fbmm_files_created", "Files created.", Double(c.files_created))
        out.counter("fbmm_placements", "Ranges placed by the policy.", Double(c.placements))
        out.counter("fbmm_broker_handouts", "Backing descriptors handed out.", Double(c.broker_handouts))
        out.counter("fbmm_broker_refusals", "Broker requests refused.", Double(c.broker_refusals))
        out.counter("fbmm_migrations", "Migrations asked for.", Double(c.migrations))
        out.counter("fbmm_migrated_bytes", "Bytes migrated on request.", Double(c.migrated_bytes))

        for key in (prezero ?? [:]).keys.sorted() {
            let value = Double(prezero![key]!)
            let name = "fbmm_prezero_" + key
            if Self.prezeroLevels.contains(key) { out.gauge(name, "Pre-zeroed pool: \(key).", [([:], value)]) }
            else { out.counter(name.hasSuffix("_total") ? String(name.dropLast(6)) : name, "Pre-zeroed pool: \(key).", value) }
        }

        var info: [String: String] = [:]
        for key in (policy_counters ?? [:]).keys.sorted() {
            let name = "fbmm_policy_" + key
            switch policy_counters![key]! {
            case .text(let text): info[key] = text
            case .count(let n):
                if Self.policyTotals.contains(key) { out.counter(name, "Policy counter \(key).", Double(n)) }
                else { out.gauge(name, "Policy gauge \(key).", [([:], Double(n))]) }
            case .real(let x):
                if Self.policyTotals.contains(key) { out.counter(name, "Policy counter \(key).", x) }
                else { out.gauge(name, "Policy gauge \(key).", [([:], x)]) }
            }
        }
        if !info.isEmpty { out.gauge("fbmm_policy_info", "The policy's text state (value 1).", [(info, 1)]) }
        return out.text
    }

    /// Pre-zeroed pool numbers that are levels, not running totals.
    static let prezeroLevels: Set<String> = ["bound_bytes", "ready_bytes", "pending_bytes", "arenas", "window_bytes"]
    /// Policy numbers that only grow (the tiered policy's).
    static let policyTotals: Set<String> = ["scans", "promoted_pages", "promoted_bytes", "demoted_pages", "demoted_bytes",
                                            "tracker_cpu_seconds", "failures"]
}

/// Builds the exposition text: HELP and TYPE once per metric family, the
/// mount label on every sample, label values escaped as the format says.
private struct Exposition {
    let mount: String
    var text = ""

    mutating func gauge(_ name: String, _ help: String, _ samples: [([String: String], Double)]) {
        family(name, help, "gauge", samples.map { (name, $0.0, $0.1) })
    }

    mutating func counter(_ name: String, _ help: String, _ value: Double) {
        family(name, help, "counter", [(name + "_total", [:], value)])
    }

    private mutating func family(_ name: String, _ help: String, _ type: String, _ samples: [(String, [String: String], Double)]) {
        text += "# HELP \(name) \(help.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\n", with: "\\n"))\n"
        text += "# TYPE \(name) \(type)\n"
        for (sample, labels, value) in samples {
            let all = labels.merging(["mount": mount]) { a, _ in a }
            let rendered = all.keys.sorted().map { "\($0)=\"\(escape(all[$0]!))\"" }.joined(separator: ",")
            text += "\(sample){\(rendered)} \(format(value))\n"
        }
    }

    private func escape(_ value: String) -> String {
        var out = ""
        for ch in value {
            switch ch {
            case "\\": out += "\\\\"
            case "\"": out += "\\\""
            case "\n": out += "\\n"
            default: out.append(ch)
            }
        }
        return out
    }

    private func format(_ value: Double) -> String {
        if value.isNaN { return "NaN" }
        if value == value.rounded(), abs(value) < 1e15 { return String(Int64(value)) }
        return String(value)
    }
}
