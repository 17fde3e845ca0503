import FBMMCore
import Foundation

/// What `fbmm bench` checks around each policy run, so that a number
/// reported under a policy's name was measured with the memory in the mount.
enum BenchFallbackCheck {
    /// Why the run `tag` did not have its memory in the mount, or nil: the
    /// shim runs with --verbose and says once when it falls back ("falling
    /// back ..."), and "using fbmm mount" when it starts using one; a run
    /// with neither never loaded the shim (a static binary, say).
    static func reason(logDirectory: String, tag: String) -> String? {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: logDirectory)) ?? []
        var used = false
        for name in names where name.hasPrefix(tag + ".") {
            let text = readText("\(logDirectory)/\(name)") ?? ""
            for line in text.split(separator: "\n") {
                if line.contains("fbmm: using fbmm mount") { used = true }
                if let range = line.range(of: "falling back") {
                    return String(line[range.lowerBound...].prefix(160))
                }
            }
        }
        return used ? nil : "the shim never used the mount (see \(logDirectory)/\(tag).*)"
    }
}
