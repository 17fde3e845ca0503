import CFuse3
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Why a FUSE session could not start or run.
public enum FUSEError: Error, CustomStringConvertible {
    case sessionCreation(String)
    case mount(String)
    case loop(Int32)

    public var description: String {
        switch self {
        case .sessionCreation(let options): return "cannot create FUSE session (options: \(options))"
        case .mount(let path): return "cannot mount FUSE filesystem on \(path) (is /dev/fuse available and are you root?)"
        case .loop(let code): return "FUSE session loop failed: \(Errno(rawValue: -code))"
        }
    }
}

/// One mounted FUSE filesystem served by a `FileSystemOperations`.
public final class FUSESession: @unchecked Sendable {
    private let session: OpaquePointer
    private let context: Unmanaged<SessionContext>
    public let mountpoint: String
    private var mounted = false

    /// - Parameter options: mount options as for `-o` (`fsname=x`, `allow_other`, `default_permissions`...).
    public init(operations: any FileSystemOperations, mountpoint: String, options: [String]) throws(FUSEError) {
        self.mountpoint = mountpoint
        let box = Unmanaged.passRetained(SessionContext(operations))
        var argv: [String] = ["fbmm"]
        if !options.isEmpty { argv += ["-o", options.joined(separator: ",")] }
        var cStrings = argv.map { strdup($0) }
        defer { cStrings.forEach { free($0) } }
        var ops = makeOperationTable(for: box.takeUnretainedValue())
        let created = cStrings.withUnsafeMutableBufferPointer { buffer -> OpaquePointer? in
            var args = fuse_args(argc: Int32(buffer.count), argv: buffer.baseAddress, allocated: 0)
            let session = fuse_session_new(&args, &ops, MemoryLayout<fuse_lowlevel_ops>.size, box.toOpaque())
            fuse_opt_free_args(&args)
            return session
        }
        guard let created else {
            box.release()
            throw .sessionCreation(options.joined(separator: ","))
        }
        session = created
        context = box
    }

    deinit {
        if mounted { fuse_session_unmount(session) }
        fuse_session_destroy(session)
        context.release()
    }

    public func mount() throws(FUSEError) {
        guard fuse_session_mount(session, mountpoint) == 0 else { throw .mount(mountpoint) }
        mounted = true
    }

    /// Installs SIGINT/SIGTERM/SIGHUP handlers that end the loop cleanly.
    public func installSignalHandlers() {
        _ = fuse_set_signal_handlers(session)
    }

    /// Serves requests on a pool of worker threads until unmounted or signalled.
    public func run(maxThreads: Int = 16) throws(FUSEError) {
        let config = fuse_loop_cfg_create()
        defer { fuse_loop_cfg_destroy(config) }
        fuse_loop_cfg_set_max_threads(config, UInt32(maxThreads))
        fuse_loop_cfg_set_idle_threads(config, 4)
        let result = fuse_session_loop_mt(session, config)
        fuse_remove_signal_handlers(session)
        if result < 0 { throw .loop(result) }
    }

    /// Asks the loop to stop (from any thread); it returns once the current requests finish.
    public func exit() { fuse_session_exit(session) }

    public func unmount() {
        if mounted { fuse_session_unmount(session); mounted = false }
    }
}
