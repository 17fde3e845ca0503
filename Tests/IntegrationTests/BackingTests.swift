import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Issue 17, the private tmpfs backing (the default): the daemon's files live on its own tmpfs
/// instance (mounted nowhere), so the kernel enforces the mount's capacity whoever allocates,
/// and a program that abuses the backing descriptor it was handed can hurt
/// only itself. `Tests/shim/hostile.c` plays the program.
@Suite(.serialized)
struct BackingTests {
    static var hostile: String { "\(Artefacts.packageRoot)/shim/build/hostile" }

    /// `fbmm stat` says what backs the files: the private tmpfs by default
    /// (auto, as root), memfds with backing=memfd; a bad value is one line
    /// and no mount.
    @Test func statNamesThePrivateTmpfs() throws {
        let plain = try TestMount(options: ["backing=memfd"])
        defer { plain.close() }
        #expect(try plain.statistics()["backing"] as? String == "memfd", "memfds when asked")
        let auto = try TestMount()
        defer { auto.close() }
        #expect((try auto.statistics()["backing"] as? String)?.hasPrefix("private tmpfs") == true, "by default, as root: the tmpfs")
        let scratch = try TemporaryDirectory()
        let refused = try run([Artefacts.fbmm, "mount", scratch.path, "-o", "backing=disk"])
        #expect(!refused.ok && refused.stderr.contains("expected tmpfs, memfd or auto"), "\(refused.stderr)")
        let mount = try TestMount(options: ["backing=tmpfs", "capacity=64M"])
        defer { mount.close() }
        let stats = try mount.statistics()
        let backing = stats["backing"] as? String ?? ""
        #expect(backing.hasPrefix("private tmpfs") && backing.contains("size=67108864"), "\(backing)")
        #expect(!((try? String(contentsOfFile: "/proc/mounts", encoding: .utf8)) ?? "").contains("fbmm-backing"),
                "the instance is mounted nowhere")
    }

    /// `-o noswap` (Linux 6.4+) reaches the private tmpfs, which the kernel
    /// accepts (fsconfig refuses an option it does not know); it needs that
    /// tmpfs, so with memfds it is refused in one line and nothing is mounted.
    @Test func noswapReachesThePrivateTmpfs() throws {
        let mount = try TestMount(options: ["noswap"])
        defer { mount.close() }
        let backing = try mount.statistics()["backing"] as? String ?? ""
        #expect(backing.hasPrefix("private tmpfs") && backing.contains("noswap"), "\(backing)")
        let scratch = try TemporaryDirectory()
        let refused = try run([Artefacts.fbmm, "mount", scratch.path, "-o", "noswap,backing=memfd"])
        #expect(!refused.ok && refused.stderr.split(separator: "\n").count == 1 && refused.stderr.contains("noswap needs the private tmpfs"),
                "\(refused.stderr)")
        #expect(!isMounted(scratch.path), "nothing mounted")
    }

    /// A program grows its arena's backing through its own descriptor,
    /// bypassing the daemon's accounting: the kernel refuses past
    /// `capacity` (it held 4 GiB on a 1G memfd mount before), and the mount
    /// stays within it.
    @Test func programGrowingItsBackingCannotPassCapacity() throws {
        try ShimPrograms.build()
        let mount = try TestMount(options: ["backing=tmpfs", "capacity=64M"])
        defer { mount.close() }
        let result = try run(fbmmRun(mount, [], [Self.hostile, "grow", "1024"]), timeout: 60)
        #expect(result.ok, "\(result.stdout) \(result.stderr)")
        #expect(result.stdout.contains("fallocate ENOSPC"), "the kernel refuses: \(result.stdout)")
        let pool = try mount.statistics()["pool"] as? [String: Any] ?? [:]
        #expect(number(pool["used_bytes"]) <= 64 << 20, "\(pool)")
    }

    /// A program takes a file's backing from the broker, closes its handle
    /// in the mount (the daemon parks the file: its descriptor closed, its
    /// extent remembered) and goes on writing 8 MiB through its own mapping
    /// of the backing: `fbmm stat` must show what the file holds now, not
    /// what it held when parked (and a maintaining policy must not take it
    /// for idle: see MaintainedFile).
    @Test func aBackingKeptAfterCloseIsNeverTakenForIdle() throws {
        try ShimPrograms.build()
        let mount = try TestMount(options: ["backing=tmpfs"])
        defer { mount.close() }
        let path = mount.path + "/kept"
        try #require(FileManager.default.createFile(atPath: path, contents: Data("x".utf8)))
        let scratch = try TemporaryDirectory()
        let holder = try Background([Self.hostile, "ask", "get_backing", "--mount", mount.path, "--open", path, "--then-close",
                                     "--fill", "8", "--ready", scratch.file("ready"), "--hold", scratch.file("go")])
        defer { holder.stop() }
        try #require(waitForFile(scratch.file("ready"), seconds: 30) != nil, "the holder never got ready: \(holder.output)")
        #expect(holder.stdout.contains("status=0") && holder.stdout.contains("fill: ok"), "\(holder.output)")
        let files = try mount.statistics()["files"] as? [[String: Any]] ?? []
        let kept = files.first { $0["name"] as? String == "kept" } ?? [:]
        #expect(number(kept["size"]) == 8 << 20 && number(kept["allocated_bytes"]) >= 8 << 20, "what the file holds now: \(kept)")
        FileManager.default.createFile(atPath: scratch.file("go"), contents: nil)
        #expect(holder.wait(seconds: 30) == 0, "\(holder.output)")
    }

    /// A program truncates its own arena under the daemon's pre-zeroed pool
    /// mappings (a memfd was sealed against that; a tmpfs file cannot be):
    /// the daemon's next touch is caught, the arena leaves the pool, and the
    /// daemon serves on.
    @Test func programShrinkingItsArenaDoesNotKillTheDaemon() throws {
        try ShimPrograms.build()
        let mount = try TestMount(options: ["backing=tmpfs"])
        defer { mount.close() }
        let result = try run(fbmmRun(mount, ["--min-size", "4K"], [Self.hostile, "shrink", "1500"]), timeout: 60)
        #expect(result.stdout.contains("shrink: ftruncate ok") && result.stdout.contains("shrink: done"),
                "\(result.stdout) \(result.stderr)")
        let log = (try? String(contentsOfFile: "\(mount.path).log", encoding: .utf8)) ?? ""
        #expect(log.contains("shrunk under the pool"), "the daemon noticed: \(log.suffix(1500))")
        #expect((try? mount.statistics()) != nil, "the daemon still answers")
        let after = try run(fbmmRun(mount, ["--min-size", "4K"], [ShimPrograms.probe, "alloc", "16"]))
        #expect(after.ok && after.stdout.contains("malloc ok"), "a new program is served: \(after.stdout) \(after.stderr)")
    }
}
