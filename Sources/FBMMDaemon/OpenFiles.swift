import CFBMMSys
import FBMMCore
import FBMMPolicy
import FUSEKit
import Logging
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Open file handles and the data path: open/create count handles (a file's
/// memory lives while any is open or any process maps it), read and write go
/// straight to the backing with pread/pwrite (direct I/O: no page cache of
/// the FUSE file doubles the memory), fallocate reserves or punches, and the
/// last release of an unlinked file frees it.
extension MemoryFileSystem: FileOpening, FileReading, FileWriting, SpaceAllocation {
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
        // A parked file (FileBacking.park) is opened again for its handles.
        let backing = state.withLock { $0.inodes[inode]?.backing }
        if let backing, backing.hasMemory {
            do {
                let memory = try backing.memory
                if flags & O_TRUNC != 0 { try memory.resize(to: 0) }
            } catch {
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
        // A file that never had memory is empty: end of file, and no memfd
        // made for it just to say so.
        guard let memory = backing.existing else { reply.data([]); return }
        do {
            reply.data(try memory.read(at: UInt64(offset), count: min(size, 1 << 24)))
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
            defer { growthEnded(backing) }
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
            defer { growthEnded(backing) }
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

    /// An idle file (no handle open, not a program's arena) keeps no
    /// descriptor in the daemon: it is parked (FileBacking.park).
    func parkIfIdle(_ record: InodeRecord) {
        if record.openHandles == 0 && !record.processOwned && !record.provisionalArena { record.backing?.park() }
    }

    /// Closes a handle; a process-owned file (the shim's arena, claimed or
    /// still provisional) whose last handle closes is unlinked: its process
    /// has exited or let it go.
    /// Returns the inode of a process-owned arena whose last handle this was.
    @discardableResult
    func releaseHandle(_ ns: inout Namespace, _ handle: UInt64) -> InodeNumber? {
        guard let open = ns.handles.removeValue(forKey: handle), let record = ns.inodes[open.inode] else { return nil }
        record.openHandles -= 1
        if open.writable { record.writableHandles -= 1 }
        // The pool's lasting mappings of an arena must not outlive its owner.
        if record.openHandles == 0 && record.processOwned { pool?.remove(inode: record.number) }
        parkIfIdle(record)
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
}
