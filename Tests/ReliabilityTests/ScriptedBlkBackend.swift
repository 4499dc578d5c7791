#if os(Linux)
import Foundation
import Glibc
import IrqFdCore
import IrqFdLinux
import Synchronization
import SystemPackage
import VhostUser

/// A vhost-user-blk backend scripted by the test, in the test's process: it
/// answers the messages a VMM sends (vhost-user.rst) well enough for the
/// device to start and stop its queues, serves no ring, and misbehaves as
/// its ``Script`` says: every reply delayed, replies held until released,
/// GET_VRING_BASE answered for another ring, ignored, or met by the backend
/// going away. It keeps every call fd it was sent (as a hostile backend
/// would) so that the test can signal them at any time.
final class ScriptedBlkBackend: Sendable {
    struct Script: Sendable {
        /// Every reply (and REPLY_ACK) waits this long.
        var replyDelay: Duration = .zero
        /// Replies wait while this is set.
        var holdReplies = false
        /// GET_VRING_BASE's reply names the next ring.
        var wrongVringBaseIndex = false
        /// GET_VRING_BASE gets no reply.
        var silentOnGetVringBase = false
        /// At GET_VRING_BASE the backend goes away: the connection closes and nobody listens any more.
        var goneOnGetVringBase = false
    }

    private struct Connection {
        let socket: UnixSocket
        /// The call fds it was sent, by queue (the last one per queue).
        var calls: [Int: EventFD] = [:]
        /// Every call fd it was ever sent.
        var allCalls: [EventFD] = []
        var closed = false
    }

    private struct State {
        var script = Script()
        var connections: [Connection] = []
        var replies = 0
        var requests: [(connection: Int, request: UInt32)] = []
        var listening = true
    }

    let socketPath: String
    /// What GET_FEATURES answers (``features`` unless given: a test of a
    /// virtio-net device adds VIRTIO_NET_F_MQ, which it needs for its control queue).
    let offeredFeatures: UInt64
    private let listener: UnixSocket
    private let state = Mutex(State())

    static let features: UInt64 = (1 << 32) | (1 << 30)  // VERSION_1, VHOST_USER_F_PROTOCOL_FEATURES
    /// MQ, REPLY_ACK, CONFIG: every message without a reply of its own is acknowledged.
    static let protocolFeatures: UInt64 = (1 << 0) | (1 << 3) | (1 << 9)

    init(at path: String? = nil, features: UInt64 = ScriptedBlkBackend.features, _ script: Script = Script()) throws {
        socketPath = path ?? "/tmp/irqfd-scripted-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
        offeredFeatures = features
        listener = try UnixSocket.listen(at: socketPath, backlog: 4)
        state.withLock { $0.script = script }
        let thread = Thread { [self] in acceptLoop() }
        thread.start()
    }

    deinit { stop() }

    /// Stops listening and closes every connection (their threads end).
    func stop() {
        let sockets = state.withLock { s in
            s.listening = false
            return s.connections.map(\.socket)
        }
        _ = Glibc.shutdown(listener.fileDescriptor.rawValue, Int32(SHUT_RDWR))
        unlink(socketPath)
        for socket in sockets { _ = Glibc.shutdown(socket.fileDescriptor.rawValue, Int32(SHUT_RDWR)) }
    }

    var script: Script {
        get { state.withLock { $0.script } }
        set { state.withLock { $0.script = newValue } }
    }

    /// Connections accepted so far.
    var connectionCount: Int { state.withLock { $0.connections.count } }
    /// Whether connection `c` was closed (by either side).
    func isClosed(_ c: Int) -> Bool {
        state.withLock { $0.connections.indices.contains(c) && $0.connections[c].closed }
    }
    /// Replies sent so far.
    var replies: Int { state.withLock { $0.replies } }
    /// Requests connection `c` received, by number.
    func requests(connection c: Int) -> [UInt32] {
        state.withLock { s in s.requests.filter { $0.connection == c }.map(\.request) }
    }
    /// Call fds connection `c` holds.
    func callCount(connection c: Int) -> Int {
        state.withLock { $0.connections.indices.contains(c) ? $0.connections[c].allCalls.count : 0 }
    }

    /// Signals every call fd connection `c` was ever sent, as a backend that
    /// completes requests (or floods) would.
    func signalCalls(connection c: Int) {
        let calls = state.withLock { $0.connections.indices.contains(c) ? $0.connections[c].allCalls : [] }
        for call in calls { call.signal() }
    }

    private func acceptLoop() {
        while state.withLock({ $0.listening }) {
            guard let socket = try? listener.accept() else { return }
            let index = state.withLock { s in
                s.connections.append(Connection(socket: socket))
                return s.connections.count - 1
            }
            let thread = Thread { [self] in serve(socket, index) }
            thread.start()
        }
    }

    private static func le32(_ bytes: [UInt8], _ at: Int) -> UInt32 {
        (0..<4).reduce(0) { $0 | UInt32(bytes[at + $1]) << (8 * UInt32($1)) }
    }

    private static func le(_ value: UInt64, bytes: Int) -> [UInt8] {
        (0..<bytes).map { UInt8(truncatingIfNeeded: value >> (8 * UInt64($0))) }
    }

    private func serve(_ socket: UnixSocket, _ index: Int) {
        defer { state.withLock { $0.connections[index].closed = true } }
        let forever = ContinuousClock.now + .seconds(3600)
        while true {
            // Descriptors come with the message's first byte (SCM_RIGHTS), so with the header.
            guard let head = try? socket.receive(exactly: 12, maximumDescriptors: 8, deadline: forever) else { return }
            let request = Self.le32(head.bytes, 0)
            let flags = Self.le32(head.bytes, 4)
            let size = Int(Self.le32(head.bytes, 8))
            var payload: [UInt8] = []
            var descriptors: [FileDescriptor] = head.descriptors
            if size > 0 {
                guard let body = try? socket.receive(exactly: size, maximumDescriptors: 8, deadline: forever) else {
                    return
                }
                payload = body.bytes
                descriptors += body.descriptors
            }
            let script = state.withLock { s in
                s.requests.append((index, request))
                return s.script
            }
            var reply: [UInt8]?
            switch request {
            case 1: reply = Self.le(offeredFeatures, bytes: 8)  // GET_FEATURES
            case 15: reply = Self.le(Self.protocolFeatures, bytes: 8)  // GET_PROTOCOL_FEATURES
            case 17: reply = Self.le(8, bytes: 8)  // GET_QUEUE_NUM
            case 24:  // GET_CONFIG: the request's header, then the bytes (capacity 2048 sectors)
                let length = Int(Self.le32(payload, 4))
                var config = [UInt8](repeating: 0, count: length)
                if length >= 8 { config.replaceSubrange(0..<8, with: Self.le(2048, bytes: 8)) }
                reply = Array(payload.prefix(12)) + config
            case 11:  // GET_VRING_BASE
                if script.goneOnGetVringBase {
                    stop()
                    return
                }
                if script.silentOnGetVringBase { continue }
                let ring = Self.le32(payload, 0)
                reply = Self.le(UInt64(script.wrongVringBaseIndex ? ring + 1 : ring), bytes: 4) + Self.le(0, bytes: 4)
            case 13:  // SET_VRING_CALL: kept (and signalled when the test says)
                let ring = Int(payload.first ?? 0)
                if let fd = descriptors.first {
                    let call = EventFD(adopting: fd)
                    state.withLock { s in
                        s.connections[index].calls[ring] = call
                        s.connections[index].allCalls.append(call)
                    }
                }
                descriptors.removeAll()
            default: break
            }
            for fd in descriptors { try? fd.close() }
            // REPLY_ACK (NEED_REPLY, bit 3) for a message without a reply of its own.
            if reply == nil, flags & 0x8 != 0 { reply = Self.le(0, bytes: 8) }
            guard let reply else { continue }
            while state.withLock({ $0.script.holdReplies && $0.listening }) { usleep(1000) }
            if script.replyDelay > .zero { Thread.sleep(forTimeInterval: Self.seconds(script.replyDelay)) }
            let message = VhostUserHeader(request: request, flags: 0x5, size: UInt32(reply.count)).bytes + reply
            do throws(UnixSocket.Failure) {
                try socket.send(message, deadline: .now + .seconds(10))
            } catch {
                return
            }
            state.withLock { $0.replies += 1 }
        }
    }

    static func seconds(_ d: Duration) -> Double {
        Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
    }
}
#endif
