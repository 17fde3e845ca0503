import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// How long a command waits on a mount's daemon before it gives up
/// (`FBMM_DAEMON_TIMEOUT`, seconds; default 60).
var daemonDeadline: Double {
    ProcessInfo.processInfo.environment["FBMM_DAEMON_TIMEOUT"].flatMap(Double.init).map { max(0.1, $0) } ?? 60
}

/// Whether the call a watchdog guards has come back.
private final class DaemonWatch: Sendable {
    let done = Atomic<Bool>(false)
}

/// Runs `body`, which waits on the daemon of `mount` (its FUSE requests, its
/// broker socket), and ends the command with one line if no answer comes in
/// `daemonDeadline` seconds.
///
/// Why a watchdog that exits: a daemon that is stopped (SIGSTOP, a
/// debugger) or wedged answers neither its socket nor FUSE, and a thread in
/// a FUSE request waits in the kernel where only SIGKILL ends the wait.
/// `exit_group` is that for every thread of the process, so a watchdog
/// thread ending the process is the one way out; `stat`, `top`, `set` and
/// `migrate` would otherwise hang with no word, as `df` does on a dead NFS
/// server.
func waitingOnDaemon<T>(of mount: String, _ body: () throws -> T) rethrows -> T {
    let watch = DaemonWatch()
    let seconds = daemonDeadline
    let line = "fbmm: the daemon of \(mount) gave no answer in \(Int(seconds.rounded())) s "
        + "(stopped or wedged? `fbmm umount --force \(mount)` detaches the mount)\n"
    Thread.detachNewThread {
        let end = Date().addingTimeInterval(seconds)
        while Date() < end {
            if watch.done.load(ordering: .acquiring) { return }
            usleep(20_000)
        }
        guard !watch.done.load(ordering: .acquiring) else { return }
        _ = line.withCString { write(STDERR_FILENO, $0, strlen($0)) }
        _exit(1)
    }
    defer { watch.done.store(true, ordering: .releasing) }
    return try body()
}
