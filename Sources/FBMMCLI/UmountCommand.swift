import FBMMProtocol
import ArgumentParser
import FBMMCore
import Foundation

#if canImport(Glibc)
import Glibc
#endif

struct UmountCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "umount",
        abstract: "Unmount an fbmm mount and stop its daemon.",
        discussion: "A mount that programs still use is refused unless --force (a lazy detach).")

    @Argument(help: "The mount point.")
    var directory: String

    @Flag(name: .long, help: "Detach even while programs still use the mount (they keep their memory).")
    var force = false

    func run() throws {
        let path = absolutePath(directory)
        guard FBMMMount.isMount(path) else { throw CLIError("\(path) is not an fbmm mount") }
        let daemonPID = daemonPID(ofMount: path)
        if umount2(path, force ? Int32(MNT_DETACH) : 0) != 0 {
            let code = errno
            if code == EBUSY {
                throw CLIError("\(path) is busy: programs still use it (see `fuser -vm \(path)`); use --force to detach anyway")
            }
            if code == EPERM || code == EACCES {
                // Not root: the setuid helper unmounts mounts the user owns.
                var status: Int32 = 0
                let devnull = open("/dev/null", O_WRONLY)
                defer { close(devnull) }
                let pid = try spawnProcess(["/usr/bin/fusermount3", "-u"] + (force ? ["-z"] : []) + [path],
                                           stdinPath: "/dev/null", stdoutFD: devnull, stderrFD: 2)
                waitpid(pid, &status, 0)
                guard status == 0 else { throw CLIError("cannot unmount \(path): permission denied") }
            } else {
                throw CLIError("cannot unmount \(path): \(String(cString: strerror(code)))")
            }
        }
        // Wait for the daemon to finish, so a following mount or exit sees a clean state.
        if let pid = daemonPID {
            for _ in 0..<200 where kill(pid, 0) == 0 { usleep(25_000) }
        }
    }
}
