import CFuse3

#if canImport(Glibc)
import Glibc
#endif

/// A FUSE inode number (1 is the root).
public typealias InodeNumber = UInt64

/// Who is asking: the credentials the kernel attached to the request.
public struct RequestContext: Sendable, Hashable {
    public var uid: UInt32
    public var gid: UInt32
    public var pid: Int32
    public var umask: UInt32

    init(_ req: fuse_req_t) {
        let ctx = fuse_req_ctx(req)!.pointee
        uid = ctx.uid
        gid = ctx.gid
        pid = ctx.pid
        umask = ctx.umask
    }

    public init(uid: UInt32, gid: UInt32, pid: Int32, umask: UInt32 = 0o022) {
        self.uid = uid
        self.gid = gid
        self.pid = pid
        self.umask = umask
    }
}

/// An open file or directory handle, as `open`/`create`/`opendir` returned it.
public struct OpenFile: Sendable, Hashable {
    /// The handle the filesystem chose (`fuse_file_info.fh`).
    public var handle: UInt64
    /// The open(2) flags.
    public var flags: Int32

    init(_ fi: UnsafeMutablePointer<fuse_file_info>?) {
        handle = fi?.pointee.fh ?? 0
        flags = fi?.pointee.flags ?? 0
    }

    public init(handle: UInt64, flags: Int32) {
        self.handle = handle
        self.flags = flags
    }
}

/// What `setattr` asks to change; nil fields are left alone.
public struct SetAttributes: Sendable, Hashable {
    public enum Time: Sendable, Hashable {
        case now
        case at(timespec)
        public static func == (a: Time, b: Time) -> Bool {
            switch (a, b) {
            case (.now, .now): return true
            case let (.at(x), .at(y)): return x.tv_sec == y.tv_sec && x.tv_nsec == y.tv_nsec
            default: return false
            }
        }
        public func hash(into hasher: inout Hasher) {
            if case let .at(t) = self { hasher.combine(t.tv_sec); hasher.combine(t.tv_nsec) }
        }
    }

    public var mode: UInt32?
    public var uid: UInt32?
    public var gid: UInt32?
    public var size: UInt64?
    public var accessTime: Time?
    public var modificationTime: Time?

    public init() {}

    init(_ attr: stat, toSet: Int32) {
        if toSet & FUSE_SET_ATTR_MODE != 0 { mode = attr.st_mode }
        if toSet & FUSE_SET_ATTR_UID != 0 { uid = attr.st_uid }
        if toSet & FUSE_SET_ATTR_GID != 0 { gid = attr.st_gid }
        if toSet & FUSE_SET_ATTR_SIZE != 0 { size = UInt64(attr.st_size) }
        if toSet & FUSE_SET_ATTR_ATIME_NOW != 0 { accessTime = .now }
        else if toSet & FUSE_SET_ATTR_ATIME != 0 { accessTime = .at(attr.st_atim) }
        if toSet & FUSE_SET_ATTR_MTIME_NOW != 0 { modificationTime = .now }
        else if toSet & FUSE_SET_ATTR_MTIME != 0 { modificationTime = .at(attr.st_mtim) }
    }
}

/// Filesystem totals for statfs(2) / df(1).
public struct FilesystemStatistics: Sendable, Hashable {
    public var blockSize: UInt64
    public var totalBlocks: UInt64
    public var freeBlocks: UInt64
    public var availableBlocks: UInt64
    public var totalFiles: UInt64
    public var freeFiles: UInt64
    public var nameMax: UInt64

    public init(blockSize: UInt64, totalBlocks: UInt64, freeBlocks: UInt64, availableBlocks: UInt64,
                totalFiles: UInt64, freeFiles: UInt64, nameMax: UInt64 = 255) {
        self.blockSize = blockSize
        self.totalBlocks = totalBlocks
        self.freeBlocks = freeBlocks
        self.availableBlocks = availableBlocks
        self.totalFiles = totalFiles
        self.freeFiles = freeFiles
        self.nameMax = nameMax
    }
}

/// A directory entry for `readdir`.
public struct DirectoryEntry: Sendable, Hashable {
    public var name: FileName
    public var inode: InodeNumber
    public var mode: UInt32
    public init(name: FileName, inode: InodeNumber, mode: UInt32) {
        self.name = name
        self.inode = inode
        self.mode = mode
    }
}

/// The answer to a lookup/create/mkdir/mknod: the inode and its attributes.
public struct Entry: Sendable {
    public var inode: InodeNumber
    public var attributes: stat
    public var timeout: Double
    public init(inode: InodeNumber, attributes: stat, timeout: Double = 1.0) {
        self.inode = inode
        self.attributes = attributes
        self.timeout = timeout
    }
}

/// A directory entry name exactly as the kernel gave it: Linux names are
/// bytes (anything but '/' and NUL), not necessarily UTF-8, so they are kept
/// as bytes and only rendered as text for display.
public struct FileName: Hashable, Sendable, Comparable, CustomStringConvertible, ExpressibleByStringLiteral {
    public let bytes: [UInt8]

    public init(bytes: [UInt8]) { self.bytes = bytes }
    public init(_ text: String) { self.bytes = Array(text.utf8) }
    public init(stringLiteral value: String) { self.init(value) }

    init(cString: UnsafePointer<CChar>?) {
        guard let cString else { self.bytes = []; return }
        self.bytes = Array(UnsafeBufferPointer(start: UnsafeRawPointer(cString).assumingMemoryBound(to: UInt8.self),
                                               count: strlen(cString)))
    }

    /// For display (invalid UTF-8 shows as U+FFFD).
    public var description: String { String(decoding: bytes, as: UTF8.self) }

    public static func < (a: FileName, b: FileName) -> Bool { a.bytes.lexicographicallyPrecedes(b.bytes) }

    /// The name NUL-terminated, for C calls.
    func withCString<R>(_ body: (UnsafePointer<CChar>) -> R) -> R {
        (bytes + [0]).withUnsafeBufferPointer { buffer in
            buffer.withMemoryRebound(to: CChar.self) { body($0.baseAddress!) }
        }
    }
}
