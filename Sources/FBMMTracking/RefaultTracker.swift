import CFBMMSys
import FBMMCore
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Refault tracking, for kernels without DAMON (Debian 12's 6.1), where
/// soft-dirty sees writes only. It samples as DAMON does, one page per
/// region per sample: the sampled pages are taken out of the process's page
/// table with `process_madvise(MADV_PAGEOUT)` (reclaim unmaps each page,
/// and with no swap to write shmem to keeps it where it is, data and node
/// unchanged), and a window later `/proc/PID/pagemap` shows which came back:
/// any read or write in the window refaulted it (a minor fault). A region's
/// score is the share of its samples found used, given to all its pages.
///
/// Regions are runs of the process's mappings of the file, at least 64 KiB
/// and at most `maxRegions` in all, so the cost is bounded whatever the
/// file's size: taking a page out costs ~45 µs while the process runs on
/// another CPU (TLB shootdowns), so 512 regions and 4 samples cost ~90 ms
/// of the daemon's CPU per scan; each sampled page the program uses costs it
/// one minor fault. Resolution is the region (256 KiB for a 128 MiB table).
///
/// Only while no swap is active: with swap, reclaim would write the pages
/// out. Checked at every scan; a scan with swap on reports nothing.
public final class RefaultTracker: AccessTracker {
    public let name = "refault"

    /// process_madvise (5.10+) and pidfd_open (5.3+) exist, and no swap is on.
    public static var isAvailable: Bool { syscallsExist && fbmm_swap_active() == 0 }

    private static let syscallsExist: Bool = {
        // An invalid pidfd: EBADF where the calls exist, ENOSYS where not.
        var addr: UInt64 = 0, len: UInt64 = 0
        let pageout = fbmm_pageout(-1, &addr, &len, 1) < 0 && errno == EBADF
        let pidfd = fbmm_pidfd_open(-1) < 0 && errno == EINVAL
        return pageout && pidfd
    }()

    private struct State {
        var window: Double = 0.050
        var cpu: Double = 0
        var random: UInt64 = 0x9E3779B97F4A7C15
    }
    private let state = Locked(State())
    public let samples: Int
    public let maxRegions: Int

    public init(samples: Int = 4, maxRegions: Int = 512) {
        self.samples = samples
        self.maxRegions = maxRegions
    }

    public var cpuSeconds: Double { state.withLock { $0.cpu } }
    public func stop() {}
    /// With swap active, reclaim would write sampled pages out instead of
    /// keeping them: no sampling then.
    public var pausedReason: String? { fbmm_swap_active() == 0 ? nil : "swap is active" }

    /// One region: pages [first, first+count) of a mapping starting at
    /// `address`, file page `filePage`, of target `target`.
    private struct Region {
        var target: Int
        var address: UInt64
        var filePage: Int
        var count: Int
    }

    public func scan(_ files: [TrackedFile]) -> [UInt64: [UInt8]] {
        guard fbmm_swap_active() == 0 else { return [:] }
        let started = threadCPUSeconds()
        var (window, random) = state.withLock { ($0.window, $0.random) }
        let page = UInt64(pageSize)
        let targets = mappedFiles(files)
        let mapped = targets.reduce(0) { $0 + $1.vmas.reduce(0) { $0 + Int(($1.end - $1.start) / page) } }
        // Regions of 16 pages or more (a read refaults 64 KiB around it).
        let regionPages = max(16, ((mapped + maxRegions - 1) / maxRegions + 15) / 16 * 16)
        var regions: [Region] = []
        for (t, target) in targets.enumerated() {
            for vma in target.vmas {
                let pages = Int((vma.end - vma.start) / page), filePage = Int(vma.fileOffset / page)
                var at = 0
                while at < pages && filePage + at < target.file.pageCount {
                    let count = min(regionPages, pages - at, target.file.pageCount - filePage - at)
                    regions.append(Region(target: t, address: vma.start + UInt64(at) * page, filePage: filePage + at, count: count))
                    at += count
                }
            }
        }
        var pidfds: [Int32: Int32] = [:], pagemaps: [Int32: Int32] = [:]
        for pid in Set(targets.map(\.file.pid)) {
            let pidfd = fbmm_pidfd_open(pid)
            let pagemap = open("/proc/\(pid)/pagemap", O_RDONLY | O_CLOEXEC)
            if pidfd >= 0 && pagemap >= 0 {
                pidfds[pid] = pidfd
                pagemaps[pid] = pagemap
            } else {
                if pidfd >= 0 { close(pidfd) }
                if pagemap >= 0 { close(pagemap) }
            }
        }
        defer { for fd in Array(pidfds.values) + Array(pagemaps.values) { close(fd) } }

        var hits = [UInt8](repeating: 0, count: regions.count)
        var picked = [UInt64](repeating: 0, count: regions.count)
        var sampled = 0, used = 0, sleptCPU = 0.0
        for _ in 0..<samples {
            // One page per region, at random, out of the page tables.
            for (pid, pidfd) in pidfds {
                var addrs: [UInt64] = [], lens: [UInt64] = []
                for (r, region) in regions.enumerated() where targets[region.target].file.pid == pid {
                    random ^= random << 13; random ^= random >> 7; random ^= random << 17
                    picked[r] = region.address + (random % UInt64(region.count)) * page
                    addrs.append(picked[r])
                    lens.append(page)
                }
                _ = fbmm_pageout(pidfd, addrs, lens, addrs.count)
            }
            let beforeSleep = threadCPUSeconds()
            usleep(useconds_t(window * 1e6))
            sleptCPU += threadCPUSeconds() - beforeSleep
            // Those back in the page table were used.
            for (r, region) in regions.enumerated() {
                guard let fd = pagemaps[targets[region.target].file.pid] else { continue }
                var entry: UInt64 = 0
                guard pread(fd, &entry, 8, off_t(picked[r] / page * 8)) == 8 else { continue }
                sampled += 1
                if entry & (1 << 63) != 0 {
                    hits[r] += 1
                    used += 1
                }
            }
        }
        var result: [UInt64: [UInt8]] = [:]
        for target in targets { result[target.file.key] = [UInt8](repeating: 0, count: target.file.pageCount) }
        for (r, region) in regions.enumerated() {
            let score = UInt8(min(255, Int(hits[r]) * 255 / max(1, samples)))
            guard score > 0 else { continue }
            result[targets[region.target].file.key]!.withUnsafeMutableBufferPointer { out in
                for i in region.filePage..<(region.filePage + region.count) { out[i] = score }
            }
        }
        window = adaptedWindow(window, used: used, of: sampled, shortest: 0.002)
        let spent = threadCPUSeconds() - started - sleptCPU
        state.withLock {
            $0.window = window
            $0.random = random
            $0.cpu += max(0, spent)
        }
        return result
    }
}
