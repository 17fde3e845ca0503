import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Why the dynamic loader would not load the shim into `program`, found
/// before exec: a statically linked executable has no loader at all (no
/// PT_INTERP program header), and a set-user-ID or set-group-ID program
/// whose owner is not the caller runs in secure-execution mode, where the
/// loader ignores LD_PRELOAD. Scripts (`#!`) and anything unreadable get no
/// verdict: their interpreter is what runs.
func preloadObstacle(_ program: String) -> String? {
    guard let path = resolveExecutable(program) else { return nil }
    var st = stat()
    guard stat(path, &st) == 0 else { return nil }
    var fs = statvfs()
    let nosuid = statvfs(path, &fs) == 0 && fs.f_flag & UInt(ST_NOSUID) != 0  // set-ID bits ignored there
    if !nosuid && st.st_mode & S_ISUID != 0 && st.st_uid != geteuid() {
        return "\(program) is set-user-ID: the loader ignores LD_PRELOAD for it, so none of its memory will be in the mount"
    }
    if !nosuid && st.st_mode & S_ISGID != 0 && st.st_gid != getegid() {
        return "\(program) is set-group-ID: the loader ignores LD_PRELOAD for it, so none of its memory will be in the mount"
    }
    guard let handle = FileHandle(forReadingAtPath: path) else { return nil }
    defer { try? handle.close() }
    guard let header = try? handle.read(upToCount: 64), header.count >= 52,
          header.prefix(4) == Data([0x7F, 0x45, 0x4C, 0x46]) else { return nil }
    let is64 = header[4] == 2
    let little = header[5] == 1
    func integer(_ data: Data, _ at: Int, _ width: Int) -> UInt64 {
        guard at + width <= data.count else { return 0 }
        var value: UInt64 = 0
        for i in 0..<width {
            let byte = UInt64(data[data.startIndex + at + (little ? width - 1 - i : i)])
            value = value << 8 | byte
        }
        return value
    }
    let phoff = is64 ? integer(header, 0x20, 8) : integer(header, 0x1C, 4)
    let phentsize = Int(is64 ? integer(header, 0x36, 2) : integer(header, 0x2A, 2))
    let phnum = Int(is64 ? integer(header, 0x38, 2) : integer(header, 0x2C, 2))
    guard phentsize >= 4, phnum > 0, phnum < 4096, (try? handle.seek(toOffset: phoff)) != nil,
          let table = try? handle.read(upToCount: phentsize * phnum), table.count == phentsize * phnum else { return nil }
    let PT_INTERP: UInt64 = 3
    for index in 0..<phnum where integer(table, index * phentsize, 4) == PT_INTERP { return nil }
    return "\(program) is statically linked: the shim cannot be preloaded into it, so none of its memory will be in the mount"
}

/// `program` as execvp would find it: a name with a slash as given, else
/// the first executable of that name on PATH (an empty entry is the
/// current directory), then in `alsoIn`.
func resolveExecutable(_ program: String, alsoIn extra: [String] = []) -> String? {
    if program.contains("/") { return program }
    let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin"
    let dirs = path.split(separator: ":", omittingEmptySubsequences: false).map { $0.isEmpty ? "." : String($0) } + extra
    for dir in dirs {
        let candidate = "\(dir)/\(program)"
        if access(candidate, X_OK) == 0 { return candidate }
    }
    return nil
}
