import FBMMCore
import FBMMPolicy
import Testing

/// Generated-corpus fuzzing of everything that parses user input: policy
/// specs (from --policy/-o and the user.fbmm.policy xattr), option values and
/// sizes. Every input must give a value or one clean, single-line error.
@Suite struct ParserFuzzTests {
    struct SplitMix: RandomNumberGenerator {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
    }

    static let topology = Topology(nodes: [
        .init(id: 0, memTotal: 1 << 30, cpus: [0, 1]),
        .init(id: 1, memTotal: 1 << 30),
        .init(id: 2, memTotal: 0),
    ])

    /// Pieces that make near-valid inputs likelier than pure noise would.
    static let tokens = ["bind", "preferred", "interleave", "local", "nodes", "weights", "unit", "=", ",", ":", " ",
                         "0", "1", "2", "3", "-", "64K", "4G", "99999999999999999999", "\u{0}", "\u{FF}", "é", "=,", "::",
                         "-1", "0-2", "2-0", "255", "256", "K", "1.5", "nan"]

    func randomInput(_ rng: inout SplitMix) -> String {
        (0..<Int.random(in: 0...12, using: &rng)).map { _ in Self.tokens.randomElement(using: &rng)! }.joined()
    }

    @Test func policySpecsNeverCrashAndErrorsAreOneLine() {
        var rng = SplitMix(state: 42)
        let registry = PolicyRegistry()
        var built = 0
        for _ in 0..<20_000 {
            let text = randomInput(&rng)
            do {
                let spec = try PolicySpec(parsing: text)
                let policy = try registry.make(spec, topology: Self.topology)
                built += 1
                // A built policy must place any range without trapping, covering it.
                let placements = policy.place(0..<(1 << 22), of: FileContext(inode: 2, name: "f", size: 1 << 22))
                #expect(!placements.isEmpty)
                for placement in placements { #expect(placement.policy.nodes.allSatisfy { [0, 1].contains($0) }) }
            } catch {
                #expect(!error.description.isEmpty && !error.description.contains("\n"), "one line for \(text.debugDescription)")
            }
        }
        #expect(built > 50, "the corpus reaches valid specs too (\(built))")
    }

    @Test func sizesNeverCrash() {
        var rng = SplitMix(state: 7)
        for _ in 0..<20_000 {
            let text = randomInput(&rng)
            if let size = try? ByteSize(parsing: text) {
                #expect((try? ByteSize(parsing: size.description)) == size, "round trip of \(text.debugDescription)")
            }
        }
    }

    @Test func hugeRangesStayBounded() throws {
        let registry = PolicyRegistry()
        let spec = try PolicySpec(parsing: "interleave,nodes=0:1,weights=3:1,unit=4K")
        let policy = try registry.make(spec, topology: Self.topology)
        let range: Range<UInt64> = 0..<(64 << 30)
        let placements = policy.place(range, of: FileContext(inode: 2, name: "f", size: range.upperBound))
        #expect(placements.count <= 2 * 65536 + 2, "mbind calls stay bounded (\(placements.count))")
        var bytes: [Int: UInt64] = [:]
        for placement in placements { bytes[placement.policy.nodes[0], default: 0] += UInt64(placement.range.count) }
        #expect(bytes[0] == range.upperBound / 4 * 3 && bytes[1] == range.upperBound / 4, "ratios stay exact: \(bytes)")
    }
}
