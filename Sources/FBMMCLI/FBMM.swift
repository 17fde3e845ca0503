import ArgumentParser
// Re-exported so that a package building its own fbmm needs only `import FBMMCLI`
// to see the policy protocol, options, topology and kernel policy types.
@_exported import FBMMCore
@_exported import FBMMPolicy
@_exported import FBMMTracking
import Synchronization

/// The `fbmm` command line. A package that adds its own policies builds its
/// own `fbmm` with `FBMM.main(policies: [MyPolicy.self])`; the built-ins, the
/// CLI and every mount option stay the same.
public enum FBMM {
    private static let registryStore = Locked(PolicyRegistry())

    /// The policies this executable knows (built-ins plus those given to `main`).
    public static var registry: PolicyRegistry { registryStore.withLock { $0 } }

    /// Runs the `fbmm` command line with `policies` registered besides the
    /// built-ins (a policy whose name is already taken is ignored). Never
    /// returns normally: exits with the command's status. `fbmm mount` starts
    /// its daemon by re-executing this same binary, so the daemon knows the
    /// same policies.
    public static func main(policies: [any MemoryManagementPolicy.Type] = []) {
        registryStore.withLock { $0 = PolicyRegistry(adding: policies) }
        FBMMCommand.main()
    }
}

struct FBMMCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fbmm",
        abstract: "File-based memory management: memory policies as filesystems.",
        discussion: """
            Mount a memory filesystem with a placement policy, run programs with their \
            anonymous memory in it, and see where every page went.
            """,
        subcommands: [MountCommand.self, UmountCommand.self, RunCommand.self, StatCommand.self, TopCommand.self,
                      PoliciesCommand.self, MigrateCommand.self, BenchCommand.self, SetCommand.self, TrackCommand.self])
}

/// A failure the user caused or must fix: printed as one line, exit status 1.
struct CLIError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
