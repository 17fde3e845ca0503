import Foundation

// What the daemon and the CLI exchange: the stat document (`fbmm stat
// --json`, sent over the broker socket in answer to FBMM_OP_STAT), kept in a
// module of its own so that the commands that only read it (stat, top,
// umount, bench) do not link the daemon. The broker's wire header is C
// (CFBMMSys/fbmm_broker.h), shared with the shim.

/// The document `fbmm stat --json` prints (keys are part of the CLI contract).
public struct MountStatistics: Codable, Sendable {
    public struct NodeUsage: Codable, Sendable {
        public var resident_bytes: UInt64
        public var total_bytes: UInt64
        public var free_bytes: UInt64

        public init(resident_bytes: UInt64, total_bytes: UInt64, free_bytes: UInt64) {
            self.resident_bytes = resident_bytes
            self.total_bytes = total_bytes
            self.free_bytes = free_bytes
        }
    }
    public struct FileUsage: Codable, Sendable {
        public var name: String
        public var path: String
        public var size: UInt64
        public var allocated_bytes: UInt64
        public var resident_bytes: UInt64
        public var nodes: [String: UInt64]
        public var owner_pid: Int32
        public var policy: String
        public var open_handles: Int
        /// Bytes allocated in the file's pre-zeroed pool window (absent if not enrolled).
        public var prezero_window_bytes: UInt64? = nil

        public init(name: String, path: String, size: UInt64, allocated_bytes: UInt64, resident_bytes: UInt64, nodes: [String: UInt64], owner_pid: Int32, policy: String, open_handles: Int, prezero_window_bytes: UInt64? = nil) {
            self.name = name
            self.path = path
            self.size = size
            self.allocated_bytes = allocated_bytes
            self.resident_bytes = resident_bytes
            self.nodes = nodes
            self.owner_pid = owner_pid
            self.policy = policy
            self.open_handles = open_handles
            self.prezero_window_bytes = prezero_window_bytes
        }
    }
    public struct Counters: Codable, Sendable {
        public var files_created: UInt64
        public var placements: UInt64
        public var broker_handouts: UInt64
        public var broker_refusals: UInt64
        public var migrations: UInt64
        public var migrated_bytes: UInt64

        public init(files_created: UInt64, placements: UInt64, broker_handouts: UInt64, broker_refusals: UInt64, migrations: UInt64, migrated_bytes: UInt64) {
            self.files_created = files_created
            self.placements = placements
            self.broker_handouts = broker_handouts
            self.broker_refusals = broker_refusals
            self.migrations = migrations
            self.migrated_bytes = migrated_bytes
        }
    }
    public var mountpoint: String
    public var daemon_pid: Int32
    public var policy: String
    public var nodes: [String: NodeUsage]
    public var files: [FileUsage]
    public var pool: [String: UInt64]
    public var counters: Counters
    /// The policy's own counters (tiered: migrations, scans, tracker); empty for others.
    public var policy_counters: [String: PolicyCounter]? = nil
    /// The pre-zeroed pool: bound, ready bytes, what was zeroed and handed
    /// out (absent with prezero=0).
    public var prezero: [String: UInt64]? = nil
    /// The huge-page mode of the mount's file memory.
    public var huge: String? = nil
    /// Every live process that owns files here: how much of its memory the
    /// mount holds and where the rest is (ProcessCoverage.swift).
    public var processes: [ProcessUsage]? = nil
    /// What backs the files: "private tmpfs (size=...,huge=...)" or "memfd (why)".
    public var backing: String? = nil

    public func json(pretty: Bool = true) throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = pretty ? [.prettyPrinted, .sortedKeys] : [.sortedKeys]
        return try encoder.encode(self)
    }

    public init(mountpoint: String, daemon_pid: Int32, policy: String, nodes: [String: NodeUsage], files: [FileUsage], pool: [String: UInt64], counters: Counters, policy_counters: [String: PolicyCounter]? = nil, prezero: [String: UInt64]? = nil, huge: String? = nil, processes: [ProcessUsage]? = nil, backing: String? = nil) {
        self.mountpoint = mountpoint
        self.daemon_pid = daemon_pid
        self.policy = policy
        self.nodes = nodes
        self.files = files
        self.pool = pool
        self.counters = counters
        self.policy_counters = policy_counters
        self.prezero = prezero
        self.huge = huge
        self.processes = processes
        self.backing = backing
    }
}

public struct ProcessUsage: Codable, Sendable, Equatable {
    public var pid: Int32
    public var command: String
    /// Resident pages the process maps from the mount's files.
    public var mount_bytes: UInt64
    /// Private anonymous memory outside the mount (RssAnon), of which the
    /// brk heap and the stacks.
    public var anon_bytes: UInt64
    public var heap_bytes: UInt64
    public var stack_bytes: UInt64
    /// Shared memory outside the mount (RssShmem less what the mount holds).
    public var other_shmem_bytes: UInt64
    /// File-backed pages (binaries, libraries, mapped files): not anonymous
    /// memory, so not counted against coverage.
    public var file_bytes: UInt64
    /// mount / (mount + anon + other shmem), 0...1.
    public var coverage: Double

    public init(pid: Int32, command: String, mount_bytes: UInt64, anon_bytes: UInt64, heap_bytes: UInt64, stack_bytes: UInt64, other_shmem_bytes: UInt64, file_bytes: UInt64, coverage: Double) {
        self.pid = pid
        self.command = command
        self.mount_bytes = mount_bytes
        self.anon_bytes = anon_bytes
        self.heap_bytes = heap_bytes
        self.stack_bytes = stack_bytes
        self.other_shmem_bytes = other_shmem_bytes
        self.file_bytes = file_bytes
        self.coverage = coverage
    }
}

/// One value in `fbmm stat`'s `policy_counters`.
public enum PolicyCounter: Codable, Sendable, Hashable, CustomStringConvertible {
    case count(UInt64)
    case real(Double)
    case text(String)

    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if let value = try? container.decode(UInt64.self) { self = .count(value) }
        else if let value = try? container.decode(Double.self) { self = .real(value) }
        else { self = .text(try container.decode(String.self)) }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .count(let v): try container.encode(v)
        case .real(let v): try container.encode(v)
        case .text(let v): try container.encode(v)
        }
    }

    public var description: String {
        switch self {
        case .count(let v): return String(v)
        case .real(let v): return String(format6(v))
        case .text(let v): return v
        }
    }
}

public func format6(_ value: Double) -> String {
    let scaled = (value * 1_000_000).rounded() / 1_000_000
    return String(scaled)
}

