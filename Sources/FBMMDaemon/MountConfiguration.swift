import CFBMMSys
import FBMMCore
import FBMMPolicy

#if canImport(Glibc)
import Glibc
#endif

/// Everything a mount is started with, parsed and validated before anything is mounted.
public struct MountConfiguration: Sendable {
    public var mountpoint: String
    public var policy: PolicySpec
    /// `-o allow_other`: let other users reach the mount (the kernel still checks modes).
    public var allowOther = false
    /// `-o noswap`: the private tmpfs never swaps the mount's file memory
    /// out (tmpfs `noswap`, Linux 6.4+); needs the private tmpfs.
    public var noSwap = false
    /// `-o capacity=SIZE`: the most memory the mount's files may hold (df shows it).
    public var capacity: UInt64?
    /// `-o user-capacity=SIZE`: the most memory one user's files may hold
    /// together, so one user filling the mount cannot take it from others:
    /// counted by the daemon (growth past it: EDQUOT, the shim falls back)
    /// and, on the private tmpfs where the kernel has tmpfs quotas (6.6+),
    /// enforced by the kernel too (each backing file belongs to its user).
    public var userCapacity: UInt64?
    /// `-o max-file-size=SIZE`: no file grows past this (EFBIG); bounds the
    /// daemon's work to place a sparse file truncated to a huge size.
    public var maxFileSize: UInt64 = 4 << 40
    /// `-o max-files=N`: files and directories together (each costs the
    /// daemon memory, and an idle one no descriptor), enforced by default.
    public var maxFiles: Int = 1 << 20
    /// `-o user-files=N`: the most files and directories one user may own
    /// (creating more answers EDQUOT), so one user cannot take `max-files`
    /// from the others.
    public var userFiles: Int?
    /// `-o xattr-size=SIZE`: the most bytes (names and values) of `user.*`
    /// extended attributes all files together may hold. They live in the
    /// daemon's own memory, so they are bounded and counted in `capacity`.
    public var xattrSize: UInt64 = 16 << 20
    /// The most bytes of `user.*` attributes one file may hold (ENOSPC past it).
    public static let xattrSizePerFile: UInt64 = 256 << 10
    /// `-o prezero=SIZE`: the pre-zeroed pool's bound (0: no pool).
    public var prezero: UInt64 = 64 << 20
    /// `-o huge=`: transparent huge pages for the mount's file memory.
    public var huge: HugePageMode = .advise
    /// Whether `huge=` was given (then a system that forbids it is an error).
    public var hugeGiven = false
    /// `-o cow-chunk=SIZE`: bytes a fork's copy-on-write copies per fault
    /// (a power of two, a page to 2M; 0: fork children copy everything
    /// before fork returns, as without userfaultfd).
    public var cowChunk: UInt64 = 64 << 10
    /// `-o backing=`: file memory on the daemon's private tmpfs
    /// (TmpfsInstance, `tmpfs`) or on memfds (`memfd`); nil (`auto`, the
    /// default): the tmpfs where the kernel lets us make one (root, 5.2+),
    /// else memfds. Policies that place runs finer than a huge page get
    /// small pages there (`MemoryManagementPolicy.placementGranularity`).
    public var privateTmpfs: Bool? = nil
    /// `-o metrics=PORT`: serve the mount-wide Prometheus series on
    /// 127.0.0.1:PORT (MetricsEndpoint.swift).
    public var metricsPort: UInt16?
    public var rootUID: UInt32 = getuid()
    public var rootGID: UInt32 = getgid()
    public var rootMode: UInt32 = 0o1777

    /// Mount-level keys that `-o` may carry besides the policy's own.
    public static let mountKeys: [PolicyKey] = [
        PolicyKey("allow_other", default: "off", "let other users use the mount (modes still apply)"),
        PolicyKey("capacity", default: "unlimited", "most memory the mount's files may hold, e.g. 4G"),
        PolicyKey("user-capacity", default: "unlimited", "most memory one user's files may hold together (the daemon refuses growth past it with EDQUOT; on the private tmpfs with tmpfs quotas, Linux 6.6+, the kernel enforces it too)"),
        PolicyKey("max-files", default: "1048576", "most files and directories"),
        PolicyKey("user-files", default: "unlimited", "most files and directories one user may own (EDQUOT past it)"),
        PolicyKey("max-file-size", default: "4T", "largest size a file may grow to"),
        PolicyKey("xattr-size", default: "16M", "most bytes of user.* extended attributes in all files together (256K per file)"),
        PolicyKey("mode", default: "1777", "permissions of the mount's root directory (octal)"),
        PolicyKey("prezero", default: "64M", "pre-zeroed pool: memory kept allocated and zero for programs run under the shim (0: off)"),
        PolicyKey("cow-chunk", default: "64K", "copy-on-write across fork: bytes copied per fault, a power of two from a page to 2M (0: copy at fork)"),
        PolicyKey("backing", default: "auto", "file memory: tmpfs (the daemon's private tmpfs: huge pages as the host gives anonymous memory, capacity enforced by the kernel; root, kernel 5.2+), memfd, or auto (tmpfs where possible, else memfd)"),
        PolicyKey("metrics", default: "off", "serve mount-wide Prometheus metrics on 127.0.0.1:PORT (per-file and per-process series: fbmm stat --prometheus)"),
        PolicyKey("huge", default: "advise", "transparent huge pages for file memory: always, advise (where the program asks), never; on the private tmpfs, by default as the host gives anonymous memory (small pages for policies that place finer than a huge page)"),
        PolicyKey("noswap", default: "off", "never swap the mount's file memory out (the private tmpfs's noswap; Linux 6.4+)"),
    ]

    public init(mountpoint: String, policy: PolicySpec) {
        self.mountpoint = mountpoint
        self.policy = policy
    }

    /// Splits `-o` options into mount-level settings and the policy's options.
    public init(mountpoint: String, policyName: String, options: PolicyOptions) throws(PolicyError) {
        var policyOptions = options
        self.init(mountpoint: mountpoint, policy: PolicySpec(name: policyName))
        allowOther = try policyOptions.removeFlag("allow_other")
        noSwap = try policyOptions.removeFlag("noswap")
        if let size = try policyOptions.removeSize("capacity") { capacity = size }
        if let size = try policyOptions.removeSize("user-capacity") { userCapacity = size }
        if let size = try policyOptions.removeSize("max-file-size") { maxFileSize = size }
        if let size = try policyOptions.removeSize("xattr-size") { xattrSize = size }
        if let n = try policyOptions.removeCount("max-files") { maxFiles = n }
        userFiles = try policyOptions.removeCount("user-files")
        if let value = policyOptions.remove("mode") {
            guard let n = UInt32(value, radix: 8), n <= 0o7777 else { throw .invalidValue(key: "mode", value: value, reason: "expected octal permissions such as 1777") }
            rootMode = n
        }
        let prezeroText = policyOptions["prezero"]
        if let size = try policyOptions.removeSize("prezero"), let text = prezeroText {
            let most = UInt64(FBMM_POOL_MAX_PAGES) * UInt64(pageSize)
            guard size <= most else {
                throw .invalidValue(key: "prezero", value: text, reason: "at most \(ByteSize(bytes: most)) per mount")
            }
            prezero = size
        }
        // Each arena's pool window is part of its file, so it counts against
        // its user's bound: a window of at most a quarter of it (whole pages)
        // leaves the rest for the program's own memory.
        if let userCapacity, prezero > userCapacity / 4 {
            prezero = userCapacity / 4 / UInt64(pageSize) * UInt64(pageSize)
        }
        let chunkText = policyOptions["cow-chunk"]
        if let size = try policyOptions.removeSize("cow-chunk"), let text = chunkText {
            guard size == 0 || (size >= UInt64(pageSize) && size <= 2 << 20 && size & (size - 1) == 0) else {
                throw .invalidValue(key: "cow-chunk", value: text, reason: "expected 0 or a power of two from \(ByteSize(bytes: UInt64(pageSize))) to 2M")
            }
            cowChunk = size
        }
        if let value = policyOptions.remove("backing") {
            guard ["memfd", "tmpfs", "auto"].contains(value) else {
                throw .invalidValue(key: "backing", value: value, reason: "expected tmpfs, memfd or auto")
            }
            privateTmpfs = value == "auto" ? nil : value == "tmpfs"
        }
        if let value = policyOptions.remove("metrics") {
            guard let port = UInt16(value), port > 0 else {
                throw .invalidValue(key: "metrics", value: value, reason: "expected a TCP port from 1 to 65535")
            }
            metricsPort = port
        }
        if let value = policyOptions.remove("huge") {
            guard let mode = HugePageMode(rawValue: value) else {
                throw .invalidValue(key: "huge", value: value, reason: "expected always, advise or never")
            }
            huge = mode
            hugeGiven = true
        }
        policy = PolicySpec(name: policyName, options: policyOptions)
    }

    /// The FUSE mount options: the kernel enforces permissions itself.
    public var fuseOptions: [String] {
        var options = ["fsname=fbmm", "subtype=fbmm", "default_permissions"]
        if allowOther { options.append("allow_other") }
        return options
    }
}

private extension PolicyOptions {
    /// A mount-level size option, parsed (and refused) like any size option,
    /// then taken out of what the policy sees.
    mutating func removeSize(_ key: String) throws(PolicyError) -> UInt64? {
        let size = try size(key)
        _ = remove(key)
        return size?.bytes
    }

    /// A mount-level count (`-o max-files=N`): a positive whole number.
    mutating func removeCount(_ key: String) throws(PolicyError) -> Int? {
        guard let value = remove(key) else { return nil }
        guard let n = Int(value), n > 0 else { throw .invalidValue(key: key, value: value, reason: "expected a positive number") }
        return n
    }

    /// A mount-level flag (`-o allow_other`): present or not; a value is refused.
    mutating func removeFlag(_ key: String) throws(PolicyError) -> Bool {
        guard let value = remove(key) else { return false }
        guard value == "true" else { throw .invalidValue(key: key, value: value, reason: "takes no value") }
        return true
    }
}
