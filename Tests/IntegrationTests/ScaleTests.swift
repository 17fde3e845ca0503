import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Programs at sizes where the shim's structures meet the kernel's limits.
@Suite(.serialized)
struct ScaleTests {
    static var manyblocks: String { "\(Artefacts.packageRoot)/shim/build/manyblocks" }
    static let blocks = 100_000

    /// 100,000 live 256 KiB blocks, one page touched each (issue 15). Natively
    /// glibc's chunks merge into few mappings; under the shim every block in
    /// the mount is a mapping of its own, and vm.max_map_count (65,530) is
    /// less than the number of blocks. No malloc may fail: what the shim
    /// cannot place goes to the next allocator (glibc's, or jemalloc), and
    /// the shim still places as many as its share of the limit allows.
    @Test func manyLiveBlocksNativeAndUnderShim() throws {
        try ShimPrograms.build()
        let native = try run(unblocked([Self.manyblocks, "\(Self.blocks)"]),
                             environment: ["LD_PRELOAD": "", "FBMM_MOUNT": ""], timeout: 60)
        #expect(native.ok && native.stdout.contains("manyblocks: ok"), "native manyblocks exited \(native.status):\n\(native.stdout)\n\(native.stderr)")
        print("native: \(summary(native.stdout))")

        let maxMapCount = Int((try? String(contentsOfFile: "/proc/sys/vm/max_map_count", encoding: .utf8))?
            .trimmingCharacters(in: .whitespacesAndNewlines) ?? "") ?? 65530
        let mount = try TestMount()
        defer { mount.close() }
        for allocator in ["system", "jemalloc"] {
            let work = try TemporaryDirectory()
            let app = try Background(fbmmRun(mount, ["--allocator", allocator, "--verbose"],
                                             [Self.manyblocks, "\(Self.blocks)", "--ready", work.file("ready"), "--go", work.file("go")]))
            defer { app.stop() }
            guard let ready = waitForFile(work.file("ready"), seconds: 60) else {
                Issue.record("manyblocks (\(allocator)) never held its blocks: \(app.output)")
                continue
            }
            let fields = ready.split(whereSeparator: { $0 == " " || $0 == "\n" }).compactMap { Int($0) }
            try #require(fields.count == 2, "ready file: \(ready)")
            let (pid, inMount) = (fields[0], fields[1])
            // While the blocks are held: the program's arena file holds them.
            let files = try mount.statistics()["files"] as? [[String: Any]] ?? []
            let mine = files.filter { ($0["name"] as? String)?.hasPrefix("manyblocks.\(pid).") == true }
            let resident = mine.reduce(UInt64(0)) { $0 + uint64($1["resident_bytes"]) }
            FileManager.default.createFile(atPath: work.file("go"), contents: nil)
            let status = app.wait(seconds: 60)

            print("\(allocator): \(summary(app.stdout)); mount held \(resident >> 20) MiB of \(mine.count) file(s)")
            #expect(status == 0 && app.stdout.contains("manyblocks: ok"),
                    "manyblocks under the shim (\(allocator)) exited \(status):\n\(app.stdout)\n\(app.stderr.suffix(2000))")
            #expect(!app.stdout.contains("FAIL"), "\(app.stdout)")
            #expect(app.stderr.contains("fbmm: using fbmm mount \(mount.path)"), "\(app.stderr)")
            // The shim keeps up to half of the limit for its own mappings:
            // at least a quarter of it must be blocks in the mount.
            #expect(inMount >= min(Self.blocks, maxMapCount / 4),
                    "\(inMount) of \(Self.blocks) blocks in the mount (vm.max_map_count \(maxMapCount)) (\(allocator))")
            #expect(mine.count == 1, "one arena file manyblocks.\(pid).N: \(files)")
            #expect(resident >= UInt64(inMount) * 4096, "the arena file held \(resident) bytes for \(inMount) blocks (\(allocator))")
        }
    }
}

private func uint64(_ value: Any?) -> UInt64 { (value as? NSNumber)?.uint64Value ?? 0 }

/// The program's last summary line.
private func summary(_ stdout: String) -> String {
    stdout.split(separator: "\n").last { $0.hasPrefix("manyblocks: ") }.map(String.init) ?? "(no summary)"
}
