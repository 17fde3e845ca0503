#if canImport(Glibc)
import Glibc
#endif

/// CPU time of the calling thread, in seconds.
public func threadCPUSeconds() -> Double { clockSeconds(CLOCK_THREAD_CPUTIME_ID) }

/// Seconds on the monotonic clock (intervals, deadlines, timing).
public func monotonicSeconds() -> Double { clockSeconds(CLOCK_MONOTONIC) }

private func clockSeconds(_ clock: clockid_t) -> Double {
    var ts = timespec()
    clock_gettime(clock, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}
