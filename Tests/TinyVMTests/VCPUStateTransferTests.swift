#if os(Linux)
import Foundation
import IrqFdCore
import IrqFdLinux
import Synchronization
import KVM
import TestSupport
import Testing
import TinyVM

/// A guest stopped in one VM goes on in another, made beforehand over the same
/// guest RAM (a second mapping of its memfd), from the vCPU state KVM gives out.
@Suite(needsKVM) struct VCPUStateTransferTests {
    static func message(_ vector: UInt8, cpu: UInt32) -> MsiMessage { MsiMessage(destination: cpu, vector: vector) }

    static func count(_ vm: TinyVM, cpu: Int, vector: UInt8) -> UInt32 {
        vm.memory.read32(at: InterruptCounterLayout.count(cpu: cpu, vector: vector))
    }

    /// Starts the counting guest on `cpus` vCPUs and waits for each to be ready.
    static func countingGuest(cpus: Int) throws -> TinyVM {
        let vm = try TinyVM(.init(cpus: cpus, coalescesCommits: false))
        try vm.load(GuestProgram.interruptCounter.image)
        vm.start()
        let ready = vm.waitUntil(timeout: .seconds(20)) {
            (0..<cpus).allSatisfy { vm.memory.read32(at: InterruptCounterLayout.ready(cpu: $0)) == 1 }
        }
        guard ready else {
            throw TestFailure("the counting guest did not come up: \(vm.hasEnded ? "\(vm.wait())" : "")")
        }
        return vm
    }

    @Test func aGuestMovedToAnotherVMKeepsCountingAndTakesWhatWasPendingInItsAPIC() throws {
        let cpus = 2
        let vector: UInt8 = 0x41
        let old = try Self.countingGuest(cpus: cpus)
        let new = try LiveUpdateInProcessTests.successor(of: old)
        for cpu in 0..<cpus {
            let m = Self.message(vector, cpu: UInt32(cpu))
            for n in 1...10 {
                try old.vm.signalMsi(address: m.address, data: m.data)
                #expect(old.waitUntil { Self.count(old, cpu: cpu, vector: vector) == UInt32(n) })
            }
        }
        #expect(old.pause(), "the vCPUs park")
        let before = (0..<cpus).map { Self.count(old, cpu: $0, vector: vector) }
        // Sent while the vCPUs are parked: each waits in its LAPIC's IRR, which
        // is part of the state that moves.
        for cpu in 0..<cpus {
            let m = Self.message(0x42, cpu: UInt32(cpu))
            #expect(try old.vm.signalMsi(address: m.address, data: m.data))
        }
        let state = try old.saveMachineState()
        old.stop()
        _ = old.wait()

        try new.restoreMachineState(state)
        let tscAfterRestore = try new.vcpus[0].msrs([VCPUState.tsc])[0]
        let saved = state.vcpus[0].msrs.first { $0.index == VCPUState.tsc }?.value
        #expect(saved != nil, "the TSC is saved")
        #expect(tscAfterRestore >= saved ?? .max, "the guest's TSC does not go back")
        new.start()
        defer {
            new.stop()
            _ = new.wait()
        }
        for cpu in 0..<cpus {
            #expect(
                new.waitUntil { Self.count(new, cpu: cpu, vector: 0x42) == 1 },
                "the interrupt pending in vCPU \(cpu)'s APIC")
            // One at a time: MSIs of one vector sent together merge in the IRR.
            let m = Self.message(vector, cpu: UInt32(cpu))
            for n in 1...5 {
                try new.vm.signalMsi(address: m.address, data: m.data)
                #expect(
                    new.waitUntil { Self.count(new, cpu: cpu, vector: vector) == before[cpu] + UInt32(n) },
                    "vCPU \(cpu) counts on")
            }
        }
        #expect(!new.hasEnded, "the guest runs on: \(new.hasEnded ? "\(new.wait())" : "")")
        // The program itself goes on: its command loop still answers.
        new.memory.write32(7, at: InterruptCounterLayout.command)
        let wake = Self.message(vector, cpu: 0)
        try new.vm.signalMsi(address: wake.address, data: wake.data)
        #expect(new.wait(timeout: .seconds(20)) == .exited(code: 7))
    }

    @Test func aPausedGuestResumesWhereItWas() throws {
        let vm = try Self.countingGuest(cpus: 2)
        defer {
            vm.stop()
            _ = vm.wait()
        }
        for round in 1...3 {
            #expect(vm.pause(), "round \(round): the vCPUs park")
            vm.resume()
            let m = Self.message(0x43, cpu: 1)
            try vm.vm.signalMsi(address: m.address, data: m.data)
            #expect(vm.waitUntil { Self.count(vm, cpu: 1, vector: 0x43) == UInt32(round) })
        }
    }

    /// Answers each read of its port with the next number, taking a while.
    final class SlowSequencePort: PortDevice {
        let next = Atomic<UInt32>(0)
        func read(port: UInt16, size: Int) -> UInt32 {
            usleep(100)
            return next.add(1, ordering: .relaxed).oldValue & 0xFFFF
        }
        func write(port: UInt16, size: Int, value: UInt32) {}
    }

    /// Reads port 0xE4 `count` times (IN AX, DX), comparing each value with
    /// 0, 1, 2, ...; exits with the number of values that did not match.
    static func sequenceReader(count: UInt16) -> [UInt8] {
        [
            0xFA,  // cli
            0xBA, 0xE4, 0x00,  // mov dx, 0xE4
            0x31, 0xF6,  // xor si, si: the value expected
            0x31, 0xFF,  // xor di, di: mismatches
            0xB9, UInt8(count & 0xFF), UInt8(count >> 8),  // mov cx, count
            0xED,  // loop: in ax, dx
            0x39, 0xF0,  // cmp ax, si
            0x74, 0x01,  // je +1
            0x47,  // inc di
            0x46,  // inc si
            0x49,  // dec cx
            0x75, 0xF6,  // jnz loop
            0x89, 0xF8,  // mov ax, di
            0xE6, 0xF4,  // out 0xF4, al
            0xF4,  // hlt
        ]
    }

    @Test func aGuestMovedWhileAPortReadIsServedGetsEachValueOnce() throws {
        let count: UInt16 = 1500
        let device = SlowSequencePort()
        var current = try TinyVM(.init(coalescesCommits: false))
        try current.load(Self.sequenceReader(count: count))
        current.attach(ports: 0xE4...0xE4, device)
        current.start()
        var moves = 0
        while moves < 40 {
            usleep(5_000)
            guard current.pause() else { break }  // the guest is done
            let state = try current.saveMachineState()
            let next = try LiveUpdateInProcessTests.successor(of: current)
            next.attach(ports: 0xE4...0xE4, device)
            current.stop()
            _ = current.wait()
            try next.restoreMachineState(state)
            next.start()
            current = next
            moves += 1
        }
        #expect(current.wait(timeout: .seconds(60)) == .exited(code: 0), "every value read in order, once")
        #expect(moves > 5, "the guest moved while it read")
        #expect(device.next.load(ordering: .relaxed) == UInt32(count), "each read reached the device once")
    }
}
#endif
