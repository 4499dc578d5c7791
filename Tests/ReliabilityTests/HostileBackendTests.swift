#if os(Linux)
import Foundation
import Glibc
import PCI
import TestSupport
import Testing
import TinyVM
import VhostUser
import Virtio

// The embedded back-end broken on purpose (the test-only
// `irqfd-vhost-user-blk-hostile --misbehave MODE`). The VMM refuses each with a
// typed error that names the message (or the driver refuses the ring garbage)
// and stays up: a good back-end then serves the same guest memory, or the same
// VM, correctly (TinyVM's Reliability article).

/// The modes that break one reply.
let replyModes = ["wrong-size", "wrong-request", "extra-fds", "no-reply", "close-mid-message"]

/// Whether `error` is what `mode` must produce for `message`; nil if it is, else why not.
func mismatch(_ error: VhostUserError, mode: String, message: VhostUserRequest) -> String? {
    switch (mode, error) {
    case ("wrong-size", .badReply(message, let why)) where why.hasPrefix("payload size"): nil
    case ("wrong-request", .badReply(message, let why)) where why.hasPrefix("reply type"): nil
    case ("extra-fds", .badReply(message, let why)) where why.hasPrefix("2 descriptors attached"): nil
    case ("no-reply", .timeout(message)), ("close-mid-message", .disconnected(message)): nil
    default: "\(mode) on \(message.name) gave: \(error)"
    }
}

@Suite(embeddedBuilt) struct HostileBackendProtocolTests {
    /// Every message of a session that has a reply (or a REPLY_ACK).
    static let messages: [VhostUserRequest] = [
        .getFeatures, .getProtocolFeatures, .setOwner, .getQueueNum, .getConfig, .setMemTable, .setVringKick,
        .getVringBase,
    ]

    @Test(arguments: replyModes, messages)
    func theFrontendRefusesTheBrokenReplyNamingItsMessageThenAGoodBackendServes(mode: String, message: VhostUserRequest)
        throws
    {
        let hostile = try HostileBackend(mode, on: message)
        let memory = try MemfdGuestMemory(size: 4 << 20)
        let frontend = try VhostUserFrontend(socketPath: hostile.socketPath, timeout: .seconds(1))
        var caught: (any Error)?
        let start = ContinuousClock.now
        do { try HostSession(frontend: frontend, memory: memory).run() } catch { caught = error }
        let error = try #require(
            caught as? VhostUserError, "\(mode) on \(message.name): no VhostUserError (\(String(describing: caught)))")
        #expect(
            mismatch(error, mode: mode, message: message) == nil,
            "\(mismatch(error, mode: mode, message: message) ?? "")")
        // A deadline, not a hang: the 1 s exchange timeout bounds even no-reply (generous bound for a loaded machine).
        #expect(ContinuousClock.now - start < .seconds(30))
        // Out of step once: the connection is closed and stays so.
        #expect(!frontend.isConnected)
        #expect(throws: VhostUserError.disconnected(.getFeatures)) { _ = try frontend.getFeatures() }
        #expect(hostile.isRunning, "the misbehaving back-end itself is not meant to die")
        // A good back-end, same image, same guest memory: the whole session works.
        let good = try HostileBackend(nil, image: hostile.image)
        try HostSession(frontend: VhostUserFrontend(socketPath: good.socketPath), memory: memory).run()
    }

    @Test(arguments: [
        ("used-ahead", VirtqueueError.usedIndexAhead(queue: 0, advance: 68, inFlight: 1)),
        ("used-bad-id", .usedIDOutOfRange(queue: 0, id: 64, size: 64)),
    ])
    func theHostDriverRefusesUsedRingGarbage(mode: String, expected: VirtqueueError) throws {
        let hostile = try HostileBackend(mode)
        let memory = try MemfdGuestMemory(size: 4 << 20)
        let frontend = try VhostUserFrontend(socketPath: hostile.socketPath)
        #expect(throws: expected) { try HostSession(frontend: frontend, memory: memory).run() }
        // The ring was garbage, the protocol was not: the session can stop the ring.
        #expect(throws: Never.self) { _ = try frontend.getVringBase(queue: 0) }
        frontend.close()
        let good = try HostileBackend(nil, image: hostile.image)
        try HostSession(frontend: VhostUserFrontend(socketPath: good.socketPath), memory: memory).run()
    }
}

/// The virtio-blk driver guest's parameters (VirtioBlkGuestLayout): one queue, vCPU 0.
func configureBlkGuest(_ vm: TinyVM, batches: Int, perBatch: Int, first: Int, write: Bool) {
    typealias L = VirtioBlkGuestLayout
    let m = vm.memory
    m.write32(UInt32(batches), at: L.batches)
    m.write32(UInt32(perBatch), at: L.requestsPerBatch)
    m.write32(UInt32(first), at: L.firstSector)
    m.write32(write ? 1 : 0, at: L.type)
    m.write32(1, at: L.queues)
    m.write32(0, at: L.destination(queue: 0))
    m.write32(0, at: L.destination(queue: 1))
    m.write32(0, at: L.gated)
}

/// Runs the driver guest reading `batches` × 4 sectors from `first` and checks every one.
func expectGuestReads(
    _ vm: TinyVM, device: VirtioBlkDevice, batches: Int, first: Int, sourceLocation: SourceLocation = #_sourceLocation
) {
    typealias L = VirtioBlkGuestLayout
    configureBlkGuest(vm, batches: batches, perBatch: 4, first: first, write: false)
    let outcome = vm.run(timeout: .seconds(120))
    #expect(
        outcome == .exited(code: 0),
        "\(outcome); device \(device.counters); backend error \(String(describing: device.lastBackendError))",
        sourceLocation: sourceLocation)
    #expect(vm.memory.read32(at: L.completed) == UInt32(4 * batches), sourceLocation: sourceLocation)
    #expect(vm.memory.read32(at: L.failed) == 0, sourceLocation: sourceLocation)
    for j in 0..<(4 * batches) {
        #expect(
            vm.memory.bytes(at: L.buffer(queue: 0, request: j), count: 512) == HostileBackend.sector(first + j),
            "request \(j)", sourceLocation: sourceLocation)
    }
}

@Suite(needsKVM, embeddedBuilt) struct HostileBackendDeviceTests {
    @Test(arguments: replyModes, [VhostUserRequest.getFeatures, .getConfig])
    func attachRefusesTheBackendNamingTheMessageThenTheSameVMRunsOnAGoodOne(mode: String, message: VhostUserRequest)
        throws
    {
        let hostile = try HostileBackend(mode, on: message)
        let vm = try TinyVM(.init(cpus: 1))
        do {
            _ = try VirtioBlkDevice.attach(to: vm, socketPath: hostile.socketPath)
            Issue.record("\(mode) on \(message.name): the device attached")
        } catch {
            if case .backend(let cause) = error {
                #expect(
                    mismatch(cause, mode: mode, message: message) == nil,
                    "\(mismatch(cause, mode: mode, message: message) ?? "")")
            } else {
                Issue.record("not a backend error: \(error)")
            }
        }
        #expect(hostile.isRunning)
        let good = try HostileBackend(nil, image: hostile.image)
        let device = try VirtioBlkDevice.attach(to: vm, socketPath: good.socketPath)
        try vm.load(GuestProgram.virtioBlk.image)
        expectGuestReads(vm, device: device, batches: 2, first: 3)
    }

    @Test(arguments: replyModes)
    func aResetAgainstABackendThatBreaksGetVringBaseSetsNeedsResetNamingIt(mode: String) throws {
        let hostile = try HostileBackend(mode, on: .getVringBase)
        let vm = try TinyVM(.init(cpus: 1))
        let device = try VirtioBlkDevice.attach(to: vm, socketPath: hostile.socketPath)
        try vm.load(GuestProgram.virtioBlk.image)
        expectGuestReads(vm, device: device, batches: 1, first: 20)
        // The reset's GET_VRING_BASE gets the broken reply: refused, named, within the deadline.
        device.writeStatus(0)
        let cause = try #require(device.lastBackendError)
        #expect(
            mismatch(cause, mode: mode, message: .getVringBase) == nil,
            "\(mismatch(cause, mode: mode, message: .getVringBase) ?? "")")
        // The broken reply closes the connection. The reset then reconnects
        // to the socket: when the backend takes the new connection the reset
        // is clean (status 0, one reconnection); when it does not, the device
        // needs a reset. Either way the failure is counted once and named.
        if device.reconnectCount > 0 {
            #expect(device.status == 0)
        } else {
            #expect(device.status & VirtioBlkDevice.Status.needsReset != 0)
        }
        #expect(device.counters.backendFailures == 1)
        #expect(!device.isRunning(queue: 0))
    }

    @Test(arguments: ["call-flood", "call-before-setup"], [InterruptDelivery.irqfd, .relay, .userspace])
    func callsAtAnyTimeNeitherHangNorCorruptTheGuest(mode: String, delivery: InterruptDelivery) throws {
        let hostile = try HostileBackend(mode)
        let vm = try TinyVM(.init(cpus: 1))
        let device = try VirtioBlkDevice.attach(to: vm, socketPath: hostile.socketPath, delivery: delivery)
        try vm.load(GuestProgram.virtioBlk.image)
        expectGuestReads(vm, device: device, batches: 8, first: 40)
        let taken = vm.memory.read32(
            at: InterruptCounterLayout.count(cpu: 0, vector: VirtioBlkGuestLayout.idtVector(msix: 1)))
        print("\(mode) \(delivery): the guest took \(taken) queue interrupts for 32 requests in 8 batches")
        device.writeStatus(0)
        #expect(device.lastBackendError == nil)
        let monitor = device.callMonitor
        if delivery == .userspace {
            // Coalesced: the poller woke (and injected) at most once per read of the
            // eventfd, whatever the signal count; flood warnings are rate-limited.
            #expect(monitor.wakeups >= 1)
            #expect(monitor.signals >= monitor.wakeups)
            #expect(monitor.warnings <= monitor.floods)
            if mode == "call-flood" {
                #expect(monitor.signals > monitor.wakeups, "a flood reads many signals per wake-up")
            }
            print(
                "\(mode) \(delivery): \(monitor.signals) call signals, \(monitor.wakeups) wake-ups, \(monitor.floods) flood windows, \(monitor.warnings) warnings"
            )
        }
        #expect(hostile.isRunning)
    }

    @Test(arguments: ["used-ahead", "used-bad-id"])
    func theGuestRefusesUsedRingGarbageWithStatus5(mode: String) throws {
        let hostile = try HostileBackend(mode)
        let vm = try TinyVM(.init(cpus: 1))
        let device = try VirtioBlkDevice.attach(to: vm, socketPath: hostile.socketPath)
        try vm.load(GuestProgram.virtioBlk.image)
        configureBlkGuest(vm, batches: 2, perBatch: 4, first: 0, write: false)
        // Not a hang (used-ahead) nor a success built on ids that name no descriptor (used-bad-id).
        let outcome = vm.run(timeout: .seconds(120))
        #expect(outcome == .exited(code: 5), "\(outcome)")
        // The VMM is still up and the device resets cleanly.
        device.writeStatus(0)
        #expect(device.lastBackendError == nil)
        #expect(device.status == 0)
    }
}
#endif
