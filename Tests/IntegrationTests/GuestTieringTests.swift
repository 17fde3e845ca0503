import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The tiered policy in the 3-node qemu guest (Tests/guest/tiering.sh): a
/// GUPS run (Tests/guest/gups.c under the shim) whose 16 MiB hot set must be
/// promoted to the fast node within 60 s, followed when it moves, with the
/// fast node kept within fast-capacity plus the watermark; DAMON then
/// soft-dirty (switched with `fbmm set` while mounted). One guest boot.
///
/// No host fallback: when the guest cannot start, the test fails ("tiering
/// was NOT checked") rather than skips.
@Suite(.serialized)
struct GuestTieringTests {
    static let requiredChecks = ["knob", "promote", "follow", "capacity", "counters"]

    @Test(.timeLimit(.minutes(15)), arguments: GuestPlacementTests.kernels)
    func tieredPolicyKeepsTheHotSetOnTheFastNode(_ kernel: String) throws {
        let root = Artefacts.packageRoot
        let image = try GuestPlacementTests.kernelImage(kernel)
        try #require(FileManager.default.isExecutableFile(atPath: Artefacts.fbmm),
                     "fbmm is not built at \(Artefacts.fbmm): run scripts/build.sh first")
        // Private copies: a rebuild during the run must not pull binaries from under the guest.
        let scratch = FileManager.default.temporaryDirectory.path + "/fbmm-guest-tiering-\(getpid())"
        try? FileManager.default.removeItem(atPath: scratch)
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let shim = try GuestPlacementTests.shimLibrary()
        for (source, name) in [(Artefacts.fbmm, "fbmm"), (shim, "libfbmm-shim.so")] {
            try FileManager.default.copyItem(atPath: source, toPath: "\(scratch)/\(name)")
        }
        var environment = ["FBMM_BIN": "\(scratch)/fbmm"]
        let gups = "\(scratch)/gups"
        if try run(["cc", "-O2", "-Wall", "-o", gups, "\(root)/Tests/guest/gups.c"]).ok { environment["TIERING_GUPS"] = gups }

        let started = Date()
        let result = try run(["\(root)/scripts/guest/run.sh", "--kernel", image, "--timeout", "600", "--", "bash", "\(root)/Tests/guest/tiering.sh"],
                             environment: environment, timeout: 700)
        let elapsed = Int(Date().timeIntervalSince(started))
        let lines = result.stdout.split(separator: "\n").map(String.init)
        let checks = lines.filter { $0.hasPrefix("PASS ") || $0.hasPrefix("FAIL ") }
        let report = (checks + lines.filter { $0.contains(" passed, ") }).joined(separator: "\n")
        print("guest tiering on \(kernel) (\(elapsed)s):\n\(report)")

        switch result.status {
        case 86:
            Issue.record("tiering was NOT checked: the guest is unavailable (run scripts/guest/setup.sh): \(result.stderr)")
            return
        case 87:
            Issue.record("tiering was NOT checked: the guest failed (boot or crash): \(result.stderr)\nchecks so far:\n\(report)")
            return
        case 124:
            Issue.record("tiering was NOT fully checked: the guest timed out\nchecks so far:\n\(report)\n\(result.stderr)")
            return
        default:
            break
        }
        let failures = checks.filter { $0.hasPrefix("FAIL ") }
        #expect(failures.isEmpty, "tiering checks failed:\n\(failures.joined(separator: "\n"))\n\nfull output:\n\(result.stdout)")
        #expect(result.status == 0, "tiering.sh exited \(result.status)\n\(report)\nstderr:\n\(result.stderr)")
        let passed = Set(checks.filter { $0.hasPrefix("PASS ") }.map { String($0.dropFirst(5).prefix { $0 != ":" }) })
        let missing = Self.requiredChecks.filter { !passed.contains($0) }
        #expect(missing.isEmpty, "checks that did not pass (or never ran): \(missing.joined(separator: ", "))\n\(report)")
    }
}
