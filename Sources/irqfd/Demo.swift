import ArgumentParser
import Foundation
import IrqFdCore
import IrqFdKVM
import KVM
import TinyVM

/// `irqfd demo`: a built-in guest takes MSIs through irqfd on two vCPUs.
struct Demo: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show MSIs delivered through irqfd to a real KVM guest on two vCPUs.")

    mutating func run() throws {
        let vm: TinyVM
        do {
            vm = try TinyVM(.init(cpus: 2))
            try vm.load(GuestProgram.interruptCounter.image)
        } catch {
            print("irqfd demo: cannot start the guest: \(error)")
            throw ExitCode(1)
        }
        vm.start()
        defer {
            vm.stop()
            vm.wait()
        }
        let show = DemoPrinter(vm: vm)
        guard vm.waitUntil(timeout: .seconds(20), { (0..<2).allSatisfy { vm.memory.read32(at: InterruptCounterLayout.ready(cpu: $0)) == 1 } }) else {
            print("irqfd demo: the guest did not come up: \(vm.hasEnded ? "\(vm.wait())" : "timed out")")
            throw ExitCode(1)
        }
        print("Guest running on 2 vCPUs (KVM, in-kernel APIC; guest code in big real mode).")
        print("Each route is an eventfd + GSI; signalling the eventfd makes KVM inject the MSI with no VMM code on the path.\n")

        let a = try vm.irqfd.newRoute(), b = try vm.irqfd.newRoute()
        try show.step("route A (GSI \(a.gsi)) -> vCPU 0, vector 0x41") { try a.setMsi(MsiMessage(destination: 0, vector: 0x41)) }
        try show.step("route B (GSI \(b.gsi)) -> vCPU 1, vector 0x42") { try b.setMsi(MsiMessage(destination: 1, vector: 0x42)) }
        try show.signal(a, times: 3, expect: (cpu: 0, vector: 0x41))
        try show.signal(b, times: 2, expect: (cpu: 1, vector: 0x42))

        try show.step("retarget A -> vCPU 1, vector 0x43") {
            try a.setMsi(MsiMessage(destination: 1, vector: 0x43))
        }
        try show.signal(a, times: 1, expect: (cpu: 1, vector: 0x43))

        try show.step("mask B") { try b.mask() }
        b.event.signal()
        usleep(50_000)
        show.line("  signal B while masked", "delivered: \(vm.memory.read32(at: InterruptCounterLayout.count(cpu: 1, vector: 0x42)) == 2 ? "no (latched in the eventfd)" : "YES (bug)")")
        try show.step("unmask B: KVM injects what latched") { try b.unmask() }
        _ = vm.waitUntil(timeout: .seconds(5)) { vm.memory.read32(at: InterruptCounterLayout.count(cpu: 1, vector: 0x42)) == 3 }
        show.counts()
        print("\nEvery interrupt above was injected by the kernel from an eventfd signal; the VMM only programmed routes.")
    }
}

/// Prints the demo's steps with what each cost in ioctls and where interrupts landed.
struct DemoPrinter {
    let vm: TinyVM

    func line(_ left: String, _ right: String) {
        print(left.padding(toLength: 44, withPad: " ", startingAt: 0) + right)
    }

    func step(_ what: String, _ body: () throws -> Void) throws {
        let before = vm.vm.counters.snapshot
        try body()
        let delta = vm.vm.counters.snapshot - before
        line(what, "ioctls: \(delta.routingPushes) push, \(delta.irqfdAssigns) arm, \(delta.irqfdDeassigns) disarm")
    }

    func signal(_ route: KVMIrqFdRoute, times: Int, expect: (cpu: Int, vector: UInt8)) throws {
        let address = InterruptCounterLayout.count(cpu: expect.cpu, vector: expect.vector)
        for _ in 0..<times {
            let before = vm.memory.read32(at: address)
            let start = ContinuousClock.now
            route.event.signal()
            let arrived = vm.waitUntil(timeout: .seconds(5)) { vm.memory.read32(at: address) > before }
            let took = ContinuousClock.now - start
            line(
                "  signal GSI \(route.gsi)",
                arrived
                    ? "arrived: vCPU \(expect.cpu) vector 0x\(String(expect.vector, radix: 16)) in \(took.formatted(.units(allowed: [.microseconds], width: .narrow)))"
                    : "NOT delivered")
        }
    }

    func counts() {
        print("\nInterrupts taken (read from guest memory):")
        for cpu in 0..<2 {
            let vectors = (0x41...0x43).compactMap { v -> String? in
                let n = vm.memory.read32(at: InterruptCounterLayout.count(cpu: cpu, vector: UInt8(v)))
                return n == 0 ? nil : "0x\(String(v, radix: 16)) x\(n)"
            }
            print("  vCPU \(cpu): \(vectors.isEmpty ? "none" : vectors.joined(separator: ", "))")
        }
    }
}
