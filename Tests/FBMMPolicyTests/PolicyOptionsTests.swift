import FBMMCore
import Testing
@testable import FBMMPolicy

@Suite struct PolicyOptionsParsingTests {
    @Test func parsesKeyValueListsWithColons() throws {
        let options = try PolicyOptions(parsing: "nodes=0:1,weights=3:1")
        #expect(options["nodes"] == "0:1")
        #expect(options["weights"] == "3:1")
        #expect(options.keys == ["nodes", "weights"])
        #expect(options.description == "nodes=0:1,weights=3:1")
        #expect(!options.isEmpty)
    }

    @Test func keepsTheOrderGiven() throws {
        let options = try PolicyOptions(parsing: "weights=3:1,nodes=0:1")
        #expect(options.keys == ["weights", "nodes"])
        #expect(options.description == "weights=3:1,nodes=0:1")
    }

    @Test func flagsWithoutValueAreTrue() throws {
        let options = try PolicyOptions(parsing: "verbose,nodes=0,allow_other")
        #expect(options["verbose"] == "true")
        #expect(options["allow_other"] == "true")
        #expect(options["nodes"] == "0")
    }

    @Test func emptyItemsAndSpacesAreIgnored() throws {
        let options = try PolicyOptions(parsing: ",nodes = 0:1,,unit=64K,")
        #expect(options.keys == ["nodes", "unit"])
        #expect(options["nodes"] == "0:1")
        #expect(try PolicyOptions(parsing: "").isEmpty)
    }

    @Test func aLaterValueReplacesAnEarlierOne() throws {
        let options = try PolicyOptions(parsing: "nodes=0,nodes=1")
        #expect(options.keys == ["nodes"])
        #expect(options["nodes"] == "1")
    }

    @Test func valueMayContainEquals() throws {
        #expect(try PolicyOptions(parsing: "a=b=c")["a"] == "b=c")
    }

    @Test(arguments: ["=1", "a b=1", "nodes=0,=2", "nö/de=1", "x.y=1", " =3"])
    func malformedKeysAreRefused(text: String) {
        #expect(throws: PolicyError.malformed(text)) { try PolicyOptions(parsing: text) }
    }

    @Test func malformedDescriptionQuotesTheText() {
        #expect(PolicyError.malformed("=1").description.contains("'=1'"))
    }

    @Test func setAndRemove() {
        var options = PolicyOptions([("a", "1"), ("b", "2")])
        options.set("c", "3")
        options.set("a", "9")
        #expect(options.description == "a=9,b=2,c=3")
        #expect(options.remove("b") == "2")
        #expect(options.remove("zz") == nil)
        #expect(options.keys == ["a", "c"])
    }
}

@Suite struct PolicyOptionsAccessorTests {
    private func options(_ text: String) throws -> PolicyOptions { try PolicyOptions(parsing: text) }

    static let nodeLists: [(String, [Int])] = [
        ("nodes=0", [0]),
        ("nodes=0:2", [0, 2]),
        ("nodes=2:0", [2, 0]),
        ("nodes=0-2", [0, 1, 2]),
        ("nodes=0:1-2", [0, 1, 2]),
    ]

    @Test(arguments: nodeLists)
    func nodes(text: String, expected: [Int]) throws {
        #expect(try options(text).nodes("nodes", in: Fixtures.threeNodes) == expected)
    }

    @Test func absentKeyIsNil() throws {
        #expect(try options("x=1").nodes("nodes", in: Fixtures.twoNodes) == nil)
        #expect(try options("x=1").node("nodes", in: Fixtures.twoNodes) == nil)
        #expect(try options("x=1").integers("weights") == nil)
        #expect(try options("x=1").size("unit") == nil)
        #expect(try options("x=1").seconds("interval") == nil)
    }

    @Test(arguments: ["0:0", "0:0-1", "1-2:2"])
    func duplicateNodesAreRefused(value: String) throws {
        let error = Fixtures.policyError { _ = try options("nodes=\(value)").nodes("nodes", in: Fixtures.threeNodes) }
        guard case .invalidValue(let key, let got, let reason)? = error else {
            Issue.record("expected invalidValue, got \(String(describing: error))"); return
        }
        #expect(key == "nodes" && got == value)
        #expect(reason.contains("twice"))
    }

    @Test(arguments: ["", "a", "0:", ":1", "-1", "2-1", "1-", "0,5", "1.0", "0::1"])
    func unparsableNodesAreRefused(value: String) throws {
        let opts = PolicyOptions([("nodes", value)])
        let error = Fixtures.policyError { _ = try opts.nodes("nodes", in: Fixtures.threeNodes) }
        guard case .invalidValue(let key, let got, _)? = error else {
            Issue.record("expected invalidValue for '\(value)', got \(String(describing: error))"); return
        }
        #expect(key == "nodes" && got == value)
    }

    @Test func nonexistentNode() throws {
        #expect(throws: PolicyError.noSuchNode(key: "nodes", node: 5, available: [0, 1])) {
            try options("nodes=0:5").nodes("nodes", in: Fixtures.twoNodes)
        }
        #expect(throws: PolicyError.noSuchNode(key: "nodes", node: 2, available: [0, 1])) {
            try options("nodes=0-2").nodes("nodes", in: Fixtures.twoNodes)
        }
        let text = PolicyError.noSuchNode(key: "nodes", node: 5, available: [0, 1]).description
        #expect(text == "option nodes: NUMA node 5 does not exist (nodes: 0, 1)")
    }

    @Test func memorylessNode() throws {
        #expect(throws: PolicyError.nodeWithoutMemory(key: "nodes", node: 1)) {
            try options("nodes=0:1").nodes("nodes", in: Fixtures.withMemorylessNode)
        }
        #expect(try options("nodes=0:2").nodes("nodes", in: Fixtures.withMemorylessNode) == [0, 2])
        #expect(PolicyError.nodeWithoutMemory(key: "nodes", node: 1).description == "option nodes: NUMA node 1 has no memory")
    }

    @Test func singleNode() throws {
        #expect(try options("nodes=1").node("nodes", in: Fixtures.twoNodes) == 1)
        let error = Fixtures.policyError { _ = try options("nodes=0:1").node("nodes", in: Fixtures.twoNodes) }
        guard case .invalidValue(key: "nodes", value: "0:1", let reason)? = error else {
            Issue.record("expected invalidValue, got \(String(describing: error))"); return
        }
        #expect(reason.contains("one node"))
    }

    static let integerLists: [(String, [Int])] = [("weights=3:1", [3, 1]), ("weights=1", [1]), ("weights=255:1:7", [255, 1, 7])]

    @Test(arguments: integerLists)
    func integers(text: String, expected: [Int]) throws {
        #expect(try options(text).integers("weights") == expected)
    }

    @Test(arguments: ["0", "256", "3:0", "-1", "a", "3:", "", "1.5", "3,1"])
    func integersOutOfRangeAreRefused(value: String) {
        let opts = PolicyOptions([("weights", value)])
        let error = Fixtures.policyError { _ = try opts.integers("weights") }
        guard case .invalidValue(key: "weights", value: value, _)? = error else {
            Issue.record("expected invalidValue for '\(value)', got \(String(describing: error))"); return
        }
    }

    static let sizeValues: [(String, UInt64)] = [("unit=64K", 64 << 10), ("unit=2M", 2 << 20), ("unit=4096", 4096), ("unit=1GiB", 1 << 30)]

    @Test(arguments: sizeValues)
    func sizes(text: String, bytes: UInt64) throws {
        #expect(try options(text).size("unit") == ByteSize(bytes: bytes))
    }

    @Test func invalidSizeNamesKeyAndValue() throws {
        let error = Fixtures.policyError { _ = try options("unit=12Q").size("unit") }
        guard case .invalidValue(key: "unit", value: "12Q", let reason)? = error else {
            Issue.record("expected invalidValue, got \(String(describing: error))"); return
        }
        #expect(reason.contains("not a size"))
        #expect(error!.description.hasPrefix("option unit=12Q: "))
    }

    static let durations: [(String, Double)] = [("5s", 5.0), ("500ms", 0.5), ("2", 2.0), ("1.5s", 1.5), ("250ms", 0.25)]

    @Test(arguments: durations)
    func seconds(value: String, expected: Double) throws {
        let got = try #require(try PolicyOptions([("interval", value)]).seconds("interval"))
        #expect(abs(got - expected) < 1e-9)
    }

    @Test(arguments: ["0s", "-1s", "abc", "5m", "", "ms", "inf", "nan", "0ms"])
    func invalidSecondsAreRefused(value: String) {
        let opts = PolicyOptions([("interval", value)])
        let error = Fixtures.policyError { _ = try opts.seconds("interval") }
        guard case .invalidValue(key: "interval", value: value, _)? = error else {
            Issue.record("expected invalidValue for '\(value)', got \(String(describing: error))"); return
        }
    }
}

@Suite struct PolicySpecTests {
    @Test(arguments: ["interleave,nodes=0:1", "interleave nodes=0:1", "  interleave   nodes=0:1  "])
    func parsesCommaOrSpaceAfterName(text: String) throws {
        let spec = try PolicySpec(parsing: text)
        #expect(spec.name == "interleave")
        #expect(spec.options["nodes"] == "0:1")
        #expect(spec.options.keys == ["nodes"])
        #expect(spec.description == "interleave,nodes=0:1")
    }

    @Test func parsesSeveralOptionsSeparatedBySpaces() throws {
        let spec = try PolicySpec(parsing: "interleave nodes=0:1 weights=3:1")
        #expect(spec.options.description == "nodes=0:1,weights=3:1")
    }

    @Test func nameAlone() throws {
        let spec = try PolicySpec(parsing: "local")
        #expect(spec.name == "local")
        #expect(spec.options.isEmpty)
        #expect(spec.description == "local")
    }

    @Test(arguments: ["local", "bind,nodes=0:2", "interleave,nodes=0:1,weights=3:1,unit=128K", "preferred,nodes=1"])
    func descriptionRoundTrips(text: String) throws {
        let spec = try PolicySpec(parsing: text)
        #expect(spec.description == text)
        #expect(try PolicySpec(parsing: spec.description) == spec)
    }

    @Test(arguments: ["", "   "])
    func emptySpecIsMalformed(text: String) {
        #expect(throws: PolicyError.malformed(text)) { try PolicySpec(parsing: text) }
    }

    @Test func malformedOptionsInSpec() {
        #expect(throws: PolicyError.self) { try PolicySpec(parsing: "bind,=0") }
    }
}
