#if canImport(Glibc)
import Glibc
#endif

/// A value guarded by a mutual-exclusion lock: the one lock type of fbmm.
///
/// Why not `Synchronization.Mutex`: on Linux it is a bare futex, invisible to
/// ThreadSanitizer, so every access made under it reads as a race and
/// `scripts/tsan.sh` could not tell a real race from none. A pthread mutex
/// costs the same when uncontended (one atomic in user space) and TSan
/// understands it. The API is Mutex's, region checks included: the value is
/// reachable only inside `withLock`, and what leaves it must be `sending`.
public final class Locked<Value: ~Copyable>: @unchecked Sendable {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private var value: Value

    public init(_ value: consuming sending Value) {
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        pthread_mutex_init(mutex, nil)
        self.value = value
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    public func withLock<Result: ~Copyable, E: Error>(
        _ body: (inout sending Value) throws(E) -> sending Result
    ) throws(E) -> sending Result {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value)
    }
}
