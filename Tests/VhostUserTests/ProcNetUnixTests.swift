#if os(Linux)
import Foundation
import Glibc
import TestSupport
import Testing
import VhostUser

/// The back-end launchers decide that a socket listens from /proc/net/unix,
/// which lists every socket of the system: on a busy machine far more than the
/// first 4 KiB that one read of the file returns.
@Suite struct ProcNetUnixTests {
    @Test func aSocketBoundButNotListeningIsNotTakenForListeningWhenTheTableIsLong() throws {
        // 1000 socket pairs: the table grows to about 200 KiB, and the line of
        // the bound socket falls past the first read almost always.
        let pairs = try SocketPairs(count: 1000)
        defer { pairs.close() }
        let path = NSTemporaryDirectory() + "irqfd-bound-\(UUID().uuidString.prefix(8)).sock"
        let bound = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        #expect(bound >= 0)
        defer { close(bound) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (i, byte) in path.utf8.enumerated() { raw[i] = byte }
        }
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(bound, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        #expect(result == 0, "bind: errno \(errno)")
        defer { unlink(path) }
        #expect(!VhostUserBackendProcess.isListening(path), "bound, not listening: a connect would be refused")
        #expect(listen(bound, 1) == 0)
        #expect(VhostUserBackendProcess.isListening(path))
    }
}
#endif
