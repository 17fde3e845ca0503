import FBMMProtocol
import FBMMCore
import FBMMPolicy
import Logging
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// The mount policy's periodic pass (policies conforming to
/// `MaintainingPolicy`, such as `tiered`), and knobs changed while mounted.
///
/// Knobs: `setfattr -n user.fbmm.knob.KEY -v VALUE MOUNT` on the mount's root
/// (what `fbmm set MOUNT KEY=VALUE` does). The policy validates the value; a
/// refused one answers EINVAL and the daemon log says why. The kernel allows
/// user.* xattrs on the (sticky, 1777) root only to its owner and root.
extension MemoryFileSystem {
    static let knobPrefix = "user.fbmm.knob."

    /// Starts one maintenance thread for the mount's policy, if it maintains.
    func startMaintenance() {
        guard let policy = mountPolicy as? any MaintainingPolicy else { return }
        logger.info("maintenance every \(policy.maintenanceInterval)s for \(policy.description)")
        startThread { [self] in
            var said: [String: String] = [:]
            while !policy.isShutDown {
                let started = monotonicSeconds()
                policy.maintain(files: maintainedFiles(of: policy))
                // What a pass says in words (its tracker, whether that can
                // see now, its last error) goes to the log when it changes.
                for (key, counter) in policy.counters {
                    guard case .text(let text) = counter, said[key] != text else { continue }
                    if said[key] != nil || !text.isEmpty { logger.notice("\(type(of: policy).name): \(key): \(text)") }
                    said[key] = text
                }
                // Sleep out the interval in short steps, so shutdown and a
                // shortened interval take effect soon.
                while !policy.isShutDown, monotonicSeconds() - started < policy.maintenanceInterval {
                    usleep(useconds_t(min(0.05, max(0.001, policy.maintenanceInterval - (monotonicSeconds() - started))) * 1e6))
                }
            }
        }
    }

    func stopMaintenance() {
        (mountPolicy as? any MaintainingPolicy)?.shutdown()
    }

    /// The files that use this very policy instance (not those with an
    /// override of their own), with the process that maps each.
    func maintainedFiles(of policy: any MaintainingPolicy) -> [MaintainedFile] {
        let candidates = state.withLock { ns in
            ns.inodes.values.compactMap { record -> (UInt64, String, FileBacking, Int32?)? in
                guard let backing = record.backing else { return nil }
                return (record.number, record.name.description, backing, record.processOwned ? record.creatorPID : nil)
            }
        }
        let identity = ObjectIdentifier(policy as AnyObject)
        return candidates.compactMap { inode, name, backing, pid in
            // A file that never had memory has nothing to maintain. None is
            // opened here: a parked file is opened by the pass when it
            // works on it (MaintainedFile says why).
            guard ObjectIdentifier(backing.policy as AnyObject) == identity, backing.hasMemory else { return nil }
            let idleness = backing.idleness
            return MaintainedFile(inode: inode, name: name, size: backing.extent().size, ownerPID: pid,
                                  idle: idleness.idle, generation: idleness.generation, open: { backing.existing })
        }
    }

    /// Handles `user.fbmm.knob.KEY` set on the root. Returns the errno to
    /// answer; a refusal's reason is kept for `uid` (one per user, the
    /// last) in `user.fbmm.knob-refusal`.
    func setKnob(name: String, value: [UInt8], uid: UInt32) -> Errno? {
        let key = String(name.dropFirst(Self.knobPrefix.count))
        let text = String(decoding: value, as: UTF8.self)
        guard let policy = mountPolicy as? any MaintainingPolicy else {
            let why = "policy \(mountPolicy.description) has no knobs"
            logger.notice("refused knob \(key)=\(text): \(why)")
            knobRefusals.withLock { $0[uid] = why }
            return .notSupported
        }
        do throws(PolicyError) {
            try policy.setKnob(key, text)
        } catch {
            logger.notice("refused knob \(key)=\(text): \(error)")
            knobRefusals.withLock { $0[uid] = "\(error)" }
            return .invalidArgument
        }
        knobRefusals.withLock { $0[uid] = nil }
        logger.info("knob \(key)=\(text): now \(policy.description)")
        return nil
    }

    /// The policy's counters for `fbmm stat` (empty for a policy without).
    var policyCounters: [String: PolicyCounter] {
        (mountPolicy as? any MaintainingPolicy)?.counters ?? [:]
    }
}
