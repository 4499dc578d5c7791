import ArgumentParser
import Foundation
import IrqFdCore
import KVM
import PCI
import TinyVM

/// `irqfd demo`: a guest drives the MSI-X test device on two vCPUs; the
/// device's interrupts reach it through irqfd (or the chosen path). Then a
/// guest does I/O on virtio-blk over vhost-user, and last its VMM process is
/// replaced under it while that I/O goes on (live update).
struct Demo: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "A guest programs an MSI-X device and takes its interrupts through irqfd on 2 vCPUs.")

    @Option(
        help: "How the device's interrupts reach the guest: irqfd, relay or userspace. (default: irqfd)",
        transform: parseDelivery)
    var delivery: InterruptDelivery = .irqfd

    mutating func run() throws {
        do {
            try DemoScript(delivery: delivery).run()
        } catch let error as DemoScript.Failure {
            print("irqfd demo: \(error.message)")
            throw ExitCode(1)
        }
        do {
            try VirtioDemo(delivery: delivery).run()
        } catch let error as VirtioDemo.Failure {
            print("irqfd demo: virtio-blk: \(error.message)")
            throw ExitCode(1)
        }
        do {
            try LiveUpdateDemo(delivery: delivery).run()
        } catch let error as LiveUpdateDemo.Failure {
            print("irqfd demo: live update: \(error.message)")
            throw ExitCode(1)
        }
    }
}

/// The demo's story, step by step, printing what each step cost in ioctls and
/// where each interrupt landed (read from the guest's own counters).
struct DemoScript {
    let delivery: InterruptDelivery

    struct Failure: Error { var message: String }

    func run() throws {
        let vm: TinyVM
        let device: MsixTestDevice
        let guest: DeviceDriverGuest
        do {
            // Synchronous commits: the demo shows each step's ioctls as the step makes them
            // (a coalescing partition would push a few milliseconds later, relay-served meanwhile).
            vm = try TinyVM(.init(cpus: 2, coalescesCommits: false))
            device = try MsixTestDevice.attach(to: vm, vectors: 8, delivery: delivery)
            guest = try DeviceDriverGuest(vm: vm)
            try guest.start()
        } catch {
            throw Failure(message: "cannot start the guest: \(error)")
        }
        defer {
            vm.stop()
            vm.wait()
        }
        let out = Printer(vm: vm, device: device, guest: guest)
        print(
            """
            A KVM guest on 2 vCPUs drives PCI device 00:01.0 (8 MSI-X vectors) through config space and MMIO.
            Delivery: \(delivery) — \(Self.explain(delivery))

            """)
        do {
            try out.step("guest enables MSI-X (Message Control bit 15)") { try guest.setMsix(enabled: true) }
            let plan: [(vector: Int, cpu: UInt32, idt: UInt8)] = [
                (0, 0, 0x30), (1, 0, 0x31), (2, 1, 0x32), (3, 1, 0x33),
            ]
            for p in plan {
                try out.step(
                    "guest programs vector \(p.vector) -> vCPU \(p.cpu), IDT vector 0x\(String(p.idt, radix: 16))"
                ) {
                    try guest.program(p.vector, MsiMessage(destination: p.cpu, vector: p.idt), masked: false)
                }
            }
            for p in plan { try out.ring(p.vector, expect: (Int(p.cpu), p.idt)) }

            print("")
            try out.step("guest masks vector 1 (vector control bit 0)") { try guest.setMasked(1, true) }
            try out.ringMasked(1, idt: 0x31)
            out.line(
                "guest reads the PBA",
                "0b\(String(try guest.readPBA(), radix: 2)): vector 1 is pending, nothing arrived")
            try out.step("guest unmasks vector 1") { try guest.setMasked(1, false) }
            out.arrival(cpu: 0, idt: 0x31, count: 2, what: "the pending interrupt")
            out.line("guest reads the PBA again", "0b\(String(try guest.readPBA(), radix: 2))")

            print("")
            try out.step("guest retargets vector 0 -> vCPU 1 (same IDT vector)") {
                try guest.program(0, MsiMessage(destination: 1, vector: 0x30), masked: false)
            }
            try out.ring(0, expect: (1, 0x30))
        } catch {
            throw Failure(message: "the guest did not finish a step: \(error)")
        }
        out.summary()
    }

    static func explain(_ delivery: InterruptDelivery) -> String {
        switch delivery {
        case .irqfd: "the device signals an eventfd and KVM injects the MSI; no VMM code on the path."
        case .relay: "the device signals an eventfd; a VMM relay thread injects with KVM_SIGNAL_MSI."
        case .userspace: "the device thread injects with KVM_SIGNAL_MSI itself."
        }
    }

    struct Printer {
        let vm: TinyVM
        let device: MsixTestDevice
        let guest: DeviceDriverGuest

        func line(_ left: String, _ right: String) {
            print(left.padding(toLength: 56, withPad: " ", startingAt: 0) + right)
        }

        func note(_ text: String) { print("    " + text) }

        func step(_ what: String, _ body: () throws -> Void) throws {
            let before = vm.vm.counters.snapshot
            try body()
            let d = vm.vm.counters.snapshot - before
            line(what, "VMM ioctls: \(d.routingPushes) table push, \(d.irqfdAssigns) arm, \(d.irqfdDeassigns) disarm")
        }

        func ring(_ vector: Int, expect: (cpu: Int, idt: UInt8)) throws {
            let before = guest.count(cpu: expect.cpu, vector: expect.idt)
            let start = ContinuousClock.now
            try guest.ring(vector)
            let arrived = guest.waitForCount(
                cpu: expect.cpu, vector: expect.idt, atLeast: before + 1, timeout: .seconds(5))
            let took = ContinuousClock.now - start
            line(
                "  guest rings DOORBELL for vector \(vector)",
                arrived
                    ? "arrived on vCPU \(expect.cpu), IDT 0x\(String(expect.idt, radix: 16)) (\(took.formatted(.units(allowed: [.microseconds], width: .narrow))) incl. the guest's MMIO exit)"
                    : "NOT delivered")
        }

        func ringMasked(_ vector: Int, idt: UInt8) throws {
            let before = guest.count(cpu: 0, vector: idt)
            try guest.ring(vector)
            _ = device.waitUntilIdle()
            usleep(50_000)
            let now = guest.count(cpu: 0, vector: idt)
            line(
                "  guest rings DOORBELL for vector \(vector)",
                now == before ? "held: masked, latched in the route's event" : "DELIVERED WHILE MASKED (bug)")
        }

        func arrival(cpu: Int, idt: UInt8, count: UInt32, what: String) {
            guard guest.waitForCount(cpu: cpu, vector: idt, atLeast: count, timeout: .seconds(5)) else {
                note("\(what) did NOT arrive")
                return
            }
            usleep(50_000)
            let taken = guest.count(cpu: cpu, vector: idt)
            note(
                taken == count
                    ? "\(what) arrived on vCPU \(cpu), IDT 0x\(String(idt, radix: 16)), exactly once"
                    : "\(what) arrived \(taken - count + 1) times (bug)")
        }

        func summary() {
            print("\nInterrupts taken, from the guest's counters:")
            for cpu in 0..<2 {
                let taken = (0x30...0x33).compactMap { v -> String? in
                    let n = guest.count(cpu: cpu, vector: UInt8(v))
                    return n == 0 ? nil : "0x\(String(v, radix: 16)) x\(n)"
                }
                print("  vCPU \(cpu): \(taken.isEmpty ? "none" : taken.joined(separator: ", "))")
            }
            let signals = (try? guest.signaled()).map(String.init) ?? "?"
            print("Device signals sent (its SIGNALED register): \(signals).")
        }
    }
}
