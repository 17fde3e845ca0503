import CFuse3

#if canImport(Glibc)
import Glibc
#endif

// The C callback table. It is built in a plain (non-isolated) function in
// this file on purpose: closures written in main.swift are main-actor isolated
// under Swift 6 and trap when libfuse calls them from its worker threads.
// Each callback recovers the Swift filesystem from the session's userdata and
// hands the request to the matching protocol method with a fresh reply value.

/// Box passed as libfuse userdata: the filesystem, and the same object as
/// each capability it has (cast once here, not per request); a callback is
/// registered only when its capability is there, so the `!`s below hold.
final class SessionContext: @unchecked Sendable {
    let operations: any FileSystemOperations
    let attributes: (any AttributeSetting)?
    let creation: (any NodeCreation)?
    let removal: (any NodeRemoval)?
    let renaming: (any Renaming)?
    let opening: (any FileOpening)?
    let reading: (any FileReading)?
    let writing: (any FileWriting)?
    let syncing: (any FileSyncing)?
    let listing: (any DirectoryListing)?
    let plusListing: (any DirectoryPlusListing)?
    let statistics: (any FilesystemUsage)?
    let xattrs: (any ExtendedAttributes)?
    let allocation: (any SpaceAllocation)?

    init(_ operations: any FileSystemOperations) {
        self.operations = operations
        attributes = operations as? any AttributeSetting
        creation = operations as? any NodeCreation
        removal = operations as? any NodeRemoval
        renaming = operations as? any Renaming
        opening = operations as? any FileOpening
        reading = operations as? any FileReading
        writing = operations as? any FileWriting
        syncing = operations as? any FileSyncing
        listing = operations as? any DirectoryListing
        plusListing = operations as? any DirectoryPlusListing
        statistics = operations as? any FilesystemUsage
        xattrs = operations as? any ExtendedAttributes
        allocation = operations as? any SpaceAllocation
    }
}

@inline(__always)
private func session(_ req: fuse_req_t?) -> SessionContext {
    Unmanaged<SessionContext>.fromOpaque(fuse_req_userdata(req)!).takeUnretainedValue()
}

@inline(__always)
private func fs(_ req: fuse_req_t?) -> any FileSystemOperations {
    session(req).operations
}

@inline(__always)
private func string(_ name: UnsafePointer<CChar>?) -> String {
    name.map { String(cString: $0) } ?? ""
}

func makeOperationTable(for context: SessionContext) -> fuse_lowlevel_ops {
    var ops = fuse_lowlevel_ops()
    if context.plusListing != nil {
        ops.readdirplus = { req, ino, size, offset, fi in
            session(req).plusListing!.readdirplus(
                RequestContext(req!), inode: ino, file: OpenFile(fi), reply: DirectoryPlusReply(req!, size: size, offset: Int(offset)))
        }
    }
    ops.`init` = { userdata, _ in
        Unmanaged<SessionContext>.fromOpaque(userdata!).takeUnretainedValue().operations.initialized()
    }
    ops.destroy = { userdata in
        Unmanaged<SessionContext>.fromOpaque(userdata!).takeUnretainedValue().operations.destroyed()
    }
    ops.lookup = { req, parent, name in
        fs(req).lookup(RequestContext(req!), parent: parent, name: FileName(cString: name), reply: EntryReply(req!))
    }
    ops.forget = { req, ino, nlookup in
        fs(req).forget(inode: ino, count: nlookup)
        fuse_reply_none(req)
    }
    ops.forget_multi = { req, count, forgets in
        let filesystem = fs(req)
        for i in 0..<count {
            let item = forgets![i]
            filesystem.forget(inode: item.ino, count: item.nlookup)
        }
        fuse_reply_none(req)
    }
    ops.getattr = { req, ino, _ in
        fs(req).getattr(RequestContext(req!), inode: ino, reply: AttrReply(req!))
    }
    if context.attributes != nil {
        ops.setattr = { req, ino, attr, toSet, fi in
            session(req).attributes!.setattr(RequestContext(req!), inode: ino, changes: SetAttributes(attr!.pointee, toSet: toSet),
                            file: fi.map { OpenFile($0) }, reply: AttrReply(req!))
        }
    }
    if context.creation != nil {
        ops.mknod = { req, parent, name, mode, rdev in
            session(req).creation!.mknod(RequestContext(req!), parent: parent, name: FileName(cString: name), mode: mode, device: UInt64(rdev), reply: EntryReply(req!))
        }
        ops.mkdir = { req, parent, name, mode in
            session(req).creation!.mkdir(RequestContext(req!), parent: parent, name: FileName(cString: name), mode: mode, reply: EntryReply(req!))
        }
        ops.create = { req, parent, name, mode, fi in
            session(req).creation!.create(RequestContext(req!), parent: parent, name: FileName(cString: name), mode: mode,
                           flags: fi?.pointee.flags ?? 0, reply: CreateReply(req!, fi))
        }
    }
    if context.removal != nil {
        ops.unlink = { req, parent, name in
            session(req).removal!.unlink(RequestContext(req!), parent: parent, name: FileName(cString: name), reply: StatusReply(req!))
        }
        ops.rmdir = { req, parent, name in
            session(req).removal!.rmdir(RequestContext(req!), parent: parent, name: FileName(cString: name), reply: StatusReply(req!))
        }
    }
    if context.renaming != nil {
        ops.rename = { req, parent, name, newParent, newName, flags in
            session(req).renaming!.rename(RequestContext(req!), parent: parent, name: FileName(cString: name), newParent: newParent,
                           newName: FileName(cString: newName), flags: flags, reply: StatusReply(req!))
        }
    }
    if context.opening != nil {
        ops.open = { req, ino, fi in
            session(req).opening!.open(RequestContext(req!), inode: ino, flags: fi?.pointee.flags ?? 0, reply: OpenReply(req!, fi))
        }
        ops.release = { req, ino, fi in
            session(req).opening!.release(RequestContext(req!), inode: ino, file: OpenFile(fi), reply: StatusReply(req!))
        }
    }
    if context.reading != nil {
        ops.read = { req, ino, size, offset, fi in
            session(req).reading!.read(RequestContext(req!), inode: ino, size: size, offset: Int64(offset), file: OpenFile(fi), reply: DataReply(req!))
        }
    }
    if context.writing != nil {
        ops.write = { req, ino, buf, size, offset, fi in
            session(req).writing!.write(RequestContext(req!), inode: ino, data: UnsafeRawBufferPointer(start: buf, count: size),
                          offset: Int64(offset), file: OpenFile(fi), reply: WriteReply(req!))
        }
    }
    if context.syncing != nil {
        ops.flush = { req, ino, fi in
            session(req).syncing!.flush(RequestContext(req!), inode: ino, file: OpenFile(fi), reply: StatusReply(req!))
        }
        ops.fsync = { req, ino, datasync, fi in
            session(req).syncing!.fsync(RequestContext(req!), inode: ino, dataOnly: datasync != 0, file: OpenFile(fi), reply: StatusReply(req!))
        }
    }
    if context.listing != nil {
        ops.opendir = { req, ino, fi in
            session(req).listing!.opendir(RequestContext(req!), inode: ino, flags: fi?.pointee.flags ?? 0, reply: OpenReply(req!, fi))
        }
        ops.readdir = { req, ino, size, offset, fi in
            session(req).listing!.readdir(RequestContext(req!), inode: ino, file: OpenFile(fi), reply: DirectoryReply(req!, size: size, offset: Int(offset)))
        }
        ops.releasedir = { req, ino, fi in
            session(req).listing!.releasedir(RequestContext(req!), inode: ino, file: OpenFile(fi), reply: StatusReply(req!))
        }
    }
    if context.statistics != nil {
        ops.statfs = { req, ino in
            session(req).statistics!.statfs(RequestContext(req!), inode: ino, reply: StatfsReply(req!))
        }
    }
    if context.xattrs != nil {
        ops.setxattr = { req, ino, name, value, size, flags in
            let bytes = value.map { Array(UnsafeRawBufferPointer(start: $0, count: size)) } ?? []
            session(req).xattrs!.setxattr(RequestContext(req!), inode: ino, name: string(name), value: bytes, flags: flags, reply: StatusReply(req!))
        }
        ops.getxattr = { req, ino, name, size in
            session(req).xattrs!.getxattr(RequestContext(req!), inode: ino, name: string(name), reply: XattrReply(req!, size: size))
        }
        ops.listxattr = { req, ino, size in
            session(req).xattrs!.listxattr(RequestContext(req!), inode: ino, reply: XattrReply(req!, size: size))
        }
        ops.removexattr = { req, ino, name in
            session(req).xattrs!.removexattr(RequestContext(req!), inode: ino, name: string(name), reply: StatusReply(req!))
        }
    }
    if context.allocation != nil {
        ops.fallocate = { req, ino, mode, offset, length, fi in
            session(req).allocation!.fallocate(RequestContext(req!), inode: ino, mode: mode, offset: Int64(offset), length: Int64(length),
                              file: OpenFile(fi), reply: StatusReply(req!))
        }
    }
    return ops
}
