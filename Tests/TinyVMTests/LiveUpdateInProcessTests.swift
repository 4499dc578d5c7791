#if os(Linux)
import Foundation
import IrqFdCore
import IrqFdKVM
import IrqFdLinux
import IrqFdRouting
import KVM
import Synchronization
import TestSupport
import Testing
import TinyVM

/// A guest handed from VM to VM in one process while a device thread signals
/// its route throughout: every signal reaches the guest's handler, once.
@Suite(needsKVM) struct LiveUpdateInProcessTests {
    static let vector: UInt8 = 0x45

    static func countingGuest() throws -> TinyVM {
        let vm = try TinyVM(.init(cpus: 1, coalescesCommits: false))
        try vm.load(GuestProgram.interruptCounter.image)
        vm.start()
        guard vm.waitUntil(timeout: .seconds(20), { vm.memory.read32(at: InterruptCounterLayout.ready(cpu: 0)) == 1 })
        else { throw TestFailure("the counting guest did not come up") }
        return vm
    }

    static func successor(of vm: TinyVM) throws -> TinyVM {
        let ram = try GuestMemory(
            mapping: try vm.memory.fileDescriptor.duplicateCloseOnExec(), size: vm.configuration.memorySize)
        return try TinyVM(
            .init(cpus: vm.configuration.cpus, memorySize: vm.configuration.memorySize, coalescesCommits: false),
            incoming: ram)
    }

    @Test func aDeviceSignallingThroughoutLosesNothingAcrossHandOffs() throws {
        var current = try Self.countingGuest()
        let route = try current.irqfd.newRoute()
        try route.setMsi(MsiMessage(destination: 0, vector: Self.vector))
        let memory = current.memory  // the same pages in every VM
        let counter = InterruptCounterLayout.count(cpu: 0, vector: Self.vector)
        let event = route.event
        let sent = Atomic<Int>(0)
        let lost = Atomic<Int>(0)
        let stopRequested = Atomic<Bool>(false)
        let done = Atomic<Bool>(false)
        // The device: each signal waits for the guest's handler, as a device
        // waiting for its completion would; a signal sent during a pause
        // latches in the event and waits for the successor.
        let device = Thread {
            defer { done.store(true, ordering: .releasing) }
            while !stopRequested.load(ordering: .acquiring) {
                let i = sent.add(1, ordering: .relaxed).newValue
                event.signal()
                let deadline = ContinuousClock.now + .seconds(10)
                while memory.read32(at: counter) < UInt32(i) {
                    if ContinuousClock.now > deadline {
                        lost.add(1, ordering: .relaxed)
                        return  // the rest would wait in vain too
                    }
                }
            }
        }
        device.start()
        var routes = [route]
        let handOffs = 20
        for _ in 0..<handOffs {
            usleep(3_000)
            let next = try Self.successor(of: current)
            let result = try current.handOff(to: next, routes: routes)
            #expect(result.pauseNanoseconds > 0)
            _ = current.wait()
            routes = result.routes
            current = next
            if done.load(ordering: .acquiring) { break }
        }
        stopRequested.store(true, ordering: .releasing)
        while !done.load(ordering: .acquiring) { usleep(1_000) }
        defer {
            current.stop()
            _ = current.wait()
        }
        #expect(lost.load(ordering: .relaxed) == 0, "no signal waited in vain")
        #expect(sent.load(ordering: .relaxed) > handOffs, "the device signalled throughout")
        #expect(memory.read32(at: counter) == UInt32(sent.load(ordering: .relaxed)), "each signal was one interrupt")
        #expect(!current.hasEnded)
    }

    @Test func aMaskedRouteKeepsItsLatchedSignalsAcrossAHandOffAndDeliversThemOnceOnUnmask() throws {
        let old = try Self.countingGuest()
        let route = try old.irqfd.newRoute()
        try route.setMsi(MsiMessage(destination: 0, vector: Self.vector))
        try route.mask()
        route.event.signal()
        route.event.signal()
        let next = try Self.successor(of: old)
        let result = try old.handOff(to: next, routes: [route])
        _ = old.wait()
        defer {
            next.stop()
            _ = next.wait()
        }
        let adopted = try #require(result.routes.first)
        #expect(adopted.isMasked && !adopted.isArmed)
        #expect(adopted.msi == MsiMessage(destination: 0, vector: Self.vector))
        let counter = InterruptCounterLayout.count(cpu: 0, vector: Self.vector)
        usleep(20_000)
        #expect(next.memory.read32(at: counter) == 0, "masked: nothing delivered")
        try adopted.unmask()
        #expect(next.waitUntil { next.memory.read32(at: counter) == 1 })
        usleep(20_000)
        #expect(next.memory.read32(at: counter) == 1, "delivered once")
    }
}
#endif
