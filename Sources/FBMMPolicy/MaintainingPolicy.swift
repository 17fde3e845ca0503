// PolicyCounter is part of this protocol's contract: a policy module gets it with FBMMPolicy.
@_exported import FBMMProtocol
import FBMMCore

/// A file as a maintaining policy sees it on each pass.
public struct MaintainedFile: Sendable {
    /// The file's inode number in the mount.
    public var inode: UInt64
    public var name: String
    public var memory: MemoryFile
    /// The process that maps the file's memfd itself (a process-owned file,
    /// handed out by the broker), or nil when only the daemon touches it.
    public var ownerPID: Int32?

    public init(inode: UInt64, name: String, memory: MemoryFile, ownerPID: Int32?) {
        self.inode = inode
        self.name = name
        self.memory = memory
        self.ownerPID = ownerPID
    }
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
