import FBMMCLI
import HeadFast
import Testing

/// A policy is tested on a described topology: no NUMA hardware, no mount.
let threeNodes = Topology(nodes: [
    .init(id: 0, memTotal: 4 << 30, cpus: [0, 1]),
    .init(id: 1, memTotal: 4 << 30, cpus: [2, 3]),
    .init(id: 2, memTotal: 16 << 30),  // CPU-less, like CXL memory
])
let file = FileContext(inode: 2, name: "heap", size: 64 << 20)

func make(_ spec: String) throws -> any MemoryManagementPolicy {
    try PolicyRegistry(adding: [HeadFastPolicy.self]).make(PolicySpec(parsing: spec), topology: threeNodes)
}

@Test func headOnFastRestInterleaved() throws {
    let policy = try make("headfast,fast=0,head=1M,rest=1:2")
    #expect(policy.place(0..<(4 << 20), of: file) == [
        Placement(0..<(1 << 20), MemoryPolicy(.preferred, nodes: [0])),
        Placement((1 << 20)..<(4 << 20), MemoryPolicy(.interleave, nodes: [1, 2])),
    ])
    // Growth past the head: all of it interleaved.
    #expect(policy.place((4 << 20)..<(8 << 20), of: file) == [
        Placement((4 << 20)..<(8 << 20), MemoryPolicy(.interleave, nodes: [1, 2])),
    ])
}

@Test func defaults() throws {
    let policy = try #require(try make("headfast,fast=1") as? HeadFastPolicy)
    #expect(policy.head == 2 << 20)
    #expect(policy.rest == [0, 1, 2])
}

@Test func badOptionsAreOneLine() {
    #expect(throws: PolicyError.missingKey(policy: "headfast", key: "fast")) { try make("headfast") }
    #expect(throws: PolicyError.noSuchNode(key: "fast", node: 7, available: [0, 1, 2])) { try make("headfast,fast=7") }
    #expect(throws: PolicyError.self) { try make("headfast,fast=0,head=100") }
    #expect(throws: PolicyError.unknownKey(policy: "headfast", key: "colour", known: ["fast", "head", "rest"])) {
        try make("headfast,fast=0,colour=red")
    }
}
