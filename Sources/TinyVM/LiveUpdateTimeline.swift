#if os(Linux)
import Glibc

/// When each step of one live update happened, in CLOCK_MONOTONIC
/// nanoseconds (one clock for every process on the machine), so the pause
/// can be taken apart step by step. 0 means not recorded (a peer of an
/// earlier build sends none). The old VMM's marks travel to the successor
/// with the commit, and all of them back with the successor's confirmation,
/// so each side ends up with the whole timeline.
public struct LiveUpdateTimeline: Sendable, Equatable {
    // The old VMM's steps.
    /// The old VMM asked its vCPUs to stop.
    public var pauseRequested: UInt64 = 0
    /// The last vCPU parked: the guest's pause starts.
    public var paused: UInt64 = 0
    /// Every route disarmed.
    public var disarmed: UInt64 = 0
    /// Every device frozen.
    public var devicesFrozen: UInt64 = 0
    /// vCPU state and VM clock read.
    public var machineSaved: UInt64 = 0
    /// The state encoded and sent with its descriptors.
    public var stateSent: UInt64 = 0
    /// The successor's ready received.
    public var readyReceived: UInt64 = 0
    /// The commit sent.
    public var commitSent: UInt64 = 0
    // The successor's steps.
    /// Connected to the old VMM.
    public var connected: UInt64 = 0
    /// Its VM made over the guest RAM (before the pause).
    public var prepared: UInt64 = 0
    /// The state received and decoded.
    public var stateReceived: UInt64 = 0
    /// Every descriptor received.
    public var descriptorsReceived: UInt64 = 0
    /// vCPU state written, devices rebuilt, ready sent.
    public var restored: UInt64 = 0
    /// The commit received.
    public var commitReceived: UInt64 = 0
    /// Every route pushed (one batch) and armed, every device started.
    public var armed: UInt64 = 0
    /// The first vCPU about to enter KVM_RUN: the guest's pause ends.
    public var running: UInt64 = 0
    /// Its vCPU threads made and waiting to run (before the pause, with its
    /// VM), so that the pause only wakes them.
    public var threadsReady: UInt64 = 0
    /// The routes offered before the pause made, masked, and their MSIs
    /// pushed in one batch (version 2 and later; 0 otherwise).
    public var routesPushed: UInt64 = 0

    /// An empty timeline.
    public init() {}

    /// The old VMM's marks, in the order they travel.
    static var oldSteps: [WritableKeyPath<LiveUpdateTimeline, UInt64>] {
        [
            \.pauseRequested, \.paused, \.disarmed, \.devicesFrozen, \.machineSaved, \.stateSent, \.readyReceived,
            \.commitSent,
        ]
    }
    /// Every mark, in the order they travel.
    static var allSteps: [WritableKeyPath<LiveUpdateTimeline, UInt64>] {
        oldSteps + [
            \.connected, \.prepared, \.stateReceived, \.descriptorsReceived, \.restored, \.commitReceived, \.armed,
            \.running,
            // Added after the others: a peer of an earlier build reads the marks it knows and skips this one.
            \.threadsReady, \.routesPushed,
        ]
    }

    /// The guest's pause: last vCPU parked in the old VM to first vCPU running in the new, nanoseconds.
    public var pauseNanoseconds: UInt64 { running &- paused }
    /// The whole hand-off as the guest's VMM sees it: pause requested to first vCPU running.
    public var handOffNanoseconds: UInt64 { running &- pauseRequested }

    /// The pause step by step: each step's name and nanoseconds, in the order
    /// they happen, old VMM and successor interleaved as the protocol runs.
    public var pauseSteps: [(step: String, nanoseconds: UInt64)] {
        let marks: [(String, UInt64)] = [
            ("disarm", disarmed), ("freeze devices", devicesFrozen), ("save vCPUs", machineSaved),
            ("encode + send", stateSent), ("receive + decode", stateReceived),
            ("receive descriptors", descriptorsReceived), ("restore", restored), ("ready -> old", readyReceived),
            ("commit", commitSent), ("commit -> successor", commitReceived), ("push + arm", armed),
            ("start vCPUs", running),
        ]
        var previous = paused
        return marks.map { name, mark in
            defer { previous = max(previous, mark) }
            return (name, mark > previous ? mark - previous : 0)
        }
    }

    /// The marks of `steps`, each a little-endian u64 after a u32 count.
    func encoded(_ steps: [WritableKeyPath<LiveUpdateTimeline, UInt64>]) -> [UInt8] {
        var writer = PayloadWriter()
        writer.u32(UInt32(steps.count))
        for step in steps { writer.u64(self[keyPath: step]) }
        return writer.bytes
    }

    /// Reads marks `encoded(_:)` wrote into `steps`; an empty payload (a
    /// peer that sends none) reads as nothing, and marks beyond `steps` (a
    /// newer peer's) are skipped.
    mutating func decode(
        _ payload: [UInt8], into steps: [WritableKeyPath<LiveUpdateTimeline, UInt64>]
    ) throws(LiveUpdateState.DecodingError) {
        guard !payload.isEmpty else { return }
        var reader = LiveUpdateState.Reader(bytes: payload)
        let count = Int(try reader.u32("timeline count"))
        guard count <= 1024 else { throw .malformed("\(count) timeline marks") }
        for index in 0..<count {
            let mark = try reader.u64("timeline mark")
            if index < steps.count { self[keyPath: steps[index]] = mark }
        }
        guard reader.offset == payload.count else { throw .malformed("bytes after the timeline") }
    }

    /// CLOCK_MONOTONIC now, nanoseconds.
    static func now() -> UInt64 { TinyVM.monotonicNanoseconds() }
}
#endif
