import CFBMMSys
import Foundation
import FBMMCore
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// The running executable's own path (to start the daemon and find the shim).
func executablePath() -> String {
    var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
    let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
    return n > 0 ? cString(buffer) : CommandLine.arguments[0]
}

func absolutePath(_ path: String) -> String {
    var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
    if realpath(path, &buffer) != nil { return cString(buffer) }
    if path.hasPrefix("/") { return path }
    var cwd = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
    return getcwd(&cwd, cwd.count) != nil ? cString(cwd) + "/" + path : path
}

/// The broker socket of the fbmm mount at `directory`, read from its root's
/// `user.fbmm.broker` xattr; nil when `directory` is not an fbmm mount root.
func brokerPath(ofMount directory: String) -> String? {
    var buffer = [UInt8](repeating: 0, count: 4096)
    let n = fbmm_getxattr(directory, FBMM_XATTR_BROKER, &buffer, buffer.count)
    guard n > 0 else { return nil }
    return String(decoding: buffer[0..<n], as: UTF8.self)
}

/// Talks to the broker of the mount at `directory`, attaching `file` (the
/// open file the request is about, which proves we hold it).
func brokerCall(mount directory: String, _ request: fbmm_request, attaching file: Int32 = -1) throws -> (fbmm_reply, FileDescriptor?) {
    guard let path = brokerPath(ofMount: directory) else {
        throw CLIError("\(directory) is not an fbmm mount (no \(FBMM_XATTR_BROKER) attribute)")
    }
    var request = request
    request.magic = UInt16(FBMM_BROKER_MAGIC)
    request.version = UInt16(FBMM_BROKER_VERSION)
    var reply = fbmm_reply()
    var fd: Int32 = -1
    guard fbmm_broker_call(path, &request, file, &reply, &fd) == 0 else {
        throw CLIError("cannot reach the fbmm daemon of \(directory) at \(path): \(Errno(rawValue: errno))")
    }
    return (reply, fd >= 0 ? FileDescriptor(rawValue: fd) : nil)
}

/// Reads a whole fd from offset 0.
func readAll(_ fd: FileDescriptor, size: Int) throws -> [UInt8] {
    var bytes = [UInt8](repeating: 0, count: size)
    var done = 0
    while done < size {
        let n = try bytes.withUnsafeMutableBytes { raw in
            try fd.read(fromAbsoluteOffset: Int64(done), into: UnsafeMutableRawBufferPointer(rebasing: raw[done...]))
        }
        if n == 0 { break }
        done += n
    }
    return Array(bytes[0..<done])
}

func formatBytes(_ bytes: UInt64) -> String {
    let units = ["B", "K", "M", "G", "T"]
    var value = Double(bytes)
    var unit = 0
    while value >= 1024 && unit < units.count - 1 { value /= 1024; unit += 1 }
    return unit == 0 ? "\(bytes)B" : String(format: "%.1f%@", value, units[unit])
}

func writeStderr(_ text: String) {
    var line = text
    if !line.hasSuffix("\n") { line += "\n" }
    FileHandle.standardError.write(Data(line.utf8))
}


/// A NUL-terminated C buffer as a String.
func cString(_ buffer: [CChar]) -> String {
    String(decoding: buffer.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

/// The daemon serving the mount at `path`: the process listening on its
/// broker socket, as the kernel reports it (SO_PEERCRED of a connection:
/// the listener's pid), not a number read out of the socket's file name.
/// nil when nobody listens (a dead daemon).
func daemonPID(ofMount path: String) -> pid_t? {
    guard let socket = brokerPath(ofMount: path) else { return nil }
    let fd = fbmm_connect_seqpacket(socket)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var pid: pid_t = 0, uid: uid_t = 0, gid: gid_t = 0
    return fbmm_peer_cred(fd, &pid, &uid, &gid) == 0 && pid > 0 ? pid : nil
}
