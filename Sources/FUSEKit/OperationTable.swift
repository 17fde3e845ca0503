import CFuse3

#if canImport(Glibc)
import Glibc
#endif

// The C callback table. It is built in a plain (non-isolated) function in
// this file on purpose: closures written in main.swift are main-actor isolated
// under Swift 6 and trap when libfuse calls them from its worker threads.
// Each callback recovers the Swift filesystem from the session's userdata and
// hands the request to the matching protocol method with a fresh reply value.

/// Box passed as libfuse userdata.
final class SessionContext: @unchecked Sendable {
    let operations: any FileSystemOperations
    init(_ operations: any FileSystemOperations) { self.operations = operations }
}

@inline(__always)
private func fs(_ req: fuse_req_t?) -> any FileSystemOperations {
    Unmanaged<SessionContext>.fromOpaque(fuse_req_userdata(req)!).takeUnretainedValue().operations
}

@inline(__always)
private func string(_ name: UnsafePointer<CChar>?) -> String {
    name.map { String(cString: $0) } ?? ""
}

func makeOperationTable(directoryPlus: Bool = false) -> fuse_lowlevel_ops {
    var ops = fuse_lowlevel_ops()
    if directoryPlus {
        ops.readdirplus = { req, ino, size, offset, fi in
            (fs(req) as! any DirectoryPlusListing).readdirplus(
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
    ops.setattr = { req, ino, attr, toSet, fi in
        fs(req).setattr(RequestContext(req!), inode: ino, changes: SetAttributes(attr!.pointee, toSet: toSet),
                        file: fi.map { OpenFile($0) }, reply: AttrReply(req!))
    }
    ops.mknod = { req, parent, name, mode, rdev in
        fs(req).mknod(RequestContext(req!), parent: parent, name: FileName(cString: name), mode: mode, device: UInt64(rdev), reply: EntryReply(req!))
    }
    ops.mkdir = { req, parent, name, mode in
        fs(req).mkdir(RequestContext(req!), parent: parent, name: FileName(cString: name), mode: mode, reply: EntryReply(req!))
    }
    ops.unlink = { req, parent, name in
        fs(req).unlink(RequestContext(req!), parent: parent, name: FileName(cString: name), reply: StatusReply(req!))
    }
    ops.rmdir = { req, parent, name in
        fs(req).rmdir(RequestContext(req!), parent: parent, name: FileName(cString: name), reply: StatusReply(req!))
    }
    ops.rename = { req, parent, name, newParent, newName, flags in
        fs(req).rename(RequestContext(req!), parent: parent, name: FileName(cString: name), newParent: newParent,
                       newName: FileName(cString: newName), flags: flags, reply: StatusReply(req!))
    }
    ops.open = { req, ino, fi in
        fs(req).open(RequestContext(req!), inode: ino, flags: fi?.pointee.flags ?? 0, reply: OpenReply(req!, fi))
    }
    ops.create = { req, parent, name, mode, fi in
        fs(req).create(RequestContext(req!), parent: parent, name: FileName(cString: name), mode: mode,
                       flags: fi?.pointee.flags ?? 0, reply: CreateReply(req!, fi))
    }
    ops.read = { req, ino, size, offset, fi in
        fs(req).read(RequestContext(req!), inode: ino, size: size, offset: Int64(offset), file: OpenFile(fi), reply: DataReply(req!))
    }
    ops.write = { req, ino, buf, size, offset, fi in
        fs(req).write(RequestContext(req!), inode: ino, data: UnsafeRawBufferPointer(start: buf, count: size),
                      offset: Int64(offset), file: OpenFile(fi), reply: WriteReply(req!))
    }
    ops.flush = { req, ino, fi in
        fs(req).flush(RequestContext(req!), inode: ino, file: OpenFile(fi), reply: StatusReply(req!))
    }
    ops.release = { req, ino, fi in
        fs(req).release(RequestContext(req!), inode: ino, file: OpenFile(fi), reply: StatusReply(req!))
    }
    ops.fsync = { req, ino, datasync, fi in
        fs(req).fsync(RequestContext(req!), inode: ino, dataOnly: datasync != 0, file: OpenFile(fi), reply: StatusReply(req!))
    }
    ops.opendir = { req, ino, fi in
        fs(req).opendir(RequestContext(req!), inode: ino, flags: fi?.pointee.flags ?? 0, reply: OpenReply(req!, fi))
    }
    ops.readdir = { req, ino, size, offset, fi in
        fs(req).readdir(RequestContext(req!), inode: ino, file: OpenFile(fi), reply: DirectoryReply(req!, size: size, offset: Int(offset)))
    }
    ops.releasedir = { req, ino, fi in
        fs(req).releasedir(RequestContext(req!), inode: ino, file: OpenFile(fi), reply: StatusReply(req!))
    }
    ops.statfs = { req, ino in
        fs(req).statfs(RequestContext(req!), inode: ino, reply: StatfsReply(req!))
    }
    ops.setxattr = { req, ino, name, value, size, flags in
        let bytes = value.map { Array(UnsafeRawBufferPointer(start: $0, count: size)) } ?? []
        fs(req).setxattr(RequestContext(req!), inode: ino, name: string(name), value: bytes, flags: flags, reply: StatusReply(req!))
    }
    ops.getxattr = { req, ino, name, size in
        fs(req).getxattr(RequestContext(req!), inode: ino, name: string(name), reply: XattrReply(req!, size: size))
    }
    ops.listxattr = { req, ino, size in
        fs(req).listxattr(RequestContext(req!), inode: ino, reply: XattrReply(req!, size: size))
    }
    ops.removexattr = { req, ino, name in
        fs(req).removexattr(RequestContext(req!), inode: ino, name: string(name), reply: StatusReply(req!))
    }
    ops.fallocate = { req, ino, mode, offset, length, fi in
        fs(req).fallocate(RequestContext(req!), inode: ino, mode: mode, offset: Int64(offset), length: Int64(length),
                          file: OpenFile(fi), reply: StatusReply(req!))
    }
    return ops
}
