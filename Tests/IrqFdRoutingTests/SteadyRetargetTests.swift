import IrqFdCore
import IrqFdRouting
import Testing

/// A retarget of armed routes inside a batch skips their reconcile at the
/// batch's end (the steady retarget, <doc:RouteCommits>); anything that disarms such a route inside
/// the batch must bring the reconcile back.
@Suite struct SteadyRetargetTests {
    static let msiA = MsiMessage(destination: 0, vector: 0x40)
    static let msiB = MsiMessage(destination: 0, vector: 0x41)

    @Test func aRetargetInABatchIsOnePushAndNoArmCall() throws {
        let kernel = RecordingKernel()
        let p = RoutedIrqFd(kernel: kernel)
        let routes = try (0..<8).map { _ in try p.newRoute() }
        try p.withBatch { () throws(IrqFdError) in for r in routes { try r.setMsi(Self.msiA) } }
        kernel.reset()
        try p.withBatch { () throws(IrqFdError) in for r in routes { try r.setMsi(Self.msiB) } }
        #expect(kernel.calls.count == 1 && kernel.calls.first?.isPush == true, "\(kernel.calls)")
        #expect(routes.allSatisfy { $0.isArmed && kernel.armed.contains($0.gsi) && kernel.table[$0.gsi] == Self.msiB })
    }

    @Test func aRetargetedRouteMaskedAndUnmaskedInTheBatchIsArmedWhenItsPushLands() throws {
        let kernel = RecordingKernel()
        let p = RoutedIrqFd(kernel: kernel)
        let r = try p.newRoute()
        let other = try p.newRoute()
        try p.withBatch { () throws(IrqFdError) in
            try r.setMsi(Self.msiA)
            try other.setMsi(Self.msiA)
        }
        try p.withBatch { () throws(IrqFdError) in
            try r.setMsi(Self.msiB)  // steady: armed, keeps an entry
            try r.mask()  // disarmed: no longer steady
            try r.unmask()  // its new entry is not in the kernel yet: the push must arm it
            #expect(!r.isArmed)
            try other.setMsi(Self.msiB)
            try other.mask()  // stays masked: the push must not arm it
        }
        #expect(r.isArmed && kernel.armed.contains(r.gsi) && kernel.table[r.gsi] == Self.msiB)
        #expect(!other.isArmed && !kernel.armed.contains(other.gsi) && other.isMasked)
    }

    @Test func aRetargetThenClearInTheBatchLeavesTheRouteDisarmedWithoutAnEntry() throws {
        let kernel = RecordingKernel()
        let p = RoutedIrqFd(kernel: kernel)
        let r = try p.newRoute()
        try r.setMsi(Self.msiA)
        try p.withBatch { () throws(IrqFdError) in
            try r.setMsi(Self.msiB)
            try r.clearMsi()
            try r.setMsi(Self.msiA)  // not armed now: the push arms it
        }
        #expect(r.isArmed && kernel.armed.contains(r.gsi) && kernel.table[r.gsi] == Self.msiA)
    }

    @Test func aRefusedRetargetPushLeavesTheRoutesArmedOnTheirOldEntries() throws {
        let kernel = RecordingKernel()
        let p = RoutedIrqFd(kernel: kernel)
        let routes = try (0..<4).map { _ in try p.newRoute() }
        try p.withBatch { () throws(IrqFdError) in for r in routes { try r.setMsi(Self.msiA) } }
        kernel.failNext("push")
        #expect(throws: IrqFdError.self) {
            try p.withBatch { () throws(IrqFdError) in for r in routes { try r.setMsi(Self.msiB) } }
        }
        #expect(routes.allSatisfy { $0.isArmed && $0.msi == Self.msiA && kernel.table[$0.gsi] == Self.msiA })
        kernel.reset()
        try routes[0].setMsi(Self.msiB)
        #expect(
            kernel.calls == [
                .push(
                    Dictionary(uniqueKeysWithValues: routes.map { ($0.gsi, $0 === routes[0] ? Self.msiB : Self.msiA) }))
            ])
    }
}
