#if os(Linux)
import IrqFdLinux
import Foundation
import Glibc
import SystemPackage
import Testing
@testable import VhostUser

/// The pure parser, from bytes.
@Suite struct ReplyParserTests {
    func reply(_ request: UInt32, flags: UInt32 = 0x5, payload: [UInt8]) -> [UInt8] {
        VhostUserHeader(request: request, flags: flags, size: UInt32(payload.count)).bytes + payload
    }

    @Test func goodU64Reply() throws {
        let bytes = reply(1, payload: [1, 0, 0, 0, 0, 0, 0, 0x40])
        let payload = try VhostUserReplyParser.parse(bytes, descriptorCount: 0, for: .getFeatures, shape: .u64)
        #expect(try VhostUserReplyParser.u64(payload, for: .getFeatures) == 0x4000_0000_0000_0001)
    }

    @Test func wrongTypeFlagsSizeAndDescriptorsAreTyped() {
        #expect(throws: VhostUserError.badReply(.getFeatures, "reply type 2, expected 1")) {
            try VhostUserReplyParser.parse(
                reply(2, payload: [UInt8](repeating: 0, count: 8)), descriptorCount: 0, for: .getFeatures, shape: .u64)
        }
        #expect(throws: VhostUserError.badReply(.getFeatures, "REPLY flag not set (flags 0x1)")) {
            try VhostUserReplyParser.parse(
                reply(1, flags: 1, payload: [UInt8](repeating: 0, count: 8)), descriptorCount: 0, for: .getFeatures,
                shape: .u64)
        }
        #expect(throws: VhostUserError.badReply(.getFeatures, "payload size 4, expected 8")) {
            try VhostUserReplyParser.parse(
                reply(1, payload: [0, 0, 0, 0]), descriptorCount: 0, for: .getFeatures, shape: .u64)
        }
        #expect(throws: VhostUserError.badReply(.getFeatures, "2 descriptors attached, expected none")) {
            try VhostUserReplyParser.parse(
                reply(1, payload: [UInt8](repeating: 0, count: 8)), descriptorCount: 2, for: .getFeatures, shape: .u64)
        }
        #expect(throws: VhostUserError.badReply(.getConfig, "empty config payload (the back-end failed GET_CONFIG)")) {
            try VhostUserReplyParser.parse(
                reply(24, payload: []), descriptorCount: 0, for: .getConfig, shape: .config(size: 8))
        }
        #expect(throws: VhostUserError.badReply(.getVringBase, "state for queue 1, expected 0")) {
            try VhostUserReplyParser.vringState([1, 0, 0, 0, 5, 0, 0, 0], queue: 0, for: .getVringBase)
        }
    }

    @Test func randomBytesNeverTrap() {
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<5000 {
            let count = Int.random(in: 0...40, using: &generator)
            var bytes = (0..<count).map { _ in UInt8.random(in: 0...255, using: &generator) }
            if count >= 12, Bool.random(using: &generator) {
                bytes[0] = 11
                bytes[4] = 5
                bytes[8] = UInt8(count - 12)
            }
            _ = try? VhostUserReplyParser.parse(bytes, descriptorCount: 0, for: .getVringBase, shape: .vringState)
        }
    }
}

/// A hostile back-end: a listening socket whose one connection answers the
/// first message as `behaviour` says.
final class HostilePeer {
    enum Behaviour { case wrongType, wrongSize, tooManyDescriptors, never, closeMidMessage }
    let path: String
    let listener: UnixSocket
    let thread: Thread

    init(_ behaviour: Behaviour) throws {
        path = "/tmp/irqfd-hostile-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
        listener = try UnixSocket.listen(at: path)
        let listener = listener
        thread = Thread {
            guard let connection = try? listener.accept() else { return }
            let deadline = ContinuousClock.now + .seconds(10)
            guard let header = try? connection.receive(exactly: 12, maximumDescriptors: 0, deadline: deadline) else {
                return
            }
            let request = header.bytes.u32(at: 0)
            // A peer the frontend hung up on fails its send: nothing is waiting for it any more.
            func send(_ bytes: [UInt8], descriptors: [FileDescriptor] = []) {
                do throws(UnixSocket.Failure) {
                    try connection.send(bytes, descriptors: descriptors, deadline: deadline)
                } catch {}
            }
            let payload = [UInt8](repeating: 0, count: 8)
            switch behaviour {
            case .wrongType: send(VhostUserHeader(request: request + 1, flags: 5, size: 8).bytes + payload)
            case .wrongSize: send(VhostUserHeader(request: request, flags: 5, size: 4).bytes + [0, 0, 0, 0])
            case .tooManyDescriptors:
                guard let events = try? (0..<3).map({ _ in try EventFD() }) else { return }
                let reply = VhostUserHeader(request: request, flags: 5, size: 8).bytes + payload
                send(reply, descriptors: events.map(\.fileDescriptor))
            case .never:
                // Until the frontend closes.
                _ = try? connection.receive(exactly: 1, maximumDescriptors: 0, deadline: .now + .seconds(60))
            case .closeMidMessage: send(Array(VhostUserHeader(request: request, flags: 5, size: 8).bytes.prefix(6)))
            }
        }
        thread.start()
    }
}

@Suite struct HostilePeerTests {
    func attempt(_ behaviour: HostilePeer.Behaviour) throws -> (VhostUserError?, Duration, VhostUserFrontend) {
        let peer = try HostilePeer(behaviour)
        let frontend = try VhostUserFrontend(socketPath: peer.path, timeout: .milliseconds(500))
        let start = ContinuousClock.now
        var caught: VhostUserError?
        do { _ = try frontend.getFeatures() } catch { caught = error }
        return (caught, ContinuousClock.now - start, frontend)
    }

    @Test func wrongType() throws {
        let (error, _, frontend) = try attempt(.wrongType)
        #expect(error == .badReply(.getFeatures, "reply type 2, expected 1"))
        #expect(!frontend.isConnected)
        #expect(throws: VhostUserError.disconnected(.setOwner)) { try frontend.setOwner() }
    }

    @Test func wrongSize() throws {
        #expect(try attempt(.wrongSize).0 == .badReply(.getFeatures, "payload size 4, expected 8"))
    }

    @Test func tooManyDescriptors() throws {
        #expect(try attempt(.tooManyDescriptors).0 == .badReply(.getFeatures, "3 descriptors attached, expected none"))
    }

    @Test func neverRepliesTimesOutWithinTheDeadline() throws {
        let (error, elapsed, frontend) = try attempt(.never)
        frontend.close()
        #expect(error == .timeout(.getFeatures))
        #expect(elapsed >= .milliseconds(450) && elapsed < .seconds(2))
    }

    @Test func closesMidMessage() throws {
        let (error, elapsed, _) = try attempt(.closeMidMessage)
        #expect(error == .disconnected(.getFeatures))
        #expect(elapsed < .seconds(2))
    }

    @Test func closeIsIdempotentAndCountsMessages() throws {
        let (_, _, frontend) = try attempt(.wrongSize)
        #expect(frontend.messagesSent == 1)
        frontend.close()
        frontend.close()
        #expect(throws: VhostUserError.disconnected(.getFeatures)) { try frontend.getFeatures() }
        #expect(frontend.messagesSent == 1)
    }
}
#endif
