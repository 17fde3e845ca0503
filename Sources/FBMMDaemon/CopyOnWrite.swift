import CFBMMSys
import FBMMCore
import Logging
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Copy-on-write across fork for the shim's arenas.
///
/// Why: the kernel gives a fork child a shared mapping of the parent's
/// arena, which private memory must not be; copying the whole arena before
/// fork returns costs time and memory proportional to the resident set. So
/// a child gets a new arena that starts empty and is a *lazy copy* of its
/// parent's: a page it lacks reads as the parent's arena did at fork.
///
/// The invariant, for every lazy copy D of a file F and every page p D
/// needs: either D has p (filled, pushed, or freed by D), or F's view of p
/// (F's page if F has it, else F's own source's view, recursively) is
/// still what it was at D's fork. Two kinds of faults keep it, both
/// reported by userfaultfd to `serve()`:
///  - write-protect: F's process is about to write pages some lazy copy
///    still needs; they are pushed into those copies first (pwrite into
///    their memfds), then the write goes ahead;
///  - missing page: D's process touched a page its arena lacks; it is
///    filled (UFFDIO_COPY) from the source's view.
/// Freeing memory (hole punch, the pool) changes F without a fault, so the
/// shim asks first (`release`). A file with no lazy copies left is
/// unprotected in one call per mapping.
///
/// Faults carry an address; `FBMM_OP_COW_*` and the fault thread turn it
/// into (file, offset) with PROCMAP_QUERY on the process's maps, so mremap
/// and munmap in between cannot mislead it. Pages are copied `chunk`
/// bytes at a time (aligned): one fault round trip costs tens of
/// microseconds, a page copy well under one.
final class CopyOnWrite: Sendable {
    /// Bytes copied per fault (a power of two, at least a page).
    let chunk: UInt64
    /// The largest arena copied lazily (1 TiB of 4K pages: a 32 MiB bitmap);
    /// larger ones fork eagerly.
    static let maxPages: UInt64 = 1 << 28
    private let graph = Locked<CowGraph>(CowGraph())
    private let epoll: Int32
    private let logger: Logger
    /// Why the kernel cannot do this (nil: it can).
    let unavailable: String?

    init(chunk: UInt64, logger: Logger) {
        self.chunk = max(UInt64(pageSize), chunk)
        self.logger = logger
        epoll = fbmm_epoll_create()
        unavailable = chunk == 0 ? "cow-chunk=0" : Self.probe()
        if unavailable == nil && epoll >= 0 { startThread { [self] in serve() } }
    }

    /// PROCMAP_QUERY is 6.11's; userfaultfd write-protect on shmem is 5.19's
    /// (the shim's UFFDIO_API asks for it and fails over on its own).
    private static func probe() -> String? {
        let maps = open("/proc/self/maps", O_RDONLY | O_CLOEXEC)
        guard maps >= 0 else { return "cannot open /proc/self/maps" }
        defer { close(maps) }
        var vma = fbmm_vma()
        let probe = UInt64(UInt(bitPattern: #dsohandle))
        if fbmm_vma_query(maps, probe, 0, &vma) < 0 && errno == ENOTTY {
            return "the kernel has no PROCMAP_QUERY (6.11)"
        }
        return nil
    }

    // MARK: Requests (broker threads)

    /// The parent's prepare: `child` becomes a lazy copy of `parent`, whose
    /// mappings in process `pid` we register and write-protect through
    /// `uffd` (kept by us, or closed if we have one for that process
    /// already).
    func fork(parent: FileRef, child: FileRef, pid: Int32, uffd: Int32) -> Errno? {
        guard unavailable == nil else { close(uffd); return .notSupported }
        guard let parentIdentity = Self.memfdIdentity(parent.backing), let childIdentity = Self.memfdIdentity(child.backing),
              let size = try? parent.backing.memory.size() else {
            close(uffd)
            return .badFileDescriptor
        }
        return graph.withLock { g -> Errno? in
            let p = g.file(parent, identity: parentIdentity)
            if p.process == nil {
                guard let process = CowProcess(pid: pid, uffd: uffd, key: g.nextKey) else { close(uffd); return .noSuchProcess }
                g.nextKey += 1
                guard fbmm_epoll_add(epoll, process.uffd, process.key) == 0 else { return Errno(rawValue: errno) }
                p.process = process
                g.processes[process.key] = p
            } else {
                close(uffd)
            }
            guard let process = p.process else { return .noSuchProcess }
            guard g.files[child.inode] == nil else { return .fileExists }
            // What the child needs: every page the parent maps from its arena now.
            let mappings = process.mappings(of: parentIdentity)
            // Pages past the parent's end hold nothing; the bitmap is bounded
            // (a peer's sparse terabytes must not become the daemon's memory).
            let pages = (size + UInt64(pageSize) - 1) / UInt64(pageSize)
            guard pages <= Self.maxPages else { return .fileTooLarge }
            // Armed before the fork itself: any write from now on faults. We
            // register the parent's mappings ourselves (the userfaultfd acts
            // on its creator's mm), so the parent holds no userfaultfd of its
            // own and never waits for a daemon that died. A mapping that
            // cannot be armed would let the parent's writes reach the child:
            // then nothing is armed and the fork copies eagerly.
            var armed: [Range<UInt64>] = []
            for m in mappings {
                guard fbmm_uffd_register_wp(process.uffd, m.start, m.end - m.start) == 0,
                      fbmm_uffd_writeprotect(process.uffd, m.start, m.end - m.start, 1) == 0 else {
                    let e = Errno(rawValue: errno)
                    if p.dependents.isEmpty {
                        for r in armed { fbmm_uffd_writeprotect(process.uffd, r.lowerBound, UInt64(r.count), 0) }
                    }
                    logger.notice("cow fork of inode \(parent.inode): cannot write-protect a mapping: \(e)")
                    return e
                }
                armed.append(m.start..<m.end)
            }
            p.protected.formUnion(armed)
            let c = g.file(child, identity: childIdentity)
            c.source = p
            c.pages = pages
            c.has = [UInt64](repeating: ~0, count: Int((c.pages + 63) / 64))
            for m in mappings { c.need(m.offset..<(m.offset + m.end - m.start)) }
            p.dependents.append(c)
            logger.debug("cow fork: inode \(child.inode) lazily copies \(parent.inode) (\(mappings.count) mappings)")
            return nil
        }
    }

    /// The child is up: its missing-page faults come through `uffd` now.
    func child(_ file: FileRef, pid: Int32, uffd: Int32) -> Errno? {
        graph.withLock { g -> Errno? in
            guard let c = g.files[file.inode], c.backing === file.backing, c.source != nil, c.process == nil else {
                close(uffd)
                return .invalidArgument
            }
            guard let process = CowProcess(pid: pid, uffd: uffd, key: g.nextKey) else { close(uffd); return .noSuchProcess }
            g.nextKey += 1
            guard fbmm_epoll_add(epoll, process.uffd, process.key) == 0 else { return Errno(rawValue: errno) }
            c.process = process
            g.processes[process.key] = c
            return nil
        }
    }

    /// The file's owner is about to free `range`: lazy copies that still need
    /// it get it now, and the file stops needing its source there. Returns
    /// whether the file is still linked to a source or to lazy copies.
    func release(_ file: FileRef, range: Range<UInt64>) -> Bool {
        graph.withLock { g -> Bool in
            guard let f = g.files[file.inode], f.backing === file.backing else { return false }
            // Only what the file has: a range past its end needs nothing.
            let end = min(range.upperBound, (try? f.backing.memory.size()) ?? 0)
            let pages = pageRange(min(range.lowerBound, end)..<end)
            push(f, pages: pages)
            if f.source != nil { f.mark(pages) }
            return f.source != nil || !f.dependents.isEmpty
        }
    }

    /// Makes `range` of the file its own (nil: all of it): lazy copies get
    /// what they still need of it, and what the file still reads from its
    /// source is copied in. For a child that cannot handle faults, and for a
    /// mapping about to move (mremap), which leaves the userfaultfd.
    func fill(_ file: FileRef, range: Range<UInt64>?) -> Errno? {
        graph.withLock { g -> Errno? in
            guard let f = g.files[file.inode], f.backing === file.backing else { return nil }
            let end = (try? f.backing.memory.size()) ?? 0
            let pages = range.map { pageRange(min($0.lowerBound, end)..<min($0.upperBound, end)) }
                ?? 0..<(end + UInt64(pageSize) - 1) / UInt64(pageSize)
            push(f, pages: pages)
            guard let source = f.source else { return nil }
            var buffer = [UInt8](repeating: 0, count: pageSize)
            for page in pages.clamped(to: 0..<f.pages) where !f.hasPage(page) {
                guard copyPage(resolve(source, page), page, into: f, buffer: &buffer) else { return .ioError }
            }
            f.mark(pages)
            return nil
        }
    }

    /// The arena's last handle closed (its process exited or exec'd): it
    /// takes no more faults; what lazy copies still need of it stays.
    func released(_ inode: UInt64) {
        graph.withLock { g in
            guard let f = g.files.removeValue(forKey: inode) else { return }
            g.byMemfd[f.identity] = nil
            f.released = true
            if let process = f.process {
                g.processes[process.key] = nil
                fbmm_epoll_del(epoll, process.uffd)
                f.process = nil
            }
            collect(f)
        }
    }

    // MARK: Faults (one thread)

    private func serve() {
        var keys = [UInt64](repeating: 0, count: 64)
        var faults = [fbmm_fault](repeating: fbmm_fault(), count: 64)
        while true {
            let n = fbmm_epoll_wait(epoll, &keys, Int32(keys.count), 1000)
            if n < 0 { if errno != EINTR { usleep(10_000) }; continue }
            for key in keys.prefix(Int(n)) {
                graph.withLock { g in
                    guard let file = g.processes[key], let process = file.process else { return }
                    let count = fbmm_uffd_read(process.uffd, &faults, Int32(faults.count))
                    for fault in faults.prefix(Int(max(count, 0))) { handle(fault, process, &g) }
                }
            }
        }
    }

    private func handle(_ fault: fbmm_fault, _ process: CowProcess, _ g: inout CowGraph) {
        let page = UInt64(pageSize)
        let address = fault.address & ~(page - 1)
        var vma = fbmm_vma()
        guard fbmm_vma_query(process.maps, address, 0, &vma) == 0, let f = g.byMemfd[MemfdIdentity(vma)] else {
            // Unmapped or remapped meanwhile: let the access retry.
            if fault.wp != 0 { fbmm_uffd_writeprotect(process.uffd, address, page, 0) }
            else { fbmm_uffd_wake(process.uffd, address, page) }
            return
        }
        let fileEnd = (try? f.backing.memory.size()) ?? 0
        var start = max(vma.start, address & ~(chunk - 1))
        var end = min(vma.end, (address & ~(chunk - 1)) + chunk)
        let offsetOf = { (a: UInt64) in vma.offset + (a - vma.start) }
        if offsetOf(end) > fileEnd { end = max(address + page, vma.start + (fileEnd > vma.offset ? fileEnd - vma.offset : 0)) }
        if offsetOf(start) >= fileEnd { start = address; end = address + page }
        let pages = offsetOf(start) / page..<offsetOf(end) / page
        push(f, pages: pages)
        if fault.wp != 0 {
            if fbmm_uffd_writeprotect(process.uffd, start, end - start, 0) < 0 {
                fbmm_uffd_writeprotect(process.uffd, address, page, 0)
            }
            return
        }
        // A missing page of a lazy copy (or one it freed: zero).
        var buffer = [UInt8](repeating: 0, count: Int(end - start))
        for (index, p) in pages.enumerated() {
            let at = index * pageSize
            if let source = f.source, !f.hasPage(p) {
                let from = resolve(source, p)
                buffer.withUnsafeMutableBytes { raw in
                    _ = readPage(from, p, into: raw.baseAddress! + at)
                }
            }
        }
        var copied: UInt64 = 0
        let ok = buffer.withUnsafeBytes { raw in fbmm_uffd_copy(process.uffd, start, raw.baseAddress, end - start, &copied) == 0 }
        if !ok {
            // Some page is there already (pushed meanwhile): page by page.
            for (index, _) in pages.enumerated() where UInt64(index) * page >= copied {
                let dst = start + UInt64(index) * page
                _ = buffer.withUnsafeBytes { raw in
                    fbmm_uffd_copy(process.uffd, dst, raw.baseAddress! + index * pageSize, page, &copied)
                }
            }
            fbmm_uffd_wake(process.uffd, address, page)
        }
        f.mark(pages)
    }

    // MARK: The graph

    /// Gives every lazy copy of `f` that still needs pages in `pages` its
    /// own copy of them (f's view), before f changes.
    private func push(_ f: CowFile, pages: Range<UInt64>) {
        guard !f.dependents.isEmpty else { return }
        var buffer = [UInt8](repeating: 0, count: pageSize)
        for d in f.dependents {
            for p in pages.clamped(to: 0..<d.pages) where !d.hasPage(p) {
                if copyPage(resolve(f, p), p, into: d, buffer: &buffer) { d.mark(p..<(p + 1)) }
            }
        }
    }

    /// The file whose page `page` is what `f` reads there.
    private func resolve(_ f: CowFile, _ page: UInt64) -> CowFile {
        var node = f
        while let source = node.source, !node.hasPage(page) { node = source }
        return node
    }

    private func readPage(_ from: CowFile, _ page: UInt64, into: UnsafeMutableRawPointer) -> Bool {
        // A file that never had memory is all holes: zero.
        guard let fd = from.backing.existing?.descriptor.rawValue else { return true }
        var done = 0
        while done < pageSize {
            let n = pread(fd, into + done, pageSize - done,
                          off_t(page) * off_t(pageSize) + off_t(done))
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }  // past the end: zero
            done += n
        }
        return true
    }

    private func copyPage(_ from: CowFile, _ page: UInt64, into: CowFile, buffer: inout [UInt8]) -> Bool {
        buffer.withUnsafeMutableBytes { raw in
            raw.initializeMemory(as: UInt8.self, repeating: 0)
            _ = readPage(from, page, into: raw.baseAddress!)
            // A zero page (a hole, mostly) stays a hole in the copy: the copy
            // lacks nothing there, and its missing-page fault reads zero.
            if raw.withMemoryRebound(to: UInt64.self, { $0.allSatisfy { $0 == 0 } }) { return true }
            guard let fd = (try? into.backing.memory)?.descriptor.rawValue else { return false }
            var done = 0
            while done < pageSize {
                let n = pwrite(fd, raw.baseAddress! + done, pageSize - done,
                               off_t(page) * off_t(pageSize) + off_t(done))
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { return false }
                done += n
            }
            return true
        }
    }

    /// Drops what nobody needs any more: a released file without lazy
    /// copies leaves its source, which may then go too; a file left with
    /// no lazy copies is unprotected.
    private func collect(_ f: CowFile) {
        var node: CowFile? = f
        while let n = node {
            if n.dependents.isEmpty {
                if let process = n.process {
                    for r in n.protected { fbmm_uffd_writeprotect(process.uffd, r.lowerBound, UInt64(r.count), 0) }
                }
                n.protected = []
            }
            guard n.released, n.dependents.isEmpty, let source = n.source else { return }
            source.dependents.removeAll { $0 === n }
            n.source = nil
            n.has = []
            node = source
        }
    }

    private func pageRange(_ range: Range<UInt64>) -> Range<UInt64> {
        let page = UInt64(pageSize)
        return range.lowerBound / page..<(range.upperBound + page - 1) / page
    }

    static func memfdIdentity(_ backing: FileBacking) -> MemfdIdentity? {
        var st = stat()
        guard let memory = try? backing.memory, fstat(memory.descriptor.rawValue, &st) == 0 else { return nil }
        return MemfdIdentity(device: UInt64(st.st_dev), inode: UInt64(st.st_ino))
    }
}
