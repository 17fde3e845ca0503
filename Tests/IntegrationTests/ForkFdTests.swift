import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Issue 14, data integrity: nothing a program does with its descriptors
/// (closing every fd >= 3, dup2 over all of them, close_range, closefrom,
/// exec, raw system calls the shim cannot see) may give a fork child zeroed
/// or wrong memory, and allocation keeps working afterwards. Each case runs
/// natively and under the shim on a real mount (`Tests/shim/forkfd.c`, and
/// python3 for `os.closerange`).
@Suite(.serialized)
struct ForkFdTests {
    static var forkfd: String { "\(Artefacts.packageRoot)/shim/build/forkfd" }

    /// Runs `forkfd MODE` natively and under the shim (each allocator); the
    /// shim runs' results.
    private func runMode(_ mode: String, allocators: [String] = ["system", "jemalloc"],
                         file: String = #function) throws -> [String: CommandResult] {
        try ShimPrograms.build()
        let native = try run(unblocked([Self.forkfd, mode]), environment: ["LD_PRELOAD": "", "FBMM_MOUNT": ""], timeout: 60)
        #expect(native.ok && native.stdout.contains("forkfd: ok"), "native forkfd \(mode):\n\(checkFailures(native))")
        let mount = try TestMount(name: file)
        defer { mount.close() }
        var results: [String: CommandResult] = [:]
        for allocator in allocators {
            let shimmed = try run(fbmmRun(mount, ["--allocator", allocator, "--verbose"], [Self.forkfd, mode]), timeout: 60)
            #expect(shimmed.ok && shimmed.stdout.contains("forkfd: ok"),
                    "forkfd \(mode) under the shim (\(allocator)) exited \(shimmed.status):\n\(checkFailures(shimmed))")
            #expect(shimmed.stderr.contains("fbmm: using fbmm mount \(mount.path)"), "\(shimmed.stderr)")
            results[allocator] = shimmed
        }
        #expect(mountListsNothing(mount), "no arena file left behind: \((try? FileManager.default.contentsOfDirectory(atPath: mount.path)) ?? [])")
        return results
    }

    /// What the shim keeps from the program's hands stays the shim's: no
    /// fallback at all, and memory allocated afterwards is in the mount.
    private func expectNothingLost(_ results: [String: CommandResult], _ mode: String) {
        for (allocator, result) in results {
            #expect(!result.stderr.contains("falling back"), "forkfd \(mode) (\(allocator)): \(result.stderr)")
            #expect(!result.stderr.contains("gone"), "forkfd \(mode) (\(allocator)): \(result.stderr)")
        }
        if let system = results["system"] {
            #expect(kb(system.stdout, "INFO shmem-growth-kb") >= 9 * 1024 - 64,
                    "9 MiB allocated after \(mode) land in the mount: \(system.stdout.split(separator: "\n").filter { $0.hasPrefix("INFO") })")
        }
    }

    /// The case of issue 14: `for (fd = 3; fd < 1024; fd++) close(fd); fork()`.
    @Test func closeLoopThenFork() throws {
        expectNothingLost(try runMode("close-loop"), "close-loop")
    }

    @Test func dup2OverEveryDescriptorThenFork() throws {
        expectNothingLost(try runMode("dup2-all"), "dup2-all")
    }

    @Test func closeRangeThenFork() throws {
        expectNothingLost(try runMode("close-range"), "close-range")
    }

    @Test func closefromThenFork() throws {
        expectNothingLost(try runMode("closefrom"), "closefrom")
    }

    /// Memory allocated after the descriptors were closed: a new large
    /// malloc and mmap, in the mount, read back by fork children (forkfd's
    /// second and third forks), with the system allocator.
    @Test func allocationAfterClosingStaysInTheMountAndForks() throws {
        for mode in ["close-loop", "close-range"] {
            let results = try runMode(mode, allocators: ["system"])
            let result = try #require(results["system"])
            let out = result.stdout
            #expect(out.contains("PASS parent: child of the second fork exits 0"), "\(checkFailures(result))")
            #expect(out.contains("PASS parent: child of the third fork exits 0"))
            #expect(out.contains("PASS child (second): region g reads what was written"))
            #expect(out.contains("PASS child (second): region h reads what was written"))
            #expect(kb(out, "INFO shmem-growth-kb") >= 9 * 1024 - 64, "new memory in the mount after \(mode): \(out)")
        }
    }

    /// exec after closing everything: the new image starts its own arena and
    /// passes the whole close-loop check itself.
    @Test func execAfterClosingEverything() throws {
        expectNothingLost(try runMode("exec"), "exec")
    }

    /// Behind libc's back (raw close_range, raw dup3 of /dev/zero over every
    /// fd): the shim cannot keep its descriptors, so it must notice, fall back
    /// to anonymous memory for new allocations, and have fork children copy
    /// from the live mappings; never zeroed or wrong memory, never a crash.
    @Test func rawSystemCallsFallBackWithoutLosingData() throws {
        for mode in ["raw-close-range", "raw-dup2"] {
            let results = try runMode(mode)
            for (allocator, result) in results {
                #expect(result.stderr.contains("fbmm: fork child: the parent's arena descriptor is gone; copying from the live mappings"),
                        "\(mode) (\(allocator)): \(result.stderr)")
                #expect(result.stderr.contains("falling back to anonymous memory"), "\(mode) (\(allocator)): \(result.stderr)")
            }
        }
    }

    // MARK: python3

    static let pythonProgram = """
        import hashlib, os, sys
        def pattern(n, k):
            b = bytearray(range(256)) * (n // 256)
            b[12345] = k
            return b
        a = pattern(64 << 20, 7)
        ha = hashlib.sha256(a).hexdigest()
        os.closerange(3, 65536)
        def fork_checks(blocks):
            pid = os.fork()
            if pid == 0:
                ok = all(hashlib.sha256(b).hexdigest() == h for b, h in blocks)
                c = bytearray(b'x') * (32 << 20)
                ok = ok and c.count(b'x') == len(c)
                os._exit(0 if ok else 3)
            return os.waitpid(pid, 0)[1]
        first = fork_checks([(a, ha)])
        d = pattern(48 << 20, 9)
        second = fork_checks([(a, ha), (d, hashlib.sha256(d).hexdigest())])
        ok = first == 0 and second == 0 and hashlib.sha256(a).hexdigest() == ha
        print('closerange+fork:', 'ok' if ok else 'FAIL', first, second)
        sys.exit(0 if ok else 1)
        """

    /// `os.closerange(3, 65536); os.fork()` (close_range(2) underneath): the
    /// child checks a 64 MiB bytearray and one allocated after the
    /// closerange, and allocates itself; natively, and under the shim with
    /// both allocators (it died with SIGSEGV).
    @Test func pythonCloserangeThenFork() throws {
        try ShimPrograms.build()
        let native = try run(unblocked(["python3", "-c", Self.pythonProgram]), environment: ["LD_PRELOAD": "", "FBMM_MOUNT": ""], timeout: 120)
        try #require(native.ok && native.stdout.contains("closerange+fork: ok 0 0"), "native python3: \(native.stdout) \(native.stderr)")
        let mount = try TestMount()
        defer { mount.close() }
        for allocator in ["system", "jemalloc"] {
            let shimmed = try run(fbmmRun(mount, ["--allocator", allocator, "--verbose"], ["python3", "-c", Self.pythonProgram]), timeout: 120)
            #expect(shimmed.ok && shimmed.stdout == native.stdout,
                    "python3 under the shim (\(allocator)) exited \(shimmed.status): \(shimmed.stdout) \(shimmed.stderr.suffix(2000))")
            #expect(!shimmed.stderr.contains("falling back"), "\(shimmed.stderr.suffix(2000))")
        }
        #expect(mountListsNothing(mount))
    }
}


