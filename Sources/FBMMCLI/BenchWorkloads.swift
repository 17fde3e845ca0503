import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// One number a workload reports.
struct BenchMetric: Sendable {
    var name: String
    var value: Double
    var unit: String
    var higherIsBetter: Bool
}

/// Where a workload runs: natively, or under `fbmm run` in a policy's mount.
struct BenchVariant: Sendable {
    var label: String          // "native" or the policy spec as given
    var mount: String?         // nil for native
    var daemonPID: pid_t? = nil

    static let native = BenchVariant(label: "native", mount: nil)
}

/// What every workload run needs to know.
struct BenchContext {
    var fbmm: String
    var workloadBinary: String?
    var size: UInt64
    var quick: Bool
    var logDirectory: String
    var jemalloc: String?
    var baseEnvironment: [String: String]

    /// The command line and environment that run `arguments` in `variant`;
    /// `allocator` preloads jemalloc (natively too, so only the backing differs).
    func launch(_ arguments: [String], in variant: BenchVariant, allocator: Bool) -> ([String], [String: String]) {
        var environment = baseEnvironment
        for key in ["LD_PRELOAD", "FBMM_MOUNT", "FBMM_MIN_SIZE", "FBMM_STRICT", "FBMM_VERBOSE"] {
            environment.removeValue(forKey: key)
        }
        guard let mount = variant.mount else {
            if allocator, let jemalloc { environment["LD_PRELOAD"] = jemalloc }
            return (arguments, environment)
        }
        // --verbose: the shim says once if it falls back, which the bench
        // checks after each run (BenchFallbackCheck).
        var command = [fbmm, "run", "--mount", mount, "--verbose"]
        if allocator && jemalloc != nil { command += ["--allocator", "jemalloc"] }
        return (command + ["--"] + arguments, environment)
    }

    func logPath(_ name: String) -> String { "\(logDirectory)/\(name)" }
}

/// A workload `fbmm bench` knows.
protocol BenchWorkload {
    var name: String { get }
    /// nil when it can run here; otherwise why not (printed as skipped).
    var unavailableReason: String? { get }
    /// Whether it runs with jemalloc preloaded (natively and under the shim).
    var usesAllocator: Bool { get }
    func run(in variant: BenchVariant, context: BenchContext, tag: String) throws -> [BenchMetric]
}

extension BenchWorkload {
    var usesAllocator: Bool { false }
}

enum BenchWorkloads {
    static let names = ["gups", "stream", "churn", "latency", "redis", "sqlite", "memcached"]

    static func make(_ name: String, context: BenchContext) -> (any BenchWorkload)? {
        switch name {
        case "gups", "stream", "churn", "latency": return BuiltinWorkload(name: name, context: context)
        case "redis": return RedisWorkload(context: context)
        case "sqlite": return SQLiteWorkload(context: context)
        case "memcached": return MemcachedWorkload(context: context)
        default: return nil
        }
    }

    /// Parses the JSON line fbmm-workload prints.
    static func parseWorkloadLine(_ text: String) -> [BenchMetric]? {
        guard let line = text.split(separator: "\n").last(where: { $0.hasPrefix("{") }),
              let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
              let metrics = object["metrics"] as? [[String: Any]] else { return nil }
        let parsed = metrics.compactMap { m -> BenchMetric? in
            guard let name = m["name"] as? String, let value = (m["value"] as? NSNumber)?.doubleValue,
                  let unit = m["unit"] as? String else { return nil }
            return BenchMetric(name: name, value: value, unit: unit, higherIsBetter: (m["better"] as? String) != "lower")
        }
        return parsed.isEmpty ? nil : parsed
    }
}

/// Runs a program to completion with its output in log files; fails with the
/// log's last lines when it exits non-zero.
func runLogged(_ arguments: [String], environment: [String: String], stdinPath: String = "/dev/null",
               log: String, timeout: Double, name: String) throws -> String {
    let pid = try BenchProcesses.start(arguments, environment: environment, stdinPath: stdinPath,
                                       stdoutPath: log, stderrPath: log)
    let status = try BenchProcesses.wait(pid, timeout: timeout, name: name)
    let output = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
    guard status == 0 else {
        let tail = output.split(separator: "\n").suffix(3).joined(separator: " | ")
        throw CLIError("\(name) exited with status \(status): \(tail) (see \(log))")
    }
    return output
}

private func clamp(_ value: UInt64, _ low: UInt64, _ high: UInt64) -> UInt64 { min(max(value, low), high) }

/// gups, stream, churn, latency: the project's own C program.
struct BuiltinWorkload: BenchWorkload {
    let name: String
    let context: BenchContext

    var unavailableReason: String? {
        context.workloadBinary == nil ? "fbmm-workload not found next to fbmm (build it with scripts/build.sh)" : nil
    }

    var arguments: [String] {
        let size = context.size
        let quick = context.quick
        var arguments = [context.workloadBinary ?? "fbmm-workload", name, "--size", String(size)]
        switch name {
        case "gups": arguments += ["--updates", String(clamp(size / 8, 1 << 20, 32 << 20))]
        case "stream": arguments += ["--times", quick ? "3" : "5"]
        case "churn": arguments += ["--ops", quick ? "2000" : "10000"]
        case "latency": arguments += ["--loads", quick ? "500000" : "2000000"]
        default: break
        }
        return arguments
    }

    func run(in variant: BenchVariant, context: BenchContext, tag: String) throws -> [BenchMetric] {
        let (command, environment) = context.launch(arguments, in: variant, allocator: false)
        let log = context.logPath("\(tag).log")
        let output = try runLogged(command, environment: environment, log: log, timeout: 300, name: name)
        guard let metrics = BenchWorkloads.parseWorkloadLine(output) else {
            throw CLIError("\(name) printed no metrics line (see \(log))")
        }
        return metrics
    }
}

/// redis-server on a free loopback port, loaded by redis-benchmark (SET then GET, 1 KiB values).
struct RedisWorkload: BenchWorkload {
    let name = "redis"
    let context: BenchContext
    var usesAllocator: Bool { true }

    var unavailableReason: String? {
        if findProgram("redis-server") == nil { return "redis-server not installed (apt-get install redis-server)" }
        if findProgram("redis-benchmark") == nil { return "redis-benchmark not installed (apt-get install redis-tools)" }
        return nil
    }

    func run(in variant: BenchVariant, context: BenchContext, tag: String) throws -> [BenchMetric] {
        let requests = context.quick ? 20_000 : clamp(context.size / 1024, 20_000, 200_000)
        let port = try Loopback.freePort()
        let server = ["redis-server", "--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                      "--daemonize", "no", "--protected-mode", "no", "--logfile", ""]
        let (command, environment) = context.launch(server, in: variant, allocator: true)
        let serverLog = context.logPath("\(tag).server.log")
        let pid = try BenchProcesses.start(command, environment: environment, stdoutPath: serverLog, stderrPath: serverLog)
        defer { BenchProcesses.stop(pid) }
        try Loopback.waitUntilListening(port: port, pid: pid, name: "redis-server", log: serverLog)
        let client = ["redis-benchmark", "-h", "127.0.0.1", "-p", String(port), "--csv", "-n", String(requests),
                      "-r", String(requests), "-d", "1024", "-P", "16", "-c", "16", "-t", "set,get"]
        let output = try runLogged(client, environment: context.launch([], in: .native, allocator: false).1,
                                   log: context.logPath("\(tag).log"), timeout: 300, name: "redis-benchmark")
        var metrics = [BenchMetric]()
        for line in output.split(separator: "\n") {
            let fields = line.split(separator: ",").map { $0.trimmingCharacters(in: CharacterSet(charactersIn: "\"")) }
            guard fields.count >= 2, let rps = Double(fields[1]) else { continue }
            metrics.append(BenchMetric(name: fields[0].lowercased(), value: rps, unit: "req/s", higherIsBetter: true))
        }
        guard !metrics.isEmpty else { throw CLIError("redis-benchmark printed no results (see \(context.logPath("\(tag).log")))") }
        return metrics
    }
}

/// sqlite3 with an in-memory database: timed bulk insert, index build, a full
/// scan and indexed point lookups (sqlite's own `.timer`).
struct SQLiteWorkload: BenchWorkload {
    let name = "sqlite"
    let context: BenchContext
    var usesAllocator: Bool { true }

    var unavailableReason: String? {
        findProgram("sqlite3") == nil ? "sqlite3 not installed (apt-get install sqlite3)" : nil
    }

    func run(in variant: BenchVariant, context: BenchContext, tag: String) throws -> [BenchMetric] {
        let rows = context.quick ? 50_000 : clamp(context.size / 512, 20_000, 500_000)
        let lookups = rows / 2
        let script = """
            PRAGMA cache_size=-\(max(context.size / 1024 * 2, 65536));
            CREATE TABLE t(id INTEGER PRIMARY KEY, k INTEGER, v BLOB);
            .timer on
            WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x<\(rows)) INSERT INTO t SELECT x, abs(random()) % 1000000, randomblob(200) FROM c;
            CREATE INDEX tk ON t(k);
            SELECT count(*), sum(length(v)) FROM t WHERE k % 7 = 3;
            WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x<\(lookups)) SELECT count(*) FROM c JOIN t ON t.k = (x*7919) % 1000000;

            """
        let scriptPath = context.logPath("sqlite-\(rows).sql")
        try script.write(toFile: scriptPath, atomically: true, encoding: .utf8)
        let (command, environment) = context.launch(["sqlite3", ":memory:"], in: variant, allocator: true)
        let log = context.logPath("\(tag).log")
        let output = try runLogged(command, environment: environment, stdinPath: scriptPath, log: log, timeout: 300, name: "sqlite3")
        // "Run Time: real 0.123 user 0.1 sys 0.01", one per statement after .timer on.
        let times = output.split(separator: "\n").compactMap { line -> Double? in
            guard line.hasPrefix("Run Time: real ") else { return nil }
            return Double(line.dropFirst("Run Time: real ".count).split(separator: " ").first ?? "")
        }
        guard times.count >= 4, times.allSatisfy({ $0 > 0 }) else {
            throw CLIError("sqlite3 printed \(times.count) timings instead of 4 (see \(log))")
        }
        return [
            BenchMetric(name: "insert", value: Double(rows) / times[0], unit: "rows/s", higherIsBetter: true),
            BenchMetric(name: "index", value: times[1] * 1000, unit: "ms", higherIsBetter: false),
            BenchMetric(name: "scan", value: times[2] * 1000, unit: "ms", higherIsBetter: false),
            BenchMetric(name: "lookup", value: Double(lookups) / times[3], unit: "lookups/s", higherIsBetter: true),
        ]
    }
}

/// memcached on a free loopback port, loaded by memaslap (Debian's
/// libmemcached-tools names it memcaslap): 90% get, 10% set, 1 KiB values.
struct MemcachedWorkload: BenchWorkload {
    let name = "memcached"
    let context: BenchContext
    var usesAllocator: Bool { true }

    static var loadGenerator: String? { findProgram("memcaslap") ?? findProgram("memaslap") }

    var unavailableReason: String? {
        if findProgram("memcached") == nil { return "memcached not installed (apt-get install memcached)" }
        if Self.loadGenerator == nil { return "memaslap not installed (apt-get install libmemcached-tools)" }
        return nil
    }

    func run(in variant: BenchVariant, context: BenchContext, tag: String) throws -> [BenchMetric] {
        let operations = context.quick ? 20_000 : 100_000
        let megabytes = max(64, context.size >> 20)
        let port = try Loopback.freePort()
        var server = ["memcached", "-l", "127.0.0.1", "-p", String(port), "-U", "0", "-m", String(megabytes), "-t", "2"]
        if geteuid() == 0 { server += ["-u", "root"] }
        let (command, environment) = context.launch(server, in: variant, allocator: true)
        let serverLog = context.logPath("\(tag).server.log")
        let pid = try BenchProcesses.start(command, environment: environment, stdoutPath: serverLog, stderrPath: serverLog)
        defer { BenchProcesses.stop(pid) }
        try Loopback.waitUntilListening(port: port, pid: pid, name: "memcached", log: serverLog)
        let client = [Self.loadGenerator ?? "memaslap", "-s", "127.0.0.1:\(port)", "-T", "1", "-c", "16",
                      "-x", String(operations), "-X", "1024"]
        let log = context.logPath("\(tag).log")
        let output = try runLogged(client, environment: context.launch([], in: .native, allocator: false).1,
                                   log: log, timeout: 300, name: "memaslap")
        // "Run time: 1.4s Ops: 100000 TPS: 70249 Net_rate: 78.6M/s"
        guard let line = output.split(separator: "\n").last(where: { $0.contains("TPS:") }),
              let range = line.range(of: "TPS: "),
              let tps = Double(line[range.upperBound...].prefix(while: { $0.isNumber || $0 == "." })), tps > 0 else {
            throw CLIError("memaslap printed no TPS line (see \(log))")
        }
        return [BenchMetric(name: "ops", value: tps, unit: "ops/s", higherIsBetter: true)]
    }
}
