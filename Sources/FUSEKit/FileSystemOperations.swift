import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// A filesystem served through libfuse3's low-level API: one method per FUSE
/// operation, each answering through the reply value it is handed (exactly
/// once; see Replies.swift). Methods run on libfuse worker threads,
/// concurrently, so conformers guard their own state.
///
/// Every method has a default that answers ENOSYS (or the conventional
/// success), so a filesystem implements only what it supports.
public protocol FileSystemOperations: AnyObject, Sendable {
    func lookup(_ ctx: RequestContext, parent: InodeNumber, name: FileName, reply: consuming EntryReply)
    func forget(inode: InodeNumber, count: UInt64)
    func getattr(_ ctx: RequestContext, inode: InodeNumber, reply: consuming AttrReply)
    func setattr(_ ctx: RequestContext, inode: InodeNumber, changes: SetAttributes, file: OpenFile?, reply: consuming AttrReply)
    func mknod(_ ctx: RequestContext, parent: InodeNumber, name: FileName, mode: UInt32, device: UInt64, reply: consuming EntryReply)
    func mkdir(_ ctx: RequestContext, parent: InodeNumber, name: FileName, mode: UInt32, reply: consuming EntryReply)
    func unlink(_ ctx: RequestContext, parent: InodeNumber, name: FileName, reply: consuming StatusReply)
    func rmdir(_ ctx: RequestContext, parent: InodeNumber, name: FileName, reply: consuming StatusReply)
    func rename(_ ctx: RequestContext, parent: InodeNumber, name: FileName, newParent: InodeNumber, newName: FileName, flags: UInt32, reply: consuming StatusReply)
    func open(_ ctx: RequestContext, inode: InodeNumber, flags: Int32, reply: consuming OpenReply)
    func create(_ ctx: RequestContext, parent: InodeNumber, name: FileName, mode: UInt32, flags: Int32, reply: consuming CreateReply)
    func read(_ ctx: RequestContext, inode: InodeNumber, size: Int, offset: Int64, file: OpenFile, reply: consuming DataReply)
    func write(_ ctx: RequestContext, inode: InodeNumber, data: UnsafeRawBufferPointer, offset: Int64, file: OpenFile, reply: consuming WriteReply)
    func flush(_ ctx: RequestContext, inode: InodeNumber, file: OpenFile, reply: consuming StatusReply)
    func release(_ ctx: RequestContext, inode: InodeNumber, file: OpenFile, reply: consuming StatusReply)
    func fsync(_ ctx: RequestContext, inode: InodeNumber, dataOnly: Bool, file: OpenFile, reply: consuming StatusReply)
    func opendir(_ ctx: RequestContext, inode: InodeNumber, flags: Int32, reply: consuming OpenReply)
    func readdir(_ ctx: RequestContext, inode: InodeNumber, file: OpenFile, reply: consuming DirectoryReply)
    func releasedir(_ ctx: RequestContext, inode: InodeNumber, file: OpenFile, reply: consuming StatusReply)
    func statfs(_ ctx: RequestContext, inode: InodeNumber, reply: consuming StatfsReply)
    func setxattr(_ ctx: RequestContext, inode: InodeNumber, name: String, value: [UInt8], flags: Int32, reply: consuming StatusReply)
    func getxattr(_ ctx: RequestContext, inode: InodeNumber, name: String, reply: consuming XattrReply)
    func listxattr(_ ctx: RequestContext, inode: InodeNumber, reply: consuming XattrReply)
    func removexattr(_ ctx: RequestContext, inode: InodeNumber, name: String, reply: consuming StatusReply)
    func fallocate(_ ctx: RequestContext, inode: InodeNumber, mode: Int32, offset: Int64, length: Int64, file: OpenFile, reply: consuming StatusReply)
    /// Called once, after the kernel connection is set up and before any request.
    func initialized()
    /// Called once when the session ends (unmount).
    func destroyed()
}

/// A capability, as go-fuse has them: a filesystem that can answer a
/// listing with each entry's attributes (FUSE_READDIRPLUS). The kernel then
/// asks for it when a program lists and stats (`ls -l`), and creates the
/// dentries and caches the attributes from it, instead of one lookup and
/// one getattr per entry. Only conformers get the operation registered
/// (libfuse turns READDIRPLUS on when it is). Every entry answered except
/// "." and ".." counts as one lookup (`forget` pays it back).
public protocol DirectoryPlusListing: FileSystemOperations {
    func readdirplus(_ ctx: RequestContext, inode: InodeNumber, file: OpenFile, reply: consuming DirectoryPlusReply)
}

extension FileSystemOperations {
    public func lookup(_ ctx: RequestContext, parent: InodeNumber, name: FileName, reply: consuming EntryReply) { reply.error(.noFunction) }
    public func forget(inode: InodeNumber, count: UInt64) {}
    public func getattr(_ ctx: RequestContext, inode: InodeNumber, reply: consuming AttrReply) { reply.error(.noFunction) }
    public func setattr(_ ctx: RequestContext, inode: InodeNumber, changes: SetAttributes, file: OpenFile?, reply: consuming AttrReply) { reply.error(.noFunction) }
    public func mknod(_ ctx: RequestContext, parent: InodeNumber, name: FileName, mode: UInt32, device: UInt64, reply: consuming EntryReply) { reply.error(.noFunction) }
    public func mkdir(_ ctx: RequestContext, parent: InodeNumber, name: FileName, mode: UInt32, reply: consuming EntryReply) { reply.error(.noFunction) }
    public func unlink(_ ctx: RequestContext, parent: InodeNumber, name: FileName, reply: consuming StatusReply) { reply.error(.noFunction) }
    public func rmdir(_ ctx: RequestContext, parent: InodeNumber, name: FileName, reply: consuming StatusReply) { reply.error(.noFunction) }
    public func rename(_ ctx: RequestContext, parent: InodeNumber, name: FileName, newParent: InodeNumber, newName: FileName, flags: UInt32, reply: consuming StatusReply) { reply.error(.noFunction) }
    public func open(_ ctx: RequestContext, inode: InodeNumber, flags: Int32, reply: consuming OpenReply) { reply.opened(handle: 0) }
    public func create(_ ctx: RequestContext, parent: InodeNumber, name: FileName, mode: UInt32, flags: Int32, reply: consuming CreateReply) { reply.error(.noFunction) }
    public func read(_ ctx: RequestContext, inode: InodeNumber, size: Int, offset: Int64, file: OpenFile, reply: consuming DataReply) { reply.error(.noFunction) }
    public func write(_ ctx: RequestContext, inode: InodeNumber, data: UnsafeRawBufferPointer, offset: Int64, file: OpenFile, reply: consuming WriteReply) { reply.error(.noFunction) }
    public func flush(_ ctx: RequestContext, inode: InodeNumber, file: OpenFile, reply: consuming StatusReply) { reply.ok() }
    public func release(_ ctx: RequestContext, inode: InodeNumber, file: OpenFile, reply: consuming StatusReply) { reply.ok() }
    public func fsync(_ ctx: RequestContext, inode: InodeNumber, dataOnly: Bool, file: OpenFile, reply: consuming StatusReply) { reply.ok() }
    public func opendir(_ ctx: RequestContext, inode: InodeNumber, flags: Int32, reply: consuming OpenReply) { reply.opened(handle: 0, directIO: false) }
    public func readdir(_ ctx: RequestContext, inode: InodeNumber, file: OpenFile, reply: consuming DirectoryReply) { reply.error(.noFunction) }
    public func releasedir(_ ctx: RequestContext, inode: InodeNumber, file: OpenFile, reply: consuming StatusReply) { reply.ok() }
    public func statfs(_ ctx: RequestContext, inode: InodeNumber, reply: consuming StatfsReply) { reply.error(.noFunction) }
    public func setxattr(_ ctx: RequestContext, inode: InodeNumber, name: String, value: [UInt8], flags: Int32, reply: consuming StatusReply) { reply.error(.noFunction) }
    public func getxattr(_ ctx: RequestContext, inode: InodeNumber, name: String, reply: consuming XattrReply) { reply.error(.noFunction) }
    public func listxattr(_ ctx: RequestContext, inode: InodeNumber, reply: consuming XattrReply) { reply.error(.noFunction) }
    public func removexattr(_ ctx: RequestContext, inode: InodeNumber, name: String, reply: consuming StatusReply) { reply.error(.noFunction) }
    public func fallocate(_ ctx: RequestContext, inode: InodeNumber, mode: Int32, offset: Int64, length: Int64, file: OpenFile, reply: consuming StatusReply) { reply.error(.noFunction) }
    public func initialized() {}
    public func destroyed() {}
}
