#if canImport(Glibc)
import Glibc
#endif

/// The machine's NUMA layout as sysfs describes it.
///
/// Read from a directory so tests can describe any topology with a few files
/// (`Topology(sysfsRoot: tmpdir)`), and so the daemon sees exactly what the
/// kernel will honour in mbind.
public struct Topology: Sendable, Hashable {
    public struct Node: Sendable, Hashable {
        public var id: Int
        /// Total and free memory of the node in bytes (0 for a memory-less node).
        public var memTotal: UInt64
        public var memFree: UInt64
        public var cpus: [Int]
        /// SLIT distances to every node, indexed like `Topology.nodes`' ids.
        public var distances: [Int: Int]

        public init(id: Int, memTotal: UInt64, memFree: UInt64 = 0, cpus: [Int] = [], distances: [Int: Int] = [:]) {
            self.id = id
            self.memTotal = memTotal
            self.memFree = memFree
            self.cpus = cpus
            self.distances = distances
        }

        public var hasMemory: Bool { memTotal > 0 }
        public var hasCPUs: Bool { !cpus.isEmpty }
    }

    public var nodes: [Node]

    public init(nodes: [Node]) { self.nodes = nodes.sorted { $0.id < $1.id } }

    public static let sysfsRoot = "/sys/devices/system/node"

    public enum ReadError: Error, CustomStringConvertible {
        case unreadable(String)
        public var description: String {
            switch self { case .unreadable(let path): return "cannot read NUMA topology from \(path)" }
        }
    }

    /// Reads the online nodes under `sysfsRoot`. A kernel built without NUMA has
    /// no such directory: that is one node 0 with all of memory.
    public init(sysfsRoot: String = Topology.sysfsRoot) throws(ReadError) {
        guard let online = readText("\(sysfsRoot)/online") else {
            if access(sysfsRoot, F_OK) != 0 {
                let pages = UInt64(sysconf(Int32(_SC_PHYS_PAGES))) * UInt64(pageSize)
                let free = UInt64(sysconf(Int32(_SC_AVPHYS_PAGES))) * UInt64(pageSize)
                self.init(nodes: [Node(id: 0, memTotal: pages, memFree: free, cpus: Array(0..<Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))), distances: [0: 10])])
                return
            }
            throw .unreadable("\(sysfsRoot)/online")
        }
        var nodes: [Node] = []
        for id in parseCPUList(online) {
            let dir = "\(sysfsRoot)/node\(id)"
            let meminfo = readText("\(dir)/meminfo") ?? ""
            let cpus = parseCPUList(readText("\(dir)/cpulist") ?? "")
            let distanceValues = (readText("\(dir)/distance") ?? "").split(whereSeparator: \.isWhitespace).compactMap { Int($0) }
            let onlineIDs = parseCPUList(online)
            var distances: [Int: Int] = [:]
            for (index, value) in distanceValues.enumerated() where index < onlineIDs.count {
                distances[onlineIDs[index]] = value
            }
            nodes.append(Node(id: id,
                              memTotal: meminfoValue(meminfo, "MemTotal"),
                              memFree: meminfoValue(meminfo, "MemFree"),
                              cpus: cpus, distances: distances))
        }
        self.init(nodes: nodes)
    }

    public var nodeIDs: [Int] { nodes.map(\.id) }
    public var memoryNodeIDs: [Int] { nodes.filter(\.hasMemory).map(\.id) }
    public func node(_ id: Int) -> Node? { nodes.first { $0.id == id } }
}

/// Parses the kernel's list format: "0-3,8,10-11".
public func parseCPUList(_ text: String) -> [Int] {
    var result: [Int] = []
    for part in text.split(whereSeparator: { $0 == "," || $0.isWhitespace }) {
        let bounds = part.split(separator: "-")
        if bounds.count == 1, let value = Int(bounds[0]) {
            result.append(value)
        } else if bounds.count == 2, let low = Int(bounds[0]), let high = Int(bounds[1]), low <= high {
            result.append(contentsOf: low...high)
        }
    }
    return result
}

/// "Node 0 MemTotal:  1234 kB" -> 1234 * 1024.
func meminfoValue(_ meminfo: String, _ key: String) -> UInt64 {
    for line in meminfo.split(separator: "\n") {
        let fields = line.split(whereSeparator: \.isWhitespace)
        if let index = fields.firstIndex(where: { $0 == "\(key):" }), index + 1 < fields.count,
           let value = UInt64(fields[index + 1]) {
            return fields.count > index + 2 && fields[index + 2] == "kB" ? value * 1024 : value
        }
    }
    return 0
}

/// The whole content of a small text file, or nil.
public func readText(_ path: String) -> String? {
    guard let file = fopen(path, "r") else { return nil }
    defer { fclose(file) }
    var bytes: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 4096)
    while true {
        let n = fread(&buffer, 1, buffer.count, file)
        if n <= 0 { break }
        bytes.append(contentsOf: buffer[0..<n])
    }
    return String(decoding: bytes, as: UTF8.self)
}

/// The fields of /proc/TID/stat after "(comm)" (which may hold spaces and
/// parentheses itself): index 0 is the state, 11 and 12 utime and stime.
/// Nil when the task is gone.
public func procStatFields(_ tid: Int32) -> [Substring]? {
    guard let text = readText("/proc/\(tid)/stat"), let close = text.lastIndex(of: ")") else { return nil }
    return text[text.index(after: close)...].split(separator: " ")
}

/// utime + stime of a task (a thread, or a whole process by its pid) from
/// /proc/TID/stat, in seconds; nil when it is gone.
public func taskCPUSeconds(_ tid: Int32) -> Double? {
    // After "comm)": state is field 3, utime 14, stime 15 -> indices 11 and 12 here.
    guard let fields = procStatFields(tid), fields.count > 12, let user = Double(fields[11]), let system = Double(fields[12]) else { return nil }
    return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
}
