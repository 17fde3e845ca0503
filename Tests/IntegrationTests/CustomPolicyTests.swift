import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The extension API for real: examples/custom-policy, a separate package that
/// depends on fbmm by path, builds `fbmm-custom` with one more policy
/// (`headfast`); its mounts, daemon, stat and xattrs work like fbmm's own.
@Suite(.serialized)
struct CustomPolicyTests {
    static let examplePackage = "\(Artefacts.packageRoot)/examples/custom-policy"
    static let scratch = "\(Artefacts.packageRoot)/.build-examples"

    /// Builds the example package once per test process (about a minute on
    /// 2 cores the first time; an incremental no-op afterwards).
    static let built: Result<String, BuildFailure> = {
        let result: CommandResult
        do {
            result = try run(["swift", "build", "--package-path", examplePackage, "--scratch-path", scratch,
                              "--product", "fbmm-custom"], timeout: 1200)
        } catch {
            return .failure(BuildFailure(message: "cannot run swift build: \(error)"))
        }
        let binary = "\(scratch)/debug/fbmm-custom"
        guard result.ok, FileManager.default.isExecutableFile(atPath: binary) else {
            return .failure(BuildFailure(message: "building examples/custom-policy failed (\(result.status)):\n"
                                         + result.stdout.suffix(4000) + result.stderr.suffix(4000)))
        }
        return .success(binary)
    }()

    struct BuildFailure: Error, CustomStringConvertible { let message: String; var description: String { message } }

    static func binary() throws -> String { try built.get() }

    static func freshDirectory(_ tag: String) -> String {
        let dir = "/tmp/fbmm-test-\(tag)-\(getpid())-\(UInt32.random(in: 0..<UInt32.max))"
        mkdir(dir, 0o755)
        return dir
    }

    static func unmount(_ binary: String, _ dir: String) {
        if isMounted(dir) { _ = try? run([binary, "umount", dir]) }
        if isMounted(dir) { _ = try? run([binary, "umount", "--force", dir]) }
        rmdir(dir)
    }

    @Test func customBinaryListsItsPolicyBesidesTheBuiltins() throws {
        let custom = try Self.binary()
        let listing = try run([custom, "policies"])
        #expect(listing.ok, "\(listing.stderr)")
        for name in ["local", "bind", "preferred", "interleave", "headfast"] {
            #expect(listing.stdout.contains("\n\(name): ") || listing.stdout.hasPrefix("\(name): "),
                    "\(name) listed: \(listing.stdout)")
        }
        #expect(listing.stdout.contains("head ") && listing.stdout.contains("default 2M"))
        // The stock fbmm does not know it.
        let stock = try run([Artefacts.fbmm, "policies"])
        #expect(!stock.stdout.contains("headfast"))
    }

    @Test func mountWithTheCustomPolicyPlacesStatsAndReports() throws {
        try requireFUSE()
        let custom = try Self.binary()
        let dir = Self.freshDirectory("headfast")
        defer { Self.unmount(custom, dir) }
        let mount = try run([custom, "mount", dir, "--policy", "headfast", "-o", "fast=0,head=1M",
                             "--log-file", "\(dir).log"])
        defer { unlink("\(dir).log") }
        try #require(mount.ok, "fbmm-custom mount: \(mount.stderr)")
        #expect(isMounted(dir))

        let dd = try run(["dd", "if=/dev/urandom", "of=\(dir)/data", "bs=1M", "count=4", "status=none"])
        #expect(dd.ok, "\(dd.stderr)")

        // The stock fbmm reads the custom daemon's statistics: the protocol is the same.
        for reader in [custom, Artefacts.fbmm] {
            let stat = try run([reader, "stat", dir, "--json"])
            try #require(stat.ok, "\(reader) stat: \(stat.stderr)")
            let json = try #require(try JSONSerialization.jsonObject(with: Data(stat.stdout.utf8)) as? [String: Any])
            let policy = try #require(json["policy"] as? String)
            #expect(policy.hasPrefix("headfast,fast=0,head=1M"), "\(policy)")
            let files = try #require(json["files"] as? [[String: Any]])
            let file = try #require(files.first { $0["name"] as? String == "data" })
            #expect((file["size"] as? NSNumber)?.uint64Value == 4 << 20)
            #expect((file["resident_bytes"] as? NSNumber)?.uint64Value == 4 << 20)
            let nodes = try #require(file["nodes"] as? [String: Any])
            let total = nodes.values.compactMap { ($0 as? NSNumber)?.uint64Value }.reduce(0, +)
            #expect(total == 4 << 20, "per-node bytes add up: \(nodes)")
        }

        let policyAttr = try run(["getfattr", "--only-values", "-n", "user.fbmm.policy", "\(dir)/data"])
        #expect(policyAttr.ok && policyAttr.stdout.hasPrefix("headfast,fast=0,head=1M"), "\(policyAttr.stdout)\(policyAttr.stderr)")
        let nodesAttr = try run(["getfattr", "--only-values", "-n", "user.fbmm.nodes", "\(dir)/data"])
        #expect(nodesAttr.ok && nodesAttr.stdout.contains("0:"), "\(nodesAttr.stdout)\(nodesAttr.stderr)")

        // A per-file override naming the custom policy is validated by the daemon too.
        let good = try run(["setfattr", "-n", "user.fbmm.policy", "-v", "headfast,fast=0,head=4K", "\(dir)/data"])
        #expect(good.ok, "\(good.stderr)")
        let bad = try run(["setfattr", "-n", "user.fbmm.policy", "-v", "headfast,fast=0,colour=red", "\(dir)/data"])
        #expect(!bad.ok)

        let umount = try run([custom, "umount", dir])
        #expect(umount.ok, "\(umount.stderr)")
        #expect(!isMounted(dir))
    }

    @Test(arguments: [
        (["-o", "fast=0,colour=red"], "no option 'colour'"),
        ([], "needs option 'fast'"),
        (["-o", "fast=9"], "node 9 does not exist"),
        (["-o", "fast=0,head=100"], "head=100"),
        (["-o", "fast=0,rest=0:x"], "rest=0:x"),
    ])
    func badKeysAreRefusedWithOneLine(_ options: [String], _ expected: String) throws {
        try requireFUSE()
        let custom = try Self.binary()
        let dir = Self.freshDirectory("headfastbad")
        defer { Self.unmount(custom, dir) }
        let result = try run([custom, "mount", dir, "--policy", "headfast"] + options)
        #expect(result.status != 0)
        #expect(result.stderr.split(separator: "\n").count == 1, "one line: \(result.stderr)")
        #expect(result.stderr.contains(expected), "names the problem: \(result.stderr)")
        #expect(!isMounted(dir))
    }
}

/// scripts/mount.fuse.fbmm, the helper mount(8) runs for type fuse.fbmm
/// (/etc/fstab), run as mount(8) would run it.
@Suite(.serialized)
struct FstabHelperTests {
    static let helper = "\(Artefacts.packageRoot)/scripts/mount.fuse.fbmm"

    static func helperEnvironment() -> [String: String] {
        let bin = (Artefacts.fbmm as NSString).deletingLastPathComponent
        return ["PATH": "\(bin):" + (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"), "FBMM": ""]
    }

    @Test func mountsWithThePolicyAndDropsGenericOptions() throws {
        try requireFUSE()
        let dir = CustomPolicyTests.freshDirectory("fstab")
        defer { CustomPolicyTests.unmount(Artefacts.fbmm, dir) }
        let result = try run(["sh", Self.helper, "fbmm", dir, "-o", "policy=bind,nodes=0,rw,nosuid,nofail,x-systemd.automount"],
                             environment: Self.helperEnvironment())
        try #require(result.ok, "helper: \(result.stderr)")
        #expect(isMounted(dir))
        let stat = try run([Artefacts.fbmm, "stat", dir, "--json"])
        let json = try #require(try JSONSerialization.jsonObject(with: Data(stat.stdout.utf8)) as? [String: Any])
        #expect(json["policy"] as? String == "bind,nodes=0")
        let umount = try run([Artefacts.fbmm, "umount", dir])
        #expect(umount.ok, "\(umount.stderr)")
        #expect(!isMounted(dir))
    }

    @Test func badOptionsAndReadOnlyAreOneLineAndMountNothing() throws {
        try requireFUSE()
        let dir = CustomPolicyTests.freshDirectory("fstabbad")
        defer { CustomPolicyTests.unmount(Artefacts.fbmm, dir) }
        for (options, expected) in [("policy=bind,colour=red,rw", "no option 'colour'"), ("policy=local,ro", "read-only")] {
            let result = try run(["sh", Self.helper, "fbmm", dir, "-o", options], environment: Self.helperEnvironment())
            #expect(result.status != 0)
            #expect(result.stderr.split(separator: "\n").count == 1, "one line: \(result.stderr)")
            #expect(result.stderr.contains(expected), "\(result.stderr)")
            #expect(!isMounted(dir))
        }
    }
}

/// docs/policies.md documents every policy and key that `fbmm policies` lists.
struct PolicyDocsTests {
    @Test func everyPolicyAndKeyIsDocumented() throws {
        let listing = try run([Artefacts.fbmm, "policies"])
        try #require(listing.ok, "\(listing.stderr)")
        let doc = try String(contentsOfFile: "\(Artefacts.packageRoot)/docs/policies.md", encoding: .utf8)
        var missing: [String] = []
        for line in listing.stdout.split(separator: "\n") {
            if !line.hasPrefix(" "), let colon = line.firstIndex(of: ":"), !line.hasPrefix("mount options") {
                let name = line[..<colon]
                if !doc.contains("`\(name)`") { missing.append("policy \(name)") }
            } else if line.hasPrefix("    "), line.hasSuffix("(required)") || line.contains("(default "),
                      let key = line.split(separator: " ").first {
                // A key line: "    KEY  help (required|default X)"; other indented lines are notes.
                if !doc.contains("`\(key)`") { missing.append("key \(key)") }
            }
        }
        #expect(missing.isEmpty, "docs/policies.md lacks: \(missing.joined(separator: ", "))")
    }
}
