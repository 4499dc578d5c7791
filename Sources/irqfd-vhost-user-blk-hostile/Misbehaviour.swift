#if os(Linux)
import ArgumentParser
import Glibc
import IrqFdCore
import IrqFdLinux
import SystemPackage
import VhostUser
import VhostUserBlkBackend

/// `--misbehave MODE`: the back-end breaks the vhost-user protocol or the
/// split-ring rules (vhost-user.rst; virtio 1.2 section 2.7) on purpose, so
/// that tests can show the VMM refuses each with a typed error naming the
/// message (or the driver refuses the ring garbage) and stays up. A
/// misbehaving back-end is otherwise the ordinary one: every other message is
/// answered and every request served.
enum Misbehaviour: String, CaseIterable, ExpressibleByArgument {
    /// The reply to `--misbehave-on` says (and carries) 4 more payload bytes than its shape has.
    case wrongSize = "wrong-size"
    /// The reply to `--misbehave-on` carries another request number.
    case wrongRequest = "wrong-request"
    /// The reply to `--misbehave-on` comes with two descriptors attached (SCM_RIGHTS); replies carry none.
    case extraFds = "extra-fds"
    /// The reply to `--misbehave-on` is never sent.
    case noReply = "no-reply"
    /// Half of the reply to `--misbehave-on` is sent, then the connection is closed.
    case closeMidMessage = "close-mid-message"
    /// Every call fd is signalled continuously (hundreds of writes per poll round) while the connection lasts.
    case callFlood = "call-flood"
    /// A call fd is signalled the moment SET_VRING_CALL hands it over: before the
    /// ring has an address, a kick fd or (through a device) DRIVER_OK.
    case callBeforeSetup = "call-before-setup"
    /// After serving requests, the used ring's idx is published `size` + 3 ahead of what was made available.
    case usedAhead = "used-ahead"
    /// Each used element's id is the descriptor head plus the queue size: out of range.
    case usedBadID = "used-bad-id"

    /// Whether the mode corrupts the reply to one message (the others touch calls or rings).
    var corruptsReply: Bool {
        switch self {
        case .wrongSize, .wrongRequest, .extraFds, .noReply, .closeMidMessage: true
        case .callFlood, .callBeforeSetup, .usedAhead, .usedBadID: false
        }
    }
}

/// A vhost-user message by the name `--misbehave-on` takes (GET_FEATURES, set-mem-table...).
func vhostUserRequest(named name: String) -> VhostUserRequest? {
    VhostUserRequest.allCases.first { $0.name == name.uppercased().replacingOccurrences(of: "-", with: "_") }
}

/// The hooks a misbehaving back-end installs in the embedded back-end's server.
final class MisbehavingHooks: BlockServerHooks {
    let mode: Misbehaviour
    /// The message whose reply a reply-corrupting mode breaks.
    let target: VhostUserRequest
    /// call-flood: signals written so far.
    var floodSignals = 0

    init(mode: Misbehaviour, target: VhostUserRequest) {
        self.mode = mode
        self.target = target
    }

    /// Sends `message` (a reply to `request`) as the misbehaviour says;
    /// close-mid-message throws `.closed` after half of it, which ends the connection.
    func sendReply(
        _ message: [UInt8], request: UInt32, on connection: VhostUserChannel, deadline: ContinuousClock.Instant,
        server: BlockServer
    ) throws(ChannelFailure) {
        guard mode.corruptsReply, request == target.rawValue else {
            try connection.send(message, deadline: deadline)
            return
        }
        server.log("misbehaving (\(mode.rawValue)) on the reply to \(target.name)")
        var header = VhostUserHeader(message)!
        let payload = Array(message.dropFirst(VhostUserHeader.byteCount))
        switch mode {
        case .wrongSize:
            header.size += 4
            try connection.send(header.bytes + payload + [0, 0, 0, 0], deadline: deadline)
        case .wrongRequest:
            // Another message's number: GET_PROTOCOL_FEATURES's, or GET_FEATURES's when that was asked.
            header.request =
                request == VhostUserRequest.getProtocolFeatures.rawValue
                ? VhostUserRequest.getFeatures.rawValue : VhostUserRequest.getProtocolFeatures.rawValue
            try connection.send(header.bytes + payload, deadline: deadline)
        case .extraFds:
            let first = try Self.openNull()
            let second = try Self.openNull()
            // Sent, the peer holds its own copies; these were only ever read-only /dev/null.
            defer {
                try? first.close()
                try? second.close()
            }
            try connection.send(message, passing: [first, second], deadline: deadline)
        case .noReply:
            return
        case .closeMidMessage:
            try connection.send(Array(message.prefix(max(1, message.count / 2))), deadline: deadline)
            throw .closed
        case .callFlood, .callBeforeSetup, .usedAhead, .usedBadID:
            try connection.send(message, deadline: deadline)
        }
    }

    /// /dev/null, read-only and close-on-exec (open(2)): a descriptor to attach where none belongs.
    private static func openNull() throws(ChannelFailure) -> FileDescriptor {
        do throws(SystemCallError) {
            return FileDescriptor(
                rawValue: try retryingInterrupts("open(/dev/null)") { open("/dev/null", O_RDONLY | O_CLOEXEC) })
        } catch {
            throw .system(error.call, error.errno)
        }
    }

    /// call-flood: the loop never blocks, and signals every call fd each round.
    var pollsWithoutBlocking: Bool { mode == .callFlood }

    /// call-flood: one round of signals on every call fd.
    func afterPoll(_ server: BlockServer) {
        guard mode == .callFlood else { return }
        for queue in server.queues {
            guard let call = queue.call else { continue }
            for _ in 0..<256 { call.signal() }
            floodSignals += 256
        }
    }

    /// call-before-setup: signals a call fd as soon as it arrives.
    func callArrived(_ call: EventFD, queue index: Int, server: BlockServer) {
        guard mode == .callBeforeSetup else { return }
        call.signal()
        server.log("misbehaving (call-before-setup): signalled queue \(index)'s call fd before the ring started")
    }

    /// used-ahead / used-bad-id: what the used ring receives instead of the truth.
    func usedElement(head: UInt16, usedIndex: UInt16, size: UInt16) -> (id: UInt32, index: UInt16) {
        switch mode {
        case .usedBadID: (UInt32(head) + UInt32(size), usedIndex)
        case .usedAhead: (UInt32(head), usedIndex &+ size &+ 3)
        default: (UInt32(head), usedIndex)
        }
    }
}
#endif
