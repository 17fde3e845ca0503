import FBMMCore

/// `contig [nodes=N[:N...]]`: file memory in physically contiguous huge pages,
/// like the FBMM prototype's ContigMFS.
///
/// Why huge pages: a 2 MiB page is 512 contiguous frames behind one TLB entry,
/// which is what ContigMFS's contiguous allocations buy (fewer TLB misses on
/// large random-access working sets). Here the kernel's shmem transparent huge
/// pages provide them: every mapping of the mount's files, the program's and
/// the daemon's, is marked MADV_HUGEPAGE, so each first touch of a 2 MiB-aligned
/// range allocates one contiguous huge page, on `nodes` when given (bound, no
/// spill) or on the toucher's node. The mount refuses to start, with the
/// sysfs line to change, when the system forbids shmem huge pages.
public struct ContigPolicy: MemoryManagementPolicy {
    public static let name = "contig"
    public static let summary = "file memory in contiguous 2 MiB huge pages (shmem THP), optionally bound to nodes"
    public static let keys = [PolicyKey("nodes", default: "the first toucher's node", "nodes to allocate from (bound: no spill)")]
    public let nodes: [Int]?
    public let allowedNodes: [Int]

    public init(options: PolicyOptions, topology: Topology) throws(PolicyError) {
        nodes = try options.nodes("nodes", in: topology)
        allowedNodes = nodes ?? topology.memoryNodeIDs
    }

    public func place(_ range: Range<UInt64>, of file: FileContext) -> [Placement] {
        [Placement(range, nodes.map { MemoryPolicy(.bind, nodes: $0) } ?? .local)]
    }

    public var wantsHugePages: Bool { true }

    public var description: String {
        nodes.map { "contig,nodes=\($0.map(String.init).joined(separator: ":"))" } ?? "contig"
    }
}
