#if canImport(Glibc)
import Glibc
#endif

/// How file memory uses transparent huge pages (`-o huge=`).
///
/// Shared memory (memfds) gets huge pages only where the kernel's shmem THP
/// setting allows it: `always`/`within_size`/`force` everywhere, `advise` on
/// mappings marked MADV_HUGEPAGE, `never`/`deny` nowhere. fbmm marks the
/// mappings; the system setting decides whether that is enough.
public enum HugePageMode: String, Sendable, CaseIterable, CustomStringConvertible {
    /// Every mapping of the mount's files asks for huge pages.
    case always
    /// Only where the program asks (madvise MADV_HUGEPAGE), as for anonymous memory.
    case advise
    /// No mapping of the mount's files gets huge pages.
    case never

    public var description: String { rawValue }
}

/// The kernel's shmem transparent huge page settings (sysfs).
public struct ShmemHugePageSupport: Sendable, Equatable {
    /// The selected value of /sys/kernel/mm/transparent_hugepage/shmem_enabled.
    public var global: String?
    /// The selected value of hugepages-<PMD size>kB/shmem_enabled ("inherit" follows global).
    public var pmdSize: String?
    public var pmdBytes: UInt64

    public static let directory = "/sys/kernel/mm/transparent_hugepage"

    public init(global: String?, pmdSize: String?, pmdBytes: UInt64 = 2 << 20) {
        self.global = global
        self.pmdSize = pmdSize
        self.pmdBytes = pmdBytes
    }

    /// Reads the current settings; nil fields where the kernel has no such file.
    public static func current() -> ShmemHugePageSupport {
        let pmd = readSysfs("\(directory)/hpage_pmd_size").flatMap { UInt64($0) } ?? 2 << 20
        return ShmemHugePageSupport(
            global: readSysfs("\(directory)/shmem_enabled").flatMap(selected),
            pmdSize: readSysfs("\(directory)/hugepages-\(pmd >> 10)kB/shmem_enabled").flatMap(selected),
            pmdBytes: pmd)
    }

    /// "always within_size advise [never] deny force" -> "never".
    static func selected(_ text: String) -> String? {
        guard let open = text.firstIndex(of: "["), let close = text.firstIndex(of: "]"), open < close else { return nil }
        return String(text[text.index(after: open)..<close])
    }

    /// Whether a mapping marked MADV_HUGEPAGE can get PMD-sized shmem pages.
    public var allowsAdvisedMappings: Bool {
        if global == "deny" { return false }
        if global == "force" { return true }
        let inherit = pmdSize == nil || pmdSize == "inherit"
        let setting = inherit ? global : pmdSize
        return ["always", "within_size", "advise"].contains(setting ?? "never")
    }

    /// Why `mode` cannot work here, as the one line a user sees; nil if it can.
    public func refusal(for mode: HugePageMode, what: String) -> String? {
        guard mode != .never, !allowsAdvisedMappings else { return nil }
        let shown = global.map { "'\($0)'" } ?? "missing (no THP in this kernel)"
        return "\(what) needs shared-memory transparent huge pages, but \(Self.directory)/shmem_enabled is \(shown)"
            + (global == nil ? "" : "; enable them with: echo advise > \(Self.directory)/shmem_enabled (as root), or use huge=never")
    }
}

/// A sysfs value without its trailing newline.
private func readSysfs(_ path: String) -> String? {
    readText(path).map { String($0.split(whereSeparator: \.isNewline).first ?? "") }
}
