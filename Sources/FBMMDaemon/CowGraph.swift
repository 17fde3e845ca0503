import CFBMMSys
import FBMMCore
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

// The copy-on-write graph's nodes (CopyOnWrite.swift walks them): a memfd's
// identity as /proc/PID/maps names it, a file with the pages it has and the
// lazy copies that still need its pages, a process whose faults arrive on a
// userfaultfd, and the graph that holds them under one lock.

/// A memfd as /proc/PID/maps names it.
struct MemfdIdentity: Hashable {
    var device: UInt64
    var inode: UInt64
    init(device: UInt64, inode: UInt64) { self.device = device; self.inode = inode }
    init(_ vma: fbmm_vma) {
        device = vma.dev
        inode = vma.inode
    }
}

/// An arena taking part in copy-on-write. Only touched under the graph lock.
final class CowFile {
    let inode: UInt64
    let backing: FileBacking
    let identity: MemfdIdentity
    /// The file this one is a lazy copy of, and what it no longer needs from
    /// it: one bit per page, set when the page is this file's own.
    var source: CowFile?
    var has: [UInt64] = []
    var pages: UInt64 = 0
    var dependents: [CowFile] = []
    var process: CowProcess?
    /// Address ranges write-protected at its forks (a set: a process that
    /// forks often while a child lives protects the same mappings again).
    var protected: Set<Range<UInt64>> = []
    var released = false

    init(inode: UInt64, backing: FileBacking, identity: MemfdIdentity) {
        self.inode = inode
        self.backing = backing
        self.identity = identity
    }

    func hasPage(_ p: UInt64) -> Bool {
        p >= pages || has[Int(p / 64)] & (1 << (p % 64)) != 0
    }

    func mark(_ range: Range<UInt64>) { setBits(range, to: true) }

    func need(_ bytes: Range<UInt64>) {
        let page = UInt64(pageSize)
        setBits(bytes.lowerBound / page..<(bytes.upperBound + page - 1) / page, to: false)
    }

    /// Sets or clears the bits of `range` (clamped to `pages`) a word at a time.
    private func setBits(_ range: Range<UInt64>, to value: Bool) {
        var p = range.lowerBound
        let end = min(range.upperBound, pages)
        while p < end {
            let bit = p % 64
            let count = min(64 - bit, end - p)
            let mask: UInt64 = count == 64 ? ~0 : ((1 << count) - 1) << bit
            if value { has[Int(p / 64)] |= mask } else { has[Int(p / 64)] &= ~mask }
            p += count
        }
    }
}

/// The process behind an arena: its userfaultfd and its maps (to turn
/// fault addresses into file offsets).
final class CowProcess {
    let pid: Int32
    let uffd: Int32
    let maps: Int32
    let key: UInt64

    init?(pid: Int32, uffd: Int32, key: UInt64) {
        let maps = open("/proc/\(pid)/maps", O_RDONLY | O_CLOEXEC)
        guard maps >= 0 else { return nil }
        self.pid = pid
        self.uffd = uffd
        self.maps = maps
        self.key = key
    }

    deinit {
        close(uffd)
        close(maps)
    }

    /// Every shared mapping of the memfd `identity` in the process.
    func mappings(of identity: MemfdIdentity) -> [fbmm_vma] {
        var found: [fbmm_vma] = []
        var address: UInt64 = 0
        var vma = fbmm_vma()
        while fbmm_vma_query(maps, address, 1, &vma) == 0 {
            if vma.shared != 0 && MemfdIdentity(vma) == identity { found.append(vma) }
            guard vma.end > address else { break }
            address = vma.end
        }
        return found
    }
}

struct CowGraph {
    /// Live arenas by FUSE inode, and by memfd (what a fault's mapping names).
    var files: [UInt64: CowFile] = [:]
    var byMemfd: [MemfdIdentity: CowFile] = [:]
    /// Epoll keys of processes' userfaultfds.
    var processes: [UInt64: CowFile] = [:]
    var nextKey: UInt64 = 1

    mutating func file(_ ref: FileRef, identity: MemfdIdentity) -> CowFile {
        if let f = files[ref.inode], f.backing === ref.backing { return f }
        let f = CowFile(inode: ref.inode, backing: ref.backing, identity: identity)
        files[ref.inode] = f
        byMemfd[identity] = f
        return f
    }
}
