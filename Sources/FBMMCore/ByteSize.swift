/// Sizes as users write them on the command line: `4096`, `64K`, `512M`, `2G`, `1T`
/// (binary multiples; an optional trailing `B`/`iB` is accepted).
public struct ByteSize: Sendable, Hashable, Comparable, CustomStringConvertible {
    public var bytes: UInt64

    public init(bytes: UInt64) { self.bytes = bytes }

    public enum ParseError: Error, CustomStringConvertible, Equatable {
        case invalid(String)
        public var description: String {
            switch self {
            case .invalid(let text): return "'\(text)' is not a size (use a number with an optional K, M, G or T suffix)"
            }
        }
    }

    public init(parsing text: String) throws(ParseError) {
        var body = Substring(text.trimmingCharacters(in: " "))
        if body.hasSuffix("iB") || body.hasSuffix("ib") { body = body.dropLast(2) }
        else if body.count > 1, body.hasSuffix("B") || body.hasSuffix("b") { body = body.dropLast() }
        var shift: UInt64 = 0
        if let last = body.last, last.isLetter {
            switch last.uppercased() {
            case "K": shift = 10
            case "M": shift = 20
            case "G": shift = 30
            case "T": shift = 40
            default: throw .invalid(text)
            }
            body = body.dropLast()
        }
        guard !body.isEmpty, body.allSatisfy(\.isASCII), let value = UInt64(body) else { throw .invalid(text) }
        let (result, overflow) = value.multipliedReportingOverflow(by: 1 << shift)
        guard !overflow else { throw .invalid(text) }
        self.bytes = result
    }

    public static func < (lhs: ByteSize, rhs: ByteSize) -> Bool { lhs.bytes < rhs.bytes }

    /// The shortest exact spelling: `64M` rather than `67108864`.
    public var description: String {
        let units: [(UInt64, String)] = [(1 << 40, "T"), (1 << 30, "G"), (1 << 20, "M"), (1 << 10, "K")]
        for (unit, suffix) in units where bytes >= unit && bytes % unit == 0 {
            return "\(bytes / unit)\(suffix)"
        }
        return "\(bytes)"
    }
}

extension String {
    func trimmingCharacters(in set: Character) -> String {
        var s = Substring(self)
        while s.first == set { s = s.dropFirst() }
        while s.last == set { s = s.dropLast() }
        return String(s)
    }
}

/// The page size the kernel uses for shmem placement and move_pages.
public let pageSize: Int = Int(sysconf(Int32(_SC_PAGESIZE)))

#if canImport(Glibc)
import Glibc
#endif
