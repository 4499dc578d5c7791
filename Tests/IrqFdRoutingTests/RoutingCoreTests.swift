import IrqFdCore
import IrqFdRouting
import Testing

/// The routing core's rules, checked call by call against a recording kernel.
/// The same rules are checked against real KVM in IrqFdKVMTests.
@Suite struct RoutingCoreTests {
    let kernel = RecordingKernel()
    var partition: RoutedIrqFd<RecordingKernel> { RoutedIrqFd(kernel: kernel) }
    static let msiA = MsiMessage(destination: 0, vector: 0x40)
    static let msiB = MsiMessage(destination: 1, vector: 0x41)

    @Test func newRoutesTakeTheLowestFreeGsiAboveTheReservedOnes() throws {
        let p = partition
        let a = try p.newRoute()
        let b = try p.newRoute()
        let c = try p.newRoute()
        #expect([a.gsi, b.gsi, c.gsi] == [24, 25, 26])
        _ = consume b
        let d = try p.newRoute()
        #expect(d.gsi == 25, "a freed GSI is the lowest free one again")
        #expect(!a.isArmed && a.msi == nil && !a.isMasked)
        #expect(kernel.calls.isEmpty, "creating a route makes no kernel call")
        _ = (a, c, d)
    }

    @Test func setMsiPushesTheEntryThenArms() throws {
        let r = try partition.newRoute()
        try r.setMsi(Self.msiA)
        #expect(kernel.calls == [.push([24: Self.msiA]), .assign(24)])
        kernel.reset()
        try r.setMsi(Self.msiA)
        #expect(kernel.calls.isEmpty, "the same message again makes no call")
        try r.setMsi(Self.msiB)
        #expect(kernel.calls == [.push([24: Self.msiB])], "retargeting an armed route is one push, no re-arm")
    }

    @Test func maskAndUnmaskOnlyDisarmAndRearm() throws {
        let r = try partition.newRoute()
        try r.setMsi(Self.msiA)
        kernel.reset()
        try r.mask()
        try r.mask()
        #expect(kernel.calls == [.deassign(24)])
        try r.setMsi(Self.msiB)
        #expect(kernel.calls == [.deassign(24), .push([24: Self.msiB])], "setMsi on a masked route does not arm")
        try r.unmask()
        try r.unmask()
        #expect(kernel.calls.last == .assign(24))
        #expect(kernel.calls.filter(\.isPush).count == 1)
    }

    @Test func clearMsiDisarmsFirstThenRemovesTheEntry() throws {
        let r = try partition.newRoute()
        try r.setMsi(Self.msiA)
        kernel.reset()
        try r.clearMsi()
        #expect(kernel.calls == [.deassign(24), .push([:])])
        kernel.reset()
        try r.clearMsi()
        try r.unmask()
        #expect(kernel.calls.isEmpty)
    }

    @Test func undeliverableAddressIsATypedErrorAndLeavesTheRouteDisarmed() throws {
        let r = try partition.newRoute()
        try r.setMsi(Self.msiA)
        #expect(throws: IrqFdError.undeliverableAddress(0xFED0_0000)) { try r.setMsi(address: 0xFED0_0000, data: 0x40) }
        #expect(!r.isArmed && r.msi == nil)
        #expect(kernel.armed.isEmpty && kernel.table.isEmpty)
        #expect(throws: IrqFdError.undeliverableAddress(0x1_FEE0_0000)) {
            try r.setMsi(address: 0x1_FEE0_0000, data: 0x40)
        }
    }

    @Test func aBatchPushesOnceAndArmsAfterThePush() throws {
        let k = RecordingKernel(gsiLimit: 4096, reserved: 0..<24, capacity: 4056)
        let p = RoutedIrqFd(kernel: k)
        var routes = try (0..<2048).map { _ in try p.newRoute() }
        try p.withBatch { () throws(IrqFdError) in
            for (i, r) in routes.enumerated() {
                try r.setMsi(MsiMessage(destination: UInt32(i % 2), vector: UInt8(0x30 + i % 200)))
            }
            #expect(k.calls.isEmpty, "nothing reaches the kernel inside the batch")
        }
        #expect(k.calls.filter(\.isPush).count == 1)
        #expect(k.calls.first?.isPush == true, "the push comes before every arm")
        #expect(k.calls.count == 2049 && k.armed.count == 2048)
        #expect(p.pushCount == 1)
        k.reset()
        try p.withBatch { () throws(IrqFdError) in routes.removeAll() }
        #expect(
            k.calls.filter(\.isPush).count == 1 && k.calls.last == .push([:]),
            "dropping all in a batch: 2048 disarms, then one push")
        #expect(k.armed.isEmpty && p.freeGsiCount == 4056)
    }

    @Test func nestedBatchesPushAtTheOutermostEnd() throws {
        let p = partition
        let a = try p.newRoute()
        let b = try p.newRoute()
        try p.withBatch { () throws(IrqFdError) in
            try a.setMsi(Self.msiA)
            try p.withBatch { () throws(IrqFdError) in try b.setMsi(Self.msiB) }
            #expect(kernel.calls.isEmpty)
            try a.mask()
            try a.unmask()
        }
        #expect(
            kernel.calls == [.push([24: Self.msiA, 25: Self.msiB]), .assign(24), .assign(25)]
                || kernel.calls == [.push([24: Self.msiA, 25: Self.msiB]), .assign(25), .assign(24)])
    }

    @Test func exhaustingTheGsiSpaceIsATypedError() throws {
        let k = RecordingKernel(gsiLimit: 32, reserved: 0..<24)
        let p = RoutedIrqFd(kernel: k)
        let routes = try (0..<8).map { _ in try p.newRoute() }
        #expect(throws: IrqFdError.gsiExhausted(capacity: 8)) { try p.newRoute() }
        #expect(p.freeGsiCount == 0)
        try routes[0].setMsi(Self.msiA)
        #expect(k.armed == [24])
    }

    @Test func tableCapacityBoundsRoutesBelowTheGsiLimit() throws {
        let k = RecordingKernel(gsiLimit: 4096, reserved: 0..<24, capacity: 4056)
        let p = RoutedIrqFd(kernel: k)
        #expect(p.gsiCapacity == 4056)
    }

    @Test func aFailedPushLeavesTableAndRouteAsTheyWere() throws {
        let r = try partition.newRoute()
        try r.setMsi(Self.msiA)
        kernel.failNext("push")
        #expect(throws: IrqFdError.call("push", .ioError)) { try r.setMsi(Self.msiB) }
        #expect(r.msi == Self.msiA && r.isArmed)
        #expect(kernel.table == [24: Self.msiA])
        kernel.reset()
        try r.setMsi(Self.msiB)
        #expect(kernel.calls == [.push([24: Self.msiB])])
    }

    @Test func aFailedArmRollsTheEntryBack() throws {
        let r = try partition.newRoute()
        kernel.failNext("assign")
        #expect(throws: IrqFdError.call("assign", .ioError)) { try r.setMsi(Self.msiA) }
        #expect(r.msi == nil && !r.isArmed)
        #expect(kernel.table.isEmpty, "the entry was pushed, then removed again")
        try r.setMsi(Self.msiA)
        #expect(r.isArmed)
    }

    @Test func aFailedDisarmLeavesTheRouteArmedAndUnmasked() throws {
        let r = try partition.newRoute()
        try r.setMsi(Self.msiA)
        kernel.failNext("deassign")
        #expect(throws: IrqFdError.call("deassign", .ioError)) { try r.mask() }
        #expect(!r.isMasked && r.isArmed)
        kernel.failNext("deassign")
        #expect(throws: IrqFdError.call("deassign", .ioError)) { try r.clearMsi() }
        #expect(r.msi == Self.msiA && r.isArmed)
        kernel.failNext("push")
        #expect(throws: IrqFdError.call("push", .ioError)) { try r.clearMsi() }
        #expect(r.msi == Self.msiA && r.isArmed, "a failed removal re-arms what it disarmed")
        #expect(kernel.armed == [24])
    }

    @Test func aFailedUnmaskStaysMasked() throws {
        let r = try partition.newRoute()
        try r.setMsi(Self.msiA)
        try r.mask()
        kernel.failNext("assign")
        #expect(throws: IrqFdError.call("assign", .ioError)) { try r.unmask() }
        #expect(r.isMasked && !r.isArmed)
    }

    @Test func releasingARouteDisarmsRemovesAndFreesTheGsi() throws {
        let p = partition
        var r: RoutedIrqFdRoute<RecordingKernel>? = try p.newRoute()
        try r!.setMsi(Self.msiA)
        let free = p.freeGsiCount
        kernel.reset()
        r = nil
        #expect(kernel.calls == [.deassign(24), .push([:])])
        #expect(p.freeGsiCount == free + 1)
    }

    @Test func aFailedBatchPushRevertsToWhatTheKernelHolds() throws {
        let p = partition
        let a = try p.newRoute()
        try a.setMsi(Self.msiA)
        kernel.failNext("push")
        #expect(throws: IrqFdError.call("push", .ioError)) {
            try p.withBatch { () throws(IrqFdError) in try a.setMsi(Self.msiB) }
        }
        #expect(a.msi == Self.msiA)
        #expect(p.pushedEntries == [RoutingEntry(gsi: 24, msi: Self.msiA)])
    }
}
