#if os(Linux)
import Foundation
import IrqFdCore
import IrqFdKVM
import IrqFdRelay
import KVM
import KVMTestSupport
import KVMFaultInjection
import MSIX
import Synchronization
import TestSupport
import Testing

/// Two devices on one coalescing partition, their commit errors reported to
/// both emulators through a `CommitErrorReporter`, written by two guest
/// threads at once while every KVM_IRQFD fails. Each write's push carries the
/// other device's waiting entries (the threshold is 2), and every arm of a
/// carried route fails and is reported. A report runs on the timer's thread
/// and takes one emulator's lock at a time, so neither write can wait on the
/// other device's lock. Before, each write reported under its own device's
/// lock: the report into that device aborted the process ("Recursive call to
/// lock Mutex"), and the report into the other device, whose writer was doing
/// the same, was a lock-order deadlock. In its own process: an abort, or the
/// watchdog ending a deadlocked run, fails this test and not the whole run.
@Suite(needsKVM) struct CommitReportLockTests {
    static let filter =
        #"IrqFdKVMTests.CommitReportLockTests/twoDevicesWritingAtOnceWhileArmsFailNeitherAbortNorDeadlock"#

    @Test(notInOwnProcess) func twoDevicesWritingAtOnceWhileArmsFailNeitherAbortNorDeadlockInItsOwnProcess() throws {
        try runInOwnProcess(Self.filter)
    }

    @Test(inOwnProcess(Self.filter)) func twoDevicesWritingAtOnceWhileArmsFailNeitherAbortNorDeadlock() throws {
        let guest = try CountingGuest(cpus: 1)
        let reporter = CommitErrorReporter()
        let irqfd = KVMIrqFd(
            kernel: try KVMRoutingKernel(vm: guest.vm.vm),
            coalescing: .init(
                interim: LazyRelayInterim(vm: guest.vm.vm), timer: ThreadCommitTimer(), delay: .milliseconds(5),
                threshold: 2, onCommitError: { reporter.report($0) }))
        let devices = [
            CoalescedFaultKVMTests.Function(irqfd, vectors: 4), CoalescedFaultKVMTests.Function(irqfd, vectors: 4),
        ]
        for device in devices {
            reporter.add(device.emulator)
            device.control(enabled: true, functionMasked: false)
            for v in 0..<4 { device.setMasked(v, false) }
        }
        guest.vm.vm.faults.failCall("KVM_IRQFD", count: 1_000_000)
        let finished = DispatchGroup()
        for (d, device) in devices.enumerated() {
            finished.enter()
            let thread = Thread {
                for round in 0..<400 {
                    let v = round % 4
                    device.program(v, CoalescedFaultKVMTests.message(UInt8(0x50 + 16 * d + round % 16)))
                    // An undeliverable address on a live vector: its clearMsi pushes at once.
                    if round % 5 == 0 {
                        device.emulator.writeTable(offset: UInt64(16 * v), size: 4, value: 0xFED0_0000)
                    }
                }
                finished.leave()
            }
            thread.start()
        }
        if finished.wait(timeout: .now() + 120) == .timedOut {
            print("the two devices' writes did not finish in 120 s: deadlocked")
            exit(3)
        }
        guest.vm.vm.faults.clear()
        #expect(reporter.count >= 1, "the failed arms were reported")
        #expect(devices.allSatisfy { $0.emulator.counters.routeErrors >= 1 }, "to both devices")
        // Once KVM_IRQFD works again, the retries arm every live vector.
        let armed = guest.vm.waitUntil(timeout: .seconds(20)) {
            devices.allSatisfy { device in
                (0..<4).allSatisfy { v in !device.emulator.isLive(v) || device.route(v)?.isArmed == true }
            }
        }
        #expect(armed, "the retries armed every live vector")
        #expect(irqfd.invariantViolations().isEmpty, "\(irqfd.invariantViolations())")
        guest.expectAlive()
    }
}
#endif
