import SystemPackage
import Testing
@testable import FBMMCore

#if canImport(Glibc)
import Glibc
#endif

private let page = UInt64(pageSize)

private func pattern(_ count: Int, seed: UInt8) -> [UInt8] {
    (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ Int(seed)) | 1 }
}

extension MemoryFile {
    func write(_ bytes: [UInt8], at offset: UInt64) throws {
        try bytes.withUnsafeBytes { raw in try write(raw, at: offset) }
    }
}

@Suite struct MemoryFileTests {
    @Test func newFileIsEmpty() throws {
        let file = try MemoryFile(name: "empty")
        #expect(file.name == "empty")
        #expect(try file.size() == 0)
        #expect(try file.allocatedBytes() == 0)
        #expect(try file.dataRanges() == [])
        #expect(try file.read(at: 0, count: 16) == [])
    }

    @Test func writeReadRoundTrip() throws {
        let file = try MemoryFile(name: "roundtrip")
        let bytes = pattern(10_000, seed: 7)
        try file.write(bytes, at: 100)
        #expect(try file.size() == 10_100)
        #expect(try file.read(at: 100, count: bytes.count) == bytes)
        #expect(try file.read(at: 0, count: 100) == [UInt8](repeating: 0, count: 100))
        // Short read at end of file.
        #expect(try file.read(at: 10_000, count: 500) == Array(bytes[9_900...]))
        #expect(try file.read(at: 20_000, count: 10) == [])
    }

    @Test func resizeGrowsSparseAndShrinkFrees() throws {
        let file = try MemoryFile(name: "sparse")
        try file.resize(to: 64 << 20)
        #expect(try file.size() == 64 << 20)
        #expect(try file.allocatedBytes() == 0)
        #expect(try file.dataRanges() == [])
        #expect(try file.read(at: 32 << 20, count: 8) == [UInt8](repeating: 0, count: 8))

        try file.write(pattern(Int(4 * page), seed: 1), at: 0)
        #expect(try file.allocatedBytes() == 4 * page)
        try file.resize(to: page)
        #expect(try file.size() == page)
        #expect(try file.allocatedBytes() == page)
    }

    @Test func punchHoleFreesAndReadsBackZeros() throws {
        let file = try MemoryFile(name: "punch")
        let bytes = pattern(Int(4 * page), seed: 3)
        try file.write(bytes, at: 0)
        let before = try file.allocatedBytes()
        #expect(before == 4 * page)

        try file.punchHole(offset: page, length: 2 * page)
        #expect(try file.allocatedBytes() == before - 2 * page)
        #expect(try file.size() == 4 * page, "punching a hole keeps the size")
        #expect(try file.read(at: page, count: Int(2 * page)) == [UInt8](repeating: 0, count: Int(2 * page)))
        #expect(try file.read(at: 0, count: Int(page)) == Array(bytes[0..<Int(page)]))
        #expect(try file.read(at: 3 * page, count: Int(page)) == Array(bytes[Int(3 * page)...]))
        #expect(try file.dataRanges() == [0..<page, 3 * page..<4 * page])

        // Zero length is a no-op.
        try file.punchHole(offset: 0, length: 0)
        #expect(try file.allocatedBytes() == 2 * page)
    }

    @Test func allocateGrowsAndAllocates() throws {
        let file = try MemoryFile(name: "fallocate")
        try file.allocate(mode: 0, offset: 0, length: 8 * page)
        #expect(try file.size() == 8 * page)
        #expect(try file.allocatedBytes() == 8 * page)
    }

    /// Data at [0, 1p), [16p, 18p), [128p, 129p) of a 256-page file.
    private func fileWithThreeExtents() throws -> MemoryFile {
        let file = try MemoryFile(name: "extents")
        try file.resize(to: 256 * page)
        try file.write(pattern(Int(page), seed: 1), at: 0)
        try file.write(pattern(Int(2 * page), seed: 2), at: 16 * page)
        try file.write(pattern(Int(page), seed: 3), at: 128 * page)
        return file
    }

    @Test func dataRangesFindExactlyTheWrittenRanges() throws {
        let file = try fileWithThreeExtents()
        #expect(try file.allocatedBytes() == 4 * page)
        #expect(try file.dataRanges() == [0..<page, 16 * page..<18 * page, 128 * page..<129 * page])
    }

    static let clips: [(Range<UInt64>, [Range<UInt64>])] = {
        let p: UInt64 = 4096
        return [
            (0..<(256 * p), [0..<p, (16 * p)..<(18 * p), (128 * p)..<(129 * p)]),
            ((p / 2)..<(16 * p + p / 2), [(p / 2)..<p, (16 * p)..<(16 * p + p / 2)]),
            ((17 * p)..<(200 * p), [(17 * p)..<(18 * p), (128 * p)..<(129 * p)]),
            ((18 * p)..<(128 * p), []),
            ((129 * p)..<(256 * p), []),
            ((128 * p + 10)..<(128 * p + 20), [(128 * p + 10)..<(128 * p + 20)]),
        ]
    }()

    @Test(arguments: clips)
    func dataRangesClipToTheRange(range: Range<UInt64>, expected: [Range<UInt64>]) throws {
        try #require(page == 4096, "the table assumes 4 KiB pages")
        let file = try fileWithThreeExtents()
        #expect(try file.dataRanges(in: range) == expected)
    }

    @Test func resizeBeyondLimitsIsASystemError() throws {
        let file = try MemoryFile(name: "huge.dat")
        let error = try #require(throws: SystemError.self) { try file.resize(to: UInt64.max) }
        #expect(error.operation == "ftruncate")
        #expect(error.context.contains("huge.dat"))
        #expect(error.errno == .fileTooLarge)
        #expect(error.description.contains("ftruncate"))
        #expect(error.description.contains("memfd 'huge.dat'"))
        #expect(error.description.contains(Errno.fileTooLarge.description))
        #expect(try file.size() == 0)
    }
}

@Suite struct SystemErrorTests {
    @Test func retryingSyscallReportsErrnoOfAClosedDescriptor() throws {
        let error = try #require(throws: SystemError.self) {
            _ = try retryingSyscall("ftruncate", "fd -1") { ftruncate(-1, 0) }
        }
        #expect(error.errno == .badFileDescriptor)
        #expect(error.description == "ftruncate on fd -1: \(Errno.badFileDescriptor.description)")
        #expect(error.description.contains("Bad file descriptor"))
    }

    @Test func retryingSyscallPassesResults() throws {
        #expect(try retryingSyscall("getpid") { getpid() } == getpid())
    }

    @Test func descriptionWithoutContext() {
        let error = SystemError("mbind", errno: .invalidArgument)
        #expect(error.description == "mbind: \(Errno.invalidArgument.description)")
    }

    @Test func descriptionWithContext() {
        let error = SystemError("mbind(node 3)", "memfd 'a.dat'", errno: .invalidArgument)
        #expect(error.description == "mbind(node 3) on memfd 'a.dat': Invalid argument")
    }
}

@Suite struct MemoryPolicyTests {
    @Test func nodeMaskSetsOneBitPerNode() {
        let policy = MemoryPolicy(.bind, nodes: [65, 0, 2])
        #expect(policy.nodes == [0, 2, 65])
        #expect(policy.nodeMask == [0b101, 0b10])
    }

    static let masks: [([Int], [UInt])] = [
        ([], []),
        ([0], [1]),
        ([63], [1 << 63]),
        ([64], [0, 1]),
        ([1, 3], [0b1010]),
    ]

    @Test(arguments: masks)
    func nodeMasks(nodes: [Int], mask: [UInt]) {
        #expect(MemoryPolicy(.interleave, nodes: nodes).nodeMask == mask)
    }

    @Test func modesMatchTheKernel() {
        #expect(MemoryPolicy.Mode.default.rawValue == 0)
        #expect(MemoryPolicy.Mode.preferred.rawValue == 1)
        #expect(MemoryPolicy.Mode.bind.rawValue == 2)
        #expect(MemoryPolicy.Mode.interleave.rawValue == 3)
        #expect(MemoryPolicy.Mode.local.rawValue == 4)
    }

    @Test func descriptions() {
        #expect(MemoryPolicy.local.description == "local")
        #expect(MemoryPolicy(.bind, nodes: [2, 0]).description == "bind(0,2)")
        #expect(MemoryPolicy(.preferred, nodes: [1]).description == "preferred(1)")
        #expect(MemoryPolicy(.weightedInterleave, nodes: [0, 1]).description == "weighted-interleave(0,1)")
    }

    @Test func placementHoldsRangeAndPolicy() {
        let placement = Placement(0..<4096, .local)
        #expect(placement.range == 0..<4096)
        #expect(placement.policy == .local)
    }
}

@Suite struct FileMappingTests {
    @Test func bindToNodeZeroAndQueryNodes() throws {
        let file = try MemoryFile(name: "mapped")
        let length = 16 * page
        try file.resize(to: 2 * length)
        let mapping = try file.map(0..<2 * length)
        #expect(mapping.range == 0..<2 * length)

        try mapping.bind(0..<length, policy: MemoryPolicy(.bind, nodes: [0]))
        try file.write(pattern(Int(length), seed: 9), at: 0)
        #expect(try file.dataRanges() == [0..<length])

        #expect(try mapping.mapPresent(0..<2 * length) == [0..<length], "only the written pages exist")
        let nodes = try mapping.nodesOfPages(0..<length)
        #expect(nodes == [Int32](repeating: 0, count: 16))

        // The mapping sees what was written through the file.
        let first = mapping.base.load(fromByteOffset: 5, as: UInt8.self)
        #expect(first == pattern(6, seed: 9)[5])

        // Pages never allocated are not present: a negative errno each.
        let absent = try mapping.nodesOfPages(length..<2 * length)
        #expect(absent.count == 16)
        #expect(absent.allSatisfy { $0 < 0 })
        #expect(try file.allocatedBytes() == length, "querying must not allocate")

        // Migrating to the node the pages are on is a no-op that succeeds.
        let moved = try mapping.migrate(0..<length, to: 0)
        #expect(moved == [Int32](repeating: 0, count: 16))
    }

    @Test func writesThroughTheMappingReachTheFile() throws {
        let file = try MemoryFile(name: "mapped-write")
        try file.resize(to: 4 * page)
        let mapping = try file.map(page..<3 * page)
        try mapping.bind(page..<3 * page, policy: .local)
        mapping.base.storeBytes(of: 0x5A, toByteOffset: 10, as: UInt8.self)
        #expect(try file.read(at: page + 10, count: 1) == [0x5A])
        #expect(try file.dataRanges() == [page..<2 * page])
        #expect(try mapping.nodesOfPages(page..<2 * page) == [0])
    }

    @Test func emptyMappingIsRefused() throws {
        let file = try MemoryFile(name: "empty-map")
        let error = try #require(throws: SystemError.self) { _ = try file.map(0..<0) }
        #expect(error.operation == "mmap")
        #expect(error.errno == .invalidArgument)
        #expect(error.description.contains("memfd 'empty-map'"))
    }

    @Test func bindToANonexistentNodeFails() throws {
        let file = try MemoryFile(name: "bad-node")
        try file.resize(to: page)
        let mapping = try file.map(0..<page)
        let error = try #require(throws: SystemError.self) {
            try mapping.bind(0..<page, policy: MemoryPolicy(.bind, nodes: [1000]))
        }
        #expect(error.operation == "mbind")
        #expect(error.description.contains("bind(1000)"))
        #expect(error.description.contains("memfd 'bad-node'"))
    }
}
