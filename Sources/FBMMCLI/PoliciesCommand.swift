import ArgumentParser
import FBMMDaemon
import FBMMPolicy
import FBMMTracking

struct PoliciesCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "policies",
        abstract: "List the registered policies with their keys and defaults.")

    func run() {
        for type in FBMM.registry.types {
            print("\(type.name): \(type.summary)")
            for key in type.keys {
                let value = key.defaultValue.map { "default \($0)" } ?? "required"
                print("    \(pad(key.name, 14))\(key.help) (\(value))")
            }
            if type.name == TieredPolicy.name {
                let trackers = TrackerKind.available.map(\.rawValue)
                print("    access trackers on this kernel: \(trackers.isEmpty ? "none" : trackers.joined(separator: ", ")) (auto: \(TrackerKind.auto.consequence))")
            }
            if ContigPolicy.name == type.name {
                let support = ShmemHugePageSupport.current()
                print("    shmem huge pages on this system: \(support.allowsAdvisedMappings ? "allowed" : "not allowed") (shmem_enabled: \(support.global ?? "missing"))")
            }
        }
        print("")
        print("mount options (any policy):")
        for key in MountConfiguration.mountKeys {
            print("    \(pad(key.name, 14))\(key.help) (default \(key.defaultValue ?? "-"))")
        }
    }
}
