import ArgumentParser
import CFBMMSys
import FBMMCore
import FBMMTracking
import FBMMPolicy
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// `fbmm set DIR KEY=VALUE...`: changes a mounted policy's knobs. Each pair is
/// the root xattr `user.fbmm.knob.KEY` (so `setfattr` does the same).
struct SetCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "set",
        abstract: "Change a mounted policy's knobs (tiered: fast-capacity, scan-interval, promote-threshold, demote-watermark, rate-limit, tracker).")

    @Argument(help: "The mount point.")
    var directory: String

    @Argument(help: "KEY=VALUE pairs.")
    var settings: [String]

    func run() throws {
        try waitingOnDaemon(of: directory) { try apply() }
    }

    private func apply() throws {
        let path = absolutePath(directory)
        guard brokerPath(ofMount: path) != nil else { throw CLIError("\(path) is not an fbmm mount") }
        guard !settings.isEmpty else { throw CLIError("nothing to set: give KEY=VALUE") }
        for setting in settings {
            let parts = setting.split(separator: "=", maxSplits: 1)
            guard parts.count == 2, !parts[0].isEmpty else { throw CLIError("expected KEY=VALUE, got '\(setting)'") }
            let name = "user.fbmm.knob.\(parts[0])"
            let value = Array(parts[1].utf8)
            if fbmm_setxattr(path, name, value, value.count, 0) != 0 {
                let code = errno
                if code == EINVAL {
                    // The daemon's reason, kept for this user (setxattr carries no message).
                    var buffer = [UInt8](repeating: 0, count: 1024)
                    let n = fbmm_getxattr(path, "user.fbmm.knob-refusal", &buffer, buffer.count)
                    if n > 0 {
                        throw CLIError("\(String(decoding: buffer[0..<n], as: UTF8.self)) (refused by the daemon of \(path))")
                    }
                    throw CLIError("the daemon of \(path) refused \(setting) (unknown knob or bad value; `fbmm policies` lists the keys)")
                }
                if code == ENOTSUP || code == EOPNOTSUPP {
                    throw CLIError("the policy of \(path) has no knobs to change")
                }
                throw CLIError("cannot set \(setting) on \(path): \(String(cString: strerror(code)))")
            }
        }
    }
}

/// `fbmm track --pid PID`: runs an access tracker on a process's memfd
/// mappings and prints, per scan, the hot pages of each memfd (JSON lines).
/// For benchmarks (`Benchmarks/tiering/`) and for looking at a program.
struct TrackCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "track",
        abstract: "Track a process's backing pages with soft-dirty, DAMON or refault sampling; print hot page ranges per scan (JSON lines).")

    @Option(help: "The process.")
    var pid: Int32

    @Option(help: "auto, softdirty, damon or refault.")
    var tracker: String = "auto"

    @Option(help: "Number of scans.")
    var scans: Int = 10

    @Option(help: "Seconds between scan starts.")
    var interval: Double = 1

    @Option(help: "Scans in a row a page must be hot to be reported.")
    var threshold: Int = 1

    func run() throws {
        guard let kind = TrackerKind(rawValue: tracker) else { throw CLIError("unknown tracker '\(tracker)' (auto, softdirty, damon, refault)") }
        let resolved = kind == .auto ? TrackerKind.resolveAuto() : kind
        if resolved == .damon && !DamonTracker.isAvailable { throw CLIError("DAMON is not available here (or is in use)") }
        if resolved == .refault && !RefaultTracker.isAvailable {
            throw CLIError("refault sampling is not available here (needs process_madvise, Linux 5.10+, and no active swap)")
        }
        let instance = resolved.makeTracker()
        defer { instance.stop() }
        var streaks: [UInt64: [UInt8]] = [:]
        let start = Date()
        var trackedSeconds = 0.0
        for scan in 0..<scans {
            let began = Date()
            let vmas = VMA.backingMappings(pid: pid)
            guard !vmas.isEmpty else { throw CLIError("process \(pid) maps no fbmm backing file (or is gone)") }
            var files: [UInt64: Int] = [:]
            for vma in vmas {
                let pages = Int((vma.fileOffset + vma.end - vma.start) / UInt64(pageSize))
                files[vma.inode] = max(files[vma.inode] ?? 0, pages)
            }
            let tracked = files.map { TrackedFile(key: $0.key, pid: pid, inode: $0.key, pageCount: $0.value) }
            let sample = instance.scan(tracked)
            // The same rule as the tiered policy: hot relative to the hottest page of the scan.
            let cut = TieredPolicy.hotCut(maxHeat: sample.values.reduce(0) { max($0, $1.max() ?? 0) })
            var hot: [String: [[Int]]] = [:]
            var trackedBytes: UInt64 = 0
            for file in tracked {
                trackedBytes += UInt64(file.pageCount) * UInt64(pageSize)
                let heat = sample[file.key] ?? []
                var streak = streaks[file.key] ?? [UInt8](repeating: 0, count: file.pageCount)
                if streak.count < heat.count { streak += [UInt8](repeating: 0, count: heat.count - streak.count) }
                var runs: [[Int]] = []
                for (i, value) in heat.enumerated() {
                    streak[i] = value >= cut ? min(255, streak[i] + 1) : 0
                    if Int(streak[i]) >= threshold {
                        if let last = runs.last, last[1] == i { runs[runs.count - 1][1] = i + 1 } else { runs.append([i, i + 1]) }
                    }
                }
                streaks[file.key] = streak
                hot[String(file.key)] = runs
            }
            trackedSeconds += Double(trackedBytes) / Double(1 << 30) * interval
            let line: [String: Any] = [
                "scan": scan, "tracker": instance.name,
                "elapsed_seconds": Date().timeIntervalSince(start),
                "cpu_seconds": instance.cpuSeconds,
                "tracked_bytes": trackedBytes,
                "hot_ranges": hot,
            ]
            let data = try JSONSerialization.data(withJSONObject: line, options: [.sortedKeys])
            FileHandle.standardOutput.write(data + Data("\n".utf8))
            let left = interval - Date().timeIntervalSince(began)
            if left > 0 && scan + 1 < scans { usleep(useconds_t(left * 1e6)) }
        }
        _ = trackedSeconds
    }
}
