#if os(Linux)
import Foundation
import IrqFdCore
import IrqFdLinux
import SystemPackage
import Testing

@Suite struct UnixSocketTests {
    /// A connected pair through a listening socket at a fresh path.
    static func pair() throws -> (client: UnixSocket, server: UnixSocket, listener: UnixSocket) {
        let path = FileManager.default.temporaryDirectory
            .appendingPathComponent("irqfd-socket-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock").path
        let listener = try UnixSocket.listen(at: path)
        let client = try UnixSocket.connect(to: path, deadline: .now + .seconds(5))
        return (client, try listener.accept(), listener)
    }

    /// Several descriptors travel with one message; the receiver owns its own
    /// copies (the same eventfd: a signal through one is read through the other).
    @Test func descriptorsTravelWithTheFirstByteAndNameTheSameFiles() throws {
        let (client, server, _) = try Self.pair()
        let events = try (0..<3).map { _ in try EventFD() }
        try client.send(Array("hello".utf8), descriptors: events.map(\.fileDescriptor), deadline: .now + .seconds(5))
        let message = try server.receive(exactly: 5, maximumDescriptors: 3, deadline: .now + .seconds(5))
        #expect(message.bytes == Array("hello".utf8))
        #expect(message.received == 3 && message.descriptors.count == 3)
        let copies = message.descriptors.map { EventFD(adopting: $0) }
        for (event, copy) in zip(events, copies) {
            #expect(copy.fileDescriptor != event.fileDescriptor)
            event.signal()
            #expect(copy.consume() == 1)
        }
    }

    /// Descriptors over the maximum are counted and closed, not kept.
    @Test func descriptorsOverTheMaximumAreCountedAndClosed() throws {
        let (client, server, _) = try Self.pair()
        let events = try (0..<2).map { _ in try EventFD() }
        try client.send([7], descriptors: events.map(\.fileDescriptor), deadline: .now + .seconds(5))
        let message = try server.receive(exactly: 1, maximumDescriptors: 0, deadline: .now + .seconds(5))
        #expect(message.received == 2 && message.descriptors.isEmpty)
    }

    /// A peer that sends nothing costs the deadline, not more.
    @Test func aSilentPeerTimesOutAtTheDeadline() throws {
        let (client, server, _) = try Self.pair()
        defer { withExtendedLifetime(client) {} }
        let start = ContinuousClock.now
        #expect(throws: UnixSocket.Failure.timeout) {
            _ = try server.receive(exactly: 1, maximumDescriptors: 0, deadline: .now + .milliseconds(50))
        }
        let waited = ContinuousClock.now - start
        #expect(waited >= .milliseconds(50) && waited < .seconds(5))
    }

    /// A peer that closed mid-message is `.closed`.
    @Test func aPeerThatClosesMidMessageIsClosed() throws {
        var client: UnixSocket?
        let server: UnixSocket
        do {
            let made = try Self.pair()
            (client, server) = (made.client, made.server)
        }
        try client!.send([1, 2], deadline: .now + .seconds(5))
        client = nil  // the last reference: close(2)
        #expect(throws: UnixSocket.Failure.closed) {
            _ = try server.receive(exactly: 4, maximumDescriptors: 0, deadline: .now + .seconds(5))
        }
    }

    /// connect(2) to a path nobody listens on names the call and ENOENT.
    @Test func connectingToNothingNamesTheCall() {
        let path = "/tmp/irqfd-nobody-\(getpid()).sock"
        #expect(throws: SystemCallError(call: "connect(\(path))", errno: .noSuchFileOrDirectory)) {
            _ = try UnixSocket.connect(to: path, deadline: .now + .seconds(1))
        }
    }
}

@Suite struct EpollTests {
    /// A registered descriptor is reported under its token while readable
    /// (level-triggered), and no longer once removed.
    @Test func readyDescriptorsAreReportedByTokenUntilRemoved() throws {
        let epoll = try Epoll()
        let first = try EventFD()
        let second = try EventFD()
        try epoll.add(first.fileDescriptor, token: 11)
        try epoll.add(second.fileDescriptor, token: 22)
        #expect(try epoll.wait(timeout: .milliseconds(10)).isEmpty)
        second.signal()
        #expect(try epoll.wait(timeout: .seconds(5)).map(\.token) == [22])
        #expect(try epoll.wait(timeout: .seconds(5)).map(\.token) == [22], "level-triggered: still readable")
        try epoll.remove(second.fileDescriptor)
        #expect(try epoll.wait(timeout: .milliseconds(10)).isEmpty)
        first.signal()
        let events = try epoll.wait(timeout: .seconds(5))
        #expect(events.map(\.token) == [11] && events[0].events.contains(.readable))
    }

    /// Registering a descriptor twice names epoll_ctl and EEXIST.
    @Test func aSecondAddNamesTheCallAndEEXIST() throws {
        let epoll = try Epoll()
        let event = try EventFD()
        try epoll.add(event.fileDescriptor, token: 1)
        #expect(throws: SystemCallError(call: "epoll_ctl(EPOLL_CTL_ADD)", errno: .fileExists)) {
            try epoll.add(event.fileDescriptor, token: 2)
        }
    }
}
#endif
