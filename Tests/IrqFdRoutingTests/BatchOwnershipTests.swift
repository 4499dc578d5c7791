import Foundation
import IrqFdCore
import IrqFdLinux
import IrqFdRouting
import Synchronization
import TestSupport
import Testing

/// A RoutingKernel whose pushes can be held (the pushing thread waits inside
/// the call, table lock held) and then failed, to make races with a push
/// repeatable. Like RecordingKernel it stands in only where no kernel is
/// involved; the same races are run on real KVM in IrqFdKVMTests.
final class HoldablePushKernel: RoutingKernel {
    let gsiLimit: UInt32 = 64
    let reservedGsis: Range<UInt32> = 0..<24
    let msiEntryCapacity = 40
    private struct State {
        var table: [UInt32: MsiMessage] = [:]
        var armed: Set<UInt32> = []
        var pushes = 0
        var failPushes = 0
        var holdNextPush = false
    }
    private let state = Mutex(State())
    /// A held push is inside the kernel call.
    let pushEntered = Atomic<Bool>(false)
    /// Lets a held push return.
    let releasePush = Atomic<Bool>(false)

    var table: [UInt32: MsiMessage] { state.withLock { $0.table } }
    var armed: Set<UInt32> { state.withLock { $0.armed } }
    var pushes: Int { state.withLock { $0.pushes } }
    /// The next `count` pushes fail with EIO.
    func failPushes(_ count: Int = 1) { state.withLock { $0.failPushes = count } }
    /// The next push waits for `releasePush` before it returns (or fails).
    func holdNextPush() { state.withLock { $0.holdNextPush = true } }

    func pushRoutingTable(_ entries: [RoutingEntry]) throws(IrqFdError) {
        let hold = state.withLock { s in
            defer { s.holdNextPush = false }
            return s.holdNextPush
        }
        if hold {
            pushEntered.store(true, ordering: .releasing)
            while !releasePush.load(ordering: .acquiring) { usleep(1000) }
        }
        try state.withLock { (s: inout State) throws(IrqFdError) in
            if s.failPushes > 0 {
                s.failPushes -= 1
                throw .call("push", .ioError)
            }
            s.pushes += 1
            s.table = Dictionary(uniqueKeysWithValues: entries.map { ($0.gsi, $0.msi) })
        }
    }
    func assign(event: any Event, gsi: UInt32) throws(IrqFdError) { _ = state.withLock { $0.armed.insert(gsi) } }
    func deassign(event: any Event, gsi: UInt32) throws(IrqFdError) { _ = state.withLock { $0.armed.remove(gsi) } }
    func makeEvent() throws(IrqFdError) -> any Event { try EventFD() }
}

/// Runs `body` on a thread of its own; `join()` waits for it and returns what it threw.
final class TestThread: Sendable {
    private let outcome = Mutex<(done: Bool, error: IrqFdError?)>((false, nil))

    init(_ body: @escaping @Sendable () throws(IrqFdError) -> Void) {
        let thread = Thread { [self] in
            var failure: IrqFdError?
            do throws(IrqFdError) { try body() } catch { failure = error }
            self.outcome.withLock { $0 = (true, failure) }
        }
        thread.start()
    }

    /// Waits (up to 10 s) for the thread to finish; returns its error, if any.
    func join() -> IrqFdError? {
        let deadline = ContinuousClock.now + .seconds(10)
        while ContinuousClock.now < deadline {
            if let error = outcome.withLock({ $0.done ? .some($0.error) : nil }) { return error }
            usleep(1000)
        }
        Issue.record("the thread did not finish")
        return nil
    }
}

/// A batch belongs to its caller, a failed batch push
/// restores exactly, and no route's deinit runs under the table lock.
@Suite struct BatchOwnershipTests {
    typealias Partition = RoutedIrqFd<RecordingKernel>
    static let msiA = MsiMessage(destination: 0, vector: 0x40)
    static let msiB = MsiMessage(destination: 1, vector: 0x41)
    static let msiC = MsiMessage(destination: 0, vector: 0x42)

    /// Holds a batch open on another thread around `body` (run after that
    /// thread's batch made its own change on `theirs`), then lets it end.
    func withBatchOpenElsewhere(
        _ p: Partition, theirs: RoutedIrqFdRoute<RecordingKernel>, beforeEnding: () -> Void = {},
        _ body: () throws -> Void
    ) rethrows -> IrqFdError? {
        let opened = Atomic<Bool>(false)
        let end = Atomic<Bool>(false)
        let other = TestThread { () throws(IrqFdError) in
            try p.withBatch { () throws(IrqFdError) in
                try theirs.setMsi(Self.msiB)
                opened.store(true, ordering: .releasing)
                while !end.load(ordering: .acquiring) { usleep(1000) }
            }
        }
        #expect(eventually { opened.load(ordering: .acquiring) })
        try body()
        beforeEnding()
        end.store(true, ordering: .releasing)
        return other.join()
    }

    @Test func anotherThreadsOpenBatchDefersNeitherThisThreadsBatchNorItsUnbatchedCalls() throws {
        let kernel = RecordingKernel()
        let p = Partition(kernel: kernel)
        let mine = try p.newRoute()
        let alsoMine = try p.newRoute()
        let theirs = try p.newRoute()
        let error = try withBatchOpenElsewhere(p, theirs: theirs) {
            try mine.setMsi(Self.msiA)
            #expect(mine.isArmed && kernel.table[mine.gsi] == Self.msiA, "an unbatched setMsi pushes and arms at once")
            try p.withBatch { () throws(IrqFdError) in try alsoMine.setMsi(Self.msiC) }
            #expect(
                alsoMine.isArmed && kernel.table[alsoMine.gsi] == Self.msiC, "this thread's batch pushed when it ended")
            #expect(
                kernel.table[theirs.gsi] == nil && !theirs.isArmed, "the other batch's change waits for its own end")
        }
        #expect(error == nil)
        #expect(theirs.isArmed && kernel.table[theirs.gsi] == Self.msiB)
        #expect(kernel.armed == [mine.gsi, alsoMine.gsi, theirs.gsi])
    }

    @Test func aFailedPushRollsBackOnlyTheBatchThatMadeIt() throws {
        let kernel = RecordingKernel()
        let p = Partition(kernel: kernel)
        let mine = try p.newRoute()
        let theirs = try p.newRoute()
        let error = try withBatchOpenElsewhere(
            p, theirs: theirs, beforeEnding: { kernel.failNext("push") }, { try mine.setMsi(Self.msiA) })
        #expect(error == .call("push", .ioError), "the batch whose push failed is told")
        #expect(mine.msi == Self.msiA && mine.isArmed, "the other thread's successful change stands")
        #expect(kernel.table == [mine.gsi: Self.msiA] && kernel.armed == [mine.gsi])
        #expect(theirs.msi == nil && !theirs.isArmed, "the failed batch's own change is rolled back")
        try theirs.setMsi(Self.msiB)
        #expect(theirs.isArmed && kernel.table == [mine.gsi: Self.msiA, theirs.gsi: Self.msiB])
    }

    @Test func aGsiRetakenInAFailedBatchDoesNotInheritTheDroppedRoutesEntry() throws {
        let kernel = RecordingKernel()
        let p = Partition(kernel: kernel)
        var old: RoutedIrqFdRoute<RecordingKernel>? = try p.newRoute()
        try old!.setMsi(Self.msiA)
        var retaken: RoutedIrqFdRoute<RecordingKernel>?
        kernel.failNext("push")
        #expect(throws: IrqFdError.call("push", .ioError)) {
            try p.withBatch { () throws(IrqFdError) in
                old = nil
                retaken = try p.newRoute()
                try retaken!.setMsi(Self.msiB)
                try retaken!.mask()
            }
        }
        let route = try #require(retaken)
        #expect(route.gsi == 24, "the new route took the dropped route's GSI")
        #expect(route.msi == nil && !route.isArmed, "the new route is back to its own state: no MSI")
        try route.unmask()
        #expect(!route.isArmed && !kernel.armed.contains(24), "an unmask does not arm it on the old route's entry")
        try route.setMsi(Self.msiC)
        #expect(route.isArmed && kernel.table == [24: Self.msiC])
    }

    @Test func aRouteThatClearedItsMsiInAFailedBatchIsArmedAgain() throws {
        let kernel = RecordingKernel()
        let p = Partition(kernel: kernel)
        let r = try p.newRoute()
        let fresh = try p.newRoute()
        try r.setMsi(Self.msiA)
        kernel.failNext("push")
        #expect(throws: IrqFdError.call("push", .ioError)) {
            try p.withBatch { () throws(IrqFdError) in
                try r.clearMsi()
                try fresh.setMsi(Self.msiB)
            }
        }
        #expect(r.msi == Self.msiA && r.isArmed && !r.isMasked, "back to its entry, and armed on it as before")
        #expect(kernel.armed == [r.gsi] && kernel.table == [r.gsi: Self.msiA])
        #expect(fresh.msi == nil && !fresh.isArmed)
    }

    @Test func aRouteReleasedWhileAFailingBatchPushIsHeldIsNotDeinitialisedUnderTheTableLock() throws {
        let kernel = HoldablePushKernel()
        let p = RoutedIrqFd(kernel: kernel)
        let free = p.freeGsiCount
        let box = Mutex<RoutedIrqFdRoute<HoldablePushKernel>?>(try p.newRoute())
        kernel.holdNextPush()
        kernel.failPushes()
        let batch = TestThread { () throws(IrqFdError) in
            try p.withBatch { () throws(IrqFdError) in
                try box.withLock { (r: inout RoutedIrqFdRoute<HoldablePushKernel>?) throws(IrqFdError) in
                    try r!.setMsi(Self.msiA)
                }
            }
        }
        #expect(eventually { kernel.pushEntered.load(ordering: .acquiring) })
        // Another thread drops the last reference while the push is inside the kernel.
        let dropping = Atomic<Bool>(false)
        let dropper = TestThread { () throws(IrqFdError) in
            dropping.store(true, ordering: .releasing)
            let route = box.withLock { r in
                defer { r = nil }
                return r
            }
            _ = consume route
        }
        #expect(eventually { dropping.load(ordering: .acquiring) })
        usleep(20_000)
        kernel.releasePush.store(true, ordering: .releasing)
        #expect(batch.join() == .call("push", .ioError))
        #expect(dropper.join() == nil)
        #expect(p.freeGsiCount == free, "the route was released and its GSI freed")
        #expect(kernel.armed.isEmpty)
        // The partition still works.
        let r = try p.newRoute()
        try r.setMsi(Self.msiB)
        #expect(kernel.table == [r.gsi: Self.msiB] && r.isArmed)
    }
}
