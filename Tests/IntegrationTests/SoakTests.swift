import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A bounded soak: many processes and threads allocating, freeing, remapping
/// and forking under the shim. Afterwards the daemon's descriptors and memory
/// are where they started and no file is left. CI runs it for 20 s;
/// FBMM_SOAK_SECONDS=600 is the full-length run.
@Suite(.serialized)
struct SoakTests {
    func residentKiB(_ pid: pid_t) -> Int {
        let status = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
        let line = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") } ?? ""
        return Int(line.split(separator: " ").dropFirst().first ?? "") ?? -1
    }

    func openFDs(_ pid: pid_t) -> Int {
        (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").count) ?? -1
    }

    @Test func daemonStaysFlatUnderChurn() throws {
        try #require(FileManager.default.isExecutableFile(atPath: "/usr/bin/stress-ng"), "stress-ng is not installed (scripts/setup.sh installs it)")
        try #require(FileManager.default.fileExists(atPath: Artefacts.shim), "the shim is not built at \(Artefacts.shim) (scripts/build.sh)")
        let mount = try TestMount()
        defer { mount.close() }
        let pid = try #require((try mount.statistics()["daemon_pid"] as? Int).map { pid_t($0) })
        let seconds = Int(ProcessInfo.processInfo.environment["FBMM_SOAK_SECONDS"] ?? "") ?? 20
        func churn(_ duration: Int) throws -> CommandResult {
            try run([Artefacts.fbmm, "run", "--mount", mount.path, "--", "stress-ng",
                     "--vm", "2", "--vm-bytes", "24M", "--malloc", "2", "--malloc-bytes", "1M", "--malloc-max", "2048",
                     "--mremap", "1", "--mremap-bytes", "8M", "--fork", "2", "--mmapfork", "1",
                     "--pthread", "1", "--pthread-max", "8",
                     "--timeout", "\(duration)s", "--verify", "--metrics-brief"],
                    timeout: TimeInterval(duration * 4 + 120))
        }
        // Warm up, so the baseline includes the daemon's steady-state allocations.
        let warm = try churn(3)
        #expect(warm.ok, "warm-up run: \(warm.stderr.suffix(2000))")
        usleep(500_000)
        let fdsBefore = openFDs(pid), rssBefore = residentKiB(pid)
        let soak = try churn(seconds)
        #expect(soak.ok, "soak run: \(soak.stderr.suffix(2000))")
        #expect(!soak.stderr.contains("fail:") && !soak.stdout.contains("fail:"), "stress-ng verified its data")
        // Processes are gone: their files and memory must be too.
        var files: [[String: Any]] = []
        for _ in 0..<40 {
            files = (try mount.statistics()["files"] as? [[String: Any]]) ?? []
            if files.isEmpty { break }
            usleep(100_000)
        }
        #expect(files.isEmpty, "no file left behind: \(files.compactMap { $0["name"] as? String })")
        #expect(try FileManager.default.contentsOfDirectory(atPath: mount.path).isEmpty)
        let fdsAfter = openFDs(pid), rssAfter = residentKiB(pid)
        #expect(fdsAfter <= fdsBefore, "daemon fds flat: \(fdsBefore) -> \(fdsAfter)")
        #expect(rssAfter - rssBefore < 16 * 1024, "daemon memory flat: \(rssBefore) KiB -> \(rssAfter) KiB")
        let counters = try mount.statistics()["counters"] as? [String: Int] ?? [:]
        #expect((counters["broker_handouts"] ?? 0) >= 5, "the soak really ran under the shim (one arena per stressor process at least): \(counters)")
    }
}
