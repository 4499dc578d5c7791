import IrqFdCore
import IrqFdMSHV
import IrqFdRouting
import Testing

#if os(Linux)
import CLinuxKVM
#endif

/// The mshv ABI, byte for byte. The expected values are written out here from
/// include/uapi/linux/mshv.h (mainline) and the generic _IOC layout, not
/// computed by the code under test.
@Suite struct MSHVEncodingTests {
    @Test func requestNumbersAreTheKernels() {
        #expect(MSHV.irqfd.number == 0x4010_B803, "_IOW(0xB8, 0x03, 16 bytes)")
        #expect(MSHV.setMsiRouting.number == 0x4008_B805, "_IOW(0xB8, 0x05, 8-byte header)")
        #expect(MSHV.createPartition.number == 0x4010_B800, "_IOW(0xB8, 0x00, 16 bytes)")
        #expect(MSHV.initializePartition.number == 0xB800, "_IO(0xB8, 0x00)")
        #expect(MSHV.irqfd.name == "MSHV_IRQFD" && MSHV.setMsiRouting.name == "MSHV_SET_MSI_ROUTING")
    }

    @Test func requestNumbersDecodeIntoTheirFields() {
        #expect(MSHV.irqfd.direction == IoctlRequest.directionWrite)
        #expect(MSHV.irqfd.type == 0xB8 && MSHV.irqfd.ordinal == 0x03 && MSHV.irqfd.argumentSize == 16)
        #expect(
            MSHV.setMsiRouting.type == 0xB8 && MSHV.setMsiRouting.ordinal == 0x05
                && MSHV.setMsiRouting.argumentSize == 8)
        #expect(MSHV.initializePartition.direction == 0 && MSHV.initializePartition.argumentSize == 0)
    }

    #if os(Linux)
    /// The same formula reproduces request numbers that the machine's own
    /// <linux/kvm.h> computed with the kernel's macros (through the C shim):
    /// write, read and no-argument requests.
    @Test func theIocFormulaMatchesTheKernelHeadersMacros() {
        #expect(
            IoctlRequest.write("KVM_IRQFD", type: 0xAE, number: 0x76, size: MemoryLayout<kvm_irqfd>.size).number
                == IRQFD_KVM_IRQFD)
        #expect(
            IoctlRequest.write(
                "KVM_SET_GSI_ROUTING", type: 0xAE, number: 0x6A, size: MemoryLayout<kvm_irq_routing>.size
            ).number == IRQFD_KVM_SET_GSI_ROUTING)
        #expect(
            IoctlRequest.write("KVM_SIGNAL_MSI", type: 0xAE, number: 0xA5, size: MemoryLayout<kvm_msi>.size).number
                == IRQFD_KVM_SIGNAL_MSI)
        #expect(
            IoctlRequest(
                name: "KVM_GET_LAPIC", direction: IoctlRequest.directionRead, type: 0xAE, number: 0x8E,
                size: MemoryLayout<kvm_lapic_state>.size
            ).number == IRQFD_KVM_GET_LAPIC)
        #expect(IoctlRequest.none("KVM_CREATE_VM", type: 0xAE, number: 0x01).number == IRQFD_KVM_CREATE_VM)
    }
    #endif

    @Test func userIrqfdIsSixteenBytesWithFieldsAtZeroFourEightTwelve() {
        #expect(MSHV.UserIrqfd.size == 16)
        #expect(MSHV.UserIrqfd.offsets == (fd: 0, resamplefd: 4, gsi: 8, flags: 12))
        let request = MSHV.UserIrqfd(fd: 0x0A0B_0C0D, resamplefd: 0x1A1B_1C1D, gsi: 0x2A2B_2C2D, flags: 0x3)
        #expect(
            request.bytes == [
                0x0D, 0x0C, 0x0B, 0x0A,  // fd
                0x1D, 0x1C, 0x1B, 0x1A,  // resamplefd
                0x2D, 0x2C, 0x2B, 0x2A,  // gsi
                0x03, 0x00, 0x00, 0x00,  // flags
            ])
        let decoded = request.bytes.withUnsafeBytes { MSHV.UserIrqfd(bytes: $0) }
        #expect(decoded == request)
        #expect(
            MSHV.UserIrqfd(fd: -1, gsi: 0, flags: 0).bytes.prefix(4) == [0xFF, 0xFF, 0xFF, 0xFF],
            "fd is a signed 32-bit field")
    }

    @Test func assignHasNoFlagsAndDeassignHasBitZero() {
        #expect(MSHV.UserIrqfd.flagDeassign == 1, "1 << MSHV_IRQFD_BIT_DEASSIGN (bit 0)")
        #expect(MSHV.UserIrqfd.flagResample == 2, "1 << MSHV_IRQFD_BIT_RESAMPLE (bit 1)")
        #expect(MSHV.UserIrqfd.flagsMask == 3, "MSHV_IRQFD_FLAGS_MASK")
        #expect(MSHV.UserIrqfd.assign(fd: 7, gsi: 24).bytes == [7, 0, 0, 0, 0, 0, 0, 0, 24, 0, 0, 0, 0, 0, 0, 0])
        #expect(MSHV.UserIrqfd.deassign(fd: 7, gsi: 24).bytes == [7, 0, 0, 0, 0, 0, 0, 0, 24, 0, 0, 0, 1, 0, 0, 0])
    }

    @Test func theRoutingTableIsAnEightByteHeaderAndSixteenBytesAnEntry() {
        #expect(MSHV.IrqTable.headerSize == 8 && MSHV.IrqTable.entrySize == 16)
        #expect(MSHV.IrqTable.entryOffsets == (gsi: 0, addressLow: 4, addressHigh: 8, data: 12))
        #expect(MSHV.IrqTable.size(entries: 2048) == 8 + 2048 * 16)
        let entries = [
            RoutingEntry(gsi: 24, msi: MsiMessage(destination: 0, vector: 0x40)),
            RoutingEntry(gsi: 25, msi: MsiMessage(destination: 1, vector: 0x41)),
            RoutingEntry(gsi: 300, msi: MsiMessage(address: 0xFEE0_300C, data: 0x0000_C131)),
        ]
        #expect(
            MSHV.IrqTable.bytes(entries) == [
                0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // nr = 3, rsvd = 0
                0x18, 0x00, 0x00, 0x00, 0x00, 0x00, 0xE0, 0xFE, 0x00, 0x00, 0x00, 0x00, 0x40, 0x00, 0x00, 0x00,
                0x19, 0x00, 0x00, 0x00, 0x00, 0x10, 0xE0, 0xFE, 0x00, 0x00, 0x00, 0x00, 0x41, 0x00, 0x00, 0x00,
                0x2C, 0x01, 0x00, 0x00, 0x0C, 0x30, 0xE0, 0xFE, 0x00, 0x00, 0x00, 0x00, 0x31, 0xC1, 0x00, 0x00,
            ])
        #expect(
            MSHV.IrqTable.bytes([]) == [0, 0, 0, 0, 0, 0, 0, 0],
            "an empty table is nr = 0: the driver then drops every route")
        let decoded = MSHV.IrqTable.bytes(entries).withUnsafeBytes { MSHV.IrqTable.decode($0) }
        #expect(decoded.reserved == 0 && decoded.entries == entries)
    }

    @Test func aSixtyFourBitAddressSplitsIntoLowAndHighWords() {
        let bytes = MSHV.IrqTable.bytes([RoutingEntry(gsi: 1, msi: MsiMessage(address: 0x1_2345_6789, data: 0))])
        #expect(Array(bytes[12..<20]) == [0x89, 0x67, 0x45, 0x23, 0x01, 0x00, 0x00, 0x00])
    }

    @Test func createPartitionCarriesFlagsThenIsolation() {
        #expect(MSHV.CreatePartition.size == 16)
        #expect(
            MSHV.CreatePartition.flagLAPIC == 1 && MSHV.CreatePartition.flagX2APIC == 2
                && MSHV.CreatePartition.flagGPASuperPages == 4)
        #expect(MSHV.CreatePartition().bytes == [3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
        #expect(MSHV.CreatePartition(flags: 5, isolation: 1).bytes == [5, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0])
    }

    @Test func theGsiSpaceIsTheDriversMaxGuestIrqs() {
        #expect(MSHV.maxGuestIrqs == 4096)
    }
}
