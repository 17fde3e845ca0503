import FBMMCore
@testable import FBMMPolicy

enum Fixtures {
    static let gib: UInt64 = 1 << 30

    /// Two nodes with memory and CPUs.
    static let twoNodes = Topology(nodes: [
        .init(id: 0, memTotal: 4 * gib, cpus: [0, 1], distances: [0: 10, 1: 20]),
        .init(id: 1, memTotal: 4 * gib, cpus: [2, 3], distances: [0: 20, 1: 10]),
    ])

    /// Three nodes; node 2 has memory but no CPUs (e.g. CXL memory).
    static let threeNodes = Topology(nodes: [
        .init(id: 0, memTotal: 4 * gib, cpus: [0, 1]),
        .init(id: 1, memTotal: 4 * gib, cpus: [2, 3]),
        .init(id: 2, memTotal: 16 * gib, cpus: []),
    ])

    /// Node 1 has CPUs but no memory.
    static let withMemorylessNode = Topology(nodes: [
        .init(id: 0, memTotal: 4 * gib, cpus: [0]),
        .init(id: 1, memTotal: 0, cpus: [1]),
        .init(id: 2, memTotal: 4 * gib, cpus: [2]),
    ])

    static let file = FileContext(inode: 2, name: "data.bin", size: 1 << 20)

    static func make(_ spec: String, _ topology: Topology = twoNodes) throws -> any MemoryManagementPolicy {
        try PolicyRegistry().make(PolicySpec(parsing: spec), topology: topology)
    }

    /// The PolicyError thrown by `body`, or nil.
    static func policyError(_ body: () throws -> Void) -> PolicyError? {
        do { try body(); return nil } catch let error as PolicyError { return error } catch { return nil }
    }
}
