import CFBMMSys
import FBMMCore
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// The broker's copy-on-write requests (fbmm_broker.h, FBMM_OP_COW_*): each
/// names arenas by the peer's own O_RDWR fds of them, process-owned files of
/// its uid, exactly as the pool does. A userfaultfd a peer attaches gives
/// the daemon no power the peer lacks: whoever holds it already decides
/// what that process's faults read.
extension Broker {
    private func arena(_ client: Int32, _ attached: AttachedFile, peer: BrokerPeer, _ what: String) -> FileRef? {
        guard requireReadWrite(client, attached, peer: peer) else { return nil }
        switch filesystem.arenaForPool(attached.inode, peer: peer) {
        case .success(let file): return file
        case .failure(let e):
            refuse(client, e, "\(what): inode \(attached.inode) is not an arena of uid \(peer.uid)")
            return nil
        }
    }

    /// A duplicate of a peer's userfaultfd for the daemon to keep, if it is one.
    private func keepUserfaultfd(_ client: Int32, _ fd: Int32, _ what: String) -> Int32? {
        guard fd >= 0, fbmm_is_userfaultfd(fd) != 0 else {
            refuse(client, .invalidArgument, "\(what): the second attachment is not a userfaultfd")
            return nil
        }
        let copy = fcntl(fd, F_DUPFD_CLOEXEC, 3)
        guard copy >= 0 else { refuse(client, Errno(rawValue: errno), "\(what): dup"); return nil }
        return copy
    }

    func cowFork(_ client: Int32, _ request: fbmm_request, peer: BrokerPeer, attached: AttachedFile,
                 parentFD: Int32, uffd: Int32) {
        guard let child = arena(client, attached, peer: peer, "cow fork") else { return }
        let parentFile: AttachedFile
        switch identify(parentFD, inode: request.offset) {
        case .success(let f): parentFile = f
        case .failure(let e): refuse(client, e, "cow fork: the parent's arena fd is not inode \(request.offset)"); return
        }
        guard parentFile.inode != child.inode, let parent = arena(client, parentFile, peer: peer, "cow fork"),
              let kept = keepUserfaultfd(client, uffd, "cow fork") else { return }
        if let e = filesystem.copyOnWrite.fork(parent: parent, child: child, pid: peer.pid, uffd: kept) {
            refuse(client, e, "cow fork of inode \(parent.inode) for pid \(peer.pid)")
            return
        }
        reply(client, status: 0)
    }

    func cowChild(_ client: Int32, peer: BrokerPeer, attached: AttachedFile, uffd: Int32) {
        guard let file = arena(client, attached, peer: peer, "cow child"),
              let kept = keepUserfaultfd(client, uffd, "cow child") else { return }
        if let e = filesystem.copyOnWrite.child(file, pid: peer.pid, uffd: kept) {
            refuse(client, e, "cow child: inode \(file.inode) of pid \(peer.pid) is no lazy copy waiting for its process")
            return
        }
        filesystem.claimArena(file.inode, pid: peer.pid)
        reply(client, status: 0)
    }

    /// COW_RELEASE and COW_FILL.
    func cowRelease(_ client: Int32, _ request: fbmm_request, peer: BrokerPeer, attached: AttachedFile) {
        guard let file = arena(client, attached, peer: peer, "cow release") else { return }
        let (end, overflow) = request.offset.addingReportingOverflow(request.length)
        guard !overflow else { refuse(client, .invalidArgument, "cow release: range past any file"); return }
        if request.op == UInt32(FBMM_OP_COW_FILL.rawValue) {
            let range = request.offset == 0 && request.length == 0 ? nil : request.offset..<end
            if let e = filesystem.copyOnWrite.fill(file, range: range) { refuse(client, e, "cow fill of inode \(file.inode)"); return }
            reply(client, status: 0)
            return
        }
        let linked = filesystem.copyOnWrite.release(file, range: request.offset..<end)
        reply(client, status: 0, size: linked ? 1 : 0)
    }

    /// /dev/userfaultfd for a peer that may have it: root and the mount's
    /// own user (a userfaultfd that handles kernel-mode faults is what
    /// `vm.unprivileged_userfaultfd=0` withholds from everyone else).
    func giveUserfaultfdDevice(_ client: Int32, peer: BrokerPeer) {
        guard peer.isPrivileged else {
            refuse(client, .notPermitted, "userfaultfd device: uid \(peer.uid) is neither root nor the mount's user")
            return
        }
        let fd = fbmm_open_userfaultfd_device()
        guard fd >= 0 else { refuse(client, Errno(rawValue: errno), "open /dev/userfaultfd"); return }
        reply(client, status: 0, fd: fd)
        close(fd)
    }
}
