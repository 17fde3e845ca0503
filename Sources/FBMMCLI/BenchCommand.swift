import FBMMProtocol
import ArgumentParser
import FBMMCore
import Foundation

#if canImport(Glibc)
import Glibc
#endif

struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Run workloads natively and under several policies, and compare.",
        discussion: """
            Mounts one fresh fbmm mount per --policy, then runs every workload natively and under \
            `fbmm run` in each mount, in interleaved repetitions (native, p1, p2, native, p1, p2, ...). \
            Reports medians, their spread and each policy's ratio to native measured in the same run: \
            a table on stdout, and results.json, results.csv, results.md and chart.svg in --out.
            Workloads: gups, stream, churn, latency (fbmm-workload, built with fbmm); redis, sqlite, \
            memcached where installed (run with jemalloc preloaded, natively too). Nothing is installed; \
            a missing program is reported as skipped. Every mount is unmounted at the end, on error \
            and on Ctrl-C too.
            Example: fbmm bench --policy local --policy interleave,nodes=0 --out /tmp/bench
            """)

    @Option(name: .long, help: ArgumentHelp("A policy to compare, NAME[,KEY=VALUE...] (repeatable; lists use ':').", valueName: "spec"))
    var policy: [String] = []

    @Option(name: .long, help: "Comma-separated workloads: gups, stream, churn, latency, redis, sqlite, memcached.")
    var workloads: String = "gups,stream,churn,latency,redis,sqlite,memcached"

    @Option(name: .long, help: "Memory each workload uses (K/M/G; default 256M, 32M with --quick).")
    var size: String?

    @Option(name: .long, help: "Directory for results.json, results.csv, results.md, chart.svg and logs/.")
    var out: String

    @Option(name: .long, help: "Repetitions of each (workload, policy) (default 5, 2 with --quick; the median is reported with the spread).")
    var repetitions: Int?

    @Flag(name: .long, help: "A sub-minute run: small sizes, fewer operations, 2 repetitions.")
    var quick = false

    struct PolicySpec {
        var label: String
        var name: String
        var options: [String]
    }

    /// "interleave,nodes=0:1,weights=3:1" -> interleave with -o nodes=0:1 -o weights=3:1.
    static func parsePolicy(_ spec: String) throws -> PolicySpec {
        let parts = spec.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        guard let name = parts.first, !name.isEmpty, !name.contains("=") else {
            throw CLIError("--policy '\(spec)': expected NAME[,KEY=VALUE...]")
        }
        for option in parts.dropFirst() where !option.contains("=") || option.hasPrefix("=") {
            throw CLIError("--policy '\(spec)': '\(option)' is not KEY=VALUE")
        }
        return PolicySpec(label: spec, name: name, options: Array(parts.dropFirst()))
    }

    func validate() throws {
        if policy.isEmpty { throw ValidationError("give at least one --policy") }
        if let repetitions, repetitions < 1 { throw ValidationError("--repetitions must be at least 1") }
    }

    func run() throws {
        let specs = try policy.map(Self.parsePolicy)
        let labels = specs.map(\.label)
        if Set(labels).count != labels.count { throw CLIError("a --policy is given twice") }
        if labels.contains("native") { throw CLIError("'native' is not a policy: native runs are always included") }
        let sizeBytes: UInt64
        do { sizeBytes = try ByteSize(parsing: size ?? (quick ? "32M" : "256M")).bytes } catch {
            throw CLIError("--size: \(error)")
        }
        guard sizeBytes >= 1 << 20 else { throw CLIError("--size: at least 1M") }
        let names = workloads.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        guard !names.isEmpty else { throw CLIError("--workloads: none given") }
        for name in names where !BenchWorkloads.names.contains(name) {
            throw CLIError("unknown workload '\(name)' (\(BenchWorkloads.names.joined(separator: ", ")))")
        }
        let reps = repetitions ?? (quick ? 2 : 5)
        let outDir = absolutePath(out)
        let logDir = "\(outDir)/logs"
        do { try FileManager.default.createDirectory(atPath: logDir, withIntermediateDirectories: true) } catch {
            throw CLIError("cannot create \(logDir): \(error.localizedDescription)")
        }

        let fbmm = executablePath()
        let exeDir = (fbmm as NSString).deletingLastPathComponent
        var workloadBinary: String?
        for candidate in [ProcessInfo.processInfo.environment["FBMM_WORKLOAD"], "\(exeDir)/fbmm-workload"].compactMap({ $0 })
        where access(candidate, X_OK) == 0 {
            workloadBinary = candidate
            break
        }
        let context = BenchContext(fbmm: fbmm, workloadBinary: workloadBinary, size: sizeBytes, quick: quick,
                                   logDirectory: logDir, jemalloc: try? findLibrary("libjemalloc.so.2", package: "libjemalloc2"),
                                   baseEnvironment: ProcessInfo.processInfo.environment)
        _ = try findShim()   // fail early, before anything is mounted

        var selected = [any BenchWorkload]()
        var skipped = [(String, String)]()
        for name in names {
            guard let workload = BenchWorkloads.make(name, context: context) else { continue }
            if let reason = workload.unavailableReason {
                skipped.append((name, reason))
                writeStderr("bench: skipping \(name): \(reason)")
            } else {
                selected.append(workload)
            }
        }
        guard !selected.isEmpty else { throw CLIError("no workload can run here (\(skipped.map { "\($0.0): \($0.1)" }.joined(separator: "; ")))") }
        if selected.contains(where: \.usesAllocator) && context.jemalloc == nil {
            writeStderr("bench: libjemalloc.so.2 not installed: redis/sqlite/memcached run with the system allocator")
        }

        BenchProcesses.installSignalHandlers()
        var mounts = [(spec: PolicySpec, path: String)]()
        defer {
            for mount in mounts.reversed() { Self.unmount(mount.path, fbmm: fbmm, logDir: logDir) }
        }
        for (index, spec) in specs.enumerated() {
            let path = "/tmp/fbmm-bench-\(getpid())-\(index)"
            mkdir(path, 0o755)
            let log = "\(logDir)/mount-\(index).log"
            var arguments = [fbmm, "mount", path, "--policy", spec.name, "--log-file", "\(logDir)/daemon-\(index).log"]
            for option in spec.options { arguments += ["-o", option] }
            writeStderr("bench: mounting \(spec.label) on \(path)")
            let pid = try BenchProcesses.start(arguments, environment: context.baseEnvironment, stdoutPath: log, stderrPath: log)
            let status = try BenchProcesses.wait(pid, timeout: 60, name: "fbmm mount")
            guard status == 0, FBMMMount.isMount(path) else {
                rmdir(path)
                let message = ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "")
                    .trimmingCharacters(in: .whitespacesAndNewlines).split(separator: "\n").last.map(String.init) ?? "failed"
                throw CLIError("cannot mount policy '\(spec.label)': \(message)")
            }
            mounts.append((spec, path))
        }

        let variants = [BenchVariant.native] + mounts.map {
            BenchVariant(label: $0.spec.label, mount: $0.path, daemonPID: daemonPID(ofMount: $0.path))
        }
        var samples = [String: BenchSamples]()
        var fallbacks = [String: String]()
        var daemonCPU = [String: [Double]]()
        var metricOrder = [String: [String]]()
        let total = reps * selected.count * variants.count
        var done = 0
        let started = Date()
        for rep in 1...reps {
            for workload in selected {
                for (v, variant) in variants.enumerated() {
                    done += 1
                    let tag = "\(workload.name)-\(v == 0 ? "native" : "p\(v)")-r\(rep)"
                    let t0 = Date()
                    let metrics: [BenchMetric]
                    let cpuBefore = variant.daemonPID.flatMap(taskCPUSeconds)
                    do { metrics = try workload.run(in: variant, context: context, tag: tag) } catch let error as CLIError {
                        throw CLIError("\(workload.name) (\(variant.label), repetition \(rep)): \(error.description)")
                    }
                    if let before = cpuBefore, let after = variant.daemonPID.flatMap(taskCPUSeconds) {
                        daemonCPU[BenchReport.key(workload.name, variant.label, ""), default: []].append((after - before) * 1000)
                    }
                    if variant.mount != nil, fallbacks[variant.label] == nil,
                       let reason = BenchFallbackCheck.reason(logDirectory: logDir, tag: tag) {
                        fallbacks[variant.label] = "\(workload.name): \(reason)"
                        writeStderr("bench: \(workload.name) under \(variant.label) fell back to ordinary memory: \(reason)")
                    }
                    if metricOrder[workload.name] == nil { metricOrder[workload.name] = metrics.map(\.name) }
                    for metric in metrics {
                        let key = BenchReport.key(workload.name, variant.label, metric.name)
                        samples[key, default: BenchSamples(unit: metric.unit, higherIsBetter: metric.higherIsBetter)].values.append(metric.value)
                    }
                    let headline = metrics.first.map { "\($0.name) \(BenchReport.number($0.value)) \($0.unit)" } ?? ""
                    writeStderr(String(format: "bench [%d/%d] rep %d/%d %@ %@: %@ (%.1fs, %.0fs elapsed)", done, total, rep, reps,
                                       workload.name, variant.label, headline, Date().timeIntervalSince(t0),
                                       Date().timeIntervalSince(started)))
                }
            }
        }

        let allocators = Dictionary(uniqueKeysWithValues: selected.map {
            ($0.name, $0.usesAllocator && context.jemalloc != nil ? "jemalloc" : "system")
        })
        let report = BenchReport(workloads: selected.map(\.name), variants: variants.map(\.label), metricOrder: metricOrder,
                                 samples: samples, allocators: allocators, skipped: skipped,
                                 fallbacks: fallbacks, daemonCPU: daemonCPU)
        do {
            try report.json().write(to: URL(fileURLWithPath: "\(outDir)/results.json"))
            try report.csv().write(toFile: "\(outDir)/results.csv", atomically: true, encoding: .utf8)
            try report.markdownTable().write(toFile: "\(outDir)/results.md", atomically: true, encoding: .utf8)
            try report.svg().write(toFile: "\(outDir)/chart.svg", atomically: true, encoding: .utf8)
        } catch {
            throw CLIError("cannot write results to \(outDir): \(error.localizedDescription)")
        }
        print("fbmm bench: size \(formatBytes(sizeBytes)), \(reps) repetition\(reps == 1 ? "" : "s"), \(Int(Date().timeIntervalSince(started)))s")
        print(report.textTable(), terminator: "")
        print("results: \(outDir)/results.json, results.csv, results.md, chart.svg")
    }

    /// Unmounts a bench mount (forcing it if a program still holds it) and removes its directory.
    static func unmount(_ path: String, fbmm: String, logDir: String) {
        let environment = ProcessInfo.processInfo.environment
        for arguments in [[fbmm, "umount", path], [fbmm, "umount", "--force", path]] where FBMMMount.isMount(path) {
            let log = "\(logDir)/umount.log"
            guard let pid = try? BenchProcesses.startIgnoringInterrupt(arguments, environment: environment, stdoutPath: log, stderrPath: log) else { continue }
            var status: Int32 = 0
            waitpid(pid, &status, 0)
        }
        if FBMMMount.isMount(path) { umount2(path, Int32(MNT_DETACH)) }
        rmdir(path)
    }
}
