#if os(Linux)
import CVhostUser
import Foundation
import Glibc
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
            try VhostUserReplyParser.parse(reply(2, payload: [UInt8](repeating: 0, count: 8)), descriptorCount: 0, for: .getFeatures, shape: .u64)
        }
        #expect(throws: VhostUserError.badReply(.getFeatures, "REPLY flag not set (flags 0x1)")) {
            try VhostUserReplyParser.parse(reply(1, flags: 1, payload: [UInt8](repeating: 0, count: 8)), descriptorCount: 0, for: .getFeatures, shape: .u64)
        }
        #expect(throws: VhostUserError.badReply(.getFeatures, "payload size 4, expected 8")) {
            try VhostUserReplyParser.parse(reply(1, payload: [0, 0, 0, 0]), descriptorCount: 0, for: .getFeatures, shape: .u64)
        }
        #expect(throws: VhostUserError.badReply(.getFeatures, "2 descriptors attached, expected none")) {
            try VhostUserReplyParser.parse(reply(1, payload: [UInt8](repeating: 0, count: 8)), descriptorCount: 2, for: .getFeatures, shape: .u64)
        }
        #expect(throws: VhostUserError.badReply(.getConfig, "empty config payload (the back-end failed GET_CONFIG)")) {
            try VhostUserReplyParser.parse(reply(24, payload: []), descriptorCount: 0, for: .getConfig, shape: .config(size: 8))
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
            if count >= 12, Bool.random(using: &generator) { bytes[0] = 11; bytes[4] = 5; bytes[8] = UInt8(count - 12) }
            _ = try? VhostUserReplyParser.parse(bytes, descriptorCount: 0, for: .getVringBase, shape: .vringState)
        }
    }
}

/// A hostile back-end: a listening socket whose one connection answers the
/// first message as `behaviour` says.
final class HostilePeer: @unchecked Sendable {
    // @unchecked: the thread owns the accepted socket; `path` and `listener` are immutable.
    enum Behaviour { case wrongType, wrongSize, tooManyDescriptors, never, closeMidMessage }
    let path: String
    let listener: Int32
    let thread: Thread

    init(_ behaviour: Behaviour) throws {
        path = "/tmp/irqfd-hostile-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
        listener = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard listener >= 0, vhost_user_bind(listener, path) == 0, listen(listener, 1) == 0 else { throw POSIXError(.EIO) }
        let listener = listener
        thread = Thread {
            let connection = vhost_user_accept(listener)
            guard connection >= 0 else { return }
            defer { close(connection) }
            var header = [UInt8](repeating: 0, count: 12)
            guard recv(connection, &header, 12, Int32(MSG_WAITALL)) == 12 else { return }
            let request = header.u32(at: 0)
            func send(_ bytes: [UInt8], fds: [Int32] = []) {
                _ = bytes.withUnsafeBytes { raw in fds.withUnsafeBufferPointer { vhost_user_sendmsg(connection, raw.baseAddress, raw.count, $0.baseAddress, Int32($0.count)) } }
            }
            let payload = [UInt8](repeating: 0, count: 8)
            switch behaviour {
            case .wrongType: send(VhostUserHeader(request: request + 1, flags: 5, size: 8).bytes + payload)
            case .wrongSize: send(VhostUserHeader(request: request, flags: 5, size: 4).bytes + [0, 0, 0, 0])
            case .tooManyDescriptors:
                let fds = (0..<3).map { _ in vhost_user_eventfd() }
                send(VhostUserHeader(request: request, flags: 5, size: 8).bytes + payload, fds: fds)
                fds.forEach { close($0) }
            case .never:
                var byte: UInt8 = 0
                _ = recv(connection, &byte, 1, 0)  // until the frontend closes
            case .closeMidMessage: send(Array(VhostUserHeader(request: request, flags: 5, size: 8).bytes.prefix(6)))
            }
        }
        thread.start()
    }

    deinit {
        close(listener)
        unlink(path)
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
