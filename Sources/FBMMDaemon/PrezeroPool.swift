import CFBMMSys
import FBMMCore
import FUSEKit
import Logging
import Synchronization
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// The mount's pre-zeroed pool (`-o prezero=SIZE`).
///
/// Why: the application's first touch of shared memory costs about twice an
/// anonymous fault, while mapping pages that already exist and are zero costs
/// a third of one. So one daemon thread keeps pages of each enrolled arena
/// allocated (by the file's policy: the write fault that allocates them goes
/// through the memfd's shared policy) and zero, and the shim hands them out
/// with MAP_POPULATE and no round trip. Freed pages come back to be zeroed in
/// place. The protocol is in fbmm_pool.h; the bit work in fbmm_pool.c.
///
/// Bound: the clean (ready) pages of all arenas together never exceed
/// `bound`; the daemon is the only one that adds clean pages, and it checks
/// the sum before each pass. Each arena gets at most an equal share, so one
/// idle program cannot keep the whole pool.
final class PrezeroPool: Sendable {
    let bound: UInt64
    /// Bytes of each arena's window (the shim reads it from `user.fbmm.prezero`).
    let windowBytes: UInt64
    let huge: HugePageMode
    let eventDescriptor: Int32
    private let arenas = Locked<[InodeNumber: PoolArena]>([:])
    private let totals = Locked(Totals())
    private let stopping = Atomic<Bool>(false)
    private let running = Atomic<Bool>(false)
    private let logger: Logger
    /// Nodes whose free memory gates filling (the policy's nodes).
    private let allowedNodes: Set<Int>

    struct Totals {
        var zeroed: UInt64 = 0, filled: UInt64 = 0, punched: UInt64 = 0
        var handed: UInt64 = 0, misses: UInt64 = 0, returned: UInt64 = 0, kicks: UInt64 = 0
        var enrolled: UInt64 = 0, fillStops: UInt64 = 0, revoked: UInt64 = 0
    }

    static let page = UInt64(pageSize)

    init(bound: UInt64, huge: HugePageMode, allowedNodes: Set<Int>, logger: Logger) throws(SystemError) {
        self.bound = bound / Self.page * Self.page
        let maxWindow = UInt64(FBMM_POOL_MAX_PAGES) * Self.page
        // A window as large as the bound (an arena alone may use all of it),
        // in whole huge pages, within what the bitmaps can describe.
        let wanted = (bound + (2 << 20) - 1) / (2 << 20) * (2 << 20)
        self.windowBytes = min(max(wanted, 2 << 20), maxWindow)
        self.huge = huge
        self.allowedNodes = allowedNodes
        self.logger = logger
        eventDescriptor = try retryingSyscall("eventfd", "prezero pool") { fbmm_eventfd() }
    }

    deinit { close(eventDescriptor) }

    var windowPages: UInt64 { windowBytes / Self.page }

    /// Enrols a process's arena: maps its control block and window for good
    /// (until the file is released), and reads which pages the process
    /// already uses (a fork child's copies). Returns the window's page count.
    func enroll(inode: InodeNumber, backing: FileBacking) throws(SystemError) -> UInt64 {
        let memory = try backing.memory
        // The window is mapped for good: the program (which holds the file)
        // must not be able to pull the file's end under it. A memfd is sealed;
        // a tmpfs file cannot be, so PoolArena guards its mappings instead (a
        // touch past a shrunk end retires the arena rather than crash us).
        if memory.sealable { try memory.sealAgainstShrinking() }
        // The header is the program's to write: read it once, check it all.
        let header = try memory.read(at: 0, count: MemoryLayout<fbmm_pool_ctl>.offset(of: \.header_pad)!)
        let field = { (index: Int) -> UInt64 in
            header.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: index * 8, as: UInt64.self) }
        }
        let (magic, pages, pageBytes, windowOffset) = (field(0), field(1), field(2), field(3))
        let expected = windowPages
        guard header.count >= 32, magic == FBMM_POOL_MAGIC, pages == expected, pageBytes == Self.page,
              windowOffset >= UInt64(FBMM_POOL_CTL_BYTES), windowOffset % FBMM_POOL_WINDOW_ALIGN == 0,
              windowOffset <= UInt64.max - windowBytes else {
            throw SystemError("prezero enrol", "control block of another version, size or layout", errno: .invalidArgument)
        }
        guard try backing.memory.size() >= windowOffset + windowBytes else {
            throw SystemError("prezero enrol", "arena shorter than its pool window", errno: .invalidArgument)
        }
        let arena = try PoolArena(backing: backing, windowOffset: windowOffset, windowBytes: windowBytes, huge: huge)
        fbmm_pool_enroll(arena.control, arena.emptyMap, expected)
        let replaced = arenas.withLock { $0.updateValue(arena, forKey: inode) }
        if let replaced { retire(replaced) }
        totals.withLock { $0.enrolled += 1 }
        kick()
        return expected
    }

    /// Bytes allocated inside an enrolled arena's window (ready pages, pages
    /// being settled, and what the program holds from the pool); nil if the
    /// file is not enrolled.
    func windowAllocated(_ inode: InodeNumber) -> UInt64? {
        guard let arena = arenas.withLock({ $0[inode] }) else { return nil }
        let window = arena.windowOffset..<(arena.windowOffset + windowBytes)
        return (try? arena.backing.memory.dataRanges(in: window))?.reduce(0) { $0 + UInt64($1.count) }
    }

    /// Where an enrolled arena's window ends (nil if not enrolled): the file
    /// must not be truncated below it.
    func windowEnd(_ inode: InodeNumber) -> UInt64? {
        arenas.withLock { $0[inode].map { $0.windowOffset + windowBytes } }
    }

    /// The file's policy changed: its ready pages may sit on nodes the new
    /// policy does not allow, so the zeroing thread takes them back, frees
    /// them, and refills by the new policy. (Pages the program holds are
    /// its memory: they move only with `fbmm migrate`, as without a pool.)
    func policyChanged(_ inode: InodeNumber) {
        guard let arena = arenas.withLock({ $0[inode] }) else { return }
        arena.revoke.store(true, ordering: .releasing)
        kick()
    }

    /// Forgets an arena whose file was released: its pages go with the file.
    func remove(inode: InodeNumber) {
        if let arena = arenas.withLock({ $0.removeValue(forKey: inode) }) { retire(arena) }
    }

    /// Keeps a departing arena's shim counters in the mount's totals. They
    /// are the program's to write (any value at all): added wrapping, shown
    /// for what they are, never trusted for a decision.
    private func retire(_ arena: PoolArena) {
        let c = arena.shimCounters
        totals.withLock {
            $0.handed &+= c.handed
            $0.returned &+= c.returned
            $0.misses &+= c.misses
            $0.kicks &+= c.kicks
        }
    }

    private func kick() {
        var one: UInt64 = 1
        _ = write(eventDescriptor, &one, 8)
    }

    func start() {
        guard !running.exchange(true, ordering: .relaxed) else { return }
        _ = startThread { [self] in serve() }
    }

    func stop() {
        stopping.store(true, ordering: .relaxed)
        kick()
    }

    /// The zeroing loop. Awake, it passes over every arena; after 20 ms
    /// without work it marks itself asleep (shims then kick the eventfd) and
    /// waits, rescanning every half second regardless.
    private func serve() {
        var lastWork = monotonicSeconds()
        var lastRoomCheck = 0.0
        var room = true
        var backoff: [InodeNumber: Double] = [:]
        while !stopping.load(ordering: .relaxed) {
            let list = arenas.withLock { Array($0) }
            let now = monotonicSeconds()
            if now - lastRoomCheck > 0.1 {
                room = nodesHaveRoom()
                lastRoomCheck = now
            }
            let boundPages = bound / Self.page
            let share = max(boundPages / UInt64(max(1, list.count)), min(boundPages, 128))
            var clean = list.map { $0.value.cleanPages }
            var worked = false
            for (index, (inode, arena)) in list.enumerated() {
                if arena.poisoned {
                    logger.notice("prezero: inode \(inode) was shrunk under the pool by its program: left out of the pool")
                    remove(inode: inode)
                    clean[index] = 0
                    continue
                }
                // Freed pages are zeroed back into the pool as long as the whole
                // pool stays within the bound (cheap: the pages exist). Filling
                // empty pages (slow: they are allocated) is per arena, up to an
                // equal share, and starts only below half of it, so that an
                // arena's pool is refilled by what it frees rather than by
                // allocating while freed pages are punched.
                let total = clean.reduce(0, &+)
                let headroom = boundPages > total ? boundPages - total : 0
                let budget = clean[index] + headroom
                let target = arena.fillTarget(share: share)
                if arena.cleanPages < target / 2 { arena.filling = true }
                if arena.cleanPages >= target { arena.filling = false }
                let fillTo = arena.filling ? min(target, budget) : 0
                if arena.revoke.exchange(false, ordering: .acquiring) {
                    let revoked = fbmm_pool_revoke(arena.control, arena.emptyMap, windowPages, arena.descriptor,
                                                   arena.windowOffset)
                    clean[index] = 0
                    arena.cleanPages = 0
                    arena.filling = true
                    totals.withLock { $0.revoked &+= Self.bytes(revoked) }
                }
                let mayFill = room && (backoff[inode].map { now > $0 } ?? true)
                var pass = fbmm_pool_pass()
                fbmm_pool_run(arena.control, arena.emptyMap, arena.windowBase, windowPages,
                              arena.descriptor, arena.windowOffset, budget, fillTo, mayFill ? 512 : 0, &pass)
                arena.cleanPages = pass.clean_pages
                clean[index] = pass.clean_pages
                if pass.fill_errno != 0 {
                    backoff[inode] = now + 1
                    logger.notice("prezero: filling stopped: \(Errno(rawValue: pass.fill_errno)); retrying in 1 s")
                }
                if pass.zeroed_pages + pass.filled_pages + pass.punched_pages > 0 {
                    worked = true
                    totals.withLock {
                        $0.zeroed &+= Self.bytes(pass.zeroed_pages)
                        $0.filled &+= Self.bytes(pass.filled_pages)
                        $0.punched &+= Self.bytes(pass.punched_pages)
                        if pass.fill_errno != 0 { $0.fillStops &+= 1 }
                    }
                }
            }
            backoff = backoff.filter { $0.value > now }
            if worked {
                lastWork = now
                continue
            }
            if now - lastWork < 0.02 {
                if fbmm_poll_in(eventDescriptor, 1) > 0 { fbmm_eventfd_drain(eventDescriptor) }
                continue
            }
            // Asleep: set the flags, then look once more, so that a shim that
            // freed pages before seeing the flag is not left waiting.
            for (_, arena) in list {
                fbmm_pool_set_sleeping(arena.control, 1)
                fbmm_pool_trim(arena.emptyMap, windowPages, arena.descriptor, arena.windowOffset)
            }
            let pending = list.contains { fbmm_pool_dirty_pages($0.value.control, windowPages) > 0 }
            if !pending, fbmm_poll_in(eventDescriptor, 500) > 0 { fbmm_eventfd_drain(eventDescriptor) }
            for (_, arena) in list { fbmm_pool_set_sleeping(arena.control, 0) }
        }
    }

    /// Filling must never be what exhausts a node (a bound policy would then
    /// OOM-kill a program): fill only while the policy's nodes have at least
    /// twice the pool's bound free, plus 64 MiB.
    private func nodesHaveRoom() -> Bool {
        guard let topology = try? Topology() else { return false }
        let free = topology.nodes.filter { allowedNodes.contains($0.id) }.reduce(UInt64(0)) { $0 + $1.memFree }
        return free >= 2 * bound + (64 << 20)
    }

    /// Pages as bytes, saturating (a count may come from the program).
    static func bytes(_ pages: UInt64) -> UInt64 {
        let (product, overflow) = pages.multipliedReportingOverflow(by: page)
        return overflow ? .max : product
    }

    /// What `fbmm stat` shows under "prezero".
    func usage() -> [String: UInt64] {
        let list = arenas.withLock { Array($0.values) }
        var handed: UInt64 = 0, returned: UInt64 = 0, misses: UInt64 = 0, kicks: UInt64 = 0
        var ready: UInt64 = 0, pending: UInt64 = 0
        for arena in list {
            pending &+= fbmm_pool_dirty_pages(arena.control, windowPages)
            // The shim's counters are untrusted (its program can write them): wrapping sums.
            let c = arena.shimCounters
            handed &+= c.handed; returned &+= c.returned; misses &+= c.misses; kicks &+= c.kicks
            ready &+= arena.cleanPages
        }
        let t = totals.withLock { $0 }
        return [
            "bound_bytes": bound,
            "window_bytes": windowBytes,
            "ready_bytes": Self.bytes(ready),
            "pending_bytes": Self.bytes(pending),
            "arenas": UInt64(list.count),
            "enrolled_total": t.enrolled,
            "filled_bytes": t.filled,
            "zeroed_bytes": t.zeroed,
            "punched_bytes": t.punched,
            "handed_out_bytes": Self.bytes(t.handed &+ handed),
            "returned_bytes": Self.bytes(t.returned &+ returned),
            "misses": t.misses &+ misses,
            "kicks": t.kicks &+ kicks,
            "fill_stops": t.fillStops,
            "revoked_bytes": t.revoked,
        ]
    }
}

/// One enrolled arena: the daemon's lasting mappings of its control block
/// and window, and the daemon-private bitmap of empty window pages.
final class PoolArena: @unchecked Sendable {
    // Touched by the zeroing thread only, except `clean` (atomic: stat reads
    // it) and the mappings (immutable).
    let backing: FileBacking
    /// The backing's memory (an enrolled arena has some: enrolment made it).
    let memory: MemoryFile
    let windowOffset: UInt64
    private let controlMapping: FileMapping
    private let windowMapping: FileMapping
    let control: UnsafeMutablePointer<fbmm_pool_ctl>
    let emptyMap: UnsafeMutablePointer<UInt64>
    /// Ready pages after the last pass: written by the zeroing thread, read
    /// by `fbmm stat` on a broker thread (hence atomic).
    private let clean = Atomic<UInt64>(0)
    var cleanPages: UInt64 {
        get { clean.load(ordering: .relaxed) }
        set { clean.store(newValue, ordering: .relaxed) }
    }
    /// Filling towards the arena's target (hysteresis: from half of it to all).
    var filling = true

    /// Pages a new arena is filled to before it has taken any: most
    /// processes are short-lived (a compiler under `make`) and take well
    /// under a MiB from the pool; filling each one's equal share of the
    /// bound (tens of MiB) up front spent ~90% of the daemon's CPU during a
    /// `make -j2`, allocating and zeroing pages that were freed unused.
    static let initialFillPages: UInt64 = 512

    /// How far to fill this arena: twice what it has taken from the pool
    /// so far (pages handed out plus misses), from `initialFillPages` up to
    /// its equal `share`. The counts are the program's to write, so they
    /// only size the fill: a program that inflates them gets its share,
    /// which it could always have.
    func fillTarget(share: UInt64) -> UInt64 {
        let c = shimCounters
        let demand = c.handed.addingReportingOverflow(c.misses)
        let wanted = demand.overflow || demand.partialValue > UInt64.max / 2 ? UInt64.max : demand.partialValue * 2
        return min(share, max(Self.initialFillPages, wanted))
    }
    /// Set when the file's policy changed: take the ready pages back.
    let revoke = Atomic<Bool>(false)

    init(backing: FileBacking, windowOffset: UInt64, windowBytes: UInt64, huge: HugePageMode) throws(SystemError) {
        self.backing = backing
        let memory = try backing.memory
        self.memory = memory
        self.windowOffset = windowOffset
        controlMapping = try memory.map(0..<UInt64(FBMM_POOL_CTL_BYTES))
        windowMapping = try memory.map(windowOffset..<(windowOffset + windowBytes))
        // Never MADV_HUGEPAGE: a huge folio filled into the window would fill
        // the holes around it too, which a lazy fork copy may still need;
        // the window serves mappings under 2 MiB anyway.
        if huge == .never { try? windowMapping.adviseHugePages(false) }
        control = controlMapping.base.bindMemory(to: fbmm_pool_ctl.self, capacity: 1)
        emptyMap = .allocate(capacity: Int(FBMM_POOL_WORDS))
        emptyMap.initialize(repeating: 0, count: Int(FBMM_POOL_WORDS))
        if memory.sealable {
            guards = []
        } else {
            fbmm_guard_install()
            guards = [controlMapping, windowMapping].map { fbmm_guard_add($0.base, Int($0.range.count)) }
            guard !guards.contains(-1) else {
                guards.forEach(fbmm_guard_remove)
                emptyMap.deallocate()
                throw SystemError("prezero enrol", "no SIGBUS guard slot left", errno: .noSpace)
            }
        }
    }

    deinit {
        guards.forEach(fbmm_guard_remove)
        emptyMap.deallocate()
    }

    /// The SIGBUS guard slots of an unsealable file's mappings (fbmm_tmpfs.h).
    private let guards: [Int32]
    /// Whether the program shrank its file under our mappings: the arena
    /// must go (a scratch page stands where the touched one vanished).
    var poisoned: Bool { guards.contains { fbmm_guard_hit($0) != 0 } }

    /// What the shim reports in the control block (pages; untrusted, reporting only).
    var shimCounters: (handed: UInt64, returned: UInt64, misses: UInt64, kicks: UInt64) {
        var c: (handed: UInt64, returned: UInt64, misses: UInt64, kicks: UInt64) = (0, 0, 0, 0)
        fbmm_pool_counters(control, &c.handed, &c.returned, &c.misses, &c.kicks)
        return c
    }

    var windowBase: UnsafeMutablePointer<CChar> { windowMapping.base.assumingMemoryBound(to: CChar.self) }
    var descriptor: Int32 { memory.descriptor.rawValue }
}
