import FBMMCore
import FUSEKit
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// The entries each open directory handle lists. A listing is taken once,
/// when the handle reads from offset 0 (its first readdir, or after
/// rewinddir), and every later readdir of that handle continues in it: an
/// offset is an index into an array that does not change, so entries created
/// or removed meanwhile are neither skipped nor repeated (POSIX leaves them
/// to either side of the listing), and a readdir costs what it returns, not
/// a walk and sort of the whole directory (listing 100,000 files used to be
/// O(n^2 log n)). Kept apart from the namespace lock: a listing in progress
/// holds no lock between requests.
final class DirectoryListings: Sendable {
    private struct State {
        var listings: [UInt64: [DirectoryEntry]] = [:]
        var nextHandle: UInt64 = 1
    }
    private let state = Locked(State())

    /// A new handle, with no listing yet.
    func open() -> UInt64 {
        state.withLock { s in
            let handle = s.nextHandle
            s.nextHandle += 1
            s.listings[handle] = []
            return handle
        }
    }

    func listing(_ handle: UInt64) -> [DirectoryEntry]? {
        state.withLock { $0.listings[handle] }
    }

    func store(_ handle: UInt64, _ entries: [DirectoryEntry]) {
        state.withLock { s in
            if s.listings[handle] != nil { s.listings[handle] = entries }
        }
    }

    func close(_ handle: UInt64) {
        _ = state.withLock { $0.listings.removeValue(forKey: handle) }
    }
}

extension MemoryFileSystem {
    public func opendir(_ ctx: RequestContext, inode: InodeNumber, flags: Int32, reply: consuming OpenReply) {
        let isDir = state.withLock { ns in ns.inodes[inode]?.isDirectory }
        switch isDir {
        case true?: reply.opened(handle: listings.open(), directIO: false)
        case false?: reply.error(.notDirectory)
        case nil: reply.error(.noSuchFileOrDirectory)
        }
    }

    /// The handle's listing: taken now at offset 0 (or for a handle without
    /// one), else the one its earlier requests read.
    private func listing(_ handle: UInt64, inode: InodeNumber, offset: Int) -> Result<[DirectoryEntry], Errno> {
        if offset != 0, let entries = listings.listing(handle), !entries.isEmpty { return .success(entries) }
        let taken = transact { (ns) throws(Errno) -> [DirectoryEntry] in try Self.entries(of: inode, in: ns) }
            .map { entries in Self.newestFirst(entries) }
        if case .success(let entries) = taken { listings.store(handle, entries) }
        return taken
    }

    public func readdir(_ ctx: RequestContext, inode: InodeNumber, file: OpenFile, reply: consuming DirectoryReply) {
        switch listing(file.handle, inode: inode, offset: reply.offset) {
        case .success(let entries): reply.entries(entries)
        case .failure(let errno): reply.error(errno)
        }
    }

    public func releasedir(_ ctx: RequestContext, inode: InodeNumber, file: OpenFile, reply: consuming StatusReply) {
        listings.close(file.handle)
        reply.ok()
    }

    /// ".", ".." and the children, in the children table's order (a hash
    /// order; `newestFirst` orders them). Called with the lock held.
    static func entries(of inode: InodeNumber, in ns: borrowing Namespace) throws(Errno) -> [DirectoryEntry] {
        let dir = try ns.directory(inode)
        var entries = [DirectoryEntry(name: ".", inode: inode, mode: S_IFDIR),
                       DirectoryEntry(name: "..", inode: dir.parent, mode: S_IFDIR)]
        entries.reserveCapacity(dir.children.count + 2)
        for (name, child) in dir.children {
            entries.append(DirectoryEntry(name: name, inode: child, mode: ns.inodes[child]?.mode ?? 0))
        }
        return entries
    }

    /// The children newest first, as tmpfs lists them (inode numbers only
    /// grow, and a rename keeps its inode), sorted outside the lock. Not for
    /// looks: a listing in hash order made `ls` of 100,000 files spend 2.5x
    /// longer in its own sort than on tmpfs's order (its merge sort runs on
    /// the sorted runs that creation order leaves; a random order has none).
    static func newestFirst(_ entries: [DirectoryEntry]) -> [DirectoryEntry] {
        guard entries.count > 3 else { return entries }
        var sorted = entries
        sorted[2...].sort { $0.inode > $1.inode }
        return sorted
    }
}

/// `ls -l` in one round trip per page of entries instead of two per entry
/// (FUSE_READDIRPLUS): the same listing as readdir, each entry with its
/// attributes as they are now. An entry removed since the listing was taken
/// is left out (its offset still counts), and every entry sent but "." and
/// ".." is a lookup the kernel will forget.
extension MemoryFileSystem: DirectoryPlusListing {
    public func readdirplus(_ ctx: RequestContext, inode: InodeNumber, file: OpenFile, reply: consuming DirectoryPlusReply) {
        let entries: [DirectoryEntry]
        switch listing(file.handle, inode: inode, offset: reply.offset) {
        case .success(let listed): entries = listed
        case .failure(let errno): reply.error(errno); return
        }
        var start = max(0, reply.offset)
        while start < entries.count {
            // What fits, measured outside the lock.
            var end = start, used = 0
            while end < entries.count {
                let size = reply.encodedSize(of: entries[end].name)
                if used + size > reply.size { break }
                used += size
                end += 1
            }
            if end == start { break }  // not even one fits: answer empty
            let batch = state.withLock { ns -> [DirectoryPlusEntry] in
                var out: [DirectoryPlusEntry] = []
                out.reserveCapacity(end - start)
                for index in start..<end {
                    let listed = entries[index]
                    guard let record = ns.inodes[listed.inode] else { continue }  // gone since the listing
                    let dot = listed.name == "." || listed.name == ".."
                    if !dot { record.lookups += 1 }
                    out.append(DirectoryPlusEntry(name: listed.name, entry: entry(record), nextOffset: index + 1))
                }
                return out
            }
            // A page of entries all gone is not the end of the directory.
            if !batch.isEmpty { reply.entries(batch); return }
            start = end
        }
        reply.entries([])
    }
}

