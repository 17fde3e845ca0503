// PolicyCounter is part of this protocol's contract: a policy module gets it with FBMMPolicy.
@_exported import FBMMProtocol
import FBMMCore

/// A file as a maintaining policy sees it on each pass.
///
/// It holds no descriptor: `open()` gives the file's memory when the pass
/// works on it. A mount may hold far more files than the daemon may hold
/// descriptors (an idle file keeps none), so a pass that opened them all at
/// once would take every descriptor the daemon has from the users it serves:
/// open one, work on it, let it go.
public struct MaintainedFile: Sendable {
    /// The file's inode number in the mount.
    public var inode: UInt64
    public var name: String
    /// Its size when the pass began (it may grow meanwhile).
    public var size: UInt64
    /// The process that maps the file's memfd itself (a process-owned file,
    /// handed out by the broker), or nil when only the daemon touches it.
    public var ownerPID: Int32?
    /// Whether the file is idle: no handle open and no process owning it, so
    /// nothing reaches its memory, which stays as it is (pages, nodes) until
    /// `generation` changes. A policy may keep what it learnt of an idle file
    /// and skip opening it again.
    public var idle: Bool
    /// Changes whenever an idle file is used again.
    public var generation: UInt64
    private let opener: @Sendable () -> MemoryFile?

    public init(inode: UInt64, name: String, size: UInt64, ownerPID: Int32?, idle: Bool = false,
                generation: UInt64 = 0, open: @escaping @Sendable () -> MemoryFile?) {
        self.inode = inode
        self.name = name
        self.size = size
        self.ownerPID = ownerPID
        self.idle = idle
        self.generation = generation
        opener = open
    }

    /// A file whose memory is already open (never idle).
    public init(inode: UInt64, name: String, memory: MemoryFile, ownerPID: Int32?) {
        self.init(inode: inode, name: name, size: (try? memory.size()) ?? 0, ownerPID: ownerPID, open: { memory })
    }

    /// The file's memory (nil: removed meanwhile, or it cannot be opened now).
    /// An idle file gets a descriptor for the caller, closed with the last
    /// reference to what this returns.
    public func open() -> MemoryFile? { opener() }
}

/// A policy that also acts after placement: the daemon runs `maintain` on a
/// thread of its own per mount, every `maintenanceInterval` seconds, with the
/// files that use this policy instance. It may move pages (move_pages on the
/// daemon's own window of the memfd: programs keep running) and re-place
/// ranges. Policies that do not conform are never called back.
public protocol MaintainingPolicy: MemoryManagementPolicy {
    /// Seconds between the starts of two passes (read again after each pass,
    /// so a knob change takes effect at once).
    var maintenanceInterval: Double { get }
    /// One pass. Must not throw: a pass that fails counts the failure and
    /// tries again next time.
    func maintain(files: [MaintainedFile])
    /// Counters for `fbmm stat` (`policy_counters`).
    var counters: [String: PolicyCounter] { get }
    /// Changes a knob while mounted (`fbmm set DIR KEY=VALUE`); throws the
    /// user-facing reason a key or value is refused.
    func setKnob(_ key: String, _ value: String) throws(PolicyError)
    /// The mount is going away: release kernel resources, end the thread.
    func shutdown()
    var isShutDown: Bool { get }
}

extension MaintainingPolicy {
    public func maintain(files: [MaintainedFile]) {}
    public var counters: [String: PolicyCounter] { [:] }
    public func setKnob(_ key: String, _ value: String) throws(PolicyError) {
        throw .unknownKey(policy: Self.name, key: key, known: [])
    }
    public func shutdown() {}
    public var isShutDown: Bool { false }
}
