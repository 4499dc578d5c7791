import IrqFdCore
import Testing

@Suite struct MsiMessageTests {
    @Test func decodesEveryField() {
        // Destination 0x12 (bits 19:12), extended bits 0x3 (bits 11:5), logical, redirection hint.
        let m = MsiMessage(address: 0xFEE1_2000 | 0x3 << 5 | 1 << 3 | 1 << 2, data: 0xC1_31 | 1 << 8)
        #expect(m.destinationID == 0x312)
        #expect(m.vector == 0x31)
        #expect(m.deliveryMode == .lowestPriority)
        #expect(m.triggerMode == .level && m.levelAsserted)
        #expect(m.destinationMode == .logical)
        #expect(m.redirectionHint)
        #expect(m.isDeliverable)
    }

    @Test(arguments: [0, 1, 255, 256, 0x7FFF] as [UInt32])
    func encodeDecodeRoundTrip(destination: UInt32) {
        let m = MsiMessage(destination: destination, vector: 0x40, deliveryMode: .nmi, destinationMode: .physical)
        #expect(m.destinationID == destination)
        #expect(m.vector == 0x40 && m.deliveryMode == .nmi && m.triggerMode == .edge && !m.redirectionHint)
        #expect(m.isDeliverable)
    }

    @Test(arguments: [0xFED0_0000, 0xFEF0_0000, 0x1_FEE0_0000, 0, 0xFFFF_FFFF_FEE0_0000] as [UInt64])
    func rejectsAddressesOutsideTheInterruptWindow(address: UInt64) {
        let m = MsiMessage(address: address, data: 0x40)
        #expect(!m.isDeliverable)
        #expect(throws: IrqFdError.undeliverableAddress(address)) { try m.validate() }
    }

    @Test func errorsNameTheCallAndErrno() {
        let error = IrqFdError.call("KVM_IRQFD", .badFileDescriptor)
        #expect(error.description.contains("KVM_IRQFD"))
        #expect(error.description.contains("errno 9"))
    }
}
