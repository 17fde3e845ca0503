import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Issue 14: CPython's own test_subprocess and test_os (Debian's
/// libpython3.11-testsuite) pass under the shim as they pass natively, with
/// the system allocator and with jemalloc. Between them they close, dup2
/// and list descriptors every way a program does (close_fds, pass_fds,
/// fds above a lowered RLIMIT_NOFILE, fd_status.py's fstat scan), fork,
/// exec and spawn: the regrtest workers and every child run under the shim.
@Suite(.serialized)
struct CPythonSuiteTests {
    static let python = "/usr/bin/python3"
    static let suites = ["test_subprocess", "test_os"]

    private func regrtest(_ prefix: [String], in dir: String) throws -> CommandResult {
        try run(prefix + [Self.python, "-m", "test", "-j2", "--tempdir", dir] + Self.suites,
                environment: ["PYTHONDONTWRITEBYTECODE": "1"], timeout: 600)
    }

    private func summary(_ result: CommandResult) -> String {
        let lines = (result.stdout + result.stderr).split(separator: "\n")
        return lines.filter { $0.contains("FAIL") || $0.contains("ERROR") || $0.contains("result:") || $0.contains("failed") }
            .suffix(40).joined(separator: "\n")
    }

    @Test func subprocessAndOsSuitesPassUnderTheShim() throws {
        try #require(FileManager.default.fileExists(atPath: "/usr/lib/python3.11/test/test_subprocess.py"),
                     "CPython's test suite is not installed: apt-get install libpython3.11-testsuite (scripts/setup.sh installs it)")
        try ShimPrograms.build()
        let scratch = try TemporaryDirectory()
        let native = try regrtest(unblocked([]), in: scratch.path + "/native")
        try #require(native.ok && native.stdout.contains("Tests result: SUCCESS"),
                     "natively the suites fail already, so the shim cannot be judged:\n\(summary(native))")
        let mount = try TestMount()
        defer { mount.close() }
        for allocator in ["system", "jemalloc"] {
            let shimmed = try regrtest(fbmmRun(mount, ["--allocator", allocator], []), in: scratch.path + "/\(allocator)")
            #expect(shimmed.ok && shimmed.stdout.contains("Tests result: SUCCESS"),
                    "CPython's \(Self.suites.joined(separator: " ")) under the shim (\(allocator)) exited \(shimmed.status):\n\(summary(shimmed))")
        }
        let counters = try mount.statistics()["counters"] as? [String: Int] ?? [:]
        #expect((counters["broker_handouts"] ?? 0) >= 10, "the suites really ran under the shim: \(counters)")
        #expect(mountListsNothing(mount))
    }
}
