import FBMMCore
import FBMMPolicy
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The memory behind one regular file: its memfd, and how far its placement
/// policy has been applied.
///
/// Placement is applied ahead of use: before a write, truncate or fallocate
/// grows the file, the new range gets its kernel policy, so the first fault
/// on any page — by the daemon's pwrite or by an application's mapping —
/// already lands where the policy says.
final class FileBacking: Sendable {
    /// The largest window the daemon maps at once to apply a policy.
    private static var maxWindow: UInt64 { 64 << 30 }
    private var maxWindow: UInt64 { Self.maxWindow }

    /// The memfd (or file of the private tmpfs), made when the file first
    /// needs memory: an empty file (a lock file, a `touch`, 100,000 of them in
    /// a directory) holds no descriptor, as on tmpfs it holds no page. The
    /// daemon's descriptors are bounded (RLIMIT_NOFILE: 20,000 on some
    /// hosts), files are not. On the private tmpfs a file keeps a name there,
    /// and an idle one (no handle open, not a process's arena) is parked:
    /// its descriptor closed, its size and allocation remembered, opened
    /// again by name when it is next used; so files with data hold no
    /// descriptor either.
    private struct Slot {
        var open: MemoryFile?
        /// Its name on the private tmpfs (nil: a memfd, or nothing made yet).
        var instanceName: String?
        /// While parked: its extent (nothing but a holder of the backing file
        /// itself can change it meanwhile: see `handedOut`).
        var parked: (size: UInt64, allocated: UInt64)?
    }
    private let file = Locked(Slot())
    /// How many times a parked file was opened again: while a file stays
    /// parked nothing reaches its memory, so a maintaining policy that saw
    /// it parked at one count may trust what it saw until the count moves.
    private let unparked = Atomic<UInt64>(0)
    /// The broker handed the backing file itself to a program, which may
    /// keep it (and map it) after closing its handles: parked or not, the
    /// file may change, so it is never idle and its extent is read afresh.
    private let handedOut = Atomic<Bool>(false)
    private let name: String
    private let instance: TmpfsInstance?
    private struct PlacementState {
        var policy: any MemoryManagementPolicy
        var placedUpTo: UInt64
    }
    private let state: Locked<PlacementState>

    /// What this file commits the mount to, as `ledger` counts it.
    let commitment = Atomic<UInt64>(0)
    /// The user its commitment counts against (`-o user-capacity`), and the
    /// owner its backing file gets on a private tmpfs with a user quota.
    let owner: Atomic<UInt32>
    private let ownerGroup: Atomic<UInt32>
    private let ledger: CommitLedger?

    init(name: String, policy: any MemoryManagementPolicy, on instance: TmpfsInstance? = nil,
         ledger: CommitLedger? = nil, owner: (uid: UInt32, gid: UInt32) = (0, 0)) {
        self.name = name
        self.instance = instance
        self.ledger = ledger
        self.owner = Atomic(owner.uid)
        ownerGroup = Atomic(owner.gid)
        state = Locked(PlacementState(policy: policy, placedUpTo: 0))
    }

    /// The memory goes with the last reference (the namespace's record, open
    /// handles, the pool): so does the commitment.
    deinit {
        ledger?.released(commitment.load(ordering: .acquiring), owner: owner.load(ordering: .acquiring))
        if let instance, let name = file.withLock({ $0.instanceName }) { instance.remove(name) }
    }

    /// chown in the mount: the commitment moves to the new user, and the
    /// backing file (where the kernel keeps a user quota) changes hands too.
    func changeOwner(uid: UInt32, gid: UInt32) {
        file.withLock { slot in
            ledger?.transfer(self, to: uid)
            owner.store(uid, ordering: .releasing)
            ownerGroup.store(gid, ordering: .releasing)
            guard let instance, instance.userQuota != nil, let made = slot.open ?? reopened(slot) else { return }
            try? instance.chown(made.descriptor, to: (uid, gid))
        }
    }

    /// The file's memory, made now if it has none yet (what grows, maps,
    /// writes or hands the memory out uses this).
    var memory: MemoryFile {
        get throws(SystemError) {
            try file.withLock { (slot: inout Slot) throws(SystemError) -> MemoryFile in
                if let made = slot.open { return made }
                let new: MemoryFile
                if let instance, let parkedName = slot.instanceName {
                    new = try MemoryFile(reopening: parkedName, name: name, on: instance)
                    unparked.add(1, ordering: .releasing)
                } else if let instance {
                    new = try MemoryFile(name: name, on: instance,
                                         owner: (owner.load(ordering: .acquiring), ownerGroup.load(ordering: .acquiring)))
                } else {
                    new = try MemoryFile(name: name)
                }
                slot.open = new
                slot.instanceName = new.instanceName
                slot.parked = nil
                return new
            }
        }
    }

    /// The file's memory if it has any (what only looks uses this: an empty
    /// file is size 0 with no blocks, nothing resident). A parked file is
    /// opened for the caller only (it stays parked; the descriptor goes
    /// with the caller's reference).
    var existing: MemoryFile? { file.withLock { $0.open ?? reopened($0) } }

    /// A parked file opened for the caller alone (nil: not parked, or gone).
    private func reopened(_ slot: Slot) -> MemoryFile? {
        guard let instance, let parkedName = slot.instanceName else { return nil }
        return try? MemoryFile(reopening: parkedName, name: name, on: instance)
    }

    /// Whether the file was ever given memory (open or parked).
    var hasMemory: Bool { file.withLock { $0.open != nil || $0.instanceName != nil } }

    /// Whether the file is idle now (parked, and nobody holds its backing
    /// file), and how often it was opened again after being parked (see
    /// `unparked`), read together.
    var idleness: (idle: Bool, generation: UInt64) {
        file.withLock { slot in
            (slot.parked != nil && !handedOut.load(ordering: .acquiring), unparked.load(ordering: .acquiring))
        }
    }

    /// The broker gives a program the backing file itself.
    func handOut() { handedOut.store(true, ordering: .releasing) }

    /// Size and allocated bytes (one fstat; remembered while parked).
    func extent() -> (size: UInt64, allocated: UInt64) {
        file.withLock { slot in
            if let made = slot.open { return (try? made.extent()) ?? (0, 0) }
            if handedOut.load(ordering: .acquiring), let instance, let name = slot.instanceName,
               let now = instance.extent(of: name) {
                return now
            }
            return slot.parked ?? (0, 0)
        }
    }

    /// Closes the daemon's descriptor of an idle file that can be opened
    /// again by name (on the private tmpfs); its extent is remembered.
    func park() {
        file.withLock { slot in
            guard let made = slot.open, slot.instanceName != nil, let extent = try? made.extent() else { return }
            slot.parked = extent
            slot.open = nil
        }
    }

    var policy: any MemoryManagementPolicy { state.withLock { $0.policy } }

    /// Applies the policy to [placed, size) if the file is about to grow past
    /// what was placed. Returns the number of mbind calls made.
    @discardableResult
    func ensurePlaced(upTo size: UInt64, context: FileContext) throws(SystemError) -> Int {
        let page = UInt64(pageSize)
        let target = (size + page - 1) / page * page
        return try state.withLock { (s) throws(SystemError) -> Int in
            guard target > s.placedUpTo else { return 0 }
            let range = s.placedUpTo..<target
            let count = try Self.apply(s.policy, to: range, of: memory, context: context)
            s.placedUpTo = target
            return count
        }
    }

    /// Replaces the policy (xattr override, migration) and re-applies it to
    /// everything placed so far. Existing pages stay where they are; new ones follow.
    func replacePolicy(_ policy: any MemoryManagementPolicy, context: FileContext) throws(SystemError) {
        try state.withLock { (s) throws(SystemError) in
            s.policy = policy
            if s.placedUpTo > 0 {
                _ = try Self.apply(policy, to: 0..<s.placedUpTo, of: memory, context: context)
            }
        }
    }

    private static func apply(_ policy: any MemoryManagementPolicy, to range: Range<UInt64>,
                              of memory: MemoryFile, context: FileContext) throws(SystemError) -> Int {
        // Windows of bounded size: a file may be sparse and terabytes long.
        var count = 0
        var start = range.lowerBound
        while start < range.upperBound {
            let end = min(range.upperBound, start + maxWindow)
            let part = start..<end
            let placements = policy.place(part, of: context)
            if !placements.isEmpty {
                let window = try memory.map(part)
                let page = UInt64(pageSize)
                for placement in placements {
                    // mbind works on whole pages: a third-party policy's unaligned
                    // bounds are widened to the pages they touch.
                    let lower = placement.range.lowerBound / page * page
                    let upper = (placement.range.upperBound + page - 1) / page * page
                    let clipped = (lower..<max(lower, upper)).clamped(to: part)
                    try window.bind(clipped, policy: placement.policy)
                }
                count += placements.count
            }
            start = end
        }
        return count
    }

    /// Bytes resident per node, found page by page with move_pages on a
    /// short-lived window over the file's data ranges (holes are never touched).
    func residentByNode() throws(SystemError) -> [Int: UInt64] {
        var result: [Int: UInt64] = [:]
        try forEachDataWindow(in: nil) { (window, pages) throws(SystemError) in
            for status in try window.nodesOfPages(pages) where status >= 0 {
                result[Int(status), default: 0] += UInt64(pageSize)
            }
        }
        return result
    }

    /// Calls `body` with a populated window over each run of present pages in
    /// the data ranges (widened to whole pages) of the file within `range`
    /// (nil: all of it). Holes are never faulted in, so looking allocates
    /// nothing (short of a punch between mincore and the populate).
    private func forEachDataWindow(in range: Range<UInt64>?,
                                   _ body: (FileMapping, Range<UInt64>) throws(SystemError) -> Void) throws(SystemError) {
        let page = UInt64(pageSize)
        guard let memory = existing else { return }  // never had memory: nothing resident
        for data in try memory.dataRanges(in: range) {
            let aligned = (data.lowerBound / page * page)..<((data.upperBound + page - 1) / page * page)
            let window = try memory.map(aligned)
            for run in try window.mapPresent(aligned) {
                try body(window, run)
            }
        }
    }

    /// Moves resident pages in `range` (nil: all) to `node`. Returns bytes moved.
    func migrate(_ range: Range<UInt64>?, to node: Int) throws(SystemError) -> UInt64 {
        var moved: UInt64 = 0
        let page = UInt64(pageSize)
        try forEachDataWindow(in: range) { (window, aligned) throws(SystemError) in
            let before = try window.nodesOfPages(aligned)
            var after = try window.migrate(aligned, to: Int32(node))
            // A page being written at that instant may report EBUSY/EAGAIN:
            // try those again a few times rather than leave them behind.
            for _ in 0..<3 where after.contains(where: { $0 == -EBUSY || $0 == -EAGAIN }) {
                after = try window.migrate(aligned, to: Int32(node))
            }
            for (old, new) in zip(before, after) where old >= 0 && new == Int32(node) && old != new {
                moved += page
            }
        }
        return moved
    }
}
