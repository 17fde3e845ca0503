import ArgumentParser
import FBMMCore
import Foundation

#if canImport(Glibc)
import Glibc
#endif

struct RunCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Run a program with its anonymous memory in an fbmm mount.",
        discussion: """
            The program runs under the LD_PRELOAD shim (libfbmm-shim.so), which moves its \
            anonymous mmaps and large malloc blocks into a file of the mount. glibc keeps small \
            objects in its brk heap, out of any interposer's reach: --allocator jemalloc or \
            mimalloc preloads that allocator after the shim, so that they land in the mount too.
            Without --verbose the shim says only what the user must know: that the program \
            fell back to ordinary memory (the first time, and why), and at exit when less than half \
            of its resident memory was in the mount (where the rest was, and the fix); --quiet \
            silences that too. A statically linked or set-user-ID program, which cannot be \
            preloaded, is named before it starts.
            Environment set for the program: FBMM_MOUNT, FBMM_MIN_SIZE, FBMM_STRICT, FBMM_VERBOSE, \
            FBMM_REPORT (the program's pid: only that process reports, not its children).
            """)

    enum Allocator: String, ExpressibleByArgument, CaseIterable {
        case system, jemalloc, mimalloc
    }

    @Option(name: .long, help: "The fbmm mount (default: $FBMM_MOUNT).")
    var mount: String?

    @Option(name: .long, help: "Smallest allocation moved into the mount (K/M/G suffixes).")
    var minSize: String?

    @Option(name: .long, help: "The allocator for small objects: system, jemalloc or mimalloc.")
    var allocator: Allocator = .system

    @Flag(name: .long, help: "Fail allocations with ENOMEM instead of falling back to ordinary memory.")
    var strict = false

    @Flag(name: .long, help: "Let the shim say on stderr everything it does (backing, pool, every fallback).")
    var verbose = false

    @Flag(name: .long, help: "Say nothing on stderr, not even when the program's memory stays outside the mount.")
    var quiet = false

    @Argument(parsing: .captureForPassthrough, help: "The program and its arguments (after --).")
    var command: [String] = []

    func run() throws {
        var command = self.command
        // The passthrough argument takes everything, --help too: before any
        // "--" (or a program name), -h and --help are ours.
        if command.first == "--help" || command.first == "-h" { throw CleanExit.helpRequest(self) }
        if command.first == "--" { command.removeFirst() }
        if quiet && verbose { throw CLIError("--quiet and --verbose cannot be used together") }
        guard let program = command.first else { throw CLIError("no program given (fbmm run --mount DIR -- PROGRAM [ARGS...])") }
        guard let mountDir = mount ?? ProcessInfo.processInfo.environment["FBMM_MOUNT"] else {
            throw CLIError("no mount given (--mount DIR or FBMM_MOUNT)")
        }
        let mountPath = absolutePath(mountDir)
        if brokerPath(ofMount: mountPath) == nil {
            var st = stat()
            if stat(mountPath, &st) != 0 && (errno == EACCES || errno == EPERM) {
                // Not a matter of verbosity: none of the program's memory would be in the mount.
                let why = "no permission to use \(mountPath) (mounted by another user: it needs -o allow_other)"
                if strict { throw CLIError(why) }
                if !quiet { writeStderr("fbmm: \(why); \(program) runs on ordinary memory") }
            } else {
                if strict { throw CLIError("\(mountPath) is not an fbmm mount (strict mode)") }
                if verbose { writeStderr("fbmm: \(mountPath) is not an fbmm mount; \(program) runs on ordinary memory") }
            }
        }
        if let obstacle = preloadObstacle(program) {
            if strict { throw CLIError(obstacle) }
            if !quiet { writeStderr("fbmm: \(obstacle)") }
        }
        if let minSize {
            do { _ = try ByteSize(parsing: minSize) } catch { throw CLIError("--min-size: \(error)") }
        }
        let shim = try findShim()
        var preload = [shim]
        switch allocator {
        case .system: break
        case .jemalloc: preload.append(try findLibrary("libjemalloc.so.2", package: "libjemalloc2"))
        case .mimalloc: preload.append(try findLibrary("libmimalloc.so.2", package: "libmimalloc2.0"))
        }
        if let existing = getenv("LD_PRELOAD").map({ String(cString: $0) }), !existing.isEmpty {
            preload.append(existing)
        }
        setenv("LD_PRELOAD", preload.joined(separator: ":"), 1)
        setenv("FBMM_MOUNT", mountPath, 1)
        if let minSize { setenv("FBMM_MIN_SIZE", minSize, 1) }
        if strict { setenv("FBMM_STRICT", "1", 1) }
        if verbose { setenv("FBMM_VERBOSE", "1", 1) }
        // exec keeps the pid: the shim reports in the program, not in what it starts.
        if quiet { unsetenv("FBMM_REPORT") } else { setenv("FBMM_REPORT", String(getpid()), 1) }
        // exec: the program replaces fbmm, so its exit status and signals are the caller's to see.
        var argv: [UnsafeMutablePointer<CChar>?] = command.map { strdup($0) } + [nil]
        execvp(program, &argv)
        let code = errno
        argv.forEach { free($0) }
        throw CLIError("cannot run \(program): \(String(cString: strerror(code)))")
    }
}

/// The shim: $FBMM_SHIM, next to this executable, or where `make install` puts it.
func findShim() throws -> String {
    let exeDir = (executablePath() as NSString).deletingLastPathComponent
    var candidates = [String]()
    if let env = ProcessInfo.processInfo.environment["FBMM_SHIM"] { candidates.append(env) }
    candidates += ["\(exeDir)/libfbmm-shim.so", "\(exeDir)/../lib/fbmm/libfbmm-shim.so",
                   "/usr/local/lib/fbmm/libfbmm-shim.so", "/usr/lib/fbmm/libfbmm-shim.so"]
    for path in candidates where access(path, R_OK) == 0 { return absolutePath(path) }
    throw CLIError("cannot find libfbmm-shim.so (looked in \(candidates.joined(separator: ", ")); build it with `make -C shim` or scripts/build.sh)")
}

func findLibrary(_ name: String, package: String) throws -> String {
    for dir in ["/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib"] {
        let path = "\(dir)/\(name)"
        if access(path, R_OK) == 0 { return path }
    }
    throw CLIError("\(name) is not installed (apt-get install \(package))")
}
