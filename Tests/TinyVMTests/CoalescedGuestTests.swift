#if os(Linux)
import Foundation
import IrqFdCore
import IrqFdKVM
import KVM
import KVMFaultInjection
import MSIX
import PCI
import Synchronization
import TestSupport
import Testing
import TinyVM

/// On real guests, the VM's partition coalesces the commits a guest
/// makes by unmasking vectors one write at a time (the relay serves each
/// vector until its entry is pushed), and the semantics stay exact in every
/// delivery mode. Every access to the device is the guest's own
/// (`DeviceDriverGuest`); the host only plays the device's flood.
@Suite(needsKVM, .serialized) struct CoalescedGuestTests {
    static let vectors = 24
    /// IDT vector of MSI-X vector v (0x20 is the driver guest's wake-up vector).
    static func idt(_ v: Int) -> UInt8 { UInt8(0x40 + v) }
    /// The fence's IDT vector: a lower priority class (3) than every device vector's (4, 5).
    static let fenceVector: UInt8 = 0x30

    /// Waits until the guest has taken every interrupt already injected when
    /// this is called: it sends a fence MSI of lower priority and waits for
    /// its handler (the APIC delivers the higher classes in its IRR first).
    /// A command's completion is no such barrier: the guest runs the next
    /// command with interrupts off if it was posted before the guest halted.
    static func fence(_ g: DeviceGuest) {
        let before = g.guest.count(vector: fenceVector)
        let m = message(fenceVector)
        _ = try? g.vm.vm.signalMsi(address: m.address, data: m.data)
        #expect(g.guest.waitForCount(vector: fenceVector, atLeast: before + 1), "the fence")
    }

    /// The device rings every vector, round after round, from a host thread
    /// until stopped; each round waits for the device thread, so the queue
    /// never grows without bound.
    final class Flood: Sendable {
        private let stopping = Atomic<Bool>(false)
        private let finished = Atomic<Bool>(false)
        let rounds = Atomic<Int>(0)

        init(_ device: MsixTestDevice, vectors: Int) {
            let thread = Thread { [self] in
                while !stopping.load(ordering: .acquiring) {
                    for v in 0..<vectors { device.ring(vector: v) }
                    device.waitUntilIdle()
                    rounds.add(1, ordering: .releasing)
                }
                finished.store(true, ordering: .releasing)
            }
            thread.start()
        }

        /// Waits until `n` more rounds have been signalled.
        func waitRounds(_ n: Int) {
            let target = rounds.load(ordering: .acquiring) + n
            let deadline = ContinuousClock.now + .seconds(20)
            while rounds.load(ordering: .acquiring) < target, ContinuousClock.now < deadline { usleep(200) }
        }

        func stop() {
            stopping.store(true, ordering: .releasing)
            while !finished.load(ordering: .acquiring) { usleep(200) }
        }
    }

    /// (a) A flood on every vector races the guest unmasking them one write
    /// at a time, then masking them one at a time. A vector the guest has not
    /// unmasked yet (or has masked again) takes nothing; each one it unmasks
    /// takes its pending interrupt and the flood's; once the flood stops, each
    /// masked vector holds exactly one pending interrupt, which its unmask
    /// delivers once.
    ///
    /// `programmedFirst`: the entries are written before MSI-X is turned on,
    /// so the emulator routes them all in one batch at the enable and each
    /// unmask only arms; otherwise they are written with MSI-X on, each joins
    /// a coalesced commit, and the unmasks race those commits (the vectors
    /// are relay-served meanwhile, as when Linux unmasks right after
    /// programming).
    @Test(arguments: InterruptDelivery.allCases, [true, false])
    func aFloodRacingOneAtATimeUnmasksAndMasksLosesNothingAndDeliversNothingWhileMasked(
        delivery: InterruptDelivery, programmedFirst: Bool
    ) throws {
        let n = Self.vectors
        let g = try DeviceGuest(vectors: n, delivery: delivery)
        let guest = g.guest
        if programmedFirst {
            for v in 0..<n { try guest.program(v, message(Self.idt(v)), masked: true) }
            try guest.setMsix(enabled: true)
        } else {
            try guest.setMsix(enabled: true)
            for v in 0..<n { try guest.program(v, message(Self.idt(v)), masked: true) }
        }
        let flood = Flood(g.device, vectors: n)
        defer { flood.stop() }
        flood.waitRounds(2)
        for v in 0..<n {
            #expect(guest.count(vector: Self.idt(v)) == 0, "\(delivery): vector \(v) took nothing while masked")
        }

        // Linux's order: one unmask write at a time, the flood running.
        for v in 0..<n {
            try guest.setMasked(v, false)
            #expect(
                guest.waitForCount(vector: Self.idt(v), atLeast: 1), "\(delivery): vector \(v) delivers once unmasked")
            for w in (v + 1)..<n {
                #expect(guest.count(vector: Self.idt(w)) == 0, "\(delivery): vector \(w), still masked, took nothing")
            }
        }
        flood.waitRounds(3)
        for v in 0..<n {
            let before = guest.count(vector: Self.idt(v))
            #expect(
                guest.waitForCount(vector: Self.idt(v), atLeast: before + 1),
                "\(delivery): vector \(v) keeps delivering")
        }

        // Mask them one at a time, the flood still running: a masked vector's count stops.
        var atMask: [UInt32] = []
        for v in 0..<n {
            try guest.setMasked(v, true)
            // An interrupt injected before the mask landed (the relay's, or the kernel's) is
            // the guest's to take; anything after it would be delivered while masked.
            Self.fence(g)
            atMask.append(guest.count(vector: Self.idt(v)))
        }
        flood.waitRounds(3)
        flood.stop()
        g.settle()
        for v in 0..<n {
            #expect(
                guest.count(vector: Self.idt(v)) == atMask[v], "\(delivery): vector \(v) took nothing after its mask")
        }
        // Each holds one pending interrupt: the PBA shows it, and its unmask delivers it once.
        #expect(try guest.readPBA(dword: 0) == (1 << UInt32(n)) - 1, "\(delivery): every masked vector is pending")
        for v in 0..<n { try guest.setMasked(v, false) }
        for v in 0..<n { #expect(guest.waitForCount(vector: Self.idt(v), atLeast: atMask[v] + 1)) }
        g.settle()
        for v in 0..<n {
            #expect(
                guest.count(vector: Self.idt(v)) == atMask[v] + 1,
                "\(delivery): vector \(v)'s one pending interrupt, once")
        }
        #expect(try guest.readPBA(dword: 0) == 0)
        if delivery == .irqfd {
            // Every entry reached the kernel in the end, and every route is armed.
            #expect(g.vm.waitUntil { g.vm.irqfd.waitingEntryCount == 0 })
            let routes = (0..<n).compactMap { g.device.emulator.route($0) as? KVMIrqFdRoute }
            #expect(routes.count == n && routes.allSatisfy { $0.isArmed && !$0.isServed })
            let relay = (g.vm.irqfd.coalescing?.interim as? LazyRelayInterim)?.relayIfStarted
            if programmedFirst {
                // Routed in one batch when MSI-X went on: no unmask ever waited for a commit.
                #expect(relay == nil, "no vector needed the relay: \(String(describing: relay?.statistics))")
            } else {
                print(
                    "programmed with MSI-X on: the relay injected \(relay?.statistics.injected ?? 0) while entries waited"
                )
            }
        }
        g.finish()
    }

    /// (b) Every coalesced commit fails for a while (KVM_SET_GSI_ROUTING,
    /// failed on purpose) while the guest unmasks its vectors one at a time:
    /// every vector still delivers (relay-served), the error reaches the
    /// emulator's error path, and the retried commit lands, after which every
    /// route is armed and delivers through the kernel. Relay and userspace
    /// delivery make no routing push at all: the same run is unaffected.
    @Test(arguments: InterruptDelivery.allCases)
    func aCommitFailedOnPurposeLeavesEveryVectorServedAndIsRetried(delivery: InterruptDelivery) throws {
        let n = Self.vectors
        let g = try DeviceGuest(vectors: n, delivery: delivery)
        let guest = g.guest
        try guest.setMsix(enabled: true)
        let failures = 4
        g.vm.vm.faults.failCall("KVM_SET_GSI_ROUTING", count: failures)
        defer { g.vm.vm.faults.clear() }
        // Programmed (masked) with MSI-X on: each entry joins a coalesced commit at
        // once (the emulator routes programmed vectors early), and those commits fail.
        for v in 0..<n { try guest.program(v, message(Self.idt(v)), masked: true) }
        for v in 0..<n {
            try guest.setMasked(v, false)
            try guest.ring(v)
            #expect(guest.waitForCount(vector: Self.idt(v), atLeast: 1), "\(delivery): vector \(v) is served meanwhile")
        }
        let emulator = g.device.emulator
        if delivery == .irqfd {
            #expect(g.vm.waitUntil { g.vm.commitErrors.count >= failures }, "every failed commit was retried")
            let seen = emulator.lastRouteError.map { "\($0)".contains("KVM_SET_GSI_ROUTING") } ?? false
            #expect(seen, "the emulator's error path saw it: \(String(describing: emulator.lastRouteError))")
            #expect(emulator.counters.routeErrors >= 1)
            #expect(g.vm.waitUntil { g.vm.irqfd.waitingEntryCount == 0 }, "a retried commit landed")
            let routes = (0..<n).compactMap { emulator.route($0) as? KVMIrqFdRoute }
            #expect(routes.count == n)
            #expect(
                g.vm.waitUntil { routes.allSatisfy { $0.isArmed && !$0.isServed } },
                "armed in the kernel, no longer relayed")
        } else {
            #expect(g.vm.commitErrors.count == 0 && emulator.lastRouteError == nil)
        }
        // Everything delivers once per signal from here, through the kernel in irqfd mode.
        g.settle()
        let before = (0..<n).map { guest.count(vector: Self.idt($0)) }
        let injections = g.vm.vm.counters.snapshot
        for v in 0..<n { try guest.ring(v) }
        for v in 0..<n { #expect(guest.waitForCount(vector: Self.idt(v), atLeast: before[v] + 1)) }
        g.settle()
        for v in 0..<n { #expect(guest.count(vector: Self.idt(v)) == before[v] + 1, "\(delivery): vector \(v) once") }
        if delivery == .irqfd {
            // The guest's wake-ups for its n commands are the only KVM_SIGNAL_MSIs left.
            #expect((g.vm.vm.counters.snapshot - injections).signalMsis == n, "the relay no longer injects")
        }
        guest.exit(0)
        #expect(g.vm.wait(timeout: .seconds(10)) == .exited(code: 0))
    }
}
#endif
