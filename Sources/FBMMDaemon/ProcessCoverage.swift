import FBMMProtocol
import FBMMCore
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// How much of a process's memory the mount really holds, and where the rest
/// is. Why: a program can run under `fbmm run` with little of its memory in
/// the mount (memory its allocator maps before the shim sees it, the brk
/// heap, stacks, a shim that fell back) and nothing else tells the user.
///
/// Read from `/proc/PID/smaps`, one line per mapping: the pages the process
/// maps from this mount's backing files (matched by device and inode, as
/// the kernel names them there), its brk heap and stacks, and from
/// `/proc/PID/status` its anonymous and shared-memory totals.

/// A backing file as smaps names it: "MAJOR:MINOR INODE".
struct BackingIdentity: Hashable {
    var major: UInt32
    var minor: UInt32
    var inode: UInt64

    init(major: UInt32, minor: UInt32, inode: UInt64) {
        self.major = major
        self.minor = minor
        self.inode = inode
    }

    /// From a descriptor's fstat (Linux's dev_t encoding).
    init?(descriptor: Int32) {
        var st = stat()
        guard fstat(descriptor, &st) == 0 else { return nil }
        let dev = UInt64(st.st_dev)
        major = UInt32(truncatingIfNeeded: ((dev >> 8) & 0xfff) | ((dev >> 32) & ~UInt64(0xfff)))
        minor = UInt32(truncatingIfNeeded: (dev & 0xff) | ((dev >> 12) & ~UInt64(0xff)))
        inode = UInt64(st.st_ino)
    }
}

enum ProcessCoverage {
    /// The usage of process `pid`, or nil when it is gone or maps nothing of
    /// the mount (a dead owner whose pid now names another process).
    static func usage(of pid: Int32, backings: Set<BackingIdentity>) -> ProcessUsage? {
        guard let smaps = readText("/proc/\(pid)/smaps") else { return nil }
        var mount: UInt64 = 0, heap: UInt64 = 0, stack: UInt64 = 0
        var current: (inMount: Bool, heap: Bool, stack: Bool) = (false, false, false)
        var mapsMount = false
        for line in smaps.split(separator: "\n", omittingEmptySubsequences: true) {
            if let header = mappingHeader(line) {
                current = (backings.contains(header.identity), header.name == "[heap]", header.name.hasPrefix("[stack"))
                mapsMount = mapsMount || current.inMount
                continue
            }
            guard line.hasPrefix("Rss:"), let kb = kilobytes(line) else { continue }
            if current.inMount { mount &+= kb << 10 }
            if current.heap { heap &+= kb << 10 }
            if current.stack { stack &+= kb << 10 }
        }
        guard mapsMount, let status = readText("/proc/\(pid)/status") else { return nil }
        var fields: [Substring: UInt64] = [:]
        var command = ""
        for line in status.split(separator: "\n") {
            if line.hasPrefix("Name:") { command = line.dropFirst(5).trimmingCharacters(in: .whitespaces) }
            if let colon = line.firstIndex(of: ":"), let kb = kilobytes(line) { fields[line[..<colon]] = kb << 10 }
        }
        let anon = fields["RssAnon"] ?? 0, shmem = fields["RssShmem"] ?? 0
        let otherShmem = shmem > mount ? shmem - mount : 0
        let total = mount + anon + otherShmem
        return ProcessUsage(pid: pid, command: command, mount_bytes: mount, anon_bytes: anon, heap_bytes: heap,
                            stack_bytes: stack, other_shmem_bytes: otherShmem, file_bytes: fields["RssFile"] ?? 0,
                            coverage: total > 0 ? Double(mount) / Double(total) : 0)
    }

    /// "start-end perms offset MAJ:MIN inode [name]": a mapping's first line.
    static func mappingHeader(_ line: Substring) -> (identity: BackingIdentity, name: Substring)? {
        let parts = line.split(separator: " ", maxSplits: 5, omittingEmptySubsequences: true)
        guard parts.count >= 5, parts[0].contains("-"), !parts[0].hasSuffix(":") else { return nil }
        let dev = parts[3].split(separator: ":")
        guard dev.count == 2, let major = UInt32(dev[0], radix: 16), let minor = UInt32(dev[1], radix: 16),
              let inode = UInt64(parts[4]) else { return nil }
        let name = parts.count > 5 ? parts[5].drop(while: { $0 == " " }) : ""
        return (BackingIdentity(major: major, minor: minor, inode: inode), name)
    }

    /// The number of "Key:   123 kB".
    static func kilobytes(_ line: Substring) -> UInt64? {
        guard line.hasSuffix(" kB"), let colon = line.firstIndex(of: ":") else { return nil }
        return UInt64(line[line.index(after: colon)...].dropLast(3).trimmingCharacters(in: .whitespaces))
    }
}
