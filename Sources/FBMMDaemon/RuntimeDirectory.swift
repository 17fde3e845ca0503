import CFBMMSys
import FBMMCore
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Where a mount's runtime files (broker socket, default log) live: /run/fbmm
/// for root, /tmp/fbmm-UID otherwise.
///
/// Why it is checked: whoever can write in it can replace the broker socket
/// with their own, and /tmp is everyone's. So the directory is created 0700,
/// and one that already exists must be a real directory (not a symlink)
/// owned by us with no group or other write permission (non-root: no group
/// or other access at all); anything else is refused, never used.
public enum RuntimeDirectory {
    public static var path: String { getuid() == 0 ? "/run/fbmm" : "/tmp/fbmm-\(getuid())" }

    /// The directory, created or checked.
    public static func prepare() throws(DaemonError) -> String {
        let directory = path
        let uid = getuid()
        if mkdir(directory, uid == 0 ? 0o755 : 0o700) != 0 && errno != EEXIST {
            throw .mountpoint("cannot create runtime directory \(directory): \(Errno(rawValue: errno))")
        }
        var st = stat()
        guard lstat(directory, &st) == 0 else {
            throw .mountpoint("cannot examine runtime directory \(directory): \(Errno(rawValue: errno))")
        }
        let forbidden: UInt32 = uid == 0 ? 0o022 : 0o077
        guard st.st_mode & S_IFMT == S_IFDIR, st.st_uid == uid, st.st_mode & forbidden == 0 else {
            let kind = st.st_mode & S_IFMT == S_IFDIR ? "directory" : "non-directory"
            throw .mountpoint("runtime directory \(directory) is not private (a \(kind) of uid \(st.st_uid), mode "
                              + "\(String(st.st_mode & 0o7777, radix: 8))): remove it, or make it uid \(uid)'s, mode "
                              + (uid == 0 ? "0755" : "0700"))
        }
        return directory
    }

    /// The broker socket of the daemon `pid`: named after it, so that a
    /// socket whose daemon is gone can be told apart (and `fbmm umount` can
    /// wait for the daemon it stopped).
    static func socketName(daemon pid: pid_t) -> String { "broker-\(pid).sock" }

    /// The daemon pid a broker socket path is named after (nil: not one).
    public static func daemonPID(ofSocket path: String) -> pid_t? {
        guard let name = path.split(separator: "/").last, name.hasPrefix("broker-"), name.hasSuffix(".sock"),
              let pid = pid_t(name.dropFirst("broker-".count).dropLast(".sock".count)), pid > 0 else { return nil }
        return pid
    }

    /// Whether `pid` runs: a zombie (a killed daemon whose parent has not
    /// reaped it yet) serves nothing any more.
    static func isAlive(_ pid: pid_t) -> Bool {
        guard let state = procStatFields(pid)?.first else { return false }
        return state != "Z" && state != "X"
    }

    /// Removes broker sockets that no daemon serves any more (a daemon that
    /// was killed cannot remove its own): a socket named after a pid that is
    /// gone and that refuses connections.
    public static func removeStaleSockets(in directory: String) {
        guard let dir = opendir(directory) else { return }
        defer { closedir(dir) }
        while let entry = readdir(dir) {
            let name = entryName(entry)
            guard let pid = daemonPID(ofSocket: name), !isAlive(pid) else { continue }
            let socketPath = "\(directory)/\(name)"
            var st = stat()
            guard lstat(socketPath, &st) == 0, st.st_mode & S_IFMT == S_IFSOCK, st.st_uid == getuid() else { continue }
            let probe = fbmm_connect_seqpacket(socketPath)
            if probe >= 0 { close(probe); continue }
            if errno == ECONNREFUSED { unlink(socketPath) }
        }
    }
}
