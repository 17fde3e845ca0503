import CFBMMSys
import FBMMCore
import FBMMPolicy
import FUSEKit
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Extended attributes: user.* are stored; three are fbmm's own:
/// - `user.fbmm.broker` (root, read-only): the broker socket path.
/// - `user.fbmm.prezero`, `user.fbmm.huge` (root, read-only): the pool window
///   each arena reserves (bytes, 0: no pool) and the huge-page mode; the shim
///   reads them when it opens its arena.
/// - `user.fbmm.nodes` (files, read-only): resident bytes per node, "0:8192 1:4096".
/// - `user.fbmm.policy` (files and directories): a policy override in the
///   `--policy` syntax (`bind,nodes=1`); on a directory, inherited by new files.
/// - `user.fbmm.knob-refusal` (root, read-only): why the daemon last refused
///   a knob this user set (`fbmm set` reads it after EINVAL: setxattr can
///   carry no message).
extension MemoryFileSystem: ExtendedAttributes {
    // setxattr(2) flags (linux/xattr.h).
    private var xattrCreate: Int32 { 1 }
    private var xattrReplace: Int32 { 2 }
    static let brokerAttribute = FBMM_XATTR_BROKER
    static let nodesAttribute = FBMM_XATTR_NODES
    static let policyAttribute = FBMM_XATTR_POLICY
    static let prezeroAttribute = FBMM_XATTR_PREZERO
    static let hugeAttribute = FBMM_XATTR_HUGE
    static let knobRefusalAttribute = "user.fbmm.knob-refusal"
    /// fbmm's own attributes that nobody may set or remove.
    static let readOnlyAttributes: Set<String> = [brokerAttribute, nodesAttribute, prezeroAttribute, hugeAttribute,
                                                  knobRefusalAttribute]

    public func getxattr(_ ctx: RequestContext, inode: InodeNumber, name: String, reply: consuming XattrReply) {
        switch name {
        case Self.brokerAttribute where inode == 1:
            reply.value(Array(brokerPath.utf8))
        case Self.prezeroAttribute where inode == 1:
            reply.value(Array(String(pool?.windowBytes ?? 0).utf8))
        case Self.hugeAttribute where inode == 1:
            reply.value(Array(configuration.huge.rawValue.utf8))
        case Self.knobRefusalAttribute where inode == 1:
            if let why = knobRefusals.withLock({ $0[ctx.uid] }) { reply.value(Array(why.utf8)) } else {
                reply.error(Errno(rawValue: ENODATA))
            }
        case Self.nodesAttribute:
            guard let backing = state.withLock({ $0.inodes[inode]?.backing }) else { reply.error(Errno(rawValue: ENODATA)); return }
            do {
                let nodes = try backing.residentByNode()
                let text = nodes.keys.sorted().map { "\($0):\(nodes[$0]!)" }.joined(separator: " ")
                reply.value(Array(text.utf8))
            } catch {
                reply.error(error.errno)
            }
        case Self.policyAttribute:
            let spec = state.withLock { ns -> String? in
                guard let record = ns.inodes[inode] else { return nil }
                if let spec = record.policySpec { return spec.description }
                return record.backing.map { $0.policy.description }
            }
            if let spec { reply.value(Array(spec.utf8)) } else { reply.error(Errno(rawValue: ENODATA)) }
        default:
            // ENODATA, never ENOTSUP: ENOTSUP makes the kernel stop asking this
            // filesystem for any xattr, fbmm's own included.
            let value = state.withLock { $0.inodes[inode]?.xattrs[name] }
            if let value { reply.value(value) } else { reply.error(Errno(rawValue: ENODATA)) }
        }
    }

    public func listxattr(_ ctx: RequestContext, inode: InodeNumber, reply: consuming XattrReply) {
        let names = state.withLock { ns -> [String]? in
            guard let record = ns.inodes[inode] else { return nil }
            var names = record.xattrs.keys.sorted()
            if inode == 1 { names += [Self.brokerAttribute, Self.prezeroAttribute, Self.hugeAttribute] }
            if record.backing != nil { names.append(Self.nodesAttribute) }
            if record.backing != nil || record.policySpec != nil { names.append(Self.policyAttribute) }
            return names
        }
        guard let names else { reply.error(.noSuchFileOrDirectory); return }
        reply.value(names.flatMap { Array($0.utf8) + [0] })
    }

    public func setxattr(_ ctx: RequestContext, inode: InodeNumber, name: String, value: [UInt8], flags: Int32,
                         reply: consuming StatusReply) {
        switch name {
        case _ where Self.readOnlyAttributes.contains(name):
            reply.error(.notPermitted)
        case Self.policyAttribute:
            let text = String(decoding: value, as: UTF8.self)
            let policy: any MemoryManagementPolicy
            let spec: PolicySpec
            do throws(PolicyError) {
                spec = try PolicySpec(parsing: text)
                policy = try registry.make(spec, topology: topology)
            } catch {
                logger.notice("refused \(name)=\(text): \(error)")
                reply.error(.invalidArgument)
                return
            }
            let found = state.withLock { ns -> FileRef?? in
                guard let record = ns.inodes[inode] else { return nil }
                record.policySpec = spec
                record.changeTime = currentTime()
                return .some(record.backing.map { FileRef(record, $0) })
            }
            guard let file = found else { reply.error(.noSuchFileOrDirectory); return }
            if let file {
                do {
                    let size = file.backing.extent().size
                    try file.backing.replacePolicy(policy, context: file.context(size: size))
                    pool?.policyChanged(inode)
                } catch {
                    reply.error(error.errno)
                    return
                }
            }
            reply.ok()
        case _ where inode == 1 && name.hasPrefix(Self.knobPrefix):
            if let errno = setKnob(name: name, value: value, uid: ctx.uid) { reply.error(errno) } else { reply.ok() }
        default:
            guard name.hasPrefix("user.") else { reply.error(.notSupported); return }
            guard value.count <= 65536, name.utf8.count <= 255 else { reply.error(Errno(rawValue: E2BIG)); return }
            let committed = configuration.capacity == nil ? 0 : committedTotal()
            let result = transact { (ns) throws(Errno) in
                let record = try ns.record(inode)
                let old = record.xattrs[name]
                if flags & xattrCreate != 0 && old != nil { throw .fileExists }
                if flags & xattrReplace != 0 && old == nil { throw Errno(rawValue: ENODATA) }
                let cost = UInt64(name.utf8.count + value.count)
                let freed = old.map { UInt64(name.utf8.count + $0.count) } ?? 0
                let fileBytes = record.xattrBytes + cost - min(freed, record.xattrBytes + cost)
                let mountBytes = ns.xattrBytes + cost - min(freed, ns.xattrBytes + cost)
                guard fileBytes <= MountConfiguration.xattrSizePerFile, mountBytes <= configuration.xattrSize else {
                    throw .noSpace
                }
                if let capacity = configuration.capacity, cost > freed, committed + (cost - freed) > capacity {
                    throw .noSpace
                }
                record.xattrs[name] = value
                record.xattrBytes = fileBytes
                ns.xattrBytes = mountBytes
                record.changeTime = currentTime()
            }
            switch result {
            case .success: reply.ok()
            case .failure(let errno): reply.error(errno)
            }
        }
    }

    public func removexattr(_ ctx: RequestContext, inode: InodeNumber, name: String, reply: consuming StatusReply) {
        if Self.readOnlyAttributes.contains(name) {
            reply.error(.notPermitted)
            return
        }
        if name == Self.policyAttribute {
            let found = state.withLock { ns -> FileRef?? in
                guard let record = ns.inodes[inode], record.policySpec != nil else { return nil }
                record.policySpec = nil
                return .some(record.backing.map { FileRef(record, $0) })
            }
            guard let file = found else { reply.error(Errno(rawValue: ENODATA)); return }
            if let file, let size = try? file.backing.memory.size() {
                try? file.backing.replacePolicy(mountPolicy, context: file.context(size: size))
                pool?.policyChanged(inode)
            }
            reply.ok()
            return
        }
        let result = transact { (ns) throws(Errno) in
            let record = try ns.record(inode)
            guard let old = record.xattrs.removeValue(forKey: name) else { throw Errno(rawValue: ENODATA) }
            let freed = UInt64(name.utf8.count + old.count)
            record.xattrBytes -= min(record.xattrBytes, freed)
            ns.xattrBytes -= min(ns.xattrBytes, freed)
        }
        switch result {
        case .success: reply.ok()
        case .failure(let errno): reply.error(errno)
        }
    }
}
