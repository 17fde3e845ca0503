import FBMMCore
import Testing
@testable import FBMMPolicy

@Suite struct PolicyRegistryTests {
    @Test func knowsTheBuiltins() {
        let registry = PolicyRegistry()
        #expect(registry.names == ["local", "bind", "preferred", "interleave", "tiered", "contig"])
        #expect(registry.type(named: "bind") == BindPolicy.self)
        #expect(registry.type(named: "tiered-nonexistent") == nil)
    }

    @Test func unknownPolicy() throws {
        let spec = try PolicySpec(parsing: "bogus,nodes=0")
        let error = Fixtures.policyError { _ = try PolicyRegistry().make(spec, topology: Fixtures.twoNodes) }
        #expect(error == .unknownPolicy("bogus", known: ["local", "bind", "preferred", "interleave", "tiered", "contig"]))
        let text = try #require(error).description
        #expect(text.contains("'bogus'"))
        #expect(text.contains("local, bind, preferred, interleave"))
        #expect(!text.contains("\n"))
    }

    @Test func unknownKey() throws {
        let error = Fixtures.policyError { _ = try Fixtures.make("bind,nodes=0,speed=9") }
        #expect(error == .unknownKey(policy: "bind", key: "speed", known: ["nodes"]))
        let text = try #require(error).description
        #expect(text.contains("'speed'"))
        #expect(text.contains("'bind'"))
        #expect(text.contains("nodes"))
        #expect(!text.contains("\n"))
    }

    @Test func unknownKeyOfAPolicyWithoutOptions() throws {
        let error = Fixtures.policyError { _ = try Fixtures.make("local nodes=0") }
        #expect(error == .unknownKey(policy: "local", key: "nodes", known: []))
        #expect(try #require(error).description == "policy 'local' has no option 'nodes' (it takes no options)")
    }

    @Test(arguments: ["bind", "preferred", "interleave", "interleave,weights=3:1"])
    func missingRequiredKey(spec: String) throws {
        let error = Fixtures.policyError { _ = try Fixtures.make(spec) }
        let name = String(spec.prefix { $0 != "," })
        #expect(error == .missingKey(policy: name, key: "nodes"))
        let text = try #require(error).description
        #expect(text == "policy '\(name)' needs option 'nodes'")
    }

    @Test func nodeErrorsPassThrough() {
        #expect(Fixtures.policyError { _ = try Fixtures.make("bind,nodes=7") }
                == .noSuchNode(key: "nodes", node: 7, available: [0, 1]))
        #expect(Fixtures.policyError { _ = try Fixtures.make("bind,nodes=1", Fixtures.withMemorylessNode) }
                == .nodeWithoutMemory(key: "nodes", node: 1))
    }

    @Test func extraPoliciesAreAddedOnceAfterTheBuiltins() throws {
        struct Custom: MemoryManagementPolicy {
            static let name = "custom"
            static let summary = "test"
            static let keys = [PolicyKey("level", default: "1", "a level")]
            let allowedNodes: [Int] = [0]
            init(options: PolicyOptions, topology: Topology) throws(PolicyError) {}
            func place(_ range: Range<UInt64>, of file: FileContext) -> [Placement] { [Placement(range, .local)] }
        }
        let registry = PolicyRegistry(adding: [Custom.self, Custom.self, BindPolicy.self])
        #expect(registry.names == ["local", "bind", "preferred", "interleave", "tiered", "contig", "custom"])
        let policy = try registry.make(PolicySpec(parsing: "custom,level=2"), topology: Fixtures.twoNodes)
        #expect(policy.description == "custom")
    }

    @Test func everyBuiltinDocumentsItsKeys() {
        for type in PolicyRegistry.builtins {
            #expect(!type.summary.isEmpty)
            for key in type.keys { #expect(!key.help.isEmpty) }
        }
        #expect(InterleavePolicy.keys.map(\.name) == ["nodes", "weights", "unit"])
        #expect(InterleavePolicy.keys.first { $0.name == "unit" }?.defaultValue == "64K")
        #expect(BindPolicy.keys.first?.defaultValue == nil)
    }
}
