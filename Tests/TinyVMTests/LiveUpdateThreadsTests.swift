#if os(Linux)
import Foundation
import TestSupport
import Testing
import TinyVM

/// A VM's vCPU threads can be made ahead of the run, and a live update's
/// successor makes them before the old VMM pauses the guest, so that the
/// pause only wakes them. Checked by what the threads did and by the order of
/// the hand-off's marks (one CLOCK_MONOTONIC for every process), never by how
/// long anything took.
@Suite(needsKVM) struct LiveUpdateThreadsTests {
    @Test func threadsMadeAheadEnterTheGuestOnlyOnStartAndEndWithStop() throws {
        let idle = try TinyVM(.init(cpus: 2, coalescesCommits: false))
        try idle.load(GuestProgram.interruptCounter.image)
        idle.prepareThreads()
        #expect(idle.threadsReadyNanoseconds != 0, "every thread waits when prepareThreads returns")
        #expect(idle.firstRunNanoseconds == 0, "no thread entered the guest before start()")
        #expect(idle.memory.read32(at: InterruptCounterLayout.ready(cpu: 0)) == 0)
        idle.stop()
        #expect(idle.wait() == .stopped, "the waiting threads ended with stop() and were joined")
        #expect(idle.firstRunNanoseconds == 0)

        let vm = try TinyVM(.init(cpus: 2, coalescesCommits: false))
        try vm.load(GuestProgram.interruptCounter.image)
        vm.prepareThreads()
        let ready = vm.threadsReadyNanoseconds
        vm.start()
        defer {
            vm.stop()
            _ = vm.wait()
        }
        #expect(vm.threadsReadyNanoseconds == ready, "start() made no threads of its own")
        #expect(
            vm.waitUntil(timeout: .seconds(20)) { vm.memory.read32(at: InterruptCounterLayout.ready(cpu: 0)) == 1 },
            "the guest runs once started")
        #expect(vm.firstRunNanoseconds > ready)
    }

    @Test func aSuccessorsVCPUThreadsWaitReadyBeforeTheGuestPauses() throws {
        let old = try LiveUpdateInProcessTests.countingGuest()
        let path = "/tmp/irqfd-lu-threads-\(getpid()).sock"
        let source = try LiveUpdateSource(vm: old, listeningAt: path, devices: []) { _ in }
        source.start()
        defer { source.settleThenStop(old, socket: path) }
        let taken = try LiveUpdateIncoming.takeOver(from: path, kinds: [])
        defer {
            taken.vm.stop()
            _ = taken.vm.wait()
        }
        #expect(source.waitUntilSettled() == .takenOver)
        let marks = taken.timeline
        #expect(marks.threadsReady != 0, "the successor made its vCPU threads ahead")
        #expect(marks.threadsReady == taken.vm.threadsReadyNanoseconds)
        #expect(marks.threadsReady <= marks.prepared, "with its VM, before saying it is prepared")
        #expect(marks.threadsReady < marks.paused, "before the old VMM paused the guest")
        #expect(marks.paused < marks.running)
        #expect(source.handOffTimeline?.threadsReady == marks.threadsReady, "the mark travels back to the old VMM")
    }
}
#endif
