#if os(Linux)
import Foundation
import IrqFdLinux
import TestSupport
import Testing

/// A device in another process: `irqfd-device-helper`, holding a route's
/// eventfd that the test handed it over a Unix socket (SCM_RIGHTS). Every
/// `signal()` makes it write that eventfd once.
final class EventHolderProcess {
    let process: Process
    /// Kept for the helper's lifetime; it removes its socket file when released.
    private let listener: UnixSocket
    private let connection: UnixSocket

    /// Starts the helper on a socket named after `socketName` and this
    /// process, hands it `event`, and checks that it says it holds it.
    init(holding event: EventFD, socketName: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let helper = try builtExecutable("irqfd-device-helper")
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("\(socketName)-\(getpid()).sock").path
        listener = try UnixSocket.listen(at: path)
        process = Process()
        process.executableURL = helper
        process.arguments = ["--socket", path]
        try process.run()
        connection = try listener.accept()
        try connection.send(Array("E".utf8), passing: event.fileDescriptor)
        #expect(try connection.receive(maximum: 1) == Array("R".utf8), sourceLocation: sourceLocation)
    }

    /// The helper signals the eventfd once and acknowledges.
    func signal(sourceLocation: SourceLocation = #_sourceLocation) throws {
        try connection.send(Array("s".utf8))
        #expect(try connection.receive(maximum: 1) == Array("k".utf8), sourceLocation: sourceLocation)
    }

    /// Tells the helper to quit and checks that it exits with status 0.
    func quit(sourceLocation: SourceLocation = #_sourceLocation) throws {
        try connection.send(Array("q".utf8))
        process.waitUntilExit()
        #expect(process.terminationStatus == 0, sourceLocation: sourceLocation)
    }
}
#endif
