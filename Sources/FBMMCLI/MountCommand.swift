import ArgumentParser
import FBMMCore
import FBMMDaemon
import FBMMPolicy
import FBMMTracking
import Foundation
import Logging

#if canImport(Glibc)
import Glibc
#endif

struct MountCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mount",
        abstract: "Mount a memory filesystem whose files are placed by a policy.",
        discussion: """
            Returns once the filesystem answers; the daemon keeps running in the background \
            (unless --foreground). See `fbmm policies` for policies and their keys.
            Example: fbmm mount /mnt/mem --policy interleave -o nodes=0:1,weights=3:1
            """)

    @Argument(help: "An existing, empty directory to mount on.")
    var directory: String

    @Option(name: .long, help: "The placement policy (see `fbmm policies`).")
    var policy: String = "local"

    @Option(name: .short, help: ArgumentHelp("Options: the policy's keys and mount keys, KEY=VALUE[,KEY=VALUE...]; lists use ':'.", valueName: "options"))
    var o: [String] = []

    @Flag(name: .long, help: "Serve in the foreground (logs to stderr) instead of starting a background daemon.")
    var foreground = false

    @Option(name: .long, help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: String = "info"

    @Option(name: .long, help: "The background daemon's log file (default: /run/fbmm/<mount>.log).")
    var logFile: String?

    @Option(name: .long, help: .hidden)
    var readyFd: Int32?

    func parsedConfiguration() throws -> MountConfiguration {
        var options = PolicyOptions()
        for item in o {
            let parsed = try PolicyOptions(parsing: item)
            for key in parsed.keys { options.set(key, parsed[key]!) }
        }
        return try MountConfiguration(mountpoint: absolutePath(directory), policyName: policy, options: options)
    }

    func run() throws {
        guard let level = Logger.Level(rawValue: logLevel) else {
            throw CLIError("unknown log level '\(logLevel)' (trace, debug, info, notice, warning, error, critical)")
        }
        let configuration: MountConfiguration
        do { configuration = try parsedConfiguration() } catch let error as PolicyError {
            throw CLIError(error.description)
        }
        if Daemon.detachDeadMount(configuration.mountpoint) {
            writeStderr("fbmm: detached the dead mount on \(configuration.mountpoint) (its daemon had exited)")
        }
        // Validate everything here, before a daemon exists, so bad input leaves nothing behind.
        do {
            try Daemon.validateMountpoint(configuration.mountpoint)
            let topology = try Topology()
            let policy = try FBMM.registry.make(configuration.policy, topology: topology)
            // What the tiered policy's tracker can and cannot see, said before
            // a read-mostly workload silently gets nothing promoted.
            if configuration.privateTmpfs != false, !configuration.hugeGiven, !policy.wantsHugePages,
               let reason = Daemon.smallPagesReason(for: policy) {
                writeStderr("fbmm: \(reason)")
            }
            if let tiered = policy as? TieredPolicy {
                writeStderr("fbmm: tiered: access tracker \(tiered.currentKnobs.tracker.consequence)")
                tiered.shutdown()
            }
        } catch let error as DaemonError {
            throw CLIError(error.description)
        } catch let error as PolicyError {
            throw CLIError(error.description)
        } catch let error as Topology.ReadError {
            throw CLIError(error.description)
        }
        if foreground {
            try serve(configuration, level: level)
        } else {
            try startBackground(configuration)
        }
    }

    /// Runs the daemon in this process.
    private func serve(_ configuration: MountConfiguration, level: Logger.Level) throws {
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "fbmm")
        let ready = readyFd.map { FileHandle(fileDescriptor: $0, closeOnDealloc: true) }
        func report(_ text: String) {
            if let ready { try? ready.write(contentsOf: Data((text + "\n").utf8)); try? ready.close() }
        }
        do {
            let daemon = try Daemon(configuration: configuration, registry: FBMM.registry, logger: logger)
            try daemon.mount()
            report("ready")
            try daemon.run()
        } catch {
            report("error: \(error)")
            throw CLIError(error.description)
        }
    }

    /// Starts `fbmm mount --foreground` as a new session and waits until it
    /// has mounted (or says why it could not).
    private func startBackground(_ configuration: MountConfiguration) throws {
        let logPath = try logFile ?? defaultLogPath(for: configuration.mountpoint)
        var pipeFDs: [Int32] = [-1, -1]
        guard pipe(&pipeFDs) == 0 else { throw CLIError("pipe: \(String(cString: strerror(errno)))") }
        let readEnd = pipeFDs[0], writeEnd = pipeFDs[1]
        _ = fcntl(readEnd, F_SETFD, FD_CLOEXEC)
        _ = fcntl(writeEnd, F_SETFD, FD_CLOEXEC)
        var arguments = [executablePath(), "mount", configuration.mountpoint, "--policy", policy,
                         "--foreground", "--ready-fd", "3", "--log-level", logLevel]
        for item in o { arguments += ["-o", item] }
        let logFD = open(logPath, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
        guard logFD >= 0 else { throw CLIError("cannot open log file \(logPath): \(String(cString: strerror(errno)))") }
        let pid: pid_t
        do {
            pid = try spawnProcess(arguments, stdinPath: "/dev/null", stdoutFD: logFD, stderrFD: logFD,
                                   extraFD: (writeEnd, 3), grouping: .newSession)
        } catch {
            close(logFD); close(readEnd); close(writeEnd)
            throw error
        }
        close(logFD)
        close(writeEnd)
        var message = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: 1024)
        while true {
            let n = read(readEnd, &buffer, buffer.count)
            if n > 0 { message += buffer[0..<n] } else if n < 0 && errno == EINTR { continue } else { break }
        }
        close(readEnd)
        let text = String(decoding: message, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        if text == "ready" {
            // The mount answers once the daemon's loop runs; wait for it.
            var fs = statvfs()
            _ = statvfs(configuration.mountpoint, &fs)
            return
        }
        var status: Int32 = 0
        waitpid(pid, &status, 0)
        if text.hasPrefix("error: ") { throw CLIError(String(text.dropFirst("error: ".count))) }
        throw CLIError("the fbmm daemon exited before mounting (see \(logPath))")
    }
}

func defaultLogPath(for mountpoint: String) throws -> String {
    let name = mountpoint.split(separator: "/").joined(separator: "-")
    let directory: String
    do { directory = try RuntimeDirectory.prepare() } catch { throw CLIError(error.description) }
    return "\(directory)/\(name.isEmpty ? "root" : name).log"
}
