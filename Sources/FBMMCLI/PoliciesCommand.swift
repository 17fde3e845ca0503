import ArgumentParser
import FBMMDaemon
import FBMMPolicy

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
        }
        let trackers = TrackerKind.available.map(\.rawValue)
        print("    access trackers on this kernel: \(trackers.isEmpty ? "none" : trackers.joined(separator: ", ")) (auto: \(TrackerKind.resolveAuto() == .auto ? "none" : TrackerKind.resolveAuto().rawValue))")
        print("")
        print("mount options (any policy):")
        for key in MountConfiguration.mountKeys {
            print("    \(pad(key.name, 14))\(key.help) (default \(key.defaultValue ?? "-"))")
        }
    }
}
