#if os(Linux)
import IrqFdCore
public import IrqFdLinux
public import SystemPackage

/// The live-update conversation between a running VMM and its successor over
/// a Unix stream socket: framed messages, each a tag byte, a little-endian
/// u32 payload length and the payload, with descriptors (SCM_RIGHTS)
/// attached to a frame's first byte, at most `maximumDescriptorsPerFrame` a
/// frame (below the kernel's SCM_MAX_FD of 253: a list longer than that goes
/// in several frames). Every send and receive has a deadline.
///
/// The conversation, successor first:
///
///     H  hello       u32 lowest, u32 highest state version the successor reads
///     O  offer       u32 version to be sent (the highest both read), u32 vCPUs,
///                    u64 RAM bytes, u8 coalescing; from version 2 the routes
///                    as the state lays them out; the RAM memfd attached
///     D  descriptors from version 2: the routes' events, in order
///     P  prepared    the successor's VM exists over that RAM and its vCPU
///                    threads wait; from version 2 the offered routes are made,
///                    masked, their MSIs pushed (all before the pause)
///     S  state       u64 CLOCK_MONOTONIC ns when the last vCPU parked,
///                    u32 route events (0 from version 2: they came with the
///                    offer), u32 devices, u32 descriptors per device, then the
///                    encoded `LiveUpdateState` (every route's MSI and mask now)
///     D  descriptors u32 count; the route events (version 1), then each device's, in order
///     R  ready       restored, nothing armed
///     C  commit      the old VMM will never run the guest again; optionally
///                    its `LiveUpdateTimeline` marks (u32 count, u64 each)
///     T  taken over  the successor's vCPUs run; optionally every
///                    `LiveUpdateTimeline` mark, the old VMM's first
///
/// Before `C` the old VMM may still fail the hand-off (and runs on); the
/// successor arms nothing before `C`, so no signal it could consume is one
/// the old VMM would need.
public struct LiveUpdateChannel: Sendable {
    /// The connected socket.
    public let socket: UnixSocket

    /// The message tags.
    public enum Tag: UInt8, Sendable {
        case hello = 0x48  // H
        case offer = 0x4F  // O
        case prepared = 0x50  // P
        case state = 0x53  // S
        case descriptors = 0x44  // D
        case ready = 0x52  // R
        case commit = 0x43  // C
        case takenOver = 0x54  // T
    }

    /// The most descriptors one frame carries (the socket layer's limit).
    public static let maximumDescriptorsPerFrame = Int(8)
    /// The largest payload accepted.
    public static let maximumPayload = 16 << 20

    /// A channel over `socket`.
    public init(_ socket: UnixSocket) { self.socket = socket }

    /// Sends one frame with `descriptors` (borrowed) attached.
    public func send(
        _ tag: Tag, _ payload: [UInt8] = [], descriptors: [FileDescriptor] = [], step: String,
        deadline: ContinuousClock.Instant
    ) throws(LiveUpdateError) {
        precondition(descriptors.count <= Self.maximumDescriptorsPerFrame)
        var frame: [UInt8] = [tag.rawValue]
        withUnsafeBytes(of: UInt32(payload.count).littleEndian) { frame += $0 }
        frame += payload
        do { try socket.send(frame, descriptors: descriptors, deadline: deadline) } catch {
            throw .transport(step: step, reason: "sending \(tag): \(error)")
        }
    }

    /// Sends `descriptors` (borrowed) in as many `D` frames as they need.
    public func sendDescriptors(
        _ descriptors: [FileDescriptor], step: String, deadline: ContinuousClock.Instant
    ) throws(LiveUpdateError) {
        var start = 0
        while start < descriptors.count {
            let chunk = Array(descriptors[start..<min(start + Self.maximumDescriptorsPerFrame, descriptors.count)])
            var payload: [UInt8] = []
            withUnsafeBytes(of: UInt32(chunk.count).littleEndian) { payload += $0 }
            try send(.descriptors, payload, descriptors: chunk, step: step, deadline: deadline)
            start += chunk.count
        }
    }

    /// Receives one frame, which must be `expected` and carry at most
    /// `maximumDescriptors`: anything else is a protocol violation (and every
    /// descriptor that came is closed).
    public func receive(
        _ expected: Tag, maximumDescriptors: Int = 0, step: String, deadline: ContinuousClock.Instant
    ) throws(LiveUpdateError) -> (payload: [UInt8], descriptors: [ReceivedDescriptor]) {
        let header: UnixSocket.Message
        do {
            header = try socket.receive(exactly: 5, maximumDescriptors: maximumDescriptors, deadline: deadline)
        } catch {
            throw .transport(step: step, reason: "waiting for \(expected): \(error)")
        }
        let descriptors = header.descriptors.map(ReceivedDescriptor.init)
        guard header.received == descriptors.count else {
            throw .protocolViolation(
                step: step, reason: "\(header.received) descriptors with \(expected), at most \(maximumDescriptors)")
        }
        guard header.bytes[0] == expected.rawValue else {
            let got = Tag(rawValue: header.bytes[0]).map { "\($0)" } ?? "byte 0x\(String(header.bytes[0], radix: 16))"
            throw .protocolViolation(step: step, reason: "expected \(expected), got \(got)")
        }
        let length = header.bytes[1...4].withUnsafeBytes {
            Int(UInt32(littleEndian: $0.loadUnaligned(as: UInt32.self)))
        }
        guard length <= Self.maximumPayload else {
            throw .protocolViolation(step: step, reason: "a \(length)-byte \(expected)")
        }
        guard length > 0 else { return ([], descriptors) }
        let payload: UnixSocket.Message
        do { payload = try socket.receive(exactly: length, maximumDescriptors: 0, deadline: deadline) } catch {
            throw .transport(step: step, reason: "reading \(expected): \(error)")
        }
        guard payload.received == 0 else {
            throw .protocolViolation(step: step, reason: "descriptors inside the payload of \(expected)")
        }
        return (payload.bytes, descriptors)
    }

    /// Receives `count` descriptors sent by `sendDescriptors`.
    public func receiveDescriptors(
        _ count: Int, step: String, deadline: ContinuousClock.Instant
    ) throws(LiveUpdateError) -> [ReceivedDescriptor] {
        var all: [ReceivedDescriptor] = []
        while all.count < count {
            let want = min(Self.maximumDescriptorsPerFrame, count - all.count)
            let (payload, descriptors) = try receive(
                .descriptors, maximumDescriptors: want, step: step, deadline: deadline)
            var reader = LiveUpdateState.Reader(bytes: payload)
            let said: UInt32
            do { said = try reader.u32("descriptor count") } catch {
                throw .protocolViolation(step: step, reason: "\(error)")
            }
            guard Int(said) == want, descriptors.count == want, reader.offset == payload.count else {
                throw .protocolViolation(
                    step: step, reason: "a descriptor frame with \(descriptors.count) (says \(said)), expected \(want)")
            }
            all += descriptors
        }
        return all
    }
}

/// Little-endian payload writing for the channel's messages.
struct PayloadWriter {
    var bytes: [UInt8] = []
    mutating func u8(_ v: UInt8) { bytes.append(v) }
    mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
    mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
}
#endif
