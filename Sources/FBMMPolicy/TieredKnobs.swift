import FBMMCore
import FBMMTracking
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The tiered policy's knobs (changeable while mounted: `fbmm set`).
/// A top-level type (`TieredPolicy.Knobs` names it) so that the class's
/// stored properties can use it from another file under whole-module builds.
public struct TieredKnobs: Sendable, Hashable {
    public var fastCapacity: UInt64
    public var scanInterval: Double = 1
    public var promoteThreshold: Int = 2
    /// Percent of fastCapacity, or bytes.
    public var watermarkPercent: Double? = 2
    public var watermarkBytes: UInt64 = 0
    public var rateLimit: UInt64 = 128 << 20
    public var tracker: TrackerKind = .auto

    public var watermark: UInt64 {
        if let percent = watermarkPercent {
            let bytes = UInt64(Double(fastCapacity) * percent / 100)
            return bytes / UInt64(pageSize) * UInt64(pageSize)
        }
        return min(watermarkBytes, fastCapacity)
    }
    /// Fast bytes the policy fills up to (placement budget, promotion limit).
    public var fastLimit: UInt64 { fastCapacity - min(watermark, fastCapacity) }

    /// Applies one `KEY=VALUE`; throws the user-facing reason it is refused.
    public mutating func apply(_ key: String, _ value: String) throws(PolicyError) {
        let options = PolicyOptions([(key, value)])
        switch key {
        case "fast-capacity":
            guard let size = try options.size(key), size.bytes >= UInt64(pageSize) else {
                throw .invalidValue(key: key, value: value, reason: "must be at least one page")
            }
            fastCapacity = size.bytes / UInt64(pageSize) * UInt64(pageSize)
        case "scan-interval":
            guard let seconds = try options.seconds(key), seconds >= 0.05, seconds <= 3600 else {
                throw .invalidValue(key: key, value: value, reason: "must be from 50ms to 3600s")
            }
            scanInterval = seconds
        case "promote-threshold":
            guard let n = Int(value), n >= 1, n <= 100 else {
                throw .invalidValue(key: key, value: value, reason: "expected a whole number of scans from 1 to 100")
            }
            promoteThreshold = n
        case "demote-watermark":
            if value.hasSuffix("%") {
                guard let percent = Double(value.dropLast()), percent >= 0, percent < 100 else {
                    throw .invalidValue(key: key, value: value, reason: "expected a percentage from 0% to 99%")
                }
                watermarkPercent = percent
            } else {
                guard let size = try options.size(key) else { return }
                watermarkPercent = nil
                watermarkBytes = size.bytes / UInt64(pageSize) * UInt64(pageSize)
            }
        case "rate-limit":
            guard let size = try options.size(key), size.bytes >= UInt64(pageSize) else {
                throw .invalidValue(key: key, value: value, reason: "must be at least one page per second")
            }
            rateLimit = size.bytes
        case "tracker":
            guard let kind = TrackerKind(rawValue: value) else {
                throw .invalidValue(key: key, value: value, reason: "expected auto, softdirty, damon or refault")
            }
            if kind == .damon && tracker != .damon && !DamonTracker.isAvailable {
                throw .invalidValue(key: key, value: value, reason: "DAMON is not available on this kernel (no /sys/kernel/mm/damon/admin, not root, or in use)")
            }
            if kind == .refault && tracker != .refault && !RefaultTracker.isAvailable {
                throw .invalidValue(key: key, value: value, reason: "refault sampling is not available here (needs process_madvise, Linux 5.10+, and no active swap)")
            }
            if kind == .softdirty && !SoftDirtyTracker.isAvailable {
                throw .invalidValue(key: key, value: value, reason: "soft-dirty is not available on this kernel (built without CONFIG_MEM_SOFT_DIRTY)")
            }
            tracker = kind
        default:
            throw .unknownKey(policy: TieredPolicy.name, key: key, known: TieredPolicy.knobKeys.sorted())
        }
    }
}
