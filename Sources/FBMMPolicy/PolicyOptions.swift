import FBMMCore

/// Why a policy specification was refused; each case renders as the one line
/// the user sees.
public enum PolicyError: Error, CustomStringConvertible, Equatable, Sendable {
    /// No registered policy has this name.
    case unknownPolicy(String, known: [String])
    /// The policy does not list this key in its `keys` (checked by the registry).
    case unknownKey(policy: String, key: String, known: [String])
    /// A required key is absent: thrown by a policy's `init`.
    case missingKey(policy: String, key: String)
    /// The value parses badly or is out of range; `reason` says why, in a few words.
    case invalidValue(key: String, value: String, reason: String)
    /// A node number that the machine does not have.
    case noSuchNode(key: String, node: Int, available: [Int])
    /// A node without memory (CPUs only), where no page can go.
    case nodeWithoutMemory(key: String, node: Int)
    /// Text that is not `KEY=VALUE[,KEY=VALUE...]`.
    case malformed(String)

    public var description: String {
        switch self {
        case let .unknownPolicy(name, known):
            return "unknown policy '\(name)' (known: \(known.joined(separator: ", ")))"
        case let .unknownKey(policy, key, known):
            let keys = known.isEmpty ? "it takes no options" : "its keys: \(known.joined(separator: ", "))"
            return "policy '\(policy)' has no option '\(key)' (\(keys))"
        case let .missingKey(policy, key):
            return "policy '\(policy)' needs option '\(key)'"
        case let .invalidValue(key, value, reason):
            return "option \(key)=\(value): \(reason)"
        case let .noSuchNode(key, node, available):
            return "option \(key): NUMA node \(node) does not exist (nodes: \(available.map(String.init).joined(separator: ", ")))"
        case let .nodeWithoutMemory(key, node):
            return "option \(key): NUMA node \(node) has no memory"
        case let .malformed(text):
            return "cannot parse options '\(text)' (expected KEY=VALUE[,KEY=VALUE...])"
        }
    }
}

/// `KEY=VALUE` options of one policy, as given with `-o` or in a policy spec.
/// List values use `:` inside a value (`nodes=0:1,weights=3:1`) because `,`
/// separates options, as in mount(8).
public struct PolicyOptions: Sendable, Hashable, CustomStringConvertible {
    /// Every value by key (spaces around keys and values trimmed).
    public private(set) var values: [String: String]
    /// Keys in the order given, for canonical printing.
    public private(set) var order: [String]

    /// Options from pairs, in order (a repeated key keeps its first position and last value).
    public init(_ values: [(String, String)] = []) {
        self.values = [:]
        self.order = []
        for (key, value) in values { set(key, value) }
    }

    /// Parses `a=1,b=2:3`. Empty items are ignored; an item without `=` is
    /// a flag with value "true" (as mount(8) options like `allow_other`).
    public init(parsing text: String) throws(PolicyError) {
        self.init()
        for item in text.split(separator: ",", omittingEmptySubsequences: true) {
            let parts = item.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let key = String(parts[0]).trimmingSpaces
            guard !key.isEmpty, key.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" }) else {
                throw .malformed(text)
            }
            set(key, parts.count == 2 ? String(parts[1]).trimmingSpaces : "true")
        }
    }

    /// Sets a key, keeping its first position if it was already there.
    public mutating func set(_ key: String, _ value: String) {
        if values[key] == nil { order.append(key) }
        values[key] = value
    }

    /// Removes a key, returning its value.
    public mutating func remove(_ key: String) -> String? {
        order.removeAll { $0 == key }
        return values.removeValue(forKey: key)
    }

    /// The raw value of a key, or nil.
    public subscript(key: String) -> String? { values[key] }
    public var isEmpty: Bool { values.isEmpty }
    /// The keys in the order given.
    public var keys: [String] { order }

    /// `k=v,k=v` in the order given.
    public var description: String { order.map { "\($0)=\(values[$0]!)" }.joined(separator: ",") }

    // MARK: Typed accessors

    /// A list of nodes (`0`, `0:1`, `0-3`, `0:2-3`), each of which must exist in
    /// `topology` and have memory, none twice; nil when the key is absent.
    public func nodes(_ key: String, in topology: Topology) throws(PolicyError) -> [Int]? {
        guard let text = values[key] else { return nil }
        var nodes: [Int] = []
        for part in text.split(separator: ":", omittingEmptySubsequences: false) {
            let range = part.split(separator: "-", omittingEmptySubsequences: false)
            if range.count == 2, let low = Int(range[0]), let high = Int(range[1]), low <= high, low >= 0 {
                nodes.append(contentsOf: low...high)
            } else if range.count == 1, let node = Int(part), node >= 0 {
                nodes.append(node)
            } else {
                throw .invalidValue(key: key, value: text, reason: "expected node numbers separated by ':'")
            }
        }
        guard !nodes.isEmpty else { throw .invalidValue(key: key, value: text, reason: "no nodes given") }
        guard Set(nodes).count == nodes.count else {
            throw .invalidValue(key: key, value: text, reason: "a node is listed twice")
        }
        for node in nodes {
            guard let info = topology.node(node) else {
                throw .noSuchNode(key: key, node: node, available: topology.nodeIDs)
            }
            guard info.hasMemory else { throw .nodeWithoutMemory(key: key, node: node) }
        }
        return nodes
    }

    /// Exactly one node, checked as `nodes(_:in:)` does; nil when the key is absent.
    public func node(_ key: String, in topology: Topology) throws(PolicyError) -> Int? {
        guard let nodes = try nodes(key, in: topology) else { return nil }
        guard nodes.count == 1 else {
            throw .invalidValue(key: key, value: values[key]!, reason: "expected exactly one node")
        }
        return nodes[0]
    }

    /// Whole numbers from 1 to 255 separated by `:` (weights); nil when the key is absent.
    public func integers(_ key: String) throws(PolicyError) -> [Int]? {
        guard let text = values[key] else { return nil }
        var result: [Int] = []
        for part in text.split(separator: ":", omittingEmptySubsequences: false) {
            guard let value = Int(part), value > 0, value <= 255 else {
                throw .invalidValue(key: key, value: text, reason: "expected whole numbers from 1 to 255 separated by ':'")
            }
            result.append(value)
        }
        return result
    }

    /// A size with an optional K/M/G/T (binary) suffix; nil when the key is absent.
    public func size(_ key: String) throws(PolicyError) -> ByteSize? {
        guard let text = values[key] else { return nil }
        do { return try ByteSize(parsing: text) } catch {
            throw .invalidValue(key: key, value: text, reason: error.description)
        }
    }

    /// A positive duration, `5s`, `500ms` or `2` (seconds); nil when the key is absent.
    public func seconds(_ key: String) throws(PolicyError) -> Double? {
        guard let text = values[key] else { return nil }
        var body = Substring(text)
        var scale = 1.0
        if body.hasSuffix("ms") { body = body.dropLast(2); scale = 0.001 } else if body.hasSuffix("s") { body = body.dropLast() }
        guard let value = Double(body), value > 0, value.isFinite else {
            throw .invalidValue(key: key, value: text, reason: "expected a duration such as 5s or 500ms")
        }
        return value * scale
    }
}

/// A policy chosen by name with its options: `interleave,nodes=0:1,weights=3:1`
/// (or with a space after the name, as `fbmm mount --policy NAME -o ...` reads).
public struct PolicySpec: Sendable, Hashable, CustomStringConvertible {
    /// The policy's registered name.
    public var name: String
    /// Its options, not yet validated (the registry and the policy's `init` do that).
    public var options: PolicyOptions

    public init(name: String, options: PolicyOptions = PolicyOptions()) {
        self.name = name
        self.options = options
    }

    /// Parses `NAME[,KEY=VALUE...]` or `NAME KEY=VALUE ...`.
    public init(parsing text: String) throws(PolicyError) {
        let trimmed = text.trimmingSpaces
        guard let cut = trimmed.firstIndex(where: { $0 == "," || $0 == " " }) else {
            guard !trimmed.isEmpty else { throw .malformed(text) }
            self.init(name: trimmed)
            return
        }
        let name = String(trimmed[..<cut])
        let rest = String(trimmed[trimmed.index(after: cut)...]).replacingSpacesWithCommas
        self.init(name: name, options: try PolicyOptions(parsing: rest))
    }

    public var description: String { options.isEmpty ? name : "\(name),\(options)" }
}

extension String {
    var trimmingSpaces: String {
        var s = Substring(self)
        while let c = s.first, c.isWhitespace { s = s.dropFirst() }
        while let c = s.last, c.isWhitespace { s = s.dropLast() }
        return String(s)
    }

    var replacingSpacesWithCommas: String {
        String(self.map { $0 == " " ? "," : $0 })
    }
}
