import FBMMCore
import Synchronization

/// What the mount's files commit it to (`-o capacity`), as one counter.
///
/// Why a counter: admitting a growth used to sum two `fstat`s per file under
/// the namespace lock (O(files) per write, setattr or fallocate), and the
/// check was not atomic with the growth, so concurrent growths could
/// together pass the capacity. Now each `FileBacking` records its own
/// commitment (its size, or its allocation if larger) and a growth reserves
/// the difference in `total` with a compare-and-swap before it happens: two
/// growths can never both take the last bytes.
///
/// Programs hold their backing descriptor and may grow it behind the
/// daemon's back (ftruncate, fallocate). The file being grown is looked at
/// on each reservation (one `fstat`), and every file at most once a second
/// (`reconcile`), raising records to what the files really hold; records are
/// lowered only where the daemon itself shrinks a file (setattr), and given
/// back whole when a file's memory goes (its `FileBacking` is released).
///
/// With `-o user-capacity` the same commitments are also summed per user
/// (the file's owner, `FileBacking.owner`), under a small lock, so that a
/// growth is refused when its user's sum would pass the bound; a chown
/// moves the file's commitment between users.
final class CommitLedger: Sendable {
    private let total = Atomic<UInt64>(0)
    private let lastReconcile = Atomic<UInt64>(0)  // monotonic ms
    /// Committed bytes per uid; kept only when `perUserCounted`.
    private let perUser = Mutex<[UInt32: UInt64]>([:])
    private let perUserCounted: Bool

    init(perUser: Bool = false) { perUserCounted = perUser }

    /// Adds `delta` to `uid`'s sum unless that passes `limit`.
    private func charge(_ uid: UInt32, _ delta: UInt64, limit: UInt64? = nil) -> Bool {
        guard perUserCounted, delta > 0 else { return true }
        return perUser.withLock { sums in
            let now = sums[uid] ?? 0
            let (sum, overflow) = now.addingReportingOverflow(delta)
            if let limit, overflow || sum > limit { return false }
            sums[uid] = sum
            return true
        }
    }

    private func refund(_ uid: UInt32, _ delta: UInt64) {
        guard perUserCounted, delta > 0 else { return }
        perUser.withLock { sums in
            let left = (sums[uid] ?? 0) >= delta ? sums[uid]! - delta : 0
            sums[uid] = left == 0 ? nil : left
        }
    }

    /// A file changes hands: its commitment moves to `uid`.
    func transfer(_ backing: FileBacking, to uid: UInt32) {
        guard perUserCounted else { return }
        let from = backing.owner.load(ordering: .acquiring)
        guard from != uid else { return }
        let amount = backing.commitment.load(ordering: .acquiring)
        refund(from, amount)
        _ = charge(uid, amount)
    }

    /// Bytes committed by the files (extended attributes are counted by the namespace).
    var committed: UInt64 { total.load(ordering: .acquiring) }

    /// What a file commits the mount to: its size (any process mapping it
    /// may fault in every page up to it), or its allocation if larger
    /// (fallocate with KEEP_SIZE).
    static func actual(_ backing: FileBacking) -> UInt64 {
        let extent = backing.extent()
        return max(extent.size, extent.allocated)
    }

    /// Raises `backing`'s commitment to `size`, or refuses (false) when the
    /// total plus `others` (bytes committed outside the files) would pass
    /// `limit`. nil limit: counted, never refused.
    /// `userLimit`: the bound on the owner's sum (nil: none); a refusal for
    /// it answers `.userLimit`, for `limit` `.mountLimit`.
    func reserve(_ backing: FileBacking, to size: UInt64, others: UInt64, limit: UInt64?,
                 userLimit: UInt64? = nil) -> Refusal? {
        takeIn(backing)
        while true {
            let current = backing.commitment.load(ordering: .acquiring)
            if size <= current { return nil }
            let delta = size - current
            let owner = backing.owner.load(ordering: .acquiring)
            guard charge(owner, delta, limit: userLimit) else { return .userLimit }
            var seen = total.load(ordering: .relaxed)
            while true {
                if let limit {
                    let (sum, overflow) = seen.addingReportingOverflow(delta)
                    if overflow || sum.addingReportingOverflow(others).overflow || sum + others > limit {
                        refund(owner, delta)
                        return .mountLimit
                    }
                }
                let (exchanged, now) = total.compareExchange(expected: seen, desired: seen &+ delta,
                                                             ordering: .acquiringAndReleasing)
                if exchanged { break }
                seen = now
            }
            if backing.commitment.compareExchange(expected: current, desired: size, ordering: .acquiringAndReleasing).exchanged {
                return nil
            }
            total.subtract(delta, ordering: .relaxed)  // another growth of this file moved first: again
            refund(owner, delta)
        }
    }

    enum Refusal { case mountLimit, userLimit }

    /// After a growth ended (or failed) or a shrink: the record follows the
    /// file down to what it holds. (A growth of the same file reserved in
    /// that instant may be undercounted until it happens and `takeIn` or
    /// `reconcileIfDue` sees it: at worst one growth's worth, briefly.)
    func settle(_ backing: FileBacking) {
        let now = Self.actual(backing)
        var current = backing.commitment.load(ordering: .acquiring)
        while now < current {
            let (exchanged, seen) = backing.commitment.compareExchange(expected: current, desired: now,
                                                                        ordering: .acquiringAndReleasing)
            if exchanged {
                total.subtract(current - now, ordering: .relaxed)
                refund(backing.owner.load(ordering: .acquiring), current - now)
                return
            }
            current = seen
        }
    }

    /// A file whose memory is gone gives its whole commitment back.
    func released(_ amount: UInt64, owner: UInt32) {
        if amount > 0 { total.subtract(amount, ordering: .relaxed) }
        refund(owner, amount)
    }

    /// Takes in what `backing` grew behind the daemon's back.
    func takeIn(_ backing: FileBacking) {
        let now = Self.actual(backing)
        var current = backing.commitment.load(ordering: .acquiring)
        while now > current {
            let (exchanged, seen) = backing.commitment.compareExchange(expected: current, desired: now,
                                                                        ordering: .acquiringAndReleasing)
            if exchanged {
                total.add(now - current, ordering: .relaxed)
                _ = charge(backing.owner.load(ordering: .acquiring), now - current)
                return
            }
            current = seen
        }
    }

    /// At most once a second: every file's growth behind the daemon's back
    /// taken in (O(files), amortised over the second).
    func reconcileIfDue(_ files: () -> [FileBacking]) {
        let now = UInt64(monotonicSeconds() * 1000)
        let last = lastReconcile.load(ordering: .relaxed)
        guard now >= last + 1000,
              lastReconcile.compareExchange(expected: last, desired: now, ordering: .relaxed).exchanged else { return }
        files().forEach(takeIn)
    }
}
