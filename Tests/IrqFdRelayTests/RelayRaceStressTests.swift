#if os(Linux)
import Foundation
import IrqFdCore
import IrqFdKVM
import IrqFdRelay
import KVM
import Synchronization
import KVMTestSupport
import TestSupport
import Testing
import TinyVM

/// Wraps the real KVM_SIGNAL_MSI injector and records every injection that
/// happened while the test considered the route masked: after `mask()`
/// returned and before `unmask()` was called.
final class WatchingInjector: MsiInjector {
    let inner: KVMSignalMsiInjector
    let masked = Atomic<Bool>(false)
    let injections = Atomic<Int>(0)
    let injectedWhileMasked = Atomic<Int>(0)

    init(vm: VirtualMachine) { inner = KVMSignalMsiInjector(vm: vm) }

    func inject(_ message: MsiMessage) throws(IrqFdError) {
        if masked.load(ordering: .acquiring) { injectedWhileMasked.add(1, ordering: .relaxed) }
        injections.add(1, ordering: .relaxed)
        try inner.inject(message)
    }
}

/// Busy-waits about `micros` microseconds (sleeping would hide the races).
func spin(micros: Int) {
    let end = ContinuousClock.now + .microseconds(micros)
    while ContinuousClock.now < end {}
}

@Suite(needsKVM) struct RelayRaceStressTests {
    /// One thread signals as fast as it can while another masks, unmasks and
    /// drains pending at random. Never injected while masked; never lost: at
    /// the end nothing is left in the event and every signal the relay
    /// consumed was injected; then, signal by signal, every edge is accounted
    /// for as an injection or a pending report.
    @Test func aSignalRacingMaskIsDeliveredBeforeItOrLatchedNeverLostNeverInjectedWhileMasked() throws {
        let seed = UInt64.random(in: 1...UInt64.max)
        print("relay race stress: seed \(seed)")
        let guest = try CountingGuest(cpus: 1)
        let injector = WatchingInjector(vm: guest.vm.vm)
        let relay = try RelayIrqFd(injector: injector)
        let route = try relay.newRoute()
        let vector: UInt8 = 0x90
        try route.setMsi(MsiMessage(destination: 0, vector: vector))

        let flooding = Atomic<Bool>(true)
        let stopMasker = Atomic<Bool>(false)
        let maskerDone = Atomic<Bool>(false)
        let signalerDone = Atomic<Bool>(false)
        let signals = Atomic<Int>(0)
        let pendingReports = Atomic<Int>(0)
        let maskCycles = Atomic<Int>(0)
        let failures = Mutex<[String]>([])

        let masker = Thread {
            var random = SplitMix64(seed: seed)
            while !stopMasker.load(ordering: .acquiring) {
                do {
                    try route.mask()
                    injector.masked.store(true, ordering: .releasing)
                    spin(micros: Int(random.next() % 40))
                    if random.next() % 4 == 0, route.consumePending() { pendingReports.add(1, ordering: .relaxed) }
                    spin(micros: Int(random.next() % 10))
                    injector.masked.store(false, ordering: .releasing)
                    try route.unmask()
                    maskCycles.add(1, ordering: .relaxed)
                    spin(micros: Int(random.next() % 40))
                } catch {
                    failures.withLock { $0.append("\(error)") }
                    break
                }
            }
            maskerDone.store(true, ordering: .releasing)
        }
        let signaler = Thread {
            while flooding.load(ordering: .acquiring) {
                route.event.signal()
                signals.add(1, ordering: .relaxed)
            }
            signalerDone.store(true, ordering: .releasing)
        }
        masker.start()
        signaler.start()

        // Phase 1: a flood, for a fixed time.
        usleep(1_500_000)
        flooding.store(false, ordering: .releasing)
        #expect(guest.vm.waitUntil(timeout: .seconds(10)) { signalerDone.load(ordering: .acquiring) })

        // Phase 2: one signal at a time while the masker keeps going; each edge
        // must show up as an injection or as a pending report.
        var unaccounted = 0
        let rounds = 300
        for _ in 0..<rounds {
            let before = injector.injections.load(ordering: .relaxed) + pendingReports.load(ordering: .relaxed)
            route.event.signal()
            signals.add(1, ordering: .relaxed)
            let seen = guest.vm.waitUntil(timeout: .seconds(2)) {
                injector.injections.load(ordering: .relaxed) + pendingReports.load(ordering: .relaxed) > before
            }
            if !seen { unaccounted += 1 }
        }

        stopMasker.store(true, ordering: .releasing)
        #expect(guest.vm.waitUntil(timeout: .seconds(10)) { maskerDone.load(ordering: .acquiring) })
        #expect(failures.withLock { $0 }.isEmpty, "mask/unmask failed: \(failures.withLock { $0 })")
        try route.unmask()

        // Quiesce: the relay injects whatever is still latched, and the guest takes it.
        let quiet = guest.vm.waitUntil(timeout: .seconds(10)) {
            relay.statistics.consumed == injector.injections.load(ordering: .relaxed)
        }
        usleep(20_000)
        let stats = relay.statistics
        let injections = injector.injections.load(ordering: .relaxed)
        print(
            "relay race stress: \(signals.load(ordering: .relaxed)) signals, \(maskCycles.load(ordering: .relaxed)) mask cycles, \(injections) injections, \(pendingReports.load(ordering: .relaxed)) pending reports, guest took \(guest.count(cpu: 0, vector: vector)); relay \(stats)"
        )

        #expect(
            injector.injectedWhileMasked.load(ordering: .relaxed) == 0, "an injection started after mask() returned")
        #expect(
            quiet && stats.consumed == injections && stats.failed == 0, "every signal the relay consumed was injected")
        #expect(!route.consumePending(), "nothing is left latched once unmasked and quiet")
        #expect(
            unaccounted == 0, "\(unaccounted) of \(rounds) single signals were neither injected nor reported pending")
        #expect(maskCycles.load(ordering: .relaxed) > 100, "the masker really raced the signaller")
        // Every injection was real: the guest took interrupts (the APIC merges
        // an injection into one still pending in IRR, so it may take fewer).
        let delivered = guest.count(cpu: 0, vector: vector)
        #expect(delivered > 0 && Int(delivered) <= injections)
        let last = guest.count(cpu: 0, vector: vector)
        route.event.signal()
        #expect(guest.waitFor(cpu: 0, vector: vector, count: last + 1), "the route is live at the end")
    }
}
#endif
