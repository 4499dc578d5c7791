#if os(Linux)
import Foundation
import Glibc
import IrqFdCore
import IrqFdLinux
import SystemPackage
import Testing

/// `UnixSocket.listen(at:backlog:)`: the socket file appears at its path
/// already listening (bound under a temporary name beside it, then renamed).
@Suite struct UnixSocketListenTests {
    /// A fresh directory of this test's own.
    static func directory() throws -> String {
        let path = NSTemporaryDirectory() + "irqfd-listen-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    /// The socket is at its path, accepts a connection, and no temporary name is left beside it.
    @Test func theSocketIsAtItsPathAndNothingIsLeftBesideIt() throws {
        let directory = try Self.directory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let listener = try UnixSocket.listen(at: directory + "/blk.sock")
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory) == ["blk.sock"])
        let client = try UnixSocket.connect(to: directory + "/blk.sock", deadline: .now + .seconds(5))
        let server = try listener.accept()
        try client.send([42])
        #expect(try server.receive(maximum: 1) == [42])
    }

    /// A stale file at the path is replaced by the socket.
    @Test func aStaleFileAtThePathIsReplaced() throws {
        let directory = try Self.directory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/blk.sock"
        #expect(FileManager.default.createFile(atPath: path, contents: Data([1, 2, 3])))
        let listener = try UnixSocket.listen(at: path)
        var info = stat()
        #expect(stat(path, &info) == 0 && info.st_mode & S_IFMT == S_IFSOCK)
        _ = try UnixSocket.connect(to: path, deadline: .now + .seconds(5))
        _ = try listener.accept()
    }

    /// A path that fits a socket address (108 bytes with its NUL) but leaves no
    /// room for a temporary name beside it is bound directly.
    @Test func aPathWithNoRoomForATemporaryNameIsBoundDirectly() throws {
        let directory = try Self.directory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/" + String(repeating: "s", count: 104 - directory.count)
        #expect(path.utf8.count == 105)
        let listener = try UnixSocket.listen(at: path)
        _ = try UnixSocket.connect(to: path, deadline: .now + .seconds(5))
        _ = try listener.accept()
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory).count == 1)
    }
}
#endif
