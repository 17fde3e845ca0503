import FBMMCore
import Testing
@testable import FBMMPolicy

private let kib: UInt64 = 1024
private let mib: UInt64 = 1 << 20

/// Checks that `placements` are sorted, contiguous, non-overlapping and cover exactly `range`.
private func expectExactCover(_ placements: [Placement], _ range: Range<UInt64>,
                              sourceLocation: SourceLocation = #_sourceLocation) {
    #expect(placements.first?.range.lowerBound == range.lowerBound, sourceLocation: sourceLocation)
    #expect(placements.last?.range.upperBound == range.upperBound, sourceLocation: sourceLocation)
    for placement in placements {
        #expect(!placement.range.isEmpty, "empty placement \(placement.range)", sourceLocation: sourceLocation)
    }
    for (a, b) in zip(placements, placements.dropFirst()) {
        #expect(a.range.upperBound == b.range.lowerBound, "gap or overlap between \(a.range) and \(b.range)",
                sourceLocation: sourceLocation)
    }
}

/// Bytes per node, each placement being MPOL_PREFERRED on one node.
private func bytesPerNode(_ placements: [Placement]) -> [Int: UInt64] {
    var result: [Int: UInt64] = [:]
    for placement in placements {
        #expect(placement.policy.mode == .preferred)
        #expect(placement.policy.nodes.count == 1)
        result[placement.policy.nodes[0], default: 0] += UInt64(placement.range.count)
    }
    return result
}

/// The node each byte offset's chunk is placed on, per the placements.
private func node(at offset: UInt64, in placements: [Placement]) -> Int? {
    placements.first { $0.range.contains(offset) }?.policy.nodes.first
}

@Suite struct LocalPolicyTests {
    @Test(arguments: [Fixtures.twoNodes, Fixtures.threeNodes])
    func onePlacementCoveringTheRange(topology: Topology) throws {
        let policy = try Fixtures.make("local", topology)
        let range: Range<UInt64> = 4096..<(10 * mib)
        #expect(policy.place(range, of: Fixtures.file) == [Placement(range, .local)])
        #expect(policy.allowedNodes == topology.memoryNodeIDs)
        #expect(policy.description == "local")
    }

    @Test func allowsOnlyNodesWithMemory() throws {
        #expect(try Fixtures.make("local", Fixtures.withMemorylessNode).allowedNodes == [0, 2])
    }
}

@Suite struct BindPolicyTests {
    @Test func bindsToTheGivenNodes() throws {
        let policy = try Fixtures.make("bind,nodes=0:2", Fixtures.threeNodes)
        let range: Range<UInt64> = 0..<mib
        #expect(policy.place(range, of: Fixtures.file) == [Placement(range, MemoryPolicy(.bind, nodes: [0, 2]))])
        #expect(policy.allowedNodes == [0, 2])
        #expect(policy.description == "bind,nodes=0:2")
    }

    @Test func singleNodeOnTwoNodes() throws {
        let policy = try Fixtures.make("bind nodes=1")
        #expect(policy.place(0..<4096, of: Fixtures.file) == [Placement(0..<4096, MemoryPolicy(.bind, nodes: [1]))])
        #expect(policy.description == "bind,nodes=1")
    }

    @Test func cpulessNodeIsAllowed() throws {
        let policy = try Fixtures.make("bind,nodes=2", Fixtures.threeNodes)
        #expect(policy.place(0..<4096, of: Fixtures.file).first?.policy == MemoryPolicy(.bind, nodes: [2]))
    }
}

@Suite struct PreferredPolicyTests {
    @Test(arguments: [Fixtures.twoNodes, Fixtures.threeNodes])
    func prefersTheNode(topology: Topology) throws {
        let policy = try Fixtures.make("preferred,nodes=1", topology)
        let range: Range<UInt64> = 8192..<(3 * mib)
        #expect(policy.place(range, of: Fixtures.file) == [Placement(range, MemoryPolicy(.preferred, nodes: [1]))])
        #expect(policy.allowedNodes == topology.memoryNodeIDs)
        #expect(policy.description == "preferred,nodes=1")
    }

    @Test func twoNodesAreRefused() throws {
        let error = Fixtures.policyError { _ = try Fixtures.make("preferred,nodes=0:1") }
        guard case .invalidValue(key: "nodes", value: "0:1", _)? = error else {
            Issue.record("expected invalidValue, got \(String(describing: error))"); return
        }
        #expect(error!.description.contains("nodes=0:1"))
    }
}

@Suite struct InterleavePolicyTests {
    static let unweighted: [(String, Topology, [Int])] = [
        ("nodes=0:1", Fixtures.twoNodes, [0, 1]),
        ("nodes=0-2", Fixtures.threeNodes, [0, 1, 2]),
    ]

    @Test(arguments: unweighted)
    func unweightedIsOneKernelInterleave(options: String, topology: Topology, nodes: [Int]) throws {
        let policy = try Fixtures.make("interleave,\(options)", topology)
        let range: Range<UInt64> = 0..<(7 * mib)
        #expect(policy.place(range, of: Fixtures.file) == [Placement(range, MemoryPolicy(.interleave, nodes: nodes))])
        #expect(policy.allowedNodes == nodes)
        #expect(policy.description == "interleave,nodes=\(nodes.map(String.init).joined(separator: ":"))")
    }

    @Test(arguments: ["weights=1:1", "weights=5:5", "weights=2:2:2"])
    func equalWeightsCollapseToPlainInterleave(weights: String) throws {
        let nodes = weights.split(separator: ":").count == 3 ? "0:1:2" : "0:1"
        let policy = try #require(try Fixtures.make("interleave,nodes=\(nodes),\(weights),unit=64K", Fixtures.threeNodes)
                                    as? InterleavePolicy)
        #expect(policy.weights == nil)
        let placements = policy.place(0..<mib, of: Fixtures.file)
        #expect(placements == [Placement(0..<mib, MemoryPolicy(.interleave, nodes: policy.allowedNodes))])
        #expect(policy.description == "interleave,nodes=\(nodes)")
    }

    @Test func weightedThreeToOneOverOneMiB() throws {
        let policy = try #require(try Fixtures.make("interleave,nodes=0:1,weights=3:1,unit=64K") as? InterleavePolicy)
        #expect(policy.weights == [3, 1])
        #expect(policy.unit == 64 * kib)
        let range: Range<UInt64> = 0..<mib
        let placements = policy.place(range, of: Fixtures.file)
        expectExactCover(placements, range)
        let bytes = bytesPerNode(placements)
        #expect(bytes[0] == mib * 3 / 4)
        #expect(bytes[1] == mib / 4)
        #expect(placements.first?.policy == MemoryPolicy(.preferred, nodes: [0]))
        #expect(placements.first?.range == 0..<(192 * kib))
        #expect(placements.dropFirst().first?.range == (192 * kib)..<(256 * kib))
        #expect(placements.count == 8, "runs of the same node are merged within a period")
        for chunk in 0..<UInt64(16) {
            #expect(node(at: chunk * 64 * kib, in: placements) == (chunk % 4 == 3 ? 1 : 0))
        }
        #expect(policy.description == "interleave,nodes=0:1,weights=3:1,unit=64K")
    }

    static let unalignedRanges: [Range<UInt64>] = {
        let k: UInt64 = 1024
        return [
            (100 * k)..<(900 * k),
            (100 * k)..<(130 * k),              // inside one chunk
            (64 * k)..<(1000 * k + 1),
            (5 * 1024 * k + 4096)..<(9 * 1024 * k + 12288),
            0..<(64 * k),
            1..<2,
        ]
    }()

    @Test(arguments: unalignedRanges)
    func unalignedRangesFollowTheGlobalPattern(range: Range<UInt64>) throws {
        let policy = try Fixtures.make("interleave,nodes=0:1,weights=3:1,unit=64K")
        let placements = policy.place(range, of: Fixtures.file)
        expectExactCover(placements, range)
        let owner = [0, 0, 0, 1]
        let unit = 64 * kib
        for placement in placements {
            #expect(placement.policy.mode == .preferred)
            // Every chunk a placement touches belongs to its node in the global pattern.
            var chunk = placement.range.lowerBound / unit
            while chunk * unit < placement.range.upperBound {
                #expect(placement.policy.nodes == [owner[Int(chunk % 4)]],
                        "chunk \(chunk) of \(placement.range) in \(range)")
                chunk += 1
            }
        }
        _ = bytesPerNode(placements)
    }

    @Test func weightedPatternOnThreeNodesInTheOrderGiven() throws {
        let policy = try Fixtures.make("interleave,nodes=2:0:1,weights=1:2:1,unit=128K", Fixtures.threeNodes)
        let unit = 128 * kib
        let range: Range<UInt64> = 0..<(8 * unit)
        let placements = policy.place(range, of: Fixtures.file)
        expectExactCover(placements, range)
        let owner = [2, 0, 0, 1]
        for chunk in 0..<UInt64(8) {
            #expect(node(at: chunk * unit + 5, in: placements) == owner[Int(chunk % 4)])
        }
        let bytes = bytesPerNode(placements)
        #expect(bytes == [2: 2 * unit, 0: 4 * unit, 1: 2 * unit])
        #expect(policy.description == "interleave,nodes=2:0:1,weights=1:2:1,unit=128K")
    }

    @Test func defaultUnitIs64K() throws {
        let policy = try #require(try Fixtures.make("interleave,nodes=0:1,weights=1:3") as? InterleavePolicy)
        #expect(policy.unit == 64 * kib)
        let placements = policy.place(0..<(256 * kib), of: Fixtures.file)
        #expect(placements == [
            Placement(0..<(64 * kib), MemoryPolicy(.preferred, nodes: [0])),
            Placement((64 * kib)..<(256 * kib), MemoryPolicy(.preferred, nodes: [1])),
        ])
    }

    @Test(arguments: ["weights=3:1:1", "weights=3"])
    func weightsCountMismatchIsRefused(weights: String) throws {
        let error = Fixtures.policyError { _ = try Fixtures.make("interleave,nodes=0:1,\(weights)") }
        guard case .invalidValue(key: "weights", _, let reason)? = error else {
            Issue.record("expected invalidValue, got \(String(describing: error))"); return
        }
        #expect(reason.contains("for 2 nodes"))
    }

    @Test(arguments: ["weights=3:x", "weights=0:1", "weights=3:256"])
    func unparsableWeightsAreRefused(weights: String) throws {
        let error = Fixtures.policyError { _ = try Fixtures.make("interleave,nodes=0:1,\(weights)") }
        guard case .invalidValue(key: "weights", _, _)? = error else {
            Issue.record("expected invalidValue, got \(String(describing: error))"); return
        }
    }

    @Test(arguments: ["unit=6K", "unit=100", "unit=0", "unit=huge"])
    func unitMustBeAPositiveMultipleOfThePageSize(unit: String) throws {
        try #require(pageSize == 4096, "the values assume 4 KiB pages")
        let error = Fixtures.policyError { _ = try Fixtures.make("interleave,nodes=0:1,weights=3:1,\(unit)") }
        guard case .invalidValue(key: "unit", _, _)? = error else {
            Issue.record("expected invalidValue, got \(String(describing: error))"); return
        }
    }
}

/// What a policy tells the mount about huge pages: only placement finer than
/// a huge page asks for small ones (weighted interleave's unit, tiered's
/// single pages); the kernel's own interleave and bind place huge pages whole.
@Suite struct PlacementGranularityTests {
    @Test func onlyFinerThanAHugePagePlacementAsksForSmallPages() throws {
        #expect(try Fixtures.make("interleave,nodes=0:1,weights=3:1,unit=64K").placementGranularity == 64 << 10)
        #expect(try Fixtures.make("interleave,nodes=0:1").placementGranularity == nil)
        #expect(try Fixtures.make("interleave,nodes=0:1,weights=2:2").placementGranularity == nil, "equal weights: the kernel's interleave")
        #expect(try Fixtures.make("bind,nodes=1").placementGranularity == nil)
        #expect(try Fixtures.make("local").placementGranularity == nil)
        let tiered = try #require(try Fixtures.make("tiered,fast=0,slow=2,fast-capacity=1G", Fixtures.threeNodes) as? TieredPolicy)
        defer { tiered.shutdown() }
        #expect(tiered.placementGranularity == UInt64(pageSize))
    }
}
