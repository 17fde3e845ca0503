import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// A failed system call: which call, on what, and the errno it returned.
///
/// Every syscall wrapper in fbmm throws this, so a failure deep in the daemon
/// still reaches the user as one line naming the operation and its object
/// ("mbind(node 3) on memfd 'a.dat': Invalid argument").
public struct SystemError: Error, CustomStringConvertible, Sendable, Equatable {
    public let operation: String
    public let context: String
    public let errno: Errno

    public init(_ operation: String, _ context: String = "", errno: Errno) {
        self.operation = operation
        self.context = context
        self.errno = errno
    }

    /// Captures the calling thread's current `errno`.
    public static func current(_ operation: String, _ context: String = "") -> SystemError {
        SystemError(operation, context, errno: Errno(rawValue: Glibc.errno))
    }

    public var description: String {
        let what = context.isEmpty ? operation : "\(operation) on \(context)"
        return "\(what): \(errno)"
    }
}

/// Runs `body` until it stops failing with EINTR; a result of -1 becomes a `SystemError`.
@inlinable
public func retryingSyscall<T: FixedWidthInteger>(
    _ operation: String, _ context: @autoclosure () -> String = "", _ body: () -> T
) throws(SystemError) -> T {
    while true {
        let result = body()
        if result != -1 { return result }
        let code = Glibc.errno
        if code == EINTR { continue }
        throw SystemError(operation, context(), errno: Errno(rawValue: code))
    }
}
