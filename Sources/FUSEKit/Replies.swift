import CFuse3
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

// Every FUSE request must be answered exactly once: answering twice corrupts
// libfuse's request bookkeeping, and never answering leaves the calling
// process blocked forever. Each operation therefore receives a non-copyable
// reply value whose answering methods are `consuming`: the compiler rejects a
// second answer, and a reply dropped without answering answers EIO itself in
// `deinit` (the filesystem has a bug, but the caller is not left hanging).

/// Shared by every reply type: answer with an error.
@usableFromInline
func replyError(_ req: fuse_req_t, _ errno: Errno) {
    _ = fuse_reply_err(req, errno.rawValue)
}

/// The reply to requests answered with success or an errno only
/// (unlink, rmdir, rename, flush, release, fsync, setxattr, removexattr, fallocate).
public struct StatusReply: ~Copyable {
    let req: fuse_req_t
    init(_ req: fuse_req_t) { self.req = req }
    public consuming func ok() { _ = fuse_reply_err(req, 0); discard self }
    public consuming func error(_ errno: Errno) { replyError(req, errno); discard self }
    deinit { replyError(req, .ioError) }
}

public struct EntryReply: ~Copyable {
    let req: fuse_req_t
    init(_ req: fuse_req_t) { self.req = req }
    public consuming func entry(_ entry: Entry) {
        var param = fuse_entry_param()
        param.ino = entry.inode
        param.generation = 1
        param.attr = entry.attributes
        param.attr_timeout = entry.timeout
        param.entry_timeout = entry.timeout
        _ = fuse_reply_entry(req, &param)
        discard self
    }
    public consuming func error(_ errno: Errno) { replyError(req, errno); discard self }
    deinit { replyError(req, .ioError) }
}

public struct AttrReply: ~Copyable {
    let req: fuse_req_t
    init(_ req: fuse_req_t) { self.req = req }
    public consuming func attributes(_ attributes: stat, timeout: Double = 1.0) {
        var attr = attributes
        _ = fuse_reply_attr(req, &attr, timeout)
        discard self
    }
    public consuming func error(_ errno: Errno) { replyError(req, errno); discard self }
    deinit { replyError(req, .ioError) }
}

public struct OpenReply: ~Copyable {
    let req: fuse_req_t
    let fi: UnsafeMutablePointer<fuse_file_info>?
    init(_ req: fuse_req_t, _ fi: UnsafeMutablePointer<fuse_file_info>?) { self.req = req; self.fi = fi }
    /// `directIO`: bypass the kernel page cache so reads and writes always reach
    /// the backing memfd (which the shim also writes through its own mapping).
    public consuming func opened(handle: UInt64, directIO: Bool = true) {
        if let fi {
            fi.pointee.fh = handle
            fi.pointee.direct_io = directIO ? 1 : 0
        }
        _ = fuse_reply_open(req, fi)
        discard self
    }
    public consuming func error(_ errno: Errno) { replyError(req, errno); discard self }
    deinit { replyError(req, .ioError) }
}

public struct CreateReply: ~Copyable {
    let req: fuse_req_t
    let fi: UnsafeMutablePointer<fuse_file_info>?
    init(_ req: fuse_req_t, _ fi: UnsafeMutablePointer<fuse_file_info>?) { self.req = req; self.fi = fi }
    public consuming func created(_ entry: Entry, handle: UInt64, directIO: Bool = true) {
        var param = fuse_entry_param()
        param.ino = entry.inode
        param.generation = 1
        param.attr = entry.attributes
        param.attr_timeout = entry.timeout
        param.entry_timeout = entry.timeout
        if let fi {
            fi.pointee.fh = handle
            fi.pointee.direct_io = directIO ? 1 : 0
        }
        _ = fuse_reply_create(req, &param, fi)
        discard self
    }
    public consuming func error(_ errno: Errno) { replyError(req, errno); discard self }
    deinit { replyError(req, .ioError) }
}

/// Bytes: the reply to read and to getxattr/listxattr with a buffer.
public struct DataReply: ~Copyable {
    let req: fuse_req_t
    init(_ req: fuse_req_t) { self.req = req }
    public consuming func data(_ bytes: UnsafeRawBufferPointer) {
        _ = fuse_reply_buf(req, bytes.baseAddress?.assumingMemoryBound(to: CChar.self), bytes.count)
        discard self
    }
    public consuming func data(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { raw in
            _ = fuse_reply_buf(req, raw.baseAddress?.assumingMemoryBound(to: CChar.self), raw.count)
        }
        discard self
    }
    public consuming func error(_ errno: Errno) { replyError(req, errno); discard self }
    deinit { replyError(req, .ioError) }
}

public struct WriteReply: ~Copyable {
    let req: fuse_req_t
    init(_ req: fuse_req_t) { self.req = req }
    public consuming func written(_ count: Int) { _ = fuse_reply_write(req, count); discard self }
    public consuming func error(_ errno: Errno) { replyError(req, errno); discard self }
    deinit { replyError(req, .ioError) }
}

public struct StatfsReply: ~Copyable {
    let req: fuse_req_t
    init(_ req: fuse_req_t) { self.req = req }
    public consuming func statistics(_ s: FilesystemStatistics) {
        var st = statvfs()
        st.f_bsize = UInt(s.blockSize)
        st.f_frsize = UInt(s.blockSize)
        st.f_blocks = fsblkcnt_t(s.totalBlocks)
        st.f_bfree = fsblkcnt_t(s.freeBlocks)
        st.f_bavail = fsblkcnt_t(s.availableBlocks)
        st.f_files = fsfilcnt_t(s.totalFiles)
        st.f_ffree = fsfilcnt_t(s.freeFiles)
        st.f_favail = fsfilcnt_t(s.freeFiles)
        st.f_namemax = UInt(s.nameMax)
        _ = fuse_reply_statfs(req, &st)
        discard self
    }
    public consuming func error(_ errno: Errno) { replyError(req, errno); discard self }
    deinit { replyError(req, .ioError) }
}

/// getxattr/listxattr: with size 0 the caller asks for the length only.
public struct XattrReply: ~Copyable {
    let req: fuse_req_t
    /// The caller's buffer size; 0 means "how big is it?".
    public let size: Int
    init(_ req: fuse_req_t, size: Int) { self.req = req; self.size = size }
    /// Answers with `value`, or its length, or ERANGE, as `size` requires.
    public consuming func value(_ value: [UInt8]) {
        if size == 0 {
            _ = fuse_reply_xattr(req, value.count)
        } else if value.count > size {
            replyError(req, Errno(rawValue: ERANGE))
        } else {
            value.withUnsafeBytes { raw in
                _ = fuse_reply_buf(req, raw.baseAddress?.assumingMemoryBound(to: CChar.self), raw.count)
            }
        }
        discard self
    }
    public consuming func error(_ errno: Errno) { replyError(req, errno); discard self }
    deinit { replyError(req, .ioError) }
}

/// readdir: entries from `offset` on, packed into at most `size` bytes.
public struct DirectoryReply: ~Copyable {
    let req: fuse_req_t
    public let size: Int
    public let offset: Int
    init(_ req: fuse_req_t, size: Int, offset: Int) { self.req = req; self.size = size; self.offset = offset }

    /// Answers with `entries[offset...]`, as many as fit; the kernel asks again
    /// from the next offset.
    public consuming func entries(_ entries: [DirectoryEntry]) {
        var buffer = [CChar](repeating: 0, count: size)
        var used = 0
        var index = offset
        while index < entries.count {
            let entry = entries[index]
            var st = stat()
            st.st_ino = ino_t(entry.inode)
            st.st_mode = entry.mode
            let needed = buffer.withUnsafeMutableBufferPointer { raw in
                entry.name.withCString { name in
                    fuse_add_direntry(req, raw.baseAddress! + used, size - used, name, &st, off_t(index + 1))
                }
            }
            if needed > size - used { break }
            used += needed
            index += 1
        }
        _ = fuse_reply_buf(req, buffer, used)
        discard self
    }
    public consuming func error(_ errno: Errno) { replyError(req, errno); discard self }
    deinit { replyError(req, .ioError) }
}

/// readdirplus: entries with their attributes, from `offset` on, packed into
/// at most `size` bytes. The filesystem decides which entries go (each one
/// sent counts as a lookup), so it measures them first with `encodedSize`.
public struct DirectoryPlusReply: ~Copyable {
    let req: fuse_req_t
    public let size: Int
    public let offset: Int
    init(_ req: fuse_req_t, size: Int, offset: Int) { self.req = req; self.size = size; self.offset = offset }

    /// Bytes the entry named `name` takes in the reply.
    public func encodedSize(of name: FileName) -> Int {
        name.withCString { fuse_add_direntry_plus(req, nil, 0, $0, nil, 0) }
    }

    /// Answers with `entries` (each with the offset of the entry after it),
    /// which must fit in `size` (measured with `encodedSize`); an empty
    /// list is the end of the directory.
    public consuming func entries(_ entries: [DirectoryPlusEntry]) {
        var buffer = [CChar](repeating: 0, count: size)
        var used = 0
        for item in entries {
            var param = fuse_entry_param()
            param.ino = item.entry.inode
            param.generation = 1
            param.attr = item.entry.attributes
            param.attr_timeout = item.entry.timeout
            param.entry_timeout = item.entry.timeout
            let needed = buffer.withUnsafeMutableBufferPointer { raw in
                item.name.withCString { name in
                    fuse_add_direntry_plus(req, raw.baseAddress! + used, size - used, name, &param, off_t(item.nextOffset))
                }
            }
            if needed > size - used { break }
            used += needed
        }
        _ = fuse_reply_buf(req, buffer, used)
        discard self
    }
    public consuming func error(_ errno: Errno) { replyError(req, errno); discard self }
    deinit { replyError(req, .ioError) }
}

/// One entry of a readdirplus answer.
public struct DirectoryPlusEntry: Sendable {
    public var name: FileName
    public var entry: Entry
    /// The offset a later readdirplus passes to continue after this entry.
    public var nextOffset: Int
    public init(name: FileName, entry: Entry, nextOffset: Int) {
        self.name = name
        self.entry = entry
        self.nextOffset = nextOffset
    }
}
