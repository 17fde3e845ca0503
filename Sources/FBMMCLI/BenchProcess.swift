import CFBMMSys
import Dispatch
import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Child processes of `fbmm bench`, each in its own process group so that a
/// server and whatever it started can be stopped together, and so that the
/// terminal's Ctrl-C reaches only the bench, which then stops them itself.
enum BenchProcesses {
    private static let live = Locked(Set<pid_t>())
    private static let interrupted = Atomic<Bool>(false)
    nonisolated(unsafe) private static var sources: [any DispatchSourceSignal] = []

    static var wasInterrupted: Bool { interrupted.load(ordering: .relaxed) }

    /// SIGINT/SIGTERM/SIGHUP: stop every child and let the bench unwind
    /// (it unmounts on the way out). A second signal stops the children again.
    static func installSignalHandlers() {
        for signalNumber in [SIGINT, SIGTERM, SIGHUP] {
            signal(signalNumber, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: signalNumber, queue: .global())
            source.setEventHandler {
                interrupted.store(true, ordering: .relaxed)
                killAll(SIGKILL)
            }
            source.resume()
            sources.append(source)
        }
    }

    static func killAll(_ signalNumber: Int32) {
        live.withLock { pids in for pid in pids { kill(-pid, signalNumber) } }
    }

    /// Starts `arguments` (PATH lookup) with `environment`, stdin from
    /// `stdinPath`, stdout and stderr appended to files.
    static func start(_ arguments: [String], environment: [String: String], stdinPath: String = "/dev/null",
                      stdoutPath: String, stderrPath: String, cleanup: Bool = false) throws -> pid_t {
        guard cleanup || !wasInterrupted else { throw CLIError("interrupted") }
        let outFD = open(stdoutPath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        let errFD = stderrPath == stdoutPath ? outFD : open(stderrPath, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
        defer { close(outFD); if errFD != outFD { close(errFD) } }
        guard outFD >= 0, errFD >= 0 else { throw CLIError("cannot write \(stdoutPath): \(String(cString: strerror(errno)))") }
        // Registered under the lock, so an interrupt arriving meanwhile still finds it.
        return try live.withLock { pids in
            let pid = try spawnProcess(arguments, stdinPath: stdinPath, stdoutFD: outFD, stderrFD: errFD,
                                       grouping: .newProcessGroup, environment: environment, searchPath: true)
            if !cleanup { pids.insert(pid) }
            return pid
        }
    }

    /// A cleanup step (umount): runs even after an interrupt, and a signal does not stop it.
    static func startIgnoringInterrupt(_ arguments: [String], environment: [String: String],
                                       stdoutPath: String, stderrPath: String) throws -> pid_t {
        try start(arguments, environment: environment, stdoutPath: stdoutPath, stderrPath: stderrPath, cleanup: true)
    }

    /// Waits for `pid`; after `timeout` seconds (or an interrupt) kills its
    /// group. Returns the exit status (128+signal when killed by one).
    @discardableResult
    static func wait(_ pid: pid_t, timeout: Double, name: String) throws -> Int32 {
        let deadline = Date().addingTimeInterval(timeout)
        var status: Int32 = 0
        var timedOut = false
        while true {
            let r = waitpid(pid, &status, WNOHANG)
            if r == pid { break }
            if r < 0 && errno != EINTR { break }
            if !timedOut && (Date() > deadline || wasInterrupted) {
                timedOut = !wasInterrupted
                kill(-pid, SIGKILL)
            }
            usleep(10_000)
        }
        _ = live.withLock { $0.remove(pid) }
        kill(-pid, SIGKILL)   // anything the program left behind in its group
        if wasInterrupted { throw CLIError("interrupted") }
        if timedOut { throw CLIError("\(name) did not finish within \(Int(timeout))s") }
        let code = status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        return code
    }

    /// Stops a server: SIGTERM to its group, SIGKILL after `grace` seconds.
    static func stop(_ pid: pid_t, grace: Double = 5) {
        kill(-pid, SIGTERM)
        let deadline = Date().addingTimeInterval(grace)
        var status: Int32 = 0
        while waitpid(pid, &status, WNOHANG) == 0 {
            if Date() > deadline { kill(-pid, SIGKILL); waitpid(pid, &status, 0); break }
            usleep(10_000)
        }
        _ = live.withLock { $0.remove(pid) }
        kill(-pid, SIGKILL)
    }

    static func isAlive(_ pid: pid_t) -> Bool {
        var status: Int32 = 0
        return waitpid(pid, &status, WNOHANG) == 0
    }
}

/// Loopback helpers for the server workloads.
enum Loopback {
    /// A port on 127.0.0.1 that was free a moment ago.
    static func freePort() throws -> UInt16 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw CLIError("socket: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let ok = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0
            }
        }
        guard ok else { throw CLIError("cannot find a free port: \(String(cString: strerror(errno)))") }
        return UInt16(bigEndian: address.sin_port)
    }

    static func accepts(port: UInt16) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = port.bigEndian
        return withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
            }
        }
    }

    /// Waits until a server started as `pid` accepts connections on `port`.
    static func waitUntilListening(port: UInt16, pid: pid_t, name: String, log: String, timeout: Double = 15) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while !accepts(port: port) {
            if BenchProcesses.wasInterrupted { throw CLIError("interrupted") }
            if !BenchProcesses.isAlive(pid) { throw CLIError("\(name) exited before listening (see \(log))") }
            if Date() > deadline { throw CLIError("\(name) did not listen on port \(port) within \(Int(timeout))s (see \(log))") }
            usleep(20_000)
        }
    }
}

/// A program on PATH or in the sbin directories (servers live there), or nil.
func findProgram(_ name: String) -> String? {
    resolveExecutable(name, alsoIn: ["/usr/sbin", "/usr/local/sbin"])
}
