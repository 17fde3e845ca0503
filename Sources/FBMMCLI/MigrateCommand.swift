import ArgumentParser
import CFBMMSys
import FBMMCore
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

struct MigrateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "migrate",
        abstract: "Move a file's resident pages to a node, while programs keep using them.",
        discussion: """
            Without a range, the whole file moves and its policy becomes `preferred` on the \
            target node, so pages allocated later land there too.
            """)

    @Argument(help: "A file inside an fbmm mount.")
    var file: String

    @Option(name: .long, help: "The target NUMA node.")
    var to: Int

    @Option(name: .long, help: "Start of the range to move (bytes, K/M/G suffixes).")
    var offset: String?

    @Option(name: .long, help: "Length of the range to move (default: to the end of the file).")
    var length: String?

    func run() throws {
        let path = absolutePath(file)
        // For writing where we may (a writer may move any file it can write),
        // else for reading (enough for one's own files).
        var fd = open(path, O_RDWR | O_CLOEXEC)
        if fd < 0 && (errno == EACCES || errno == EPERM) { fd = open(path, O_RDONLY | O_CLOEXEC) }
        guard fd >= 0 else { throw CLIError("cannot open \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var st = stat()
        fstat(fd, &st)
        guard st.st_mode & S_IFMT == S_IFREG else { throw CLIError("\(path) is not a regular file") }
        guard let root = mountRoot(of: path) else { throw CLIError("\(path) is not inside an fbmm mount") }
        var request = fbmm_request()
        request.op = UInt32(FBMM_OP_MIGRATE.rawValue)
        request.ino = UInt64(st.st_ino)
        request.node = Int32(to)
        do {
            request.offset = try offset.map { try ByteSize(parsing: $0).bytes } ?? 0
            request.length = try length.map { try ByteSize(parsing: $0).bytes } ?? 0
        } catch let error as ByteSize.ParseError {
            throw CLIError(error.description)
        }
        let (reply, extra) = try brokerCall(mount: root, request, attaching: fd)
        try? extra?.close()
        guard reply.status == 0 else {
            throw CLIError("cannot migrate \(path) to node \(to): \(String(cString: strerror(reply.status)))")
        }
        print("moved \(reply.size) bytes of \(path) to node \(to)")
    }
}

/// The nearest ancestor that is an fbmm mount root.
func mountRoot(of path: String) -> String? {
    var current = path
    while true {
        if brokerPath(ofMount: current) != nil { return current }
        guard let slash = current.lastIndex(of: "/"), current != "/" else { return nil }
        current = slash == current.startIndex ? "/" : String(current[..<slash])
    }
}
