import CFBMMSys
import FBMMCore
import FBMMPolicy
import FUSEKit
import Logging
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// The namespace half of FUSE: lookups, attributes, creating, removing and
/// renaming nodes. Each runs as one transaction on the namespace lock; the
/// kernel has already checked permissions (`default_permissions`), so what
/// is left here is POSIX's own rules (sticky directories, non-empty rmdir,
/// rename over a directory) and the mount's limits.
extension MemoryFileSystem: AttributeSetting, NodeCreation, NodeRemoval, Renaming {
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
            defer { growthEnded(backing) }
            // The pool's lasting window over an enrolled arena must stay inside
            // the file: a write past the end would be a SIGBUS in the daemon.
            if let end = pool?.windowEnd(inode), size < end {
                reply.error(.resourceBusy)
                return
            }
            do {
                let count = try backing.ensurePlaced(upTo: size, context: file.context(size: size))
                // Size 0 of a file that never had memory changes nothing.
                if size > 0 || backing.hasMemory { try backing.memory.resize(to: size) }
                if count > 0 { state.withLock { $0.counters.placements += UInt64(count) } }
                // truncate(2) by path, no handle open: the file stays idle.
                state.withLock { ns in ns.inodes[inode].map(parkIfIdle) }
            } catch {
                logger.warning("truncate \(file.name) to \(size): \(error)")
                reply.error(error.errno)
                return
            }
        }
        let updated = transact { (ns) throws(Errno) -> stat in
            let record = try ns.record(inode)
            if let mode = changes.mode { record.mode = (record.mode & S_IFMT) | (mode & 0o7777) }
            if let uid = changes.uid, uid != record.uid { ns.changeOwner(of: record, to: uid) }
            if let gid = changes.gid { record.gid = gid }
            if changes.uid != nil || changes.gid != nil { record.backing?.changeOwner(uid: record.uid, gid: record.gid) }
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
    func checkSticky(_ dir: InodeRecord, _ record: InodeRecord, _ ctx: RequestContext) throws(Errno) {
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
}
