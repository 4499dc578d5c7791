#if os(Linux)
import Foundation
import IrqFdCore
import IrqFdKVM
import TestSupport
import Testing
import TinyVM

/// From state version 2 the old VMM offers its routes and their events
/// before the pause: the successor makes them masked and pushes their MSIs
/// while the guest still runs on the old VMM, and after the commit only arms
/// them. A successor that reads only version 1 is still handed the guest,
/// with the routes after the pause. Checked by push counts, the order of the
/// hand-off's marks and interrupts the guest counts, never by how long
/// anything took.
@Suite(needsKVM) struct LiveUpdateRoutesOfferedTests {
    static let live: UInt8 = 0x45
    static let masked: UInt8 = 0x46

    /// Hands a counting guest with a live route and a masked one holding a
    /// latched signal to a successor in this process that reads `versions`;
    /// checks both routes work there as they did; returns the successor's timeline and push count.
    static func handOff(versions: ClosedRange<UInt32>) throws -> (LiveUpdateTimeline, pushes: Int) {
        let old = try LiveUpdateInProcessTests.countingGuest()
        let liveRoute = try old.irqfd.newRoute()
        try liveRoute.setMsi(MsiMessage(destination: 0, vector: live))
        let maskedRoute = try old.irqfd.newRoute()
        try maskedRoute.setMsi(MsiMessage(destination: 0, vector: masked))
        try maskedRoute.mask()
        maskedRoute.event.signal()
        let memory = old.memory
        func count(_ vector: UInt8) -> UInt32 {
            memory.read32(at: InterruptCounterLayout.count(cpu: 0, vector: vector))
        }
        liveRoute.event.signal()
        #expect(old.waitUntil { count(live) == 1 }, "the live route delivers on the old VMM")

        let path = "/tmp/irqfd-lu-routes-\(getpid())-\(versions.upperBound).sock"
        let source = try LiveUpdateSource(vm: old, listeningAt: path, devices: [], routes: [liveRoute, maskedRoute]) {
            _ in
        }
        source.start()
        defer { source.settleThenStop(old, socket: path) }
        let taken = try LiveUpdateIncoming.takeOver(from: path, kinds: [], versions: versions)
        defer {
            taken.vm.stop()
            _ = taken.vm.wait()
        }
        #expect(source.waitUntilSettled() == .takenOver)
        #expect(taken.routes.count == 2 && taken.routeCount == 2)
        #expect(taken.routes.first?.msi == MsiMessage(destination: 0, vector: live))
        #expect(taken.routes.first?.isMasked == false && taken.routes.last?.isMasked == true)
        let pushes = taken.vm.irqfd.pushCount
        taken.routes[0].event.signal()
        #expect(taken.vm.waitUntil { count(live) == 2 }, "the live route delivers on the successor")
        #expect(count(masked) == 0, "masked: nothing delivered")
        try taken.routes[1].unmask()
        #expect(taken.vm.waitUntil { count(masked) == 1 }, "unmask delivers the signal latched on the old VMM")
        usleep(20_000)
        #expect(count(masked) == 1 && count(live) == 2, "each once")
        return (taken.timeline, pushes)
    }

    @Test func routesOfferedBeforeThePauseArePushedThenAndOnlyArmedAfterTheCommit() throws {
        let (marks, pushes) = try Self.handOff(versions: LiveUpdateState.readableVersions)
        #expect(marks.routesPushed != 0, "the routes were made from the offer")
        #expect(marks.routesPushed <= marks.prepared, "before the successor said it is prepared")
        #expect(marks.routesPushed < marks.paused, "before the old VMM paused the guest")
        #expect(pushes == 1, "one push, before the pause: the MSIs did not change, so none after")
    }

    @Test func aSuccessorThatReadsOnlyVersion1GetsTheRoutesAfterThePause() throws {
        let (marks, pushes) = try Self.handOff(versions: 1...1)
        #expect(marks.routesPushed == 0, "nothing offered before the pause")
        #expect(marks.threadsReady < marks.paused)
        #expect(pushes == 1, "one push, after the commit")
    }
}
#endif
