import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Issue 14: the shim's own descriptors are invisible to the program.
/// Whatever a program uses to find its open descriptors (a /proc/self/fd
/// listing, scandir(3), fstat over every number, os.scandir of /dev/fd) answers under
/// the shim exactly what it answers natively: in the parent after a large
/// allocation (the arena and the pool exist), in a copy-on-write fork child
/// (which also holds a userfaultfd), and in an exec'd child. A raw
/// getdents64 system call, which the shim cannot see, proves the shim's
/// descriptors really are open under the shim, so the hiding is tested.
@Suite(.serialized)
struct FdViewTests {
    static let program = """
        import ctypes, os, struct, subprocess, sys
        os.closerange(3, 65536)  # whatever the test runner leaked, in either run
        keep = bytearray(64 << 20)
        def fstat_scan():
            out = []
            for fd in range(os.sysconf('SC_OPEN_MAX')):
                try:
                    os.fstat(fd); out.append(fd)
                except OSError:
                    pass
            return out
        def raw_count(path):
            # getdents64 as a bare system call: what the kernel really holds.
            libc = ctypes.CDLL(None, use_errno=True)
            libc.syscall.restype = ctypes.c_long
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
            buf = ctypes.create_string_buffer(65536)
            names = []
            while True:
                n = libc.syscall(217, fd, buf, len(buf))
                if n <= 0:
                    break
                off = 0
                while off < n:
                    reclen = struct.unpack_from('H', buf.raw, off + 16)[0]
                    names.append(buf.raw[off + 19:off + reclen].split(b'\\0')[0])
                    off += reclen
            os.close(fd)
            return len([x for x in names if x not in (b'.', b'..')])
        def scandir_names(path):
            # scandir(3), which reads through libc's internal readdir.
            libc = ctypes.CDLL(None)
            libc.scandir.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.POINTER(ctypes.c_void_p)), ctypes.c_void_p, ctypes.c_void_p]
            entries = ctypes.POINTER(ctypes.c_void_p)()
            n = libc.scandir(path, ctypes.byref(entries), None, None)
            names = [ctypes.string_at(entries[i] + 19) for i in range(n)]  # d_name of struct dirent on LP64
            return sorted(int(x) for x in names if x not in (b'.', b'..'))
        def view(tag):
            listed = sorted(int(x) for x in os.listdir('/proc/self/fd'))
            print(tag, 'fd', listed)
            print(tag, 'fdinfo', sorted(int(x) for x in os.listdir('/proc/self/fdinfo')))
            print(tag, 'dev-fd', sorted(int(e.name) for e in os.scandir('/dev/fd')))
            print(tag, 'scandir', scandir_names(b'/proc/self/fd'))
            print(tag, 'fstat', fstat_scan())
            # The listing above included its own directory fd; so does this.
            print('HIDDEN', tag, raw_count('/proc/self/fd') - len(listed), file=sys.stderr)
            sys.stdout.flush()
        view('parent')
        pid = os.fork()
        if pid == 0:
            keep[4096] = 1
            view('child')
            os._exit(0)
        os.waitpid(pid, 0)
        child = subprocess.run([sys.executable, '-c', 'import os; b = bytearray(32 << 20); print(sorted(int(x) for x in os.listdir("/proc/self/fd")))'],
                               capture_output=True, text=True)
        print('exec', child.stdout.strip())
        try:
            os.close(700)
            print('close 700: closed')
        except OSError as e:
            print('close 700:', e.errno)
        """

    private func hidden(_ stderr: String, _ tag: String) -> Int {
        let line = stderr.split(separator: "\n").first { $0.hasPrefix("HIDDEN \(tag) ") } ?? ""
        return Int(line.split(separator: " ").last ?? "") ?? -1
    }

    @Test func procSelfFdListsWhatItListsNatively() throws {
        try ShimPrograms.build()
        let native = try run(unblocked(["/usr/bin/python3", "-c", Self.program]), environment: ["LD_PRELOAD": "", "FBMM_MOUNT": ""], timeout: 120)
        try #require(native.ok, "native python3: \(native.stdout) \(native.stderr)")
        #expect(hidden(native.stderr, "parent") == 0 && hidden(native.stderr, "child") == 0, "\(native.stderr)")
        let mount = try TestMount()
        defer { mount.close() }
        for allocator in ["system", "jemalloc"] {
            let shimmed = try run(fbmmRun(mount, ["--allocator", allocator, "--verbose"], ["/usr/bin/python3", "-c", Self.program]), timeout: 120)
            #expect(shimmed.ok && shimmed.stdout == native.stdout,
                    "under the shim (\(allocator)):\n\(shimmed.stdout)\nnatively:\n\(native.stdout)\n\(shimmed.stderr.suffix(2000))")
            #expect(shimmed.stderr.contains("fbmm: using fbmm mount \(mount.path)"), "\(shimmed.stderr.suffix(2000))")
            // The arena's FUSE fd and memfd at least (and the pool's eventfd,
            // a lazy copy's userfaultfd in the child) are open, yet unlisted.
            #expect(hidden(shimmed.stderr, "parent") >= 2, "the shim's descriptors exist in the parent: \(shimmed.stderr.suffix(2000))")
            #expect(hidden(shimmed.stderr, "child") >= 2, "and in the fork child: \(shimmed.stderr.suffix(2000))")
        }
        #expect(mountListsNothing(mount))
    }
}
