import FBMMCore

/// What a policy knows about the file it places.
public struct FileContext: Sendable, Hashable {
    /// The file's inode number in the mount: stable for the file's life.
    public var inode: UInt64
    /// The file's name (the shim names its arenas `COMM.PID.SEQ`).
    public var name: String
    /// The file's size after the change being placed.
    public var size: UInt64

    public init(inode: UInt64, name: String, size: UInt64) {
        self.inode = inode
        self.name = name
        self.size = size
    }
}

/// One option a policy accepts, for validation and for `fbmm policies`.
public struct PolicyKey: Sendable, Hashable {
    /// The key as written in `-o KEY=VALUE`.
    public var name: String
    /// The default as the user would write it, or nil when the key is required.
    public var defaultValue: String?
    /// What the key means, for `fbmm policies`.
    public var help: String

    /// A key; without `default:` it is required (the policy's `init` enforces that).
    public init(_ name: String, default defaultValue: String? = nil, _ help: String) {
        self.name = name
        self.defaultValue = defaultValue
        self.help = help
    }
}

/// A memory-management policy: the "MFS" of the kernel prototype, as a Swift type.
///
/// The daemon creates one instance per mount (and one per file that overrides
/// the mount's policy with the `user.fbmm.policy` xattr). It calls `place` when
/// a range of a file comes into being — at create, and whenever the file grows,
/// whether by write, truncate, fallocate or the shim growing its arena — and
/// applies the answer as the file's shared memory policy, so pages faulted by
/// any process mapping the file follow it.
///
/// Thread-safety: `place` is called from FUSE worker threads, concurrently for
/// different files (and for the same file: two growths may race). It may keep
/// state across calls (the tiered policy charges a mount-wide fast budget), so
/// that state is its own to lock, and the answer for one range must not
/// depend on the order in which concurrent calls take that lock beyond what a
/// budget implies. It must not block (no I/O, no lock held across a system
/// call): it runs on the path of a `write` or `ftruncate` of a user's program.
public protocol MemoryManagementPolicy: Sendable, CustomStringConvertible {
    /// The name users choose it by (`--policy NAME`).
    static var name: String { get }
    /// One line for `fbmm policies`.
    static var summary: String { get }
    /// Every option it accepts; the registry refuses any other key before `init`.
    static var keys: [PolicyKey] { get }

    /// Validates `options` against `topology` and builds the policy; throws one
    /// user-facing error naming the problem.
    init(options: PolicyOptions, topology: Topology) throws(PolicyError)

    /// The kernel policies for `range` of `file`, covering the range (the daemon
    /// leaves uncovered parts with the process-default policy).
    func place(_ range: Range<UInt64>, of file: FileContext) -> [Placement]

    /// The nodes this policy may put memory on (for reporting and checks).
    var allowedNodes: [Int] { get }

    /// Whether its files must be backed by huge pages (the mount then marks
    /// every mapping of them MADV_HUGEPAGE, as `huge=always`). Default false.
    var wantsHugePages: Bool { get }

    /// The smallest run of the file it places apart from its neighbours, when
    /// that is finer than a huge page (weighted interleave's unit, a tiering
    /// policy moving single pages): a huge page would be placed whole, so the
    /// mount then gives its files small pages unless `-o huge=` says
    /// otherwise. nil (the default): placement is the same at any page size.
    var placementGranularity: UInt64? { get }
}

extension MemoryManagementPolicy {
    /// The policy's name; override it with the canonical spec, defaults filled in
    /// (`bind,nodes=0:1`), which `fbmm stat` and `user.fbmm.policy` show.
    public var description: String { Self.name }

    public var wantsHugePages: Bool { false }
    public var placementGranularity: UInt64? { nil }
}
