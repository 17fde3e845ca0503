import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Issue 18, what `fbmm run` tells a user whose program's memory did not go
/// where they asked, without --verbose: the first fallback and its cause, a
/// line at exit when most of the program's resident memory stayed outside
/// (where it was, and the fix), and programs the shim cannot enter named
/// before they start. Only the process fbmm run started reports.
@Suite(.serialized)
struct RunMessageTests {
    static let perlStrings = "my @a; push @a, 'x' x 100 for 1..400000; print scalar(@a), \"\\n\""

    /// perl's small strings live in glibc's brk heap: the exit line says so
    /// and names --allocator; with jemalloc they are in the mount and
    /// nothing is said; --quiet says nothing either way.
    @Test func lowCoverageIsSaidAtExitWithTheFix() throws {
        try ShimPrograms.build()
        let mount = try TestMount()
        defer { mount.close() }
        let plain = try run(fbmmRun(mount, [], ["perl", "-e", Self.perlStrings]))
        #expect(plain.ok && plain.stdout == "400000\n", "the program's output is its own: \(plain.stdout)")
        let lines = plain.stderr.split(separator: "\n")
        #expect(lines.count == 1 && lines[0].hasPrefix("fbmm: perl: ") && lines[0].contains("% of its resident memory was in the mount")
                && lines[0].contains("brk heap") && lines[0].contains("--allocator jemalloc"), "one line naming the fix: \(plain.stderr)")
        let percent = Int(lines.first?.split(separator: " ")[2].dropLast() ?? "") ?? 100
        #expect(percent < 50, "\(plain.stderr)")

        let jemalloc = try run(fbmmRun(mount, ["--allocator", "jemalloc"], ["perl", "-e", Self.perlStrings]))
        #expect(jemalloc.ok && !jemalloc.stderr.contains("fbmm:"), "with jemalloc the strings are in the mount: \(jemalloc.stderr)")
        let quiet = try run(fbmmRun(mount, ["--quiet"], ["perl", "-e", Self.perlStrings]))
        #expect(quiet.ok && quiet.stderr.isEmpty, "--quiet: \(quiet.stderr)")
        let both = try run(fbmmRun(mount, ["--quiet", "--verbose"], ["/bin/true"]))
        #expect(!both.ok && oneLine(both.stderr), "contradictory flags are one line: \(both.stderr)")

        // A child the program starts (another pid) does not report; the
        // program itself, whose 64 MiB are in the mount, has nothing to say.
        let parent = try run(fbmmRun(mount, [], ["/usr/bin/python3", "-c",
            "import subprocess, sys; b = bytearray(64 << 20); subprocess.run(['perl', '-e', sys.argv[1]], check=True)",
            Self.perlStrings]))
        #expect(parent.ok && parent.stdout == "400000\n" && parent.stderr.isEmpty,
                "only the started process reports: \(parent.stdout) \(parent.stderr)")
    }

    /// A program that closed its stderr and opened a file of its own as fd 2
    /// (what daemons do) gets nothing written into that file: the shim
    /// speaks only while fd 2 is the file it started with.
    @Test func aReopenedFd2IsNeverWrittenTo() throws {
        try ShimPrograms.build()
        let mount = try TestMount()
        defer { mount.close() }
        let work = try TemporaryDirectory()
        let data = work.file("data")
        let script = "close(STDERR); open(my $f, '>', '\(data)') or die; print $f \"mine\\n\"; "
            + "printf \"%d\\n\", fileno($f); " + Self.perlStrings
        let result = try run(fbmmRun(mount, [], ["perl", "-e", script]))
        #expect(result.ok && result.stdout.hasPrefix("2\n"), "the file is fd 2: \(result.stdout) \(result.stderr)")
        let written = try String(contentsOfFile: data, encoding: .utf8)
        #expect(written == "mine\n", "only the program's own bytes in its file: \(written)")
    }

    /// Memory mapped in pieces under --min-size (ruby 3.1 maps its GC heap
    /// 32 KiB at a time): the exit line names the --min-size that redirects
    /// them, and with it the memory is in the mount and nothing is said.
    @Test func smallMappingsNameTheMinSizeThatTakesThem() throws {
        try ShimPrograms.build()
        let mount = try TestMount()
        defer { mount.close() }
        let small = try run(fbmmRun(mount, [], [ShimPrograms.probe, "pieces", "2000", "32"]))
        #expect(small.ok && kb(small.stdout, "RssAnon") >= 60 * 1024, "\(small.stdout)")
        #expect(small.stderr.contains("in pieces of 32K-64K, under --min-size 128K: --min-size 32K redirects them"),
                "the exit line names the size: \(small.stderr)")
        let taken = try run(fbmmRun(mount, ["--min-size", "32K"], [ShimPrograms.probe, "pieces", "2000", "32"]))
        #expect(taken.ok && kb(taken.stdout, "RssShmem") >= 60 * 1024 && taken.stderr.isEmpty,
                "with --min-size 32K they are in the mount: \(taken.stdout) \(taken.stderr)")
    }

    /// A full capacity mount: the fallback is said when it happens, naming
    /// the capacity, and the exit line says how much stayed outside.
    @Test func aFullMountIsSaidWithoutVerbose() throws {
        try ShimPrograms.build()
        let mount = try TestMount(options: ["capacity=32M"])
        defer { mount.close() }
        let full = try run(fbmmRun(mount, [], [ShimPrograms.probe, "alloc", "96"]))
        #expect(full.ok && full.stdout.contains("malloc ok"), "the program runs on ordinary memory: \(full.stdout)")
        let lines = full.stderr.split(separator: "\n")
        #expect(lines.count == 2, "the fallback, then the exit line: \(full.stderr)")
        #expect(lines.first?.contains("falling back") == true && lines.first?.contains("-o capacity") == true, "\(full.stderr)")
        #expect(lines.last?.hasPrefix("fbmm: probe: ") == true && lines.last?.contains("the mount is full") == true, "\(full.stderr)")
    }

    /// A static binary never loads the shim, and a set-user-ID program of
    /// another user runs with LD_PRELOAD ignored: fbmm run names them
    /// before they start (the program still runs, its exit status passed
    /// through); --strict refuses them in one line.
    @Test func programsTheShimCannotEnterAreNamed() throws {
        let work = try TemporaryDirectory()
        let source = work.file("exit3.c")
        try "int main(void) { return 3; }\n".write(toFile: source, atomically: true, encoding: .utf8)
        let cc = try run(["cc", "-static", "-o", work.file("static"), source])
        try #require(cc.ok, "a static binary needs libc.a (libc6-dev): \(cc.stderr)")
        let mount = try TestMount()
        defer { mount.close() }

        let plain = try run(fbmmRun(mount, [], [work.file("static")]))
        #expect(plain.status == 3, "the program ran, its status passed through: \(plain.status) \(plain.stderr)")
        #expect(oneLine(plain.stderr) && plain.stderr.contains("statically linked"), "\(plain.stderr)")
        let strict = try run(fbmmRun(mount, ["--strict"], [work.file("static")]))
        #expect(strict.status == 1 && oneLine(strict.stderr) && strict.stderr.contains("statically linked"), "\(strict.stderr)")

        // A dynamic program made set-user-ID nobody (the check reads the
        // mode and owner; where the file system is nosuid nothing is said).
        let setuid = work.file("setuid-true")
        try FileManager.default.copyItem(atPath: "/bin/true", toPath: setuid)
        #expect(chown(setuid, 65534, 65534) == 0 && chmod(setuid, 0o4755) == 0)
        var fs = statvfs()
        let nosuid = statvfs(setuid, &fs) == 0 && fs.f_flag & UInt(ST_NOSUID) != 0
        let said = try run(fbmmRun(mount, [], [setuid]))
        #expect(said.ok, "\(said.stderr)")
        #expect(said.stderr.contains("set-user-ID") != nosuid, "\(said.stderr)")
        let dynamic = try run(fbmmRun(mount, [], ["/bin/true"]))
        #expect(dynamic.ok && dynamic.stderr.isEmpty, "an ordinary program is not named: \(dynamic.stderr)")
    }
}
