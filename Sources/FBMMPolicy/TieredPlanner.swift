import FBMMCore
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Page histories: per page a moving-average heat and hot/cold streaks,
/// folded from each scan's samples.
extension TieredPolicy {
    static func resized(_ array: [UInt8], _ count: Int) -> [UInt8] {
        if array.count >= count { return Array(array.prefix(count)) }
        return array + [UInt8](repeating: 0, count: count - array.count)
    }

    /// The heat from which a page counts as hot in a scan whose hottest
    /// tracked page had `maxHeat`: used in half the samples, or half as often
    /// as the hottest page when nothing reaches that (a slow program, or a
    /// tracker whose samples are sparse), but never below 10%.
    public static func hotCut(maxHeat: UInt8) -> UInt8 {
        max(26, min(hotHeat, maxHeat / 2))
    }

    /// Folds one scan's sample into a page history.
    public static func record(_ sample: [UInt8], into heat: inout [UInt8], _ hotStreak: inout [UInt8], _ coldStreak: inout [UInt8],
                              hotCut: UInt8 = hotHeat) {
        let n = min(sample.count, heat.count, hotStreak.count, coldStreak.count)
        sample.withUnsafeBufferPointer { s in
            heat.withUnsafeMutableBufferPointer { h in
                hotStreak.withUnsafeMutableBufferPointer { hot in
                    coldStreak.withUnsafeMutableBufferPointer { cold in
                        for i in 0..<n {
                            let value = s[i]
                            h[i] = UInt8((UInt16(h[i]) + UInt16(value) + 1) / 2)
                            if value >= hotCut {
                                if hot[i] < 255 { hot[i] += 1 }
                                cold[i] = 0
                            } else {
                                hot[i] = 0
                                if cold[i] < 255 { cold[i] += 1 }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The tiered policy's choice of pages to move, on described inputs (pure).
public struct TieredPlanner: Sendable {
    /// One file: per page its node (negative: not resident) and history.
    public struct FileView: Sendable {
        public var key: UInt64
        public var nodes: [Int32]
        public var hotStreak: [UInt8]
        public var coldStreak: [UInt8]
        public var heat: [UInt8]

        public init(key: UInt64, nodes: [Int32], hotStreak: [UInt8], coldStreak: [UInt8], heat: [UInt8]) {
            self.key = key
            self.nodes = nodes
            self.hotStreak = hotStreak
            self.coldStreak = coldStreak
            self.heat = heat
        }
    }

    /// Page indices to move, per file key.
    public struct Plan: Sendable, Equatable {
        public var promote: [UInt64: [Int]] = [:]
        public var demote: [UInt64: [Int]] = [:]
        public var promotedCount: Int { promote.values.reduce(0) { $0 + $1.count } }
        public var demotedCount: Int { demote.values.reduce(0) { $0 + $1.count } }
    }

    public var fastNode: Int32
    public var slowNode: Int32
    /// Fast pages to fill up to (capacity minus watermark).
    public var limitPages: Int
    /// Fast pages never to exceed: above it even hot pages are demoted.
    public var capacityPages: Int
    /// Scans in a row a slow page must be hot to be promoted; a fast page must
    /// have been cold for as many scans to be demoted to make room.
    public var promoteThreshold: Int
    /// Most pages moved (promotions plus demotions) in one pass.
    public var budgetPages: Int

    public init(fastNode: Int32, slowNode: Int32, limitPages: Int, capacityPages: Int, promoteThreshold: Int, budgetPages: Int) {
        self.fastNode = fastNode
        self.slowNode = slowNode
        self.limitPages = limitPages
        self.capacityPages = capacityPages
        self.promoteThreshold = promoteThreshold
        self.budgetPages = budgetPages
    }

    /// Indices of `keys`, highest key first, equal keys in index order (a
    /// counting sort: cheap for the tens of thousands of pages of a pass).
    static func orderDescending(_ keys: [UInt16]) -> [Int] {
        var counts = [Int](repeating: 0, count: 65537)
        for key in keys { counts[65535 - Int(key) + 1] += 1 }
        for i in 1..<counts.count { counts[i] += counts[i - 1] }
        var order = [Int](repeating: 0, count: keys.count)
        for (index, key) in keys.enumerated() {
            let slot = 65535 - Int(key)
            order[counts[slot]] = index
            counts[slot] += 1
        }
        return order
    }

    public func plan(_ files: [FileView]) -> Plan {
        var plan = Plan()
        var fastUsed = 0
        // Candidates as (file, page) pairs with a sort key each.
        var promote: [(Int, Int)] = [], promoteKeys: [UInt16] = []
        var cold: [(Int, Int)] = [], coldKeys: [UInt16] = []
        var fastAll: [(Int, Int)] = []
        for (f, file) in files.enumerated() {
            file.nodes.withUnsafeBufferPointer { nodes in
                for p in 0..<nodes.count {
                    let node = nodes[p]
                    if node == fastNode {
                        fastUsed += 1
                        fastAll.append((f, p))
                        if file.hotStreak[p] == 0 {
                            cold.append((f, p))
                            // Coldest first: longest cold streak, then lowest heat.
                            coldKeys.append(UInt16(file.coldStreak[p]) << 8 | UInt16(255 - file.heat[p]))
                        }
                    } else if node == slowNode, Int(file.hotStreak[p]) >= promoteThreshold {
                        promote.append((f, p))
                        // Hottest first, then longest hot streak.
                        promoteKeys.append(UInt16(file.heat[p]) << 8 | UInt16(file.hotStreak[p]))
                    }
                }
            }
        }
        let promoteOrder = Self.orderDescending(promoteKeys)
        let coldOrder = Self.orderDescending(coldKeys)
        func heat(_ r: (Int, Int)) -> UInt8 { files[r.0].heat[r.1] }
        func coldness(_ r: (Int, Int)) -> UInt8 { files[r.0].coldStreak[r.1] }
        var budget = budgetPages
        var demoted = Set<Int>()
        func demote(_ r: (Int, Int)) {
            plan.demote[files[r.0].key, default: []].append(r.1)
            demoted.insert(r.0 << 40 | r.1)
            fastUsed -= 1
            budget -= 1
        }
        var next = 0
        // 1. Above the limit (new pages landed fast, or a knob shrank it): demote down to it.
        while fastUsed > limitPages, budget > 0, next < coldOrder.count {
            demote(cold[coldOrder[next]]); next += 1
        }
        // 1b. Still above capacity: even hot pages go, least hot first.
        if fastUsed > capacityPages {
            let rest = fastAll.filter { !demoted.contains($0.0 << 40 | $0.1) }
            let order = Self.orderDescending(rest.map { UInt16(255 - heat($0)) })
            var i = 0
            while fastUsed > capacityPages, budget > 0, i < order.count { demote(rest[order[i]]); i += 1 }
        }
        // 2. Promote hot slow pages; make room by demoting pages cold long enough.
        for index in promoteOrder {
            let candidate = promote[index]
            if budget <= 0 { break }
            if fastUsed < limitPages {
                plan.promote[files[candidate.0].key, default: []].append(candidate.1)
                fastUsed += 1
                budget -= 1
                continue
            }
            guard budget >= 2, next < coldOrder.count else { break }
            let victim = cold[coldOrder[next]]
            guard Int(coldness(victim)) >= promoteThreshold, heat(victim) < heat(candidate) else { break }
            demote(victim); next += 1
            plan.promote[files[candidate.0].key, default: []].append(candidate.1)
            fastUsed += 1
            budget -= 1
        }
        for k in plan.promote.keys { plan.promote[k]!.sort() }
        for k in plan.demote.keys { plan.demote[k]!.sort() }
        return plan
    }
}
