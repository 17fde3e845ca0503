import CFBMMSys
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Hostile input and faults: garbage on the broker socket, fd floods, odd
/// names, huge offsets and sizes — the daemon answers errors and keeps serving.
@Suite(.serialized)
struct ReliabilityTests {
    /// A deterministic generator, so a failing case can be replayed.
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

    func daemonPID(_ mount: TestMount) throws -> pid_t {
        let stats = try mount.statistics()
        return try #require((stats["daemon_pid"] as? Int).map { pid_t($0) })
    }

    func openFDs(_ pid: pid_t) -> Int {
        (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").count) ?? -1
    }

    func brokerSocket(_ mount: TestMount) throws -> String {
        var buffer = [UInt8](repeating: 0, count: 4096)
        let n = fbmm_getxattr(mount.path, FBMM_XATTR_BROKER, &buffer, buffer.count)
        try #require(n > 0, "the mount root publishes its broker socket")
        return String(decoding: buffer[0..<n], as: UTF8.self)
    }

    @Test func brokerSurvivesGarbageTruncatedMessagesAndFdFloods() throws {
        let mount = try TestMount()
        defer { mount.close() }
        let pid = try daemonPID(mount)
        let socketPath = try brokerSocket(mount)
        let baseline = openFDs(pid)
        var rng = SplitMix(state: 0xFB33)
        let devnull = open("/dev/null", O_RDONLY)
        defer { close(devnull) }
        var refusals = 0
        for round in 0..<400 {
            let sock = fbmm_connect_seqpacket(socketPath)
            try #require(sock >= 0, "round \(round): the broker accepts connections")
            defer { close(sock) }
            var message: [UInt8]
            switch round % 4 {
            case 0:  // random bytes of random length
                message = (0..<Int.random(in: 0...96, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
            case 1:  // a valid header with a truncated body
                var request = fbmm_request(magic: UInt16(FBMM_BROKER_MAGIC), version: UInt16(FBMM_BROKER_VERSION),
                                           op: UInt32(FBMM_OP_GET_BACKING.rawValue), flags: 0, node: 0, ino: 2, offset: 0, length: 0)
                message = withUnsafeBytes(of: &request) { Array($0) }
                message.removeLast(Int.random(in: 1..<message.count, using: &rng))
            case 2:  // well-formed requests for inodes the peer does not hold (with /dev/null or nothing attached)
                var request = fbmm_request(magic: UInt16(FBMM_BROKER_MAGIC), version: UInt16(FBMM_BROKER_VERSION),
                                           op: UInt32.random(in: 0...5, using: &rng), flags: UInt32.random(in: 0...3, using: &rng),
                                           node: Int32.random(in: -3...70, using: &rng), ino: UInt64.random(in: 0...100, using: &rng),
                                           offset: rng.next(), length: rng.next())
                if request.op == UInt32(FBMM_OP_STAT.rawValue) { request.op = 99 }
                message = withUnsafeBytes(of: &request) { Array($0) }
            default:  // oversized messages
                message = [UInt8](repeating: 0x42, count: 4096)
            }
            // Attach an fd now and then: the daemon must close what it is sent.
            let attach: Int32 = round % 3 == 0 ? devnull : -1
            _ = message.withUnsafeBytes { fbmm_send_with_fd(sock, $0.baseAddress, $0.count, attach) }
            var reply = fbmm_reply()
            var received: Int32 = -1
            let n = withUnsafeMutableBytes(of: &reply) { fbmm_recv_with_fd(sock, $0.baseAddress, $0.count, &received) }
            #expect(received < 0, "round \(round): no fd is handed out for a bad request")
            if received >= 0 { close(received) }
            if n == MemoryLayout<fbmm_reply>.size && reply.status != 0 { refusals += 1 }
        }
        #expect(refusals == 400, "every bad request is refused with a status")
        // A flood of silent connections is turned away or times out; it never wedges the broker.
        var silent: [Int32] = []
        for _ in 0..<150 { silent.append(fbmm_connect_seqpacket(socketPath)) }
        let statDuringFlood = try run([Artefacts.fbmm, "stat", mount.path, "--json"], timeout: 30)
        #expect(statDuringFlood.ok, "stat answers during a flood: \(statDuringFlood.stderr)")
        silent.filter { $0 >= 0 }.forEach { close($0) }
        // Back to the baseline: nothing leaked.
        var settled = openFDs(pid)
        for _ in 0..<100 where settled > baseline { usleep(50_000); settled = openFDs(pid) }
        #expect(settled <= baseline, "daemon fds back to \(baseline) (now \(settled))")
        #expect(kill(pid, 0) == 0, "the daemon is alive")
    }

    @Test func oddNamesHugeOffsetsAndSizesGetErrorsNotCrashes() throws {
        let mount = try TestMount(options: ["max-file-size=1T"])
        defer { mount.close() }
        let pid = try daemonPID(mount)
        // Every byte but '/' and NUL is a valid name byte; names round-trip exactly.
        var created = Set<[UInt8]>()
        for byte in UInt8(1)...UInt8(255) where byte != UInt8(ascii: "/") && byte != UInt8(ascii: ".") {
            let name: [UInt8] = [UInt8(ascii: "n"), byte, 0xFF]
            let path = Array(mount.path.utf8) + [UInt8(ascii: "/")] + name + [0]
            let fd = path.withUnsafeBufferPointer { p in
                p.withMemoryRebound(to: CChar.self) { open($0.baseAddress!, O_CREAT | O_WRONLY | O_EXCL, 0o644) }
            }
            #expect(fd >= 0, "name with byte \(byte) is accepted")
            if fd >= 0 { close(fd); created.insert(name) }
        }
        let listed = Set(directoryEntryBytes(mount.path))
        #expect(listed.count == created.count, "every odd name lists once (\(listed.count) of \(created.count))")
        // 255 bytes is the limit.
        #expect(FileManager.default.createFile(atPath: mount.file(String(repeating: "x", count: 255)), contents: Data()))
        let tooLong = open(mount.file(String(repeating: "y", count: 256)), O_CREAT | O_WRONLY, 0o644)
        #expect(tooLong < 0 && errno == ENAMETOOLONG)
        // Huge offsets and sizes.
        let fd = open(mount.file("big"), O_CREAT | O_RDWR, 0o644)
        try #require(fd >= 0)
        defer { close(fd) }
        var byte: UInt8 = 7
        #expect(pwrite(fd, &byte, 1, off_t(1) << 62) < 0, "a write at 4 EiB fails")
        #expect(ftruncate(fd, off_t(2) << 40) < 0 && errno == EFBIG, "max-file-size refuses 2 TiB")
        #expect(ftruncate(fd, off_t(512) << 30) == 0, "a sparse 512 GiB file is fine")
        #expect(pwrite(fd, &byte, 1, (off_t(512) << 30) - 1) == 1)
        var back: UInt8 = 0
        #expect(pread(fd, &back, 1, (off_t(512) << 30) - 1) == 1 && back == 7)
        #expect(pread(fd, &back, 1, off_t(1) << 61) == 0, "reading past the end returns nothing")
        #expect(kill(pid, 0) == 0, "the daemon is alive")
    }

    @Test func hostilePolicyXattrsAreRefused() throws {
        let mount = try TestMount()
        defer { mount.close() }
        let pid = try daemonPID(mount)
        FileManager.default.createFile(atPath: mount.file("f"), contents: Data(count: 8192))
        var rng = SplitMix(state: 0xA77)
        let alphabet = Array("bindpreferredinterleavelocalnodes=weights:unit,0123456789-K GM\u{0}\u{FF}=,:".utf8)
        var accepted = 0
        for _ in 0..<500 {
            let value = (0..<Int.random(in: 0...40, using: &rng)).map { _ in alphabet.randomElement(using: &rng)! }
            let result = value.withUnsafeBytes { raw in
                fbmm_setxattr(mount.file("f"), "user.fbmm.policy", raw.baseAddress, raw.count, 0)
            }
            if result == 0 { accepted += 1 } else { #expect(errno == EINVAL, "refusals are EINVAL") }
        }
        // Long values are refused too.
        let long = [UInt8](repeating: 0x61, count: 60000)
        #expect(long.withUnsafeBytes { fbmm_setxattr(mount.file("f"), "user.fbmm.policy", $0.baseAddress, $0.count, 0) } != 0)
        #expect(kill(pid, 0) == 0, "the daemon is alive after \(accepted) accepted specs")
        let stat = try run([Artefacts.fbmm, "stat", mount.path])
        #expect(stat.ok)
    }
}

/// Directory entries as raw bytes (FileManager would decode them lossily).
func directoryEntryBytes(_ path: String) -> [[UInt8]] {
    guard let dir = opendir(path) else { return [] }
    defer { closedir(dir) }
    var names: [[UInt8]] = []
    while let entry = readdir(dir) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { Array($0.prefix(while: { $0 != 0 })) }
        if name != [46] && name != [46, 46] { names.append(name) }
    }
    return names
}
