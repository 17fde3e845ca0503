import FBMMCore

/// `local`: each page on the node of the CPU that first touches it — what Linux
/// does for anonymous memory, kept as the baseline.
public struct LocalPolicy: MemoryManagementPolicy {
    public static let name = "local"
    public static let summary = "pages on the node of the CPU that first touches them (Linux's default)"
    public static let keys: [PolicyKey] = []
    public let allowedNodes: [Int]

    public init(options: PolicyOptions, topology: Topology) throws(PolicyError) {
        allowedNodes = topology.memoryNodeIDs
    }

    public func place(_ range: Range<UInt64>, of file: FileContext) -> [Placement] {
        [Placement(range, .local)]
    }
}

/// `bind nodes=N[:N...]`: pages only on these nodes; allocation fails rather
/// than spilling elsewhere.
public struct BindPolicy: MemoryManagementPolicy {
    public static let name = "bind"
    public static let summary = "pages only on the given nodes (no spill: allocation fails when they are full)"
    public static let keys = [PolicyKey("nodes", "nodes to allocate from, e.g. 0 or 0:1")]
    public let allowedNodes: [Int]

    public init(options: PolicyOptions, topology: Topology) throws(PolicyError) {
        guard let nodes = try options.nodes("nodes", in: topology) else {
            throw .missingKey(policy: Self.name, key: "nodes")
        }
        allowedNodes = nodes
    }

    public func place(_ range: Range<UInt64>, of file: FileContext) -> [Placement] {
        [Placement(range, MemoryPolicy(.bind, nodes: allowedNodes))]
    }

    public var description: String { "bind,nodes=\(allowedNodes.map(String.init).joined(separator: ":"))" }
}

/// `preferred nodes=N`: pages on N while it has free memory, elsewhere after.
public struct PreferredPolicy: MemoryManagementPolicy {
    public static let name = "preferred"
    public static let summary = "pages on one node while it has room, then on the others"
    public static let keys = [PolicyKey("nodes", "the preferred node")]
    public let node: Int
    public let allowedNodes: [Int]

    public init(options: PolicyOptions, topology: Topology) throws(PolicyError) {
        guard let node = try options.node("nodes", in: topology) else {
            throw .missingKey(policy: Self.name, key: "nodes")
        }
        self.node = node
        allowedNodes = topology.memoryNodeIDs
    }

    public func place(_ range: Range<UInt64>, of file: FileContext) -> [Placement] {
        [Placement(range, MemoryPolicy(.preferred, nodes: [node]))]
    }

    public var description: String { "preferred,nodes=\(node)" }
}

/// `interleave nodes=...[,weights=...][,unit=SIZE]`: pages spread round-robin
/// by file offset, optionally weighted.
///
/// Unweighted, this is the kernel's MPOL_INTERLEAVE, which for a shared file
/// interleaves by page offset in the file, so the pattern is exact and the same
/// whichever process faults. Weighted, the daemon lays the pattern out itself:
/// the file is cut into `unit`-sized chunks and chunk i goes to the node whose
/// share of the period covers i (weights 3:1 → three chunks on the first node,
/// one on the second). Each chunk is MPOL_PREFERRED, so a full node spills
/// instead of failing. This works on every kernel (MPOL_WEIGHTED_INTERLEAVE
/// needs 6.9 and takes its weights from one system-wide sysfs table, which a
/// mount must not change under other users).
public struct InterleavePolicy: MemoryManagementPolicy {
    public static let name = "interleave"
    public static let summary = "pages spread round-robin over nodes, optionally weighted per mount"
    public static let keys = [
        PolicyKey("nodes", "nodes to spread over, e.g. 0:1"),
        PolicyKey("weights", default: "1 per node", "relative share of each node, e.g. 3:1"),
        PolicyKey("unit", default: "64K", "weighted interleave granularity (a multiple of the page size)"),
    ]
    public let allowedNodes: [Int]
    public let weights: [Int]?
    public let unit: UInt64

    public init(options: PolicyOptions, topology: Topology) throws(PolicyError) {
        guard let nodes = try options.nodes("nodes", in: topology) else {
            throw .missingKey(policy: Self.name, key: "nodes")
        }
        allowedNodes = nodes
        if let weights = try options.integers("weights") {
            guard weights.count == nodes.count else {
                throw .invalidValue(key: "weights", value: options["weights"]!,
                                    reason: "\(weights.count) weights for \(nodes.count) nodes")
            }
            self.weights = weights.allSatisfy({ $0 == weights[0] }) ? nil : weights
        } else {
            self.weights = nil
        }
        let unit = try options.size("unit")?.bytes ?? 64 * 1024
        guard unit > 0, unit % UInt64(pageSize) == 0 else {
            throw .invalidValue(key: "unit", value: options["unit"] ?? "", reason: "must be a positive multiple of \(pageSize)")
        }
        self.unit = unit
    }

    /// Plain interleave is the kernel's, which interleaves huge pages whole
    /// as it does for anonymous memory; weighted interleave places `unit`s.
    public var placementGranularity: UInt64? { weights == nil ? nil : unit }

    public func place(_ range: Range<UInt64>, of file: FileContext) -> [Placement] {
        guard let weights else {
            return [Placement(range, MemoryPolicy(.interleave, nodes: allowedNodes))]
        }
        let period = UInt64(weights.reduce(0, +))
        // owner[k]: the node of chunk k within a period.
        var owner: [Int] = []
        for (node, weight) in zip(allowedNodes, weights) { owner += Array(repeating: node, count: weight) }
        // A huge range (a sparse file truncated to terabytes) would need millions
        // of mbind calls at `unit`; lay the same pattern out with a proportionally
        // larger unit instead, which keeps the ratios exact.
        var unit = self.unit
        let chunks = UInt64(range.count) / unit
        if chunks > Self.maxChunksPerRange {
            unit *= (chunks + Self.maxChunksPerRange - 1) / Self.maxChunksPerRange
        }
        var placements: [Placement] = []
        var chunk = range.lowerBound / unit
        while chunk * unit < range.upperBound {
            let node = owner[Int(chunk % period)]
            // Extend over following chunks of the same node (they are contiguous in a period).
            var last = chunk
            while (last + 1) * unit < range.upperBound, owner[Int((last + 1) % period)] == node { last += 1 }
            let lower = max(chunk * unit, range.lowerBound)
            let upper = min((last + 1) * unit, range.upperBound)
            placements.append(Placement(lower..<upper, MemoryPolicy(.preferred, nodes: [node])))
            chunk = last + 1
        }
        return placements
    }

    /// The most chunks one `place` call lays out at the configured unit.
    static let maxChunksPerRange: UInt64 = 65536

    public var description: String {
        var text = "interleave,nodes=\(allowedNodes.map(String.init).joined(separator: ":"))"
        if let weights { text += ",weights=\(weights.map(String.init).joined(separator: ":")),unit=\(ByteSize(bytes: unit))" }
        return text
    }
}
