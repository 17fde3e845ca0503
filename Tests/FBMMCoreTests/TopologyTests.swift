import Foundation
import Testing
@testable import FBMMCore

/// A fake `/sys/devices/system/node` tree in a temporary directory.
struct FakeSysfs {
    let root: String

    init() throws {
        root = NSTemporaryDirectory() + "fbmm-sysfs-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
    }

    func remove() { try? FileManager.default.removeItem(atPath: root) }

    func write(_ relative: String, _ text: String) throws {
        let path = "\(root)/\(relative)"
        try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent,
                                                withIntermediateDirectories: true)
        try text.write(toFile: path, atomically: true, encoding: .utf8)
    }

    func node(_ id: Int, memTotalKB: UInt64, memFreeKB: UInt64 = 0, cpulist: String, distance: String) throws {
        try write("node\(id)/meminfo", """
            Node \(id) MemTotal:       \(memTotalKB) kB
            Node \(id) MemFree:        \(memFreeKB) kB
            Node \(id) MemUsed:        \(memTotalKB - memFreeKB) kB

            """)
        try write("node\(id)/cpulist", cpulist + "\n")
        try write("node\(id)/distance", distance + "\n")
    }
}

@Suite struct TopologyTests {
    @Test func readsThreeNodesWithCPULessAndMemoryLessNodes() throws {
        let sysfs = try FakeSysfs()
        defer { sysfs.remove() }
        try sysfs.write("online", "0-2\n")
        try sysfs.node(0, memTotalKB: 1_048_576, memFreeKB: 524_288, cpulist: "0-3", distance: "10 20 20")
        // Node 1: memory, no CPUs (e.g. CXL memory).
        try sysfs.node(1, memTotalKB: 2_097_152, memFreeKB: 2_097_152, cpulist: "", distance: "20 10 20")
        // Node 2: CPUs, no memory.
        try sysfs.node(2, memTotalKB: 0, cpulist: "4-5", distance: "20 20 10")

        let topology = try Topology(sysfsRoot: sysfs.root)
        #expect(topology.nodeIDs == [0, 1, 2])
        #expect(topology.memoryNodeIDs == [0, 1])

        let node0 = try #require(topology.node(0))
        #expect(node0.memTotal == 1_048_576 * 1024)
        #expect(node0.memFree == 524_288 * 1024)
        #expect(node0.cpus == [0, 1, 2, 3])
        #expect(node0.distances == [0: 10, 1: 20, 2: 20])
        #expect(node0.hasMemory && node0.hasCPUs)

        let node1 = try #require(topology.node(1))
        #expect(node1.memTotal == 2_097_152 * 1024)
        #expect(node1.cpus.isEmpty)
        #expect(!node1.hasCPUs && node1.hasMemory)
        #expect(node1.distances == [0: 20, 1: 10, 2: 20])

        let node2 = try #require(topology.node(2))
        #expect(node2.memTotal == 0)
        #expect(!node2.hasMemory && node2.hasCPUs)
        #expect(node2.cpus == [4, 5])

        #expect(topology.node(3) == nil)
    }

    @Test func readsOnlyOnlineNodesWithGaps() throws {
        let sysfs = try FakeSysfs()
        defer { sysfs.remove() }
        try sysfs.write("online", "0,2\n")
        try sysfs.node(0, memTotalKB: 1024, cpulist: "0", distance: "10 30")
        try sysfs.node(1, memTotalKB: 1024, cpulist: "1", distance: "10 10")  // offline: ignored
        try sysfs.node(2, memTotalKB: 4096, cpulist: "1", distance: "30 10")
        let topology = try Topology(sysfsRoot: sysfs.root)
        #expect(topology.nodeIDs == [0, 2])
        #expect(topology.node(0)?.distances == [0: 10, 2: 30])
        #expect(topology.node(2)?.memTotal == 4096 * 1024)
    }

    @Test func missingFilesOfANodeMeanNothingThere() throws {
        let sysfs = try FakeSysfs()
        defer { sysfs.remove() }
        try sysfs.write("online", "0\n")
        try FileManager.default.createDirectory(atPath: "\(sysfs.root)/node0", withIntermediateDirectories: true)
        let topology = try Topology(sysfsRoot: sysfs.root)
        let node = try #require(topology.node(0))
        #expect(node.memTotal == 0 && node.cpus.isEmpty && node.distances.isEmpty)
        #expect(topology.memoryNodeIDs.isEmpty)
    }

    @Test func directoryWithoutOnlineFileIsAnError() throws {
        let sysfs = try FakeSysfs()
        defer { sysfs.remove() }
        #expect(throws: Topology.ReadError.self) { try Topology(sysfsRoot: sysfs.root) }
        do {
            _ = try Topology(sysfsRoot: sysfs.root)
        } catch {
            #expect(error.description.contains("\(sysfs.root)/online"))
        }
    }

    @Test func missingDirectoryIsOneNodeWithAllMemory() throws {
        let topology = try Topology(sysfsRoot: "/nonexistent-\(UUID().uuidString)")
        #expect(topology.nodeIDs == [0])
        let node = try #require(topology.node(0))
        #expect(node.memTotal > 0)
        #expect(node.hasCPUs)
    }

    @Test func describedTopologyIsSortedByID() {
        let topology = Topology(nodes: [Topology.Node(id: 2, memTotal: 1), Topology.Node(id: 0, memTotal: 0)])
        #expect(topology.nodeIDs == [0, 2])
        #expect(topology.memoryNodeIDs == [2])
    }

    @Test func thisMachineHasNodeZero() throws {
        let topology = try Topology()
        #expect(topology.nodeIDs.contains(0))
        #expect(topology.memoryNodeIDs.contains(0))
    }
}
