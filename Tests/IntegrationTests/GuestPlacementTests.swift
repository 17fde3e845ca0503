import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Placement on several NUMA nodes, checked page by page in the 3-node qemu
/// guest (scripts/guest/run.sh): every built-in policy, the per-file xattr
/// override, and migration while an application uses its memory
/// (Tests/guest/placement.sh, with Tests/guest/placement_app.c run under the shim).
///
/// This machine has one NUMA node, so there is no host fallback: when the guest
/// cannot start, the test fails ("placement was NOT checked") rather than skips.
@Suite(.serialized)
struct GuestPlacementTests {
    /// Node 1 is small so the preferred-overflow check (node 1's free memory
    /// plus 64 MiB) stays cheap under TCG.
    static let topology = "1G,cpus=0-1 256M 1G"

    /// Checks the script must report; a script that silently skipped one would
    /// otherwise pass.
    static let requiredChecks = [
        "bind-node0-malloc", "bind-node1-malloc", "bind-node2-malloc",
        "bind-node0-mmap", "bind-node1-mmap", "bind-node2-mmap",
        "preferred-node1", "preferred-overflow",
        "interleave-2nodes", "interleave-3nodes", "weighted-interleave-3to1",
        "xattr-directory-bind2", "xattr-file-bind1", "xattr-root-app-interleave",
        "migrate-before", "migrate-whole", "migrate-new-pages",
        "migrate-range-moved", "migrate-range-rest-stays", "migrate-range-stat",
        "pool-bind1", "pool-bind2", "pool-interleave02", "pool-policy-change", "contig-node2", "contig-huge",
    ]

    /// The guest kernels the checks run on: Debian's 6.12 (DAMON, copy-on-write
    /// fork) and Debian 12's own 6.1 (neither; what most users run).
    static let kernels = ["6.12", "6.1"]

    /// The newest installed Debian kernel image of a series.
    static func kernelImage(_ series: String) throws -> String {
        let pattern = series == "6.1" ? "vmlinuz-6.1.0-*-amd64" : "vmlinuz-\(series).*+deb12-amd64"
        let found = try run(["sh", "-c", "ls -1 /boot/\(pattern) 2>/dev/null | sort -V | tail -n 1"]).stdout
            .trimmingCharacters(in: .whitespacesAndNewlines)
        try #require(!found.isEmpty, "no /boot/\(pattern): the guest checks were NOT run on \(series) (scripts/guest/setup.sh installs it)")
        return found
    }

    @Test(.timeLimit(.minutes(20)), arguments: kernels)
    func everyPolicyPlacesPagesOnTheRightNodes(_ kernel: String) throws {
        let root = Artefacts.packageRoot
        let image = try Self.kernelImage(kernel)
        try #require(FileManager.default.isExecutableFile(atPath: Artefacts.fbmm),
                     "fbmm is not built at \(Artefacts.fbmm): run scripts/build.sh first")

        // Private copies: the guest reads the host's files live over 9p, and a
        // build that relinks .build/debug/fbmm during the run would crash it.
        let scratch = FileManager.default.temporaryDirectory.path + "/fbmm-guest-placement-\(getpid())"
        try? FileManager.default.removeItem(atPath: scratch)
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let shim = try Self.shimLibrary()
        for (source, name) in [(Artefacts.fbmm, "fbmm"), (shim, "libfbmm-shim.so")] {
            try FileManager.default.copyItem(atPath: source, toPath: "\(scratch)/\(name)")
        }
        var environment = ["FBMM_BIN": "\(scratch)/fbmm"]
        // placement_app is built here when a compiler is at hand (faster than in the guest);
        // otherwise placement.sh builds it inside the guest.
        let app = "\(scratch)/placement_app"
        let cc = try run(["cc", "-O2", "-Wall", "-pthread", "-o", app, "\(root)/Tests/guest/placement_app.c"])
        if cc.ok { environment["PLACEMENT_APP"] = app }
        let poolcheck = "\(scratch)/poolcheck"
        if try run(["cc", "-O1", "-pthread", "-o", poolcheck, "\(root)/Tests/shim/poolcheck.c"]).ok {
            environment["POOLCHECK_APP"] = poolcheck
        }

        let started = Date()
        let result = try run(["\(root)/scripts/guest/run.sh", "--kernel", image, "--topology", Self.topology, "--timeout", "900",
                              "--", "bash", "\(root)/Tests/guest/placement.sh"],
                             environment: environment, timeout: 1000)
        let elapsed = Int(Date().timeIntervalSince(started))
        let lines = result.stdout.split(separator: "\n").map(String.init)
        let checks = lines.filter { $0.hasPrefix("PASS ") || $0.hasPrefix("FAIL ") }
        let report = (checks + lines.filter { $0.contains(" passed, ") }).joined(separator: "\n")
        // The measured percentages belong in the test log even when everything passes.
        print("guest placement on \(kernel) (\(elapsed)s):\n\(report)")

        switch result.status {
        case 86:
            Issue.record("placement was NOT checked: the guest is unavailable (run scripts/guest/setup.sh): \(result.stderr)")
            return
        case 87:
            Issue.record("placement was NOT checked: the guest failed (boot or crash): \(result.stderr)\nchecks so far:\n\(report)")
            return
        case 124:
            Issue.record("placement was NOT fully checked: the guest timed out after 900 s\nchecks so far:\n\(report)\n\(result.stderr)")
            return
        default:
            break
        }
        let failures = checks.filter { $0.hasPrefix("FAIL ") }
        #expect(failures.isEmpty, "placement checks failed:\n\(failures.joined(separator: "\n"))\n\nall checks:\n\(report)")
        #expect(result.status == 0, "placement.sh exited \(result.status)\n\(report)\nstderr:\n\(result.stderr)")
        let passed = Set(checks.filter { $0.hasPrefix("PASS ") }.map { line in
            String(line.dropFirst(5).prefix { $0 != ":" })
        })
        let missing = Self.requiredChecks.filter { !passed.contains($0) }
        #expect(missing.isEmpty, "checks that did not pass (or never ran): \(missing.joined(separator: ", "))\n\(report)\nstderr:\n\(result.stderr)")
    }

    /// The LD_PRELOAD shim: next to fbmm (scripts/build.sh), else shim/build (made here if needed).
    static func shimLibrary() throws -> String {
        if access(Artefacts.shim, R_OK) == 0 { return Artefacts.shim }
        let built = "\(Artefacts.packageRoot)/shim/build/libfbmm-shim.so"
        if access(built, R_OK) != 0 {
            let make = try run(["make", "-s", "-C", "\(Artefacts.packageRoot)/shim"])
            try #require(make.ok, "cannot build the shim (make -C shim): \(make.stderr)")
        }
        try #require(access(built, R_OK) == 0, "libfbmm-shim.so is not built: run scripts/build.sh first")
        return built
    }
}
