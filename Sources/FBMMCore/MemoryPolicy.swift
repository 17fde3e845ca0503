import CNuma

/// One kernel memory policy: what a single mbind(2) call sets on a range.
///
/// Policies (FBMMPolicy) decide *which* kernel policy each range of a file
/// gets; this type is the vocabulary they decide in.
public struct MemoryPolicy: Sendable, Hashable, CustomStringConvertible {
    public enum Mode: Int32, Sendable, Hashable {
        case `default` = 0      // MPOL_DEFAULT: the faulting task's own policy
        case preferred = 1      // MPOL_PREFERRED: one node, fall back elsewhere when full
        case bind = 2           // MPOL_BIND: only these nodes (OOM rather than elsewhere)
        case interleave = 3     // MPOL_INTERLEAVE: round-robin by page offset
        case local = 4          // MPOL_LOCAL: the faulting CPU's node
        case preferredMany = 5  // MPOL_PREFERRED_MANY (5.15+)
        case weightedInterleave = 6 // MPOL_WEIGHTED_INTERLEAVE (6.9+), system-wide weights
    }

    public var mode: Mode
    public var nodes: [Int]

    public init(_ mode: Mode, nodes: [Int] = []) {
        self.mode = mode
        self.nodes = nodes.sorted()
    }

    public static let local = MemoryPolicy(.local)

    /// The node bitmask mbind(2) takes, one bit per node.
    public var nodeMask: [UInt] {
        guard let highest = nodes.max() else { return [] }
        var mask = [UInt](repeating: 0, count: highest / UInt.bitWidth + 1)
        for node in nodes { mask[node / UInt.bitWidth] |= 1 << UInt(node % UInt.bitWidth) }
        return mask
    }

    public var description: String {
        let name: String
        switch mode {
        case .default: name = "default"
        case .preferred: name = "preferred"
        case .bind: name = "bind"
        case .interleave: name = "interleave"
        case .local: name = "local"
        case .preferredMany: name = "preferred-many"
        case .weightedInterleave: name = "weighted-interleave"
        }
        return nodes.isEmpty ? name : "\(name)(\(nodes.map(String.init).joined(separator: ",")))"
    }
}

/// A decided placement: file byte range -> kernel policy.
public struct Placement: Sendable, Hashable {
    /// File offsets; start and end on page boundaries (mbind works on whole pages).
    public var range: Range<UInt64>
    /// The kernel policy pages faulted in `range` will follow.
    public var policy: MemoryPolicy
    public init(_ range: Range<UInt64>, _ policy: MemoryPolicy) {
        self.range = range
        self.policy = policy
    }
}
