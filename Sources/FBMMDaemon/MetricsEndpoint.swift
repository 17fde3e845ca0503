import FBMMProtocol
import CFBMMSys
import FBMMCore
import Foundation
import Logging
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// `-o metrics=PORT`: a Prometheus scrape endpoint on 127.0.0.1:PORT, for
/// users who watch a mount over time without cron and a textfile.
///
/// What it serves is the mount-wide series only (nodes, pool, counters, the
/// pre-zeroed pool, the policy's counters): a TCP peer has no credentials
/// to check, and the trust model lets a user see only their own files and
/// processes. Per-file and per-process series come from `fbmm stat
/// --prometheus`, which the broker answers with the caller's view.
///
/// One thread, one request at a time (a scrape every few seconds), each
/// answered as HTTP/1.0 and closed; a peer that sends nothing within two
/// seconds is dropped, so a stalled client cannot hold the endpoint.
final class MetricsEndpoint: Sendable {
    let port: UInt16
    private let listener: Int32
    private let logger: Logger

    /// Binds now, so that a port in use is an error before anything is mounted.
    init(port: UInt16, logger: Logger) throws(SystemError) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SystemError("metrics socket", errno: Errno(rawValue: errno)) }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        address.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian  // 127.0.0.1
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0, listen(fd, 16) == 0 else {
            let e = errno
            close(fd)
            throw SystemError("metrics endpoint", "127.0.0.1:\(port)", errno: Errno(rawValue: e))
        }
        self.port = port
        listener = fd
        self.logger = logger
    }

    func start(_ exposition: @escaping @Sendable () -> String) {
        let listener = self.listener
        let logger = self.logger
        _ = startThread {
            while true {
                let client = fbmm_accept_cloexec(listener)
                if client < 0 {
                    if errno == EINTR || errno == ECONNABORTED { continue }
                    if errno == EBADF || errno == EINVAL { return }  // closed: the mount is going away
                    usleep(50_000)
                    continue
                }
                Self.answer(client, exposition)
                close(client)
            }
        }
        logger.info("metrics on http://127.0.0.1:\(port)/metrics")
    }

    func stop() {
        shutdown(listener, Int32(SHUT_RDWR))
        close(listener)
    }

    /// Reads the request line (GET /metrics or GET /) and answers it.
    private static func answer(_ client: Int32, _ exposition: () -> String) {
        var timeout = timeval(tv_sec: 2, tv_usec: 0)
        setsockopt(client, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(client, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var request: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 2048)
        while request.count < 8192 {
            let n = recv(client, &buffer, buffer.count, 0)
            if n <= 0 { break }
            request.append(contentsOf: buffer[0..<n])
            if request.count >= 4, request.suffix(4) == [13, 10, 13, 10] { break }
        }
        let line = String(decoding: request.prefix { $0 != 13 && $0 != 10 }, as: UTF8.self).split(separator: " ")
        let response: String
        if line.count >= 2, line[0] == "GET", line[1] == "/metrics" || line[1] == "/" {
            let body = exposition()
            response = "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
                + "Content-Length: \(body.utf8.count)\r\n\r\n" + body
        } else {
            response = "HTTP/1.0 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 22\r\n\r\nfbmm serves /metrics\r\n"
        }
        var bytes = Array(response.utf8)
        var sent = 0
        while sent < bytes.count {
            let n = bytes.withUnsafeMutableBytes { send(client, $0.baseAddress! + sent, $0.count - sent, Int32(MSG_NOSIGNAL)) }
            if n <= 0 { break }
            sent += n
        }
    }
}

extension MountStatistics {
    /// What a peer without credentials may see: the mount as a whole.
    public var mountWide: MountStatistics {
        var copy = self
        copy.files = []
        copy.processes = nil
        return copy
    }
}
