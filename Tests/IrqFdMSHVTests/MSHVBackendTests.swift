#if os(Linux)
import Foundation
import Glibc
import IrqFdCore
import IrqFdLinux
import IrqFdMSHV
import IrqFdRouting
import SystemPackage
import Testing

/// The mshv backend (the shared routing core + mshv's encoding) against a
/// recording partition: which ioctls it makes, with exactly which bytes.
@Suite struct MSHVBackendTests {
    let device = RecordingPartition()
    static let msiA = MsiMessage(destination: 0, vector: 0x40)
    static let msiB = MsiMessage(destination: 1, vector: 0x41)

    func fd(_ route: MSHVIrqFdRoute) -> [UInt8] {
        withUnsafeBytes(of: Int32(truncatingIfNeeded: route.event.nativeHandle.rawValue).littleEndian) { Array($0) }
    }

    @Test func setMsiWritesTheTableThenArmsTheEventfd() throws {
        let irqfd = MSHVIrqFd(partition: device)
        let route = try irqfd.newRoute()
        #expect(route.gsi == 24, "GSIs 0..<24 stay with the IOAPIC's pins by default")
        try route.setMsi(Self.msiA)
        #expect(
            device.rawCalls == [
                .init(
                    request: 0x4008_B805,
                    bytes: [1, 0, 0, 0, 0, 0, 0, 0, 24, 0, 0, 0, 0x00, 0x00, 0xE0, 0xFE, 0, 0, 0, 0, 0x40, 0, 0, 0]),
                .init(request: 0x4010_B803, bytes: fd(route) + [0, 0, 0, 0, 24, 0, 0, 0, 0, 0, 0, 0]),
            ])
        #expect(route.isArmed && device.armed == [Int32(route.event.nativeHandle.rawValue): 24])
        device.reset()
        try route.setMsi(Self.msiA)
        #expect(device.rawCalls.isEmpty, "the same message again makes no ioctl")
    }

    @Test func maskIsOneDeassignAndUnmaskOneAssignNoTable() throws {
        let route = try MSHVIrqFd(partition: device).newRoute()
        try route.setMsi(Self.msiA)
        device.reset()
        try route.mask()
        try route.mask()
        #expect(
            device.rawCalls == [.init(request: 0x4010_B803, bytes: fd(route) + [0, 0, 0, 0, 24, 0, 0, 0, 1, 0, 0, 0])])
        device.reset()
        try route.unmask()
        try route.unmask()
        #expect(
            device.rawCalls == [.init(request: 0x4010_B803, bytes: fd(route) + [0, 0, 0, 0, 24, 0, 0, 0, 0, 0, 0, 0])])
    }

    /// The driver injects what is latched at assign without consuming it; the
    /// backend hands it the signal through the wakeup path instead, so an
    /// unmask that delivers leaves nothing pending.
    @Test func unmaskHandsALatchedSignalToTheWakeupPathNotToAssign() throws {
        let route = try MSHVIrqFd(partition: device).newRoute()
        try route.setMsi(Self.msiA)
        try route.mask()
        route.event.signal()
        route.event.signal()
        try route.unmask()
        #expect(device.countsAtAssign == [0, 0], "the counter was empty when MSHV_IRQFD ran")
        let fd = Int32(truncatingIfNeeded: route.event.nativeHandle.rawValue)
        #expect(RecordingPartition.eventfdCount(fd) == 1, "signalled once again after arming, for the wakeup path")
    }

    @Test func clearMsiAndDropDisarmBeforeTheTableLosesTheEntry() throws {
        let irqfd = MSHVIrqFd(partition: device)
        var route: MSHVIrqFdRoute? = try irqfd.newRoute()
        try route!.setMsi(Self.msiA)
        device.reset()
        try route!.clearMsi()
        #expect(device.calls == [.deassign(gsi: 24), .push([])])
        #expect(device.rawCalls.last == .init(request: 0x4008_B805, bytes: [0, 0, 0, 0, 0, 0, 0, 0]))
        try route!.setMsi(Self.msiB)
        device.reset()
        route = nil
        #expect(device.calls == [.deassign(gsi: 24), .push([])])
        #expect(device.armed.isEmpty && device.table.isEmpty && irqfd.freeGsiCount == irqfd.gsiCapacity)
    }

    @Test func aBatchPushesOneTableThenArmsEveryRoute() throws {
        let irqfd = MSHVIrqFd(partition: device)
        let routes = try (0..<100).map { _ in try irqfd.newRoute() }
        try irqfd.withBatch { () throws(IrqFdError) in
            for (index, route) in routes.enumerated() {
                try route.setMsi(MsiMessage(destination: UInt32(index % 2), vector: UInt8(0x30 + index)))
            }
        }
        let pushes = device.rawCalls.filter { $0.request == MSHV.setMsiRouting.number }
        #expect(pushes.count == 1)
        #expect(pushes.first?.bytes.count == 8 + 100 * 16)
        #expect(device.calls.dropFirst().allSatisfy { if case .assign = $0 { true } else { false } })
        #expect(device.armed.count == 100 && device.table.count == 100)
        #expect(device.table[24 + 7] == MsiMessage(destination: 1, vector: 0x37))
    }

    @Test func theGsiSpaceIsTheDriversAndEveryGsiPassesItsChecks() throws {
        let irqfd = MSHVIrqFd(partition: device)
        #expect(irqfd.gsiCapacity == 4096 - 24)
        #expect(MSHVIrqFd(partition: device, layout: .msiOnly).gsiCapacity == 4095)
        #expect(try MSHVIrqFd(partition: device, layout: .msiOnly).newRoute().gsi == 1, "GSI 0 is never handed out")
        var routes: [MSHVIrqFdRoute] = []
        routes.reserveCapacity(irqfd.gsiCapacity)
        for _ in 0..<irqfd.gsiCapacity { routes.append(try irqfd.newRoute()) }
        #expect(throws: IrqFdError.gsiExhausted(capacity: 4072)) { try irqfd.newRoute() }
        #expect(routes.last?.gsi == 4095)
        // Every route live at once: the recording partition applies the driver's
        // checks (nr <= 4096, gsi < 4096, address_hi == 0, no GSI twice).
        try irqfd.withBatch { () throws(IrqFdError) in
            for route in routes { try route.setMsi(Self.msiA) }
        }
        #expect(device.table.count == 4072 && device.armed.count == 4072)
        device.reset()
        try irqfd.withBatch { () throws(IrqFdError) in routes.removeAll() }
        #expect(
            device.calls.filter { if case .push = $0 { true } else { false } }.count == 1,
            "dropping in a batch pushes once")
        #expect(device.table.isEmpty && device.armed.isEmpty)
    }

    @Test func anExtendedDestinationIdIsRefusedBecauseMshvReadsEightBits() throws {
        let route = try MSHVIrqFd(partition: device).newRoute()
        let far = MsiMessage(destination: 300, vector: 0x40)
        #expect(throws: IrqFdError.undeliverableAddress(far.address)) { try route.setMsi(far) }
        #expect(throws: IrqFdError.undeliverableAddress(0xFED0_0000)) {
            try route.setMsi(address: 0xFED0_0000, data: 0x40)
        }
        #expect(device.rawCalls.isEmpty && !route.isArmed && route.msi == nil)
        try route.setMsi(MsiMessage(destination: 255, vector: 0x40))
        #expect(route.isArmed, "APIC ID 255 fits the 8 bits")
    }

    @Test func aFailedIrqfdLeavesTheTableAsItWasAndNamesTheCall() throws {
        let route = try MSHVIrqFd(partition: device).newRoute()
        device.failNext(MSHV.irqfd, errno: .resourceBusy)
        #expect(throws: IrqFdError.call("MSHV_IRQFD", .resourceBusy)) { try route.setMsi(Self.msiA) }
        #expect(!route.isArmed && route.msi == nil && device.table.isEmpty, "the entry was rolled back")
        #expect(device.calls == [.push([RoutingEntry(gsi: 24, msi: Self.msiA)]), .push([])])
        try route.setMsi(Self.msiA)
        #expect(route.isArmed)
    }

    @Test func aFailedTablePushArmsNothingAndNamesTheCall() throws {
        let route = try MSHVIrqFd(partition: device).newRoute()
        device.failNext(MSHV.setMsiRouting, errno: .invalidArgument)
        #expect(throws: IrqFdError.call("MSHV_SET_MSI_ROUTING", .invalidArgument)) { try route.setMsi(Self.msiA) }
        #expect(device.rawCalls.isEmpty && !route.isArmed && route.msi == nil)
    }

    @Test func aGonePartitionIsATypedErrorAndDropDoesNotCrash() throws {
        var device: RecordingPartition? = RecordingPartition()
        let irqfd = MSHVIrqFd(partition: device!)
        var route: MSHVIrqFdRoute? = try irqfd.newRoute()
        try route!.setMsi(Self.msiA)
        device = nil
        #expect(throws: IrqFdError.partitionGone) { try route!.setMsi(Self.msiB) }
        #expect(throws: IrqFdError.partitionGone) { try route!.mask() }
        route = nil
        #expect(irqfd.freeGsiCount == irqfd.gsiCapacity)
    }

    // MARK: The real ioctl(2) path, on this machine

    @Test(.enabled(if: !MSHVSystem.isPresent(), "/dev/mshv exists here: the absence test does not apply"))
    func openingAnAbsentDevSlashMshvIsATypedError() {
        #expect(throws: IrqFdError.unsupported(MSHVSystem.absenceMessage())) { try MSHVSystem() }
        #expect(MSHVSystem.absenceMessage().hasPrefix("/dev/mshv is not present (No such file or directory)"))
        #expect(throws: IrqFdError.unsupported(MSHVSystem.absenceMessage(path: "/nonexistent/mshv"))) {
            try MSHVSystem(path: "/nonexistent/mshv")
        }
    }

    /// Real ioctl(2)s with mshv's request numbers, made on a descriptor that is
    /// not an mshv one: the kernel refuses them (ENOTTY) and the errors name the
    /// mshv request, through the same code that would talk to /dev/mshv.
    @Test func realIoctlsReachTheKernelAndFailuresNameTheRequest() throws {
        let system = try MSHVSystem(path: "/dev/null")
        #expect(throws: IrqFdError.call("MSHV_CREATE_PARTITION", .inappropriateIOCTLForDevice)) {
            try system.createPartition()
        }
        let fd = open("/dev/null", O_RDWR | O_CLOEXEC)
        try #require(fd >= 0)
        let partition = MSHVPartition(adopting: fd)
        #expect(throws: SystemCallError(call: "MSHV_INITIALIZE_PARTITION", errno: .inappropriateIOCTLForDevice)) {
            try partition.initialize()
        }
        let irqfd = MSHVIrqFd(partition: partition)
        let route = try irqfd.newRoute()
        #expect(throws: IrqFdError.call("MSHV_SET_MSI_ROUTING", .inappropriateIOCTLForDevice)) {
            try route.setMsi(Self.msiA)
        }
        #expect(!route.isArmed && route.msi == nil && irqfd.pushCount == 0)
    }
}
#endif
