#if canImport(Glibc)
import Glibc
#endif

/// Starts a detached OS thread. The daemon's few long-lived loops (broker,
/// policy timers) are plain threads: they block in accept/poll, which must
/// never happen on Swift's cooperative pool.
/// Returns false when the system has no thread to give (the caller decides).
@discardableResult
func startThread(_ body: @escaping @Sendable () -> Void) -> Bool {
    final class Box: @unchecked Sendable { let body: @Sendable () -> Void; init(_ b: @escaping @Sendable () -> Void) { body = b } }
    let box = Unmanaged.passRetained(Box(body))
    var thread = pthread_t()
    let result = pthread_create(&thread, nil, { raw in
        let box = Unmanaged<Box>.fromOpaque(raw!).takeRetainedValue()
        box.body()
        return nil
    }, box.toOpaque())
    if result == 0 { pthread_detach(thread); return true }
    box.release()
    return false
}
