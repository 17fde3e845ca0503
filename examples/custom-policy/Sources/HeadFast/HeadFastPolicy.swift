import FBMMCLI  // re-exports FBMMPolicy (the protocol) and FBMMCore (Topology, MemoryPolicy)

/// `headfast fast=N [head=SIZE] [rest=N:N...]`: the first `head` bytes of
/// every file on the fast node, the rest interleaved over `rest`.
///
/// Programs touch the start of their heap (and the header of every mapped
/// data file) most; this keeps that part on fast memory and spreads the bulk.
public struct HeadFastPolicy: MemoryManagementPolicy {
    public static let name = "headfast"
    public static let summary = "the first head bytes of each file on the fast node, the rest interleaved"
    public static let keys = [
        PolicyKey("fast", "the node for the head of each file"),
        PolicyKey("head", default: "2M", "how much of each file goes to the fast node"),
        PolicyKey("rest", default: "all memory nodes", "nodes to interleave the rest over, e.g. 1:2"),
    ]

    public let fast: Int
    public let head: UInt64
    public let rest: [Int]

    public init(options: PolicyOptions, topology: Topology) throws(PolicyError) {
        guard let fast = try options.node("fast", in: topology) else {
            throw .missingKey(policy: Self.name, key: "fast")
        }
        let head = try options.size("head")?.bytes ?? 2 << 20
        guard head > 0, head % UInt64(pageSize) == 0 else {
            throw .invalidValue(key: "head", value: options["head"] ?? "",
                                reason: "must be a positive multiple of \(pageSize)")
        }
        self.fast = fast
        self.head = head
        self.rest = try options.nodes("rest", in: topology) ?? topology.memoryNodeIDs
    }

    public var allowedNodes: [Int] { rest.contains(fast) ? rest : [fast] + rest }

    public func place(_ range: Range<UInt64>, of file: FileContext) -> [Placement] {
        var placements: [Placement] = []
        if range.lowerBound < head {
            let part = range.lowerBound..<min(head, range.upperBound)
            placements.append(Placement(part, MemoryPolicy(.preferred, nodes: [fast])))
        }
        if range.upperBound > head {
            let part = max(head, range.lowerBound)..<range.upperBound
            placements.append(Placement(part, MemoryPolicy(.interleave, nodes: rest)))
        }
        return placements
    }

    public var description: String {
        "headfast,fast=\(fast),head=\(ByteSize(bytes: head)),rest=\(rest.map(String.init).joined(separator: ":"))"
    }
}
