import FBMMProtocol
import CFBMMSys
import FBMMCore
import FBMMPolicy
import FUSEKit
import Logging
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Why a mount could not start: each renders as the one line the user sees.
public enum DaemonError: Error, CustomStringConvertible {
    case policy(PolicyError)
    case topology(String)
    case mountpoint(String)
    case system(SystemError)
    case fuse(String)
    case backing(String)

    public var description: String {
        switch self {
        case .policy(let e): return e.description
        case .topology(let s): return s
        case .mountpoint(let s): return s
        case .system(let e): return e.description
        case .fuse(let s): return s
        case .backing(let s): return s
        }
    }
}

/// One running mount: the filesystem, its FUSE session and its broker.
public final class Daemon: Sendable {
    public let filesystem: MemoryFileSystem
    private let session: FUSESession
    private let broker: Broker
    private let metrics: MetricsEndpoint?
    private let logger: Logger

    /// Validates everything and prepares the mount; nothing is mounted yet.
    public init(configuration: MountConfiguration, registry: PolicyRegistry, logger: Logger) throws(DaemonError) {
        self.logger = logger
        try Self.validateMountpoint(configuration.mountpoint)
        let topology: Topology
        do { topology = try Topology() } catch { throw .topology(error.description) }
        let policy: any MemoryManagementPolicy
        do { policy = try registry.make(configuration.policy, topology: topology) } catch { throw .policy(error) }
        // File memory on the daemon's private tmpfs where it can be made (-o backing=):
        // huge pages as the host gives anonymous memory (or as -o huge= and
        // the policy say), the capacity enforced by the kernel too. Else
        // memfds, whose huge pages the system's shmem_enabled decides.
        var configuration = configuration
        if policy.wantsHugePages { configuration.huge = .always }
        var tmpfs: TmpfsInstance?
        var backingNote = "memfd"
        if configuration.privateTmpfs != false {
            let huge = configuration.hugeGiven || policy.wantsHugePages ? configuration.huge
                : Self.hugePagesFollowingHost(policy: policy, logger: logger)
            do {
                let instance = try Self.tmpfsInstance(configuration, huge: huge, logger: logger)
                tmpfs = instance
                configuration.huge = huge
                backingNote = "private tmpfs (\(instance.options))"
                if configuration.userCapacity != nil && instance.userQuota == nil {
                    backingNote += "; user-capacity counted by the daemon only (the kernel has no tmpfs quotas)"
                }
            } catch {
                // Asked for explicitly: say why not; by default: memfds.
                if configuration.noSwap, error.description.contains("option noswap") {
                    throw .backing("noswap needs Linux 6.4 or later (this kernel's tmpfs refused it: \(error))")
                }
                if configuration.privateTmpfs == true || configuration.noSwap { throw .system(error) }
                backingNote = "memfd (no private tmpfs: \(error))"
                logger.notice("file memory on memfds: no private tmpfs: \(error)")
            }
        }
        if tmpfs == nil {
            if configuration.noSwap {
                throw .backing("noswap needs the private tmpfs (backing=tmpfs or auto), not memfds")
            }
            if configuration.hugeGiven,
               let refusal = ShmemHugePageSupport.current().refusal(for: configuration.huge, what: "huge=\(configuration.huge)") {
                throw .backing(refusal + "; or use -o backing=tmpfs")
            }
            if policy.wantsHugePages,
               let refusal = ShmemHugePageSupport.current().refusal(for: .always, what: "policy \(configuration.policy.name)") {
                throw .backing(refusal + "; or use -o backing=tmpfs")
            }
        }
        let brokerPath = try Self.brokerSocketPath()
        let filesystem = MemoryFileSystem(configuration: configuration, topology: topology, policy: policy,
                                          registry: registry, brokerPath: brokerPath, tmpfs: tmpfs,
                                          backingNote: backingNote, logger: logger)
        self.filesystem = filesystem
        do {
            metrics = try configuration.metricsPort.map { port throws(SystemError) in try MetricsEndpoint(port: port, logger: logger) }
        } catch { throw .system(error) }
        do {
            broker = try Broker(path: brokerPath, filesystem: filesystem, logger: logger)
        } catch {
            metrics?.stop()
            throw .system(error)
        }
        do {
            session = try FUSESession(operations: filesystem, mountpoint: configuration.mountpoint,
                                      options: configuration.fuseOptions)
        } catch {
            broker.stop()
            metrics?.stop()
            throw .fuse(error.description)
        }
    }

    /// A mount whose daemon died answers every call with ENOTCONN. Programs
    /// that were using it keep their memory (their mappings hold the memfds);
    /// detach the dead mount so a new daemon can serve the same path.
    /// Returns whether one was detached.
    public static func detachDeadMount(_ path: String) -> Bool {
        // statfs always reaches the daemon (stat may be answered from the attribute cache).
        var fs = statvfs()
        guard FBMMMount.isMount(path),
              statvfs(path, &fs) != 0, errno == ENOTCONN else { return false }
        return umount2(path, Int32(MNT_DETACH)) == 0
    }

    /// The private tmpfs, with a per-user quota where `-o user-capacity`
    /// asks and the kernel has tmpfs quotas (6.6+); without them the daemon's
    /// accounting alone bounds each user (said in the log and by `fbmm stat`).
    static func tmpfsInstance(_ configuration: MountConfiguration, huge: HugePageMode,
                              logger: Logger) throws(SystemError) -> TmpfsInstance {
        if let quota = configuration.userCapacity {
            do {
                return try TmpfsInstance(size: configuration.capacity, huge: huge, noSwap: configuration.noSwap, userQuota: quota)
            } catch {
                logger.notice("user-capacity: the kernel has no tmpfs quotas (\(error)); the daemon's accounting alone bounds each user")
            }
        }
        return try TmpfsInstance(size: configuration.capacity, huge: huge, noSwap: configuration.noSwap)
    }

    /// Huge pages as the host gives anonymous memory, unless the policy places
    /// runs finer than a huge page (then small pages, said in the log and by
    /// `fbmm mount`): a huge folio would land whole on one node.
    static func hugePagesFollowingHost(policy: any MemoryManagementPolicy, logger: Logger) -> HugePageMode {
        if let reason = smallPagesReason(for: policy) {
            logger.notice("\(reason)")
            return .never
        }
        return .hostAnonymous()
    }

    /// Why the mount's file memory gets small pages although the host gives
    /// anonymous memory huge ones, or nil.
    public static func smallPagesReason(for policy: any MemoryManagementPolicy) -> String? {
        let host = HugePageMode.hostAnonymous()
        guard host != .never, let unit = policy.placementGranularity,
              unit < ShmemHugePageSupport.current().pmdBytes else { return nil }
        return "small pages for file memory: policy \(policy) places \(ByteSize(bytes: unit)) runs, finer than a huge page"
            + " (host THP \(host)); -o huge= overrides"
    }

    /// A mount point must exist, be a directory, be empty and not be mounted on.
    public static func validateMountpoint(_ path: String) throws(DaemonError) {
        var st = stat()
        guard stat(path, &st) == 0 else {
            throw .mountpoint("mount point \(path) does not exist")
        }
        guard st.st_mode & S_IFMT == S_IFDIR else { throw .mountpoint("mount point \(path) is not a directory") }
        if FBMMMount.isMount(path) {
            throw .mountpoint("\(path) is already an fbmm mount")
        }
        guard let dir = opendir(path) else { throw .mountpoint("cannot read mount point \(path): \(Errno(rawValue: errno))") }
        defer { closedir(dir) }
        while let entry = readdir(dir) {
            let name = entryName(entry)
            if name != "." && name != ".." { throw .mountpoint("mount point \(path) is not empty") }
        }
    }

    /// The broker socket of this daemon, in the checked runtime directory
    /// (stale sockets of dead daemons removed first).
    static func brokerSocketPath() throws(DaemonError) -> String {
        let directory = try RuntimeDirectory.prepare()
        RuntimeDirectory.removeStaleSockets(in: directory)
        return "\(directory)/\(RuntimeDirectory.socketName(daemon: getpid()))"
    }

    /// Mounts and learns the mount's device number (the broker identifies
    /// files by (st_dev, st_ino)).
    public func mount() throws(DaemonError) {
        do { try session.mount() } catch {
            broker.stop()
            metrics?.stop()
            throw .fuse(error.description)
        }
        // The mount answers stat() only once the loop runs; the device number
        // is in /proc/self/mountinfo already.
        broker.setMountDevice(FBMMMount.device(of: filesystem.configuration.mountpoint) ?? 0)
        broker.start()
        metrics?.start { [filesystem] in filesystem.statistics().mountWide.prometheus() }
        filesystem.startMaintenance()
        filesystem.pool?.start()
        Self.protectFromOOMKiller(logger)
        Self.raiseFileLimit()
        logger.info("mounted \(filesystem.configuration.mountpoint) policy=\(filesystem.mountPolicy.description) broker=\(broker.path)")
    }

    /// The daemon holds every file of the mount: the OOM killer must pick the
    /// programs that use the memory, never the daemon (their mappings would
    /// survive, but the mount would die). Needs CAP_SYS_RESOURCE; best effort.
    static func protectFromOOMKiller(_ logger: Logger) {
        let fd = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { return }
        defer { close(fd) }
        let value = Array("-1000".utf8)
        if write(fd, value, value.count) != value.count {
            logger.notice("cannot lower the daemon's OOM score: \(Errno(rawValue: errno))")
        }
    }

    /// Every file holds a memfd and every waiting broker peer a socket: take
    /// the hard limit on descriptors, not the 1024 soft default, and as root
    /// (CAP_SYS_RESOURCE) the kernel's ceiling, fs.nr_open: a directory of
    /// 100,000 files is 100,000 memfds, past many hosts' hard limit (20,000
    /// here).
    static func raiseFileLimit() {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return }
        if let text = readText("/proc/sys/fs/nr_open"),
           let ceiling = text.split(whereSeparator: \.isWhitespace).first.flatMap({ rlim_t($0) }), ceiling > limit.rlim_max {
            var raised = limit
            raised.rlim_cur = ceiling
            raised.rlim_max = ceiling
            if setrlimit(Int32(RLIMIT_NOFILE.rawValue), &raised) == 0 { return }
        }
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max
            setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        }
    }

    /// Serves until unmounted or signalled, then cleans up.
    public func run() throws(DaemonError) {
        session.installSignalHandlers()
        defer {
            filesystem.stopMaintenance()
            filesystem.pool?.stop()
            broker.stop()
            metrics?.stop()
            session.unmount()
        }
        do { try session.run() } catch { throw .fuse(error.description) }
    }
}

/// The name of a directory entry readdir(3) returned.
func entryName(_ entry: UnsafeMutablePointer<dirent>) -> String {
    withUnsafeBytes(of: entry.pointee.d_name) { raw in
        String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
    }
}

