import FBMMCore

/// The policies a daemon knows, by name. Built-ins are always present; a
/// package that builds its own `fbmm` adds more (`FBMM.main(policies:)`).
public struct PolicyRegistry: Sendable {
    public private(set) var types: [any MemoryManagementPolicy.Type]

    public static let builtins: [any MemoryManagementPolicy.Type] = [
        LocalPolicy.self, BindPolicy.self, PreferredPolicy.self, InterleavePolicy.self, TieredPolicy.self,
        ContigPolicy.self,
    ]

    public init(adding extra: [any MemoryManagementPolicy.Type] = []) {
        types = Self.builtins
        for type in extra where !types.contains(where: { $0.name == type.name }) { types.append(type) }
    }

    public var names: [String] { types.map { $0.name } }

    public func type(named name: String) -> (any MemoryManagementPolicy.Type)? {
        types.first { $0.name == name }
    }

    /// Builds the policy a spec names, refusing unknown names and keys first.
    public func make(_ spec: PolicySpec, topology: Topology) throws(PolicyError) -> any MemoryManagementPolicy {
        guard let type = type(named: spec.name) else { throw .unknownPolicy(spec.name, known: names) }
        let known = type.keys.map(\.name)
        for key in spec.options.keys where !known.contains(key) {
            throw .unknownKey(policy: spec.name, key: key, known: known)
        }
        return try type.init(options: spec.options, topology: topology)
    }
}
