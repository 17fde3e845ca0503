import CFBMMSys
import FBMMCore
import FBMMPolicy
import FUSEKit
import Logging
import Synchronization
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// The memory filesystem: a tmpfs-like namespace whose regular files are
/// memfds placed by a policy. FUSE is the namespace, the permission model
/// (the kernel enforces modes with `default_permissions`), the lifecycle and
/// the observability surface; file contents never pass through the page
/// cache of the FUSE file (direct I/O to the memfd, or the shim's mapping).
public final class MemoryFileSystem: FileSystemOperations {
    public let configuration: MountConfiguration
    /// The daemon's private tmpfs, which backs every file (nil: memfds).
    let tmpfs: TmpfsInstance?
    /// What backs the files, for `fbmm stat` ("tmpfs size=...,huge=..." or
    /// "memfd" with the reason there is no tmpfs).
    let backingNote: String
    let topology: Topology
    let mountPolicy: any MemoryManagementPolicy
    let registry: PolicyRegistry
    let logger: Logger
    let state: Locked<Namespace>
    /// The broker socket path, published as the root's `user.fbmm.broker` xattr.
    let brokerPath: String
    /// The pre-zeroed pool (nil with `prezero=0`).
    let pool: PrezeroPool?
    /// Lazy copies of arenas across fork (the shim's copy-on-write fork).
    let copyOnWrite: CopyOnWrite
    /// Open directory handles and the listing each one reads (Directories.swift).
    let listings = DirectoryListings()
    /// sysfs's per-node memory for `df`, at most a second old (Capacity.swift).
    let nodeMemory = NodeMemoryCache()
    /// Bytes the files commit the mount to (`-o capacity`), per user too
    /// with `-o user-capacity`.
    let ledger: CommitLedger
    /// Why each user's last knob was refused (`user.fbmm.knob-refusal`).
    let knobRefusals = Locked<[UInt32: String]>([:])

    public init(configuration: MountConfiguration, topology: Topology, policy: any MemoryManagementPolicy,
                registry: PolicyRegistry, brokerPath: String, tmpfs: TmpfsInstance? = nil,
                backingNote: String = "memfd", logger: Logger) {
        self.tmpfs = tmpfs
        self.backingNote = backingNote
        self.configuration = configuration
        ledger = CommitLedger(perUser: configuration.userCapacity != nil)
        self.topology = topology
        self.mountPolicy = policy
        self.registry = registry
        self.brokerPath = brokerPath
        self.logger = logger
        if configuration.prezero > 0 {
            do {
                pool = try PrezeroPool(bound: configuration.prezero, huge: configuration.huge,
                                       allowedNodes: Set(policy.allowedNodes), logger: logger)
            } catch {
                logger.error("prezero pool disabled: \(error)")
                pool = nil
            }
        } else {
            pool = nil
        }
        copyOnWrite = CopyOnWrite(chunk: configuration.cowChunk, logger: logger)
        self.state = Locked(Namespace(rootUID: configuration.rootUID, rootGID: configuration.rootGID,
                                     rootMode: configuration.rootMode))
    }

    // MARK: Helpers

    /// Runs `body` under the lock and turns its errno into a value to reply with.
    func transact<T: Sendable>(_ body: @Sendable (inout Namespace) throws(Errno) -> T) -> Result<T, Errno> {
        state.withLock { (ns) -> Result<T, Errno> in
            do throws(Errno) { return .success(try body(&ns)) } catch { return .failure(error) }
        }
    }

    func entry(_ record: InodeRecord) -> Entry {
        Entry(inode: record.number, attributes: record.attributes(), timeout: 1.0)
    }

    /// The policy a new file in `parent` gets: the nearest directory override, else the mount's.
    func inheritedPolicy(_ ns: borrowing Namespace, parent: InodeNumber) -> (any MemoryManagementPolicy, PolicySpec?) {
        var current = parent
        var depth = 0
        while let record = ns.inodes[current], depth < 4096 {
            if let spec = record.policySpec, let policy = try? registry.make(spec, topology: topology) {
                return (policy, spec)
            }
            if current == 1 { break }
            current = record.parent
            depth += 1
        }
        return (mountPolicy, nil)
    }

    /// A regular file's snapshot (nil: no such inode, or not a regular file).
    func regularFile(_ inode: InodeNumber) -> FileRef? {
        state.withLock { ns in
            guard let record = ns.inodes[inode], let backing = record.backing else { return nil }
            return FileRef(record, backing)
        }
    }

    /// Creates a node under `parent`; called with the lock held.
    func makeNode(_ ns: inout Namespace, _ ctx: RequestContext, owner: Int32, parent: InodeNumber, name: FileName,
                          mode: UInt32) throws(Errno) -> InodeRecord {
        try validateName(name)
        let dir = try ns.directory(parent)
        guard dir.children[name] == nil else { throw .fileExists }
        if ns.inodes.count >= configuration.maxFiles { throw .noSpace }
        if let limit = configuration.userFiles, ns.filesByUser[ctx.uid, default: 0] >= limit { throw .diskQuotaExceeded }
        let number = ns.allocateInode()
        let content: InodeRecord.Content
        let type = mode & S_IFMT
        // setgid directories pass their group on, as on any POSIX filesystem.
        let gid = dir.mode & S_ISGID != 0 ? dir.gid : ctx.gid
        var inheritedSpec: PolicySpec?
        switch type {
        case S_IFDIR:
            content = .directory(children: [:])
            inheritedSpec = dir.policySpec
        case S_IFREG, 0:
            let (policy, spec) = inheritedPolicy(ns, parent: parent)
            inheritedSpec = spec
            content = .regular(FileBacking(name: name.description, policy: policy, on: tmpfs, ledger: ledger,
                                           owner: (ctx.uid, gid)))
        case S_IFIFO, S_IFSOCK, S_IFCHR, S_IFBLK:
            content = .special(device: 0)
        default:
            throw .invalidArgument
        }
        var finalMode = (type == 0 ? S_IFREG : type) | (mode & 0o7777 & ~ctx.umask)
        if type == S_IFDIR && dir.mode & S_ISGID != 0 { finalMode |= S_ISGID }
        let record = InodeRecord(number: number, content: content, mode: finalMode, uid: ctx.uid, gid: gid,
                                 parent: parent, name: name, creatorPID: owner)
        record.policySpec = inheritedSpec
        ns.inodes[number] = record
        ns.filesByUser[record.uid, default: 0] += 1
        dir.children[name] = number
        if type == S_IFDIR { dir.linkCount += 1 }
        dir.touchModified()
        record.lookups += 1
        ns.counters.filesCreated += 1
        return record
    }

    /// FUSE names the thread that made a request; `fbmm stat` shows the
    /// process (the thread's Tgid), or the thread id if it is already gone.
    /// Most creates come from a main thread, found in one system call
    /// (`fbmm_is_process`); only other threads cost a read of /proc/TID/status.
    func processID(ofThread tid: Int32) -> Int32 {
        guard tid > 0 else { return tid }
        if fbmm_is_process(tid) != 0 { return tid }
        guard let status = readText("/proc/\(tid)/status") else { return tid }
        for line in status.split(separator: "\n") where line.hasPrefix("Tgid:") {
            return Int32(line.dropFirst(5).trimmingPrefix(while: { $0 == " " || $0 == "\t" })) ?? tid
        }
        return tid
    }

    public func destroyed() {
        logger.info("unmounted \(configuration.mountpoint)")
    }
}
