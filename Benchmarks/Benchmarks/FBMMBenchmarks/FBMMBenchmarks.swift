// Micro-benchmarks of what fbmm adds to a program's memory operations:
//  - the raw cost of shared memory: mmap+touch+munmap of 1 and 128 pages,
//    anonymous (what a program normally gets) vs a memfd mapped MAP_SHARED vs
//    the backing memfd of a real fbmm mount file (what the shim maps), each
//    freed again the way the shim frees (hole punch);
//  - the broker round trip (FBMM_OP_STAT and FBMM_OP_GET_BACKING), which the
//    shim pays once per arena;
//  - FUSE operations on a real mount (create+write+close+unlink, stat), which
//    the shim pays per arena growth, with tmpfs (/dev/shm) as the reference.
// Needs root and a built fbmm: scripts/build.sh, or FBMM_BIN=/path/to/fbmm.
import Benchmark
import CFBMMSys
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// The mount and the open files the benchmarks share.
final class Fixture: @unchecked Sendable {
    static let shared = Fixture()

    let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))
    var mount = ""
    var broker = ""
    var fileFD: Int32 = -1      // a file of the mount, open for writing
    var fileIno: UInt64 = 0
    var mountMemfd: Int32 = -1  // its backing memfd, from the broker
    var ownMemfd: Int32 = -1    // a memfd of this process
    let bytes = [UInt8](repeating: 0x5a, count: 4096)

    static var fbmm: String {
        if let bin = ProcessInfo.processInfo.environment["FBMM_BIN"] { return bin }
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<4 { url.deleteLastPathComponent() }   // Benchmarks/Benchmarks/FBMMBenchmarks/x.swift -> repo
        return url.path + "/.build/debug/fbmm"
    }

    @discardableResult
    static func run(_ arguments: [String]) throws -> Int32 {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: arguments[0])
        process.arguments = Array(arguments.dropFirst())
        process.standardInput = FileHandle.nullDevice
        try process.run()
        process.waitUntilExit()
        return process.terminationStatus
    }

    func setUp() throws {
        guard geteuid() == 0 else { fatalError("the fbmm benchmarks mount a filesystem: run them as root") }
        guard access(Self.fbmm, X_OK) == 0 else { fatalError("fbmm is not built at \(Self.fbmm): run scripts/build.sh (or set FBMM_BIN)") }
        mount = "/tmp/fbmm-microbench-\(getpid())"
        mkdir(mount, 0o755)
        guard try Self.run([Self.fbmm, "mount", mount, "--policy", "local", "--log-file", "\(mount).log"]) == 0 else {
            rmdir(mount)
            fatalError("fbmm mount \(mount) failed (see \(mount).log)")
        }
        var buffer = [UInt8](repeating: 0, count: 4096)
        let n = fbmm_getxattr(mount, FBMM_XATTR_BROKER, &buffer, buffer.count)
        precondition(n > 0, "no broker xattr on \(mount)")
        broker = String(decoding: buffer[0..<n], as: UTF8.self)

        fileFD = open("\(mount)/arena", O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        precondition(fileFD >= 0, "cannot create a file in \(mount)")
        precondition(ftruncate(fileFD, off_t(128 * pageSize)) == 0, "ftruncate on the mount failed")
        var st = stat()
        fstat(fileFD, &st)
        fileIno = UInt64(st.st_ino)
        mountMemfd = getBacking()
        precondition(mountMemfd >= 0, "the broker gave no backing memfd")

        ownMemfd = fbmm_memfd_create("bench", UInt32(fbmm_memfd_flag_cloexec()))
        precondition(ownMemfd >= 0 && ftruncate(ownMemfd, off_t(128 * pageSize)) == 0, "memfd_create failed")
    }

    func tearDown() throws {
        for fd in [mountMemfd, fileFD, ownMemfd] where fd >= 0 { close(fd) }
        mountMemfd = -1; fileFD = -1; ownMemfd = -1
        unlink("\(mount)/arena")
        if try Self.run([Self.fbmm, "umount", mount]) != 0 { try Self.run([Self.fbmm, "umount", "--force", mount]) }
        rmdir(mount)
        unlink("\(mount).log")
    }

    func request(_ op: fbmm_broker_op) -> fbmm_request {
        var request = fbmm_request()
        request.magic = UInt16(FBMM_BROKER_MAGIC)
        request.version = UInt16(FBMM_BROKER_VERSION)
        request.op = op.rawValue
        request.fd = fileFD
        request.ino = fileIno
        return request
    }

    /// FBMM_OP_GET_BACKING for the open file: the memfd, or -1.
    func getBacking() -> Int32 {
        var request = request(FBMM_OP_GET_BACKING)
        var reply = fbmm_reply()
        var fd: Int32 = -1
        guard fbmm_broker_call(broker, &request, &reply, &fd) == 0, reply.status == 0 else { return -1 }
        return fd
    }

    /// FBMM_OP_STAT: the statistics document's length.
    func brokerStat() -> UInt64 {
        var request = request(FBMM_OP_STAT)
        var reply = fbmm_reply()
        var fd: Int32 = -1
        guard fbmm_broker_call(broker, &request, &reply, &fd) == 0, reply.status == 0 else { return 0 }
        if fd >= 0 { close(fd) }
        return reply.size
    }

    /// mmap, write every page, munmap; for a shared mapping, punch the hole
    /// too (as the shim does), so every round faults in fresh zero pages.
    @inline(__always)
    func mapTouchUnmap(pages: Int, fd: Int32?) {
        let length = pages * pageSize
        let flags = fd == nil ? MAP_PRIVATE | MAP_ANONYMOUS : MAP_SHARED
        guard let base = mmap(nil, length, PROT_READ | PROT_WRITE, flags, fd ?? -1, 0), base != MAP_FAILED else {
            fatalError("mmap failed: \(String(cString: strerror(errno)))")
        }
        let bytes = base.assumingMemoryBound(to: UInt8.self)
        for page in 0..<pages { bytes[page * pageSize] = UInt8(truncatingIfNeeded: page) }
        munmap(base, length)
        if let fd { _ = fbmm_punch_hole(fd, 0, off_t(length)) }
    }

    /// The FUSE path: create, write 4 KiB, close, unlink (or the same on tmpfs).
    func createWriteUnlink(in directory: String) {
        let path = "\(directory)/f-\(getpid())"
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        precondition(fd >= 0, "create in \(directory) failed")
        _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
        unlink(path)
    }
}

let benchmarks: @Sendable () -> Void = {
    let fixture = Fixture.shared
    Benchmark.defaultConfiguration = .init(metrics: [.wallClock, .throughput, .syscalls],
                                           timeUnits: .nanoseconds,
                                           warmupIterations: 10,
                                           maxDuration: .seconds(1),
                                           maxIterations: 20_000)
    Benchmark.setup = { try fixture.setUp() }
    Benchmark.teardown = { try fixture.tearDown() }

    for pages in [1, 128] {
        Benchmark("mmap+touch+munmap \(pages)p anonymous") { benchmark in
            for _ in benchmark.scaledIterations { fixture.mapTouchUnmap(pages: pages, fd: nil) }
        }
        Benchmark("mmap+touch+munmap \(pages)p memfd MAP_SHARED") { benchmark in
            for _ in benchmark.scaledIterations { fixture.mapTouchUnmap(pages: pages, fd: fixture.ownMemfd) }
        }
        Benchmark("mmap+touch+munmap \(pages)p fbmm mount backing") { benchmark in
            for _ in benchmark.scaledIterations { fixture.mapTouchUnmap(pages: pages, fd: fixture.mountMemfd) }
        }
    }

    Benchmark("broker STAT round trip") { benchmark in
        for _ in benchmark.scaledIterations { blackHole(fixture.brokerStat()) }
    }
    Benchmark("broker GET_BACKING round trip") { benchmark in
        for _ in benchmark.scaledIterations {
            let fd = fixture.getBacking()
            precondition(fd >= 0, "GET_BACKING failed")
            close(fd)
        }
    }

    Benchmark("FUSE create+write 4K+close+unlink") { benchmark in
        for _ in benchmark.scaledIterations { fixture.createWriteUnlink(in: fixture.mount) }
    }
    Benchmark("tmpfs create+write 4K+close+unlink") { benchmark in
        for _ in benchmark.scaledIterations { fixture.createWriteUnlink(in: "/dev/shm") }
    }
    Benchmark("FUSE stat") { benchmark in
        var st = stat()
        for _ in benchmark.scaledIterations { blackHole(lstat("\(fixture.mount)/arena", &st)) }
    }
    Benchmark("FUSE ftruncate grow+shrink 2M") { benchmark in
        let base = off_t(128 * fixture.pageSize)
        for _ in benchmark.scaledIterations {
            precondition(ftruncate(fixture.fileFD, base + (2 << 20)) == 0, "ftruncate grow failed")
            precondition(ftruncate(fixture.fileFD, base) == 0, "ftruncate shrink failed")
        }
    }
}
