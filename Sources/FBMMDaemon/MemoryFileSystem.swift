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

    public init(configuration: MountConfiguration, topology: Topology, policy: any MemoryManagementPolicy,
                registry: PolicyRegistry, brokerPath: String, tmpfs: TmpfsInstance? = nil,
                backingNote: String = "memfd", logger: Logger) {
        self.tmpfs = tmpfs
        self.backingNote = backingNote
        self.configuration = configuration
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

    private func entry(_ record: InodeRecord) -> Entry {
        Entry(inode: record.number, attributes: record.attributes(), timeout: 1.0)
    }

    /// The policy a new file in `parent` gets: the nearest directory override, else the mount's.
    private func inheritedPolicy(_ ns: borrowing Namespace, parent: InodeNumber) -> (any MemoryManagementPolicy, PolicySpec?) {
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
    private func makeNode(_ ns: inout Namespace, _ ctx: RequestContext, owner: Int32, parent: InodeNumber, name: FileName,
                          mode: UInt32) throws(Errno) -> InodeRecord {
        try validateName(name)
        let dir = try ns.directory(parent)
        guard dir.children[name] == nil else { throw .fileExists }
        if let limit = configuration.maxFiles, ns.inodes.count >= limit { throw .noSpace }
        let number = ns.allocateInode()
        let content: InodeRecord.Content
        let type = mode & S_IFMT
        var inheritedSpec: PolicySpec?
        switch type {
        case S_IFDIR:
            content = .directory(children: [:])
            inheritedSpec = dir.policySpec
        case S_IFREG, 0:
            let (policy, spec) = inheritedPolicy(ns, parent: parent)
            inheritedSpec = spec
            do {
                content = .regular(try FileBacking(name: name.description, policy: policy, on: tmpfs))
            } catch {
                logger.error("create \(name): \(error)")
                throw error.errno
            }
        case S_IFIFO, S_IFSOCK, S_IFCHR, S_IFBLK:
            content = .special(device: 0)
        default:
            throw .invalidArgument
        }
        // setgid directories pass their group on, as on any POSIX filesystem.
        let gid = dir.mode & S_ISGID != 0 ? dir.gid : ctx.gid
        var finalMode = (type == 0 ? S_IFREG : type) | (mode & 0o7777 & ~ctx.umask)
        if type == S_IFDIR && dir.mode & S_ISGID != 0 { finalMode |= S_ISGID }
        let record = InodeRecord(number: number, content: content, mode: finalMode, uid: ctx.uid, gid: gid,
                                 parent: parent, name: name, creatorPID: owner)
        record.policySpec = inheritedSpec
        ns.inodes[number] = record
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
    private func processID(ofThread tid: Int32) -> Int32 {
        guard tid > 0 else { return tid }
        if fbmm_is_process(tid) != 0 { return tid }
        guard let status = readText("/proc/\(tid)/status") else { return tid }
        for line in status.split(separator: "\n") where line.hasPrefix("Tgid:") {
            return Int32(line.dropFirst(5).trimmingPrefix(while: { $0 == " " || $0 == "\t" })) ?? tid
        }
        return tid
    }

    // MARK: Namespace operations

    public func lookup(_ ctx: RequestContext, parent: InodeNumber, name: FileName, reply: consuming EntryReply) {
        let result = transact { (ns) throws(Errno) -> Entry in
            let record = try ns.child(parent, name)
            record.lookups += 1
            return entry(record)
        }
        switch result {
        case .success(let e): reply.entry(e)
        case .failure(let errno): reply.error(errno)
        }
    }

    public func forget(inode: InodeNumber, count: UInt64) {
        state.withLock { ns in
            guard let record = ns.inodes[inode] else { return }
            record.lookups -= min(record.lookups, count)
            ns.collect(inode)
        }
    }

    public func getattr(_ ctx: RequestContext, inode: InodeNumber, reply: consuming AttrReply) {
        let result = transact { (ns) throws(Errno) -> stat in try ns.record(inode).attributes() }
        switch result {
        case .success(let attributes): reply.attributes(attributes)
        case .failure(let errno): reply.error(errno)
        }
    }

    public func setattr(_ ctx: RequestContext, inode: InodeNumber, changes: SetAttributes, file: OpenFile?,
                        reply: consuming AttrReply) {
        let result = transact { (ns) throws(Errno) -> FileRef? in
            let record = try ns.record(inode)
            if changes.size != nil {
                if record.isDirectory { throw .isDirectory }
                guard record.backing != nil else { throw .invalidArgument }
            }
            return record.backing.map { FileRef(record, $0) }
        }
        guard case .success(let file) = result else {
            if case .failure(let errno) = result { reply.error(errno) }
            return
        }
        if let size = changes.size, let file {
            let backing = file.backing
            if let refusal = admitGrowth(backing, to: size) { reply.error(refusal); return }
            // The pool's lasting window over an enrolled arena must stay inside
            // the file: a write past the end would be a SIGBUS in the daemon.
            if let end = pool?.windowEnd(inode), size < end {
                reply.error(.resourceBusy)
                return
            }
            do {
                let count = try backing.ensurePlaced(upTo: size, context: file.context(size: size))
                try backing.memory.resize(to: size)
                if count > 0 { state.withLock { $0.counters.placements += UInt64(count) } }
            } catch {
                logger.warning("truncate \(file.name) to \(size): \(error)")
                reply.error(error.errno)
                return
            }
        }
        let updated = transact { (ns) throws(Errno) -> stat in
            let record = try ns.record(inode)
            if let mode = changes.mode { record.mode = (record.mode & S_IFMT) | (mode & 0o7777) }
            if let uid = changes.uid { record.uid = uid }
            if let gid = changes.gid { record.gid = gid }
            let now = currentTime()
            switch changes.accessTime {
            case .now?: record.accessTime = now
            case .at(let t)?: record.accessTime = t
            case nil: break
            }
            switch changes.modificationTime {
            case .now?: record.modificationTime = now
            case .at(let t)?: record.modificationTime = t
            case nil: if changes.size != nil { record.modificationTime = now }
            }
            record.changeTime = now
            return record.attributes()
        }
        switch updated {
        case .success(let attributes): reply.attributes(attributes)
        case .failure(let errno): reply.error(errno)
        }
    }

    public func mknod(_ ctx: RequestContext, parent: InodeNumber, name: FileName, mode: UInt32, device: UInt64,
                      reply: consuming EntryReply) {
        let owner = processID(ofThread: ctx.pid)  // (reads /proc: not under the lock)
        let result = transact { (ns) throws(Errno) -> Entry in
            let record = try makeNode(&ns, ctx, owner: owner, parent: parent, name: name, mode: mode)
            if case .special = record.content { record.content = .special(device: device) }
            return entry(record)
        }
        switch result {
        case .success(let e): reply.entry(e)
        case .failure(let errno): reply.error(errno)
        }
    }

    public func mkdir(_ ctx: RequestContext, parent: InodeNumber, name: FileName, mode: UInt32, reply: consuming EntryReply) {
        let owner = processID(ofThread: ctx.pid)  // (reads /proc: not under the lock)
        let result = transact { (ns) throws(Errno) -> Entry in
            entry(try makeNode(&ns, ctx, owner: owner, parent: parent, name: name, mode: S_IFDIR | (mode & 0o7777)))
        }
        switch result {
        case .success(let e): reply.entry(e)
        case .failure(let errno): reply.error(errno)
        }
    }

    public func create(_ ctx: RequestContext, parent: InodeNumber, name: FileName, mode: UInt32, flags: Int32,
                       reply: consuming CreateReply) {
        let owner = processID(ofThread: ctx.pid)  // (reads /proc: not under the lock)
        let result = transact { (ns) throws(Errno) -> (Entry, UInt64) in
            let record = try makeNode(&ns, ctx, owner: owner, parent: parent, name: name, mode: S_IFREG | (mode & 0o7777))
            // The shim asks for its arena with the sticky bit (meaningless on a
            // regular file) and names it "comm.PID.N": only then is the file
            // provisional, so no other file ever vanishes on close.
            if mode & S_ISVTX != 0 && name.description.contains(".\(owner).") {
                record.provisionalArena = true
                record.mode &= ~S_ISVTX
            }
            let handle = ns.nextHandle
            ns.nextHandle += 1
            ns.handles[handle] = Namespace.OpenHandle(inode: record.number, flags: flags, pid: ctx.pid)
            record.openHandles += 1
            record.opens += 1
            if flags & O_ACCMODE != O_RDONLY { record.writableHandles += 1 }
            return (entry(record), handle)
        }
        switch result {
        case .success(let (e, handle)): reply.created(e, handle: handle)
        case .failure(let errno): reply.error(errno)
        }
    }

    public func unlink(_ ctx: RequestContext, parent: InodeNumber, name: FileName, reply: consuming StatusReply) {
        let result = transact { (ns) throws(Errno) in
            let dir = try ns.directory(parent)
            let record = try ns.child(parent, name)
            if record.isDirectory { throw .isDirectory }
            try checkSticky(dir, record, ctx)
            dir.children[name] = nil
            dir.touchModified()
            record.linkCount -= 1
            record.changeTime = currentTime()
            ns.collect(record.number)
        }
        switch result {
        case .success: reply.ok()
        case .failure(let errno): reply.error(errno)
        }
    }

    public func rmdir(_ ctx: RequestContext, parent: InodeNumber, name: FileName, reply: consuming StatusReply) {
        let result = transact { (ns) throws(Errno) in
            let dir = try ns.directory(parent)
            let record = try ns.child(parent, name)
            guard record.isDirectory else { throw .notDirectory }
            guard record.children.isEmpty else { throw .directoryNotEmpty }
            try checkSticky(dir, record, ctx)
            dir.children[name] = nil
            dir.linkCount -= 1
            dir.touchModified()
            record.linkCount = 0
            ns.collect(record.number)
        }
        switch result {
        case .success: reply.ok()
        case .failure(let errno): reply.error(errno)
        }
    }

    /// In a sticky directory (like /tmp) only the owner of the entry, of the
    /// directory, or root may remove or rename it.
    private func checkSticky(_ dir: InodeRecord, _ record: InodeRecord, _ ctx: RequestContext) throws(Errno) {
        if dir.mode & S_ISVTX != 0 && ctx.uid != 0 && ctx.uid != record.uid && ctx.uid != dir.uid {
            throw .notPermitted
        }
    }

    public func rename(_ ctx: RequestContext, parent: InodeNumber, name: FileName, newParent: InodeNumber, newName: FileName,
                       flags: UInt32, reply: consuming StatusReply) {
        let renameNoReplace: UInt32 = 1, renameExchange: UInt32 = 2
        let result = transact { (ns) throws(Errno) in
            guard flags & ~(renameNoReplace | renameExchange) == 0 else { throw .invalidArgument }
            try validateName(newName)
            let fromDir = try ns.directory(parent)
            let toDir = try ns.directory(newParent)
            let record = try ns.child(parent, name)
            try checkSticky(fromDir, record, ctx)
            // A directory cannot move into its own subtree.
            if record.isDirectory {
                var cursor = newParent
                var depth = 0
                while cursor != 1, depth < 4096 {
                    if cursor == record.number { throw .invalidArgument }
                    cursor = ns.inodes[cursor]?.parent ?? 1
                    depth += 1
                }
                if newParent == record.number { throw .invalidArgument }
            }
            let existing = toDir.children[newName].flatMap { ns.inodes[$0] }
            if flags & renameExchange != 0 {
                guard let existing else { throw .noSuchFileOrDirectory }
                fromDir.children[name] = existing.number
                toDir.children[newName] = record.number
                (existing.parent, existing.name) = (parent, name)
                (record.parent, record.name) = (newParent, newName)
                if existing.isDirectory != record.isDirectory, parent != newParent {
                    let dirMovedOut = record.isDirectory ? fromDir : toDir
                    let dirMovedIn = record.isDirectory ? toDir : fromDir
                    dirMovedOut.linkCount -= 1
                    dirMovedIn.linkCount += 1
                }
                return
            }
            if let existing {
                if existing.number == record.number { return }
                if flags & renameNoReplace != 0 { throw .fileExists }
                try checkSticky(toDir, existing, ctx)
                if existing.isDirectory {
                    guard record.isDirectory else { throw .isDirectory }
                    guard existing.children.isEmpty else { throw .directoryNotEmpty }
                    toDir.linkCount -= 1
                    existing.linkCount = 0
                } else {
                    guard !record.isDirectory else { throw .notDirectory }
                    existing.linkCount -= 1
                }
                toDir.children[newName] = nil
                ns.collect(existing.number)
            }
            fromDir.children[name] = nil
            toDir.children[newName] = record.number
            if record.isDirectory && parent != newParent {
                fromDir.linkCount -= 1
                toDir.linkCount += 1
            }
            record.parent = newParent
            record.name = newName
            record.changeTime = currentTime()
            fromDir.touchModified()
            toDir.touchModified()
        }
        switch result {
        case .success: reply.ok()
        case .failure(let errno): reply.error(errno)
        }
    }

    // MARK: Open files

    public func open(_ ctx: RequestContext, inode: InodeNumber, flags: Int32, reply: consuming OpenReply) {
        let result = transact { (ns) throws(Errno) -> UInt64 in
            let record = try ns.record(inode)
            if record.isDirectory { throw .isDirectory }
            let handle = ns.nextHandle
            ns.nextHandle += 1
            ns.handles[handle] = Namespace.OpenHandle(inode: inode, flags: flags, pid: ctx.pid)
            record.openHandles += 1
            record.opens += 1
            if flags & O_ACCMODE != O_RDONLY { record.writableHandles += 1 }
            return handle
        }
        guard case .success(let handle) = result else {
            if case .failure(let errno) = result { reply.error(errno) }
            return
        }
        if flags & O_TRUNC != 0, let backing = state.withLock({ $0.inodes[inode]?.backing }) {
            do { try backing.memory.resize(to: 0) } catch {
                _ = state.withLock { ns in releaseHandle(&ns, handle) }
                reply.error(error.errno)
                return
            }
        }
        reply.opened(handle: handle)
    }

    public func read(_ ctx: RequestContext, inode: InodeNumber, size: Int, offset: Int64, file: OpenFile,
                     reply: consuming DataReply) {
        guard let backing = state.withLock({ $0.inodes[inode]?.backing }) else { reply.error(.badFileDescriptor); return }
        guard offset >= 0 else { reply.error(.invalidArgument); return }
        do {
            reply.data(try backing.memory.read(at: UInt64(offset), count: min(size, 1 << 24)))
        } catch {
            reply.error(error.errno)
        }
    }

    public func write(_ ctx: RequestContext, inode: InodeNumber, data: UnsafeRawBufferPointer, offset: Int64,
                      file: OpenFile, reply: consuming WriteReply) {
        guard let target = regularFile(inode) else { reply.error(.badFileDescriptor); return }
        let backing = target.backing
        guard offset >= 0 else { reply.error(.invalidArgument); return }
        var start = UInt64(offset)
        do {
            if file.flags & O_APPEND != 0 { start = try backing.memory.size() }
            let end = start + UInt64(data.count)
            if let refusal = admitGrowth(backing, to: end) { reply.error(refusal); return }
            let count = try backing.ensurePlaced(upTo: end, context: target.context(size: end))
            try backing.memory.write(data, at: start)
            state.withLock { ns in
                ns.inodes[inode]?.touchModified()
                ns.counters.placements += UInt64(count)
            }
            reply.written(data.count)
        } catch {
            reply.error(error.errno)
        }
    }

    public func fallocate(_ ctx: RequestContext, inode: InodeNumber, mode: Int32, offset: Int64, length: Int64,
                          file: OpenFile, reply: consuming StatusReply) {
        guard let target = regularFile(inode) else { reply.error(.badFileDescriptor); return }
        let backing = target.backing
        guard offset >= 0, length > 0 else { reply.error(.invalidArgument); return }
        let (end, overflow) = UInt64(offset).addingReportingOverflow(UInt64(length))
        guard !overflow else { reply.error(.fileTooLarge); return }
        do {
            if let refusal = admitGrowth(backing, to: end) { reply.error(refusal); return }
            try backing.ensurePlaced(upTo: end, context: target.context(size: end))
            try backing.memory.allocate(mode: mode, offset: UInt64(offset), length: UInt64(length))
            state.withLock { ns in ns.inodes[inode]?.touchModified() }
            reply.ok()
        } catch {
            reply.error(error.errno)
        }
    }

    public func release(_ ctx: RequestContext, inode: InodeNumber, file: OpenFile, reply: consuming StatusReply) {
        let arenaGone = state.withLock { ns in releaseHandle(&ns, file.handle) }
        // Outside the namespace lock: this may change another process's
        // page protections (which takes its mmap lock).
        if let arenaGone { copyOnWrite.released(arenaGone) }
        reply.ok()
    }

    /// Closes a handle; a process-owned file (the shim's arena, claimed or
    /// still provisional) whose last handle closes is unlinked: its process
    /// has exited or let it go.
    /// Returns the inode of a process-owned arena whose last handle this was.
    @discardableResult
    private func releaseHandle(_ ns: inout Namespace, _ handle: UInt64) -> InodeNumber? {
        guard let open = ns.handles.removeValue(forKey: handle), let record = ns.inodes[open.inode] else { return nil }
        record.openHandles -= 1
        if open.writable { record.writableHandles -= 1 }
        // The pool's lasting mappings of an arena must not outlive its owner.
        if record.openHandles == 0 && record.processOwned { pool?.remove(inode: record.number) }
        if record.processOwned || record.provisionalArena, record.openHandles == 0, record.linkCount > 0,
           let dir = ns.inodes[record.parent], dir.children[record.name] == record.number {
            dir.children[record.name] = nil
            record.linkCount = 0
            // Drop the daemon's reference to the memfd now: the kernel may keep
            // the inode (its dentry) for a long time before a FORGET, and the
            // memory must be freed when the process is gone. A process that still
            // maps it keeps it alive; nothing is truncated or punched.
            record.content = .special(device: 0)
            logger.debug("released process-owned \(record.name)")
        }
        let gone = record.processOwned && record.openHandles == 0 ? record.number : nil
        ns.collect(open.inode)
        return gone
    }

    // MARK: Directories

    public func opendir(_ ctx: RequestContext, inode: InodeNumber, flags: Int32, reply: consuming OpenReply) {
        let isDir = state.withLock { ns in ns.inodes[inode]?.isDirectory }
        switch isDir {
        case true?: reply.opened(handle: 0, directIO: false)
        case false?: reply.error(.notDirectory)
        case nil: reply.error(.noSuchFileOrDirectory)
        }
    }

    public func readdir(_ ctx: RequestContext, inode: InodeNumber, file: OpenFile, reply: consuming DirectoryReply) {
        let result = transact { (ns) throws(Errno) -> [DirectoryEntry] in
            let dir = try ns.directory(inode)
            var entries = [DirectoryEntry(name: ".", inode: inode, mode: S_IFDIR),
                           DirectoryEntry(name: "..", inode: dir.parent, mode: S_IFDIR)]
            for (name, child) in dir.children.sorted(by: { $0.key < $1.key }) {
                entries.append(DirectoryEntry(name: name, inode: child, mode: ns.inodes[child]?.mode ?? 0))
            }
            return entries
        }
        switch result {
        case .success(let entries): reply.entries(entries)
        case .failure(let errno): reply.error(errno)
        }
    }

    // MARK: Filesystem

    public func statfs(_ ctx: RequestContext, inode: InodeNumber, reply: consuming StatfsReply) {
        let pool = poolUsage()
        let block = UInt64(pageSize)
        let files = state.withLock { $0.inodes.count }
        let maxFiles = UInt64(configuration.maxFiles ?? 1 << 20)
        reply.statistics(FilesystemStatistics(
            blockSize: block, totalBlocks: pool.total / block, freeBlocks: pool.free / block,
            availableBlocks: pool.free / block, totalFiles: maxFiles,
            freeFiles: maxFiles > UInt64(files) ? maxFiles - UInt64(files) : 0))
    }

    /// What a file commits the pool to: its size (any process mapping it may
    /// fault in every page up to it), or its allocation if larger (fallocate
    /// with KEEP_SIZE).
    static func committedBytes(_ backing: FileBacking) -> UInt64 {
        max((try? backing.memory.size()) ?? 0, (try? backing.memory.allocatedBytes()) ?? 0)
    }

    /// What all files together commit the pool to, their extended
    /// attributes (held in the daemon's memory) included.
    func committedTotal() -> UInt64 {
        state.withLock { ns in
            ns.inodes.values.reduce(ns.xattrBytes) { sum, record in sum + (record.backing.map(Self.committedBytes) ?? 0) }
        }
    }

    /// `-o capacity`: may `backing` grow to `size`? The bound is on committed
    /// bytes because pages that programs fault through their own mappings never
    /// pass through the daemon; they can only fault within a file's size, and
    /// sizes only grow through here.
    /// Also refuses sizes past `max-file-size` (EFBIG).
    func admitGrowth(_ backing: FileBacking, to size: UInt64) -> Errno? {
        if size > configuration.maxFileSize { return .fileTooLarge }
        guard let capacity = configuration.capacity else { return nil }
        let current = Self.committedBytes(backing)
        guard size > current else { return nil }
        let total = committedTotal()
        return total - min(total, current) + size <= capacity ? nil : .noSpace
    }

    /// The pool `df` shows: the memory of the nodes the mount's policy may use
    /// (or `capacity`), and what of it is free.
    func poolUsage() -> (total: UInt64, used: UInt64, free: UInt64) {
        let used = state.withLock { ns in
            ns.inodes.values.reduce(UInt64(0)) { sum, record in
                sum + ((try? record.backing?.memory.allocatedBytes()) ?? 0)
            }
        }
        let current = (try? Topology()) ?? topology
        let nodes = current.nodes.filter { mountPolicy.allowedNodes.contains($0.id) }
        var total = nodes.reduce(UInt64(0)) { $0 + $1.memTotal }
        var free = nodes.reduce(UInt64(0)) { $0 + $1.memFree }
        if let capacity = configuration.capacity {
            let committed = committedTotal()
            total = min(total, capacity)
            free = min(free, capacity > committed ? capacity - committed : 0)
        }
        return (total, used, free)
    }

    public func destroyed() {
        logger.info("unmounted \(configuration.mountpoint)")
    }
}

