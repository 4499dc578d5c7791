import PCI
import Testing

/// The configuration-space emulation on its own: a header with one
/// relocatable and one fixed BAR, a capability list whose second half
/// another emulator serves, and an Interrupt Line.
@Suite struct PCIConfigurationSpaceEmulationTests {
    static func header(interruptLine: Bool = true) -> PCIConfigurationSpace {
        PCIConfigurationSpace(
            identity: .init(
                vendorID: 0x1AF4, deviceID: 0x1042, revision: 1, classCode: 0x01_0000, subsystemVendorID: 0x1AF4,
                subsystemID: 0x1100),
            bars: [
                .init(index: 0, address: 0xFE00_0000, size: 0x1000, kind: .relocatable),
                .init(index: 4, address: 0xFE20_0000, size: 0x4000, kind: .fixed),
            ],
            capabilities: [0x09, 0x44, 0x10, 0x01, 0, 0, 0, 0, 0x11, 0x00, 0x07, 0x00],
            forwarded: 0x48..<0x4C, hasInterruptLine: interruptLine)
    }

    @Test func theIdentityClassAndStatusReadAsTheFunctionSaysAndByteByByte() {
        let h = Self.header()
        #expect(h.read(offset: 0, size: 4) == 0x1042_1AF4)
        #expect(h.read(offset: 1, size: 2) == 0x421A, "bytes 1-2 of the IDs")
        #expect(h.read(offset: 0x08, size: 4) == 0x0100_0001, "class 01 00 00, revision 1")
        #expect(h.read(offset: 0x2C, size: 4) == 0x1100_1AF4)
        #expect(h.read(offset: 0x04, size: 4) == 0x0010_0006, "Status: capabilities list; Command: memory, bus master")
        #expect(h.read(offset: 0x34, size: 1) == 0x40)
        #expect(h.read(offset: 0x40, size: 4) == 0x0110_4409)
        #expect(h.read(offset: 0x3D, size: 1) == 0, "Interrupt Pin 0: no INTx")
        #expect(h.forwarded(0x4A) == 2 && h.forwarded(0x47) == nil && h.forwarded(0x4C) == nil)
    }

    @Test func aRelocatableBARTakesTheSizingProtocolAndDecodesOnlyAtItsAddress() {
        var h = Self.header()
        #expect(h.decode(0xFE00_0010)! == (0, 0x10))
        let took1 = h.write(offset: 0x10, size: 4, value: 0xFFFF_FFFF)
        #expect(took1)
        #expect(h.read(offset: 0x10, size: 4) == 0xFFFF_F000, "4 KiB")
        #expect(h.decode(0xFE00_0010) == nil, "not at its address while sized")
        let took2 = h.write(offset: 0x12, size: 2, value: 0xFE00)
        #expect(took2, "the high half alone")
        let took3 = h.write(offset: 0x10, size: 2, value: 0)
        #expect(took3)
        #expect(h.read(offset: 0x10, size: 4) == 0xFE00_0000)
        #expect(h.decode(0xFE00_0FFF)! == (0, 0xFFF))
    }

    @Test func aFixedBARIgnoresWritesAndAlwaysDecodesAtItsAddress() {
        var h = Self.header()
        let took4 = h.write(offset: 0x20, size: 4, value: 0xFFFF_FFFF)
        #expect(!took4, "a read-only write")
        #expect(h.read(offset: 0x20, size: 4) == 0xFE20_0000)
        #expect(h.decode(0xFE20_3000)! == (4, 0x3000))
        #expect(h.decode(0xFE20_4000) == nil, "past its end")
    }

    @Test func commandTakesAnyByteLanesAndMemorySpaceOffStopsDecoding() {
        var h = Self.header()
        let took5 = h.write(offset: 0x04, size: 1, value: 0x04)
        #expect(took5)
        #expect(h.command == 0x0004 && h.isBusMasterEnabled)
        #expect(h.decode(0xFE20_0000) == nil, "memory space is off")
        let took6 = h.write(offset: 0x05, size: 1, value: 0xFF)
        #expect(took6)
        #expect(h.command == 0x0404, "only Interrupt Disable is writable in the high byte")
        let took7 = h.write(offset: 0x04, size: 4, value: 0xFFFF_0002)
        #expect(took7)
        #expect(h.read(offset: 0x04, size: 4) == 0x0010_0002, "Status is read-only")
        let took8 = h.write(offset: 0x06, size: 2, value: 0xFFFF)
        #expect(!took8, "Status alone: a read-only write")
        #expect(!h.isBusMasterEnabled)
    }

    @Test func interruptLineIsWritableOnlyWhenTheFunctionHasOne() {
        var with = Self.header()
        #expect(with.read(offset: 0x3C, size: 1) == 0xFF)
        let took9 = with.write(offset: 0x3C, size: 4, value: 0xFFFF_FF0B)
        #expect(took9)
        #expect(with.read(offset: 0x3C, size: 4) == 0x0B, "Pin, Min_Gnt and Max_Lat stay 0")
        var without = Self.header(interruptLine: false)
        let took10 = without.write(offset: 0x3C, size: 1, value: 0x0B)
        #expect(!took10)
        #expect(without.read(offset: 0x3C, size: 4) == 0)
    }

    @Test func onlyAccessesOfOneTwoOrFourBytesInsideOneDWORDAreAccesses() {
        #expect(PCIConfigurationSpace.isAccess(offset: 0x41, size: 2))
        #expect(PCIConfigurationSpace.isAccess(offset: 0xFC, size: 4))
        let refused = [(0x3F, 2), (0x42, 4), (0x100, 1), (-1, 1), (Int.max, 1), (Int.min, 4), (0, 3), (0, 8), (0, 0)]
        for (offset, size) in refused {
            #expect(!PCIConfigurationSpace.isAccess(offset: offset, size: size), "\(offset)/\(size)")
        }
    }

    @Test func restoreMasksBARsToTheirSizesAndKeepsFixedOnes() {
        var h = Self.header()
        h.restore(command: 0xFFFF, barValues: [0xFFFF_FFFF, 0x1234_5678], interruptLine: 9)
        #expect(h.command == PCIConfigurationSpace.writableCommand)
        #expect(h.read(offset: 0x10, size: 4) == 0xFFFF_F000)
        #expect(h.read(offset: 0x20, size: 4) == 0xFE20_0000)
        #expect(h.interruptLine == 9)
    }
}
