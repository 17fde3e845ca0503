import CFBMMSys

#if canImport(Glibc)
import Glibc
#endif

/// How a spawned child starts its process life.
enum SpawnGrouping {
    /// The caller's session and process group.
    case inherit
    /// A process group of its own (so a whole workload can be signalled).
    case newProcessGroup
    /// A session of its own (so a background daemon survives its terminal).
    case newSession
}

/// posix_spawn with the plumbing fbmm needs: stdio redirection, one extra fd
/// passed at a fixed number, every other fd closed, a clean signal state, an
/// optional environment and PATH lookup. The one place fbmm starts processes.
func spawnProcess(_ arguments: [String], stdinPath: String, stdoutFD: Int32, stderrFD: Int32,
                  extraFD: (Int32, Int32)? = nil, grouping: SpawnGrouping = .inherit,
                  environment: [String: String]? = nil, searchPath: Bool = false) throws -> pid_t {
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, stdinPath, O_RDONLY, 0)
    posix_spawn_file_actions_adddup2(&actions, stdoutFD, 1)
    posix_spawn_file_actions_adddup2(&actions, stderrFD, 2)
    if let (from, to) = extraFD { posix_spawn_file_actions_adddup2(&actions, from, to) }
    // Nothing else crosses over: a background daemon that inherited a
    // caller's pipe would keep the caller waiting for EOF forever.
    _ = fbmm_spawn_close_from(&actions, extraFD.map { $0.1 + 1 } ?? 3)
    var attributes = posix_spawnattr_t()
    posix_spawnattr_init(&attributes)
    defer { posix_spawnattr_destroy(&attributes) }
    // The child starts with no signal blocked and default dispositions, whatever
    // the caller's threads had: a daemon must hear SIGTERM, a workload SIGALRM.
    var none = sigset_t(), all = sigset_t()
    sigemptyset(&none)
    sigfillset(&all)
    posix_spawnattr_setsigmask(&attributes, &none)
    posix_spawnattr_setsigdefault(&attributes, &all)
    var flags = Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF)
    switch grouping {
    case .inherit: break
    case .newProcessGroup:
        flags |= Int16(POSIX_SPAWN_SETPGROUP)
        posix_spawnattr_setpgroup(&attributes, 0)
    case .newSession:
        flags |= fbmm_posix_spawn_setsid()
    }
    posix_spawnattr_setflags(&attributes, flags)
    var argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
    let envp: [UnsafeMutablePointer<CChar>?]? = environment.map { $0.map { strdup("\($0.key)=\($0.value)") } + [nil] }
    defer { argv.forEach { free($0) }; envp?.forEach { free($0) } }
    var pid: pid_t = 0
    let result: Int32
    if var envp {
        result = searchPath ? posix_spawnp(&pid, arguments[0], &actions, &attributes, &argv, &envp)
                            : posix_spawn(&pid, arguments[0], &actions, &attributes, &argv, &envp)
    } else {
        result = searchPath ? posix_spawnp(&pid, arguments[0], &actions, &attributes, &argv, environ)
                            : posix_spawn(&pid, arguments[0], &actions, &attributes, &argv, environ)
    }
    guard result == 0 else { throw CLIError("cannot start \(arguments[0]): \(String(cString: strerror(result)))") }
    return pid
}
