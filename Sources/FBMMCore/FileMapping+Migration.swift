import CNuma

#if canImport(Glibc)
import Glibc
#endif

extension FileMapping {
    /// Moves the pages at file offsets `offsets` (page aligned, inside this
    /// window) to `node` with one move_pages call per batch (MPOL_MF_MOVE_ALL).
    /// Returns the per-page status (node, or a negative errno).
    public func migrate(pageOffsets offsets: [UInt64], to node: Int32) throws(SystemError) -> [Int32] {
        var status = [Int32](repeating: 0, count: offsets.count)
        let batch = 16384
        var index = 0
        while index < offsets.count {
            let n = min(batch, offsets.count - index)
            var pages: [UnsafeMutableRawPointer?] = (0..<n).map { k in
                let offset = offsets[index + k]
                precondition(range.contains(offset), "page outside the window")
                return base + Int(offset - range.lowerBound)
            }
            var targets = [Int32](repeating: node, count: n)
            var partial = [Int32](repeating: 0, count: n)
            let result = pages.withUnsafeMutableBufferPointer { p in
                targets.withUnsafeMutableBufferPointer { t in
                    partial.withUnsafeMutableBufferPointer { s in
                        CNuma.move_pages(0, UInt(n), p.baseAddress, t.baseAddress, s.baseAddress, MPOL_MF_MOVE_ALL)
                    }
                }
            }
            if result < 0 { throw SystemError.current("move_pages(to node \(node))", "\(offsets.count) pages") }
            status.replaceSubrange(index..<(index + n), with: partial)
            index += n
        }
        return status
    }
}
