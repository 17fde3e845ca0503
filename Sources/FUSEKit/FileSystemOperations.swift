import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

// A filesystem served through libfuse3's low-level API, as small capability
// protocols (go-fuse's NodeLookuper, NodeReader, ... idea): a filesystem
// conforms to the ones it really implements, and only their operations are
// registered with libfuse. An operation nobody registered is answered by
// libfuse as the kernel expects of a filesystem without it (ENOSYS, after
// which the kernel stops sending FLUSH, FSYNC, FALLOCATE...; a default
// success for OPEN, OPENDIR and RELEASE; a default STATFS), rather than by a
// silent default method that claims to work. One method per FUSE operation,
// each answering through the reply value it is handed, exactly once
// (Replies.swift). Methods run on libfuse worker threads, concurrently, so
// conformers guard their own state.

/// What every filesystem answers: names to inodes, their attributes, and the
/// kernel forgetting them. The two lifecycle hooks have empty defaults.
public protocol FileSystemOperations: AnyObject, Sendable {
    func lookup(_ ctx: RequestContext, parent: InodeNumber, name: FileName, reply: consuming EntryReply)
    func forget(inode: InodeNumber, count: UInt64)
    func getattr(_ ctx: RequestContext, inode: InodeNumber, reply: consuming AttrReply)
    /// Called once, after the kernel connection is set up and before any request.
    func initialized()
    /// Called once when the session ends (unmount).
    func destroyed()
}

extension FileSystemOperations {
    public func initialized() {}
    public func destroyed() {}
}

/// chmod, chown, truncate, utimens.
public protocol AttributeSetting: FileSystemOperations {
    func setattr(_ ctx: RequestContext, inode: InodeNumber, changes: SetAttributes, file: OpenFile?, reply: consuming AttrReply)
}

/// New names: files (open-and-create or mknod) and directories.
public protocol NodeCreation: FileSystemOperations {
    func mknod(_ ctx: RequestContext, parent: InodeNumber, name: FileName, mode: UInt32, device: UInt64, reply: consuming EntryReply)
    func mkdir(_ ctx: RequestContext, parent: InodeNumber, name: FileName, mode: UInt32, reply: consuming EntryReply)
    func create(_ ctx: RequestContext, parent: InodeNumber, name: FileName, mode: UInt32, flags: Int32, reply: consuming CreateReply)
}

/// Names going away.
public protocol NodeRemoval: FileSystemOperations {
    func unlink(_ ctx: RequestContext, parent: InodeNumber, name: FileName, reply: consuming StatusReply)
    func rmdir(_ ctx: RequestContext, parent: InodeNumber, name: FileName, reply: consuming StatusReply)
}

public protocol Renaming: FileSystemOperations {
    func rename(_ ctx: RequestContext, parent: InodeNumber, name: FileName, newParent: InodeNumber, newName: FileName, flags: UInt32, reply: consuming StatusReply)
}

/// Open files with handles of the filesystem's own (without it, every open
/// succeeds with handle 0 and release is not seen).
public protocol FileOpening: FileSystemOperations {
    func open(_ ctx: RequestContext, inode: InodeNumber, flags: Int32, reply: consuming OpenReply)
    func release(_ ctx: RequestContext, inode: InodeNumber, file: OpenFile, reply: consuming StatusReply)
}

public protocol FileReading: FileSystemOperations {
    func read(_ ctx: RequestContext, inode: InodeNumber, size: Int, offset: Int64, file: OpenFile, reply: consuming DataReply)
}

public protocol FileWriting: FileSystemOperations {
    func write(_ ctx: RequestContext, inode: InodeNumber, data: UnsafeRawBufferPointer, offset: Int64, file: OpenFile, reply: consuming WriteReply)
}

/// close(2) and fsync(2) reaching the filesystem (a filesystem with nothing
/// to write back leaves this out; the kernel then stops asking).
public protocol FileSyncing: FileSystemOperations {
    func flush(_ ctx: RequestContext, inode: InodeNumber, file: OpenFile, reply: consuming StatusReply)
    func fsync(_ ctx: RequestContext, inode: InodeNumber, dataOnly: Bool, file: OpenFile, reply: consuming StatusReply)
}

public protocol DirectoryListing: FileSystemOperations {
    func opendir(_ ctx: RequestContext, inode: InodeNumber, flags: Int32, reply: consuming OpenReply)
    func readdir(_ ctx: RequestContext, inode: InodeNumber, file: OpenFile, reply: consuming DirectoryReply)
    func releasedir(_ ctx: RequestContext, inode: InodeNumber, file: OpenFile, reply: consuming StatusReply)
}

/// A listing with each entry's attributes (FUSE_READDIRPLUS). The kernel
/// then asks for it when a program lists and stats (`ls -l`), and creates
/// the dentries and caches the attributes from it, instead of one lookup and
/// one getattr per entry (libfuse turns READDIRPLUS on when it is
/// registered). Every entry answered except "." and ".." counts as one
/// lookup (`forget` pays it back).
public protocol DirectoryPlusListing: DirectoryListing {
    func readdirplus(_ ctx: RequestContext, inode: InodeNumber, file: OpenFile, reply: consuming DirectoryPlusReply)
}

/// df: without it libfuse answers an empty filesystem.
public protocol FilesystemUsage: FileSystemOperations {
    func statfs(_ ctx: RequestContext, inode: InodeNumber, reply: consuming StatfsReply)
}

public protocol ExtendedAttributes: FileSystemOperations {
    func setxattr(_ ctx: RequestContext, inode: InodeNumber, name: String, value: [UInt8], flags: Int32, reply: consuming StatusReply)
    func getxattr(_ ctx: RequestContext, inode: InodeNumber, name: String, reply: consuming XattrReply)
    func listxattr(_ ctx: RequestContext, inode: InodeNumber, reply: consuming XattrReply)
    func removexattr(_ ctx: RequestContext, inode: InodeNumber, name: String, reply: consuming StatusReply)
}

/// fallocate(2), hole punching included.
public protocol SpaceAllocation: FileSystemOperations {
    func fallocate(_ ctx: RequestContext, inode: InodeNumber, mode: Int32, offset: Int64, length: Int64, file: OpenFile, reply: consuming StatusReply)
}
