import FBMMCore
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// What an fbmm mount is, as the kernel's mount table says: the CLI asks it
/// of a path (umount, bench) and the daemon of its own mount point (the
/// device its files have, which the broker checks handed-back fds against).
public enum FBMMMount {
    /// Whether `path` is the mount point of an fbmm filesystem, live or dead
    /// (read from mountinfo, with its escapes undone).
    public static func isMount(_ path: String) -> Bool {
        device(of: path, fstype: "fuse.fbmm") != nil
    }

    /// The st_dev the kernel gives files on the mount at `path`, from mountinfo
    /// ("36 25 0:45 / /mnt ... - fuse.fbmm fbmm ...": major:minor in field 3).
    public static func device(of path: String, fstype: String? = nil) -> UInt64? {
        guard let text = readText("/proc/self/mountinfo") else { return nil }
        var resolved = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let canonical = realpath(path, &resolved) != nil
            ? String(decoding: resolved.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) : path
        var found: UInt64?
        for line in text.split(separator: "\n") {
            let fields = line.split(separator: " ")
            guard fields.count > 4, unescapeMountPath(String(fields[4])) == canonical else { continue }
            if let fstype, !line.contains(" - \(fstype) ") { continue }
            let numbers = fields[2].split(separator: ":")
            if numbers.count == 2, let major = UInt32(numbers[0]), let minor = UInt32(numbers[1]) {
                found = makeDevice(major: UInt64(major), minor: UInt64(minor))  // the last (topmost) mount wins
            }
        }
        return found
    }
}

/// mountinfo escapes space, tab, newline and backslash as \ooo.
public func unescapeMountPath(_ text: String) -> String {
    var bytes: [UInt8] = []
    var utf8 = Array(text.utf8)[...]
    while let byte = utf8.first {
        if byte == UInt8(ascii: "\\"), utf8.count >= 4,
           let value = UInt8(String(decoding: utf8.dropFirst().prefix(3), as: UTF8.self), radix: 8) {
            bytes.append(value)
            utf8 = utf8.dropFirst(4)
        } else {
            bytes.append(byte)
            utf8 = utf8.dropFirst()
        }
    }
    return String(decoding: bytes, as: UTF8.self)
}
