import CFBMMSys
import CNuma

#if canImport(Glibc)
import Glibc
#endif

/// A window of a `MemoryFile` mapped shared into this (the daemon's) process.
///
/// Why the daemon maps files at all: a shmem file's placement policy is set
/// with mbind on *some* mapping of it, and move_pages works on the caller's own
/// page tables. Windows are short-lived (map, act, unmap): the policy lives in
/// the file, not in the window, so nothing is lost when it goes away, and the
/// daemon's address space stays small however many files there are.
public final class FileMapping {
    public let base: UnsafeMutableRawPointer
    public let range: Range<UInt64>
    private let context: String

    init(file: MemoryFile, range: Range<UInt64>) throws(SystemError) {
        precondition(range.lowerBound % UInt64(pageSize) == 0, "mapping offset must be page aligned")
        let length = Int(range.count)
        self.context = "memfd '\(file.name)' [\(range.lowerBound), \(range.upperBound))"
        guard length > 0 else { throw SystemError("mmap", context, errno: .invalidArgument) }
        let address = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE,
                           file.descriptor.rawValue, off_t(range.lowerBound))
        guard let address, address != MAP_FAILED else { throw SystemError.current("mmap", context) }
        self.base = address
        self.range = range
    }

    deinit { munmap(base, Int(range.count)) }

    private func pointer(_ offset: UInt64) -> UnsafeMutableRawPointer {
        precondition(range.contains(offset) || offset == range.upperBound)
        return base + Int(offset - range.lowerBound)
    }

    /// Sets the shared memory policy of file range `sub` (file offsets).
    public func bind(_ sub: Range<UInt64>, policy: MemoryPolicy, flags: UInt32 = 0) throws(SystemError) {
        guard !sub.isEmpty else { return }
        var mask = policy.nodeMask
        let maxNode = UInt(mask.count * UInt.bitWidth + 1)
        let start = pointer(sub.lowerBound)
        let what = "\(context) \(policy)"
        _ = try mask.withUnsafeMutableBufferPointer { (buffer) throws(SystemError) -> Int in
            try retryingSyscall("mbind", what) {
                Int(CNuma.mbind(start, UInt(sub.count), policy.mode.rawValue,
                                buffer.isEmpty ? nil : buffer.baseAddress, buffer.isEmpty ? 0 : maxNode, flags))
            }
        }
    }

    /// Marks the window MADV_HUGEPAGE (or MADV_NOHUGEPAGE): pages it faults in
    /// are transparent huge pages where the kernel's shmem setting allows.
    public func adviseHugePages(_ on: Bool) throws(SystemError) {
        _ = try retryingSyscall(on ? "madvise(MADV_HUGEPAGE)" : "madvise(MADV_NOHUGEPAGE)", context) {
            madvise(base, Int(range.count), on ? MADV_HUGEPAGE : MADV_NOHUGEPAGE)
        }
    }

    /// Points this window's page tables at the file's pages in `sub` that
    /// exist right now, and returns their runs. Only present pages: looking
    /// (move_pages works on what the window maps) must neither allocate nor
    /// fill again what a program punched since its data range was found.
    public func mapPresent(_ sub: Range<UInt64>) throws(SystemError) -> [Range<UInt64>] {
        let runs = try presentRuns(sub)
        for run in runs { try populateRead(run) }
        return runs
    }

    /// The runs of `sub` whose pages exist in the file right now (mincore: no
    /// fault, no allocation).
    private func presentRuns(_ sub: Range<UInt64>) throws(SystemError) -> [Range<UInt64>] {
        guard !sub.isEmpty else { return [] }
        let page = UInt64(pageSize)
        var vector = [UInt8](repeating: 0, count: Int((UInt64(sub.count) + page - 1) / page))
        _ = try retryingSyscall("mincore", context) { mincore(pointer(sub.lowerBound), Int(sub.count), &vector) }
        var runs: [Range<UInt64>] = []
        var start: UInt64?
        for (index, flag) in vector.enumerated() {
            let offset = sub.lowerBound + UInt64(index) * page
            if flag & 1 != 0 { if start == nil { start = offset } } else if let s = start { runs.append(s..<offset); start = nil }
        }
        if let s = start { runs.append(s..<sub.upperBound) }
        return runs
    }

    /// Makes this window's page tables point at the file's existing pages in
    /// `sub`, without allocating (`mapPresent` passes present runs only).
    private func populateRead(_ sub: Range<UInt64>) throws(SystemError) {
        guard !sub.isEmpty else { return }
        _ = try retryingSyscall("madvise(MADV_POPULATE_READ)", context) {
            madvise(pointer(sub.lowerBound), Int(sub.count), fbmm_madv_populate_read())
        }
    }

    /// The node of each page in `sub`, or a negative errno for a page not present.
    public func nodesOfPages(_ sub: Range<UInt64>) throws(SystemError) -> [Int32] {
        try movePages(sub, to: nil)
    }

    /// Moves the pages of `sub` to `node` (MPOL_MF_MOVE_ALL: also pages that other
    /// processes map). Returns the per-page status (node or negative errno).
    public func migrate(_ sub: Range<UInt64>, to node: Int32) throws(SystemError) -> [Int32] {
        try movePages(sub, to: node)
    }

    private func movePages(_ sub: Range<UInt64>, to node: Int32?) throws(SystemError) -> [Int32] {
        let page = UInt64(pageSize)
        let first = sub.lowerBound / page * page
        let count = Int((sub.upperBound - first + page - 1) / page)
        var status = [Int32](repeating: 0, count: count)
        guard count > 0 else { return status }
        let batch = 16384
        var index = 0
        while index < count {
            let n = min(batch, count - index)
            var pages = (0..<n).map { Optional(UnsafeMutableRawPointer(pointer(first + UInt64(index + $0) * page))) }
            var targets = [Int32](repeating: node ?? 0, count: n)
            var partial = [Int32](repeating: 0, count: n)
            let flags: Int32 = node == nil ? 0 : MPOL_MF_MOVE_ALL
            let result = pages.withUnsafeMutableBufferPointer { pagesBuffer in
                targets.withUnsafeMutableBufferPointer { targetBuffer in
                    partial.withUnsafeMutableBufferPointer { statusBuffer in
                        CNuma.move_pages(0, UInt(n), pagesBuffer.baseAddress,
                                         node == nil ? nil : targetBuffer.baseAddress,
                                         statusBuffer.baseAddress, flags)
                    }
                }
            }
            if result < 0 { throw SystemError.current(node == nil ? "move_pages(query)" : "move_pages(to node \(node!))", context) }
            status.replaceSubrange(index..<(index + n), with: partial)
            index += n
        }
        return status
    }
}
