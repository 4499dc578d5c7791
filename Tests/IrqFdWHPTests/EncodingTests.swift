import IrqFdCore
import IrqFdWHP
import Testing

/// MSI → WHV_INTERRUPT_CONTROL and the byte layouts WinHvPlatform reads.
@Suite struct WHPEncodingTests {
    @Test func aFixedPhysicalEdgeMsiDecodesFieldByField() throws {
        let control = try WHPInterruptControl(MsiMessage(destination: 3, vector: 0x41))
        #expect(
            control
                == WHPInterruptControl(
                    type: .fixed, destinationMode: .physical, triggerMode: .edge, destination: 3, vector: 0x41))
    }

    @Test func modesAndTheExtendedDestinationSurvive() throws {
        let msi = MsiMessage(
            destination: 0x1234, vector: 0xEE, deliveryMode: .lowestPriority, destinationMode: .logical,
            triggerMode: .level)
        let control = try WHPInterruptControl(msi)
        #expect(control.type == .lowestPriority && control.destinationMode == .logical && control.triggerMode == .level)
        #expect(control.destination == 0x1234, "bits 19:12 plus the extended ID bits 11:5")
        #expect(control.vector == 0xEE)
        #expect(control.msiMessage == msi, "the model turns it back into the same MSI")
        #expect(try WHPInterruptControl(MsiMessage(destination: 0, vector: 2, deliveryMode: .nmi)).type == .nmi)
        #expect(
            try WHPInterruptControl(MsiMessage(destination: 0, vector: 0, deliveryMode: .initialize)).type
                == .initialize)
    }

    @Test func whatWHPCannotDeliverIsATypedError() {
        #expect(throws: IrqFdError.undeliverableAddress(0xFED0_0000)) {
            try WHPInterruptControl(MsiMessage(address: 0xFED0_0000, data: 0x41))
        }
        #expect(throws: IrqFdError.undeliverableAddress(0x1_FEE0_0000)) {
            try WHPInterruptControl(MsiMessage(address: 0x1_FEE0_0000, data: 0x41))
        }
        for mode in [MsiMessage.DeliveryMode.smi, .extINT, .reserved3, .reserved6] {
            #expect(throws: IrqFdError.self) {
                try WHPInterruptControl(MsiMessage(destination: 0, vector: 0x41, deliveryMode: mode))
            }
        }
    }

    @Test func theControlIsSixteenBytesOfBitFieldsDestinationAndVector() throws {
        let control = WHPInterruptControl(
            type: .lowestPriority, destinationMode: .logical, triggerMode: .level, destination: 0x0102_0304,
            vector: 0x99)
        // Type 1 in bits 7:0, DestinationMode 1 in bits 11:8, TriggerMode 1 in bits 15:12.
        #expect(control.packedFields == 0x1101)
        #expect(control.bytes == [0x01, 0x11, 0, 0, 0, 0, 0, 0, 0x04, 0x03, 0x02, 0x01, 0x99, 0, 0, 0])
    }

    @Test func triggerParametersAreThirtyTwoBytesWithTheInterruptAtOffsetEight() throws {
        let control = try WHPInterruptControl(MsiMessage(destination: 1, vector: 0x50))
        let bytes = WHPTriggerParameters(interrupt: control).bytes
        #expect(bytes.count == 32)
        #expect(Array(bytes[0..<8]) == [0, 0, 0, 0, 0, 0, 0, 0], "WHvTriggerTypeInterrupt = 0, Reserved = 0")
        #expect(Array(bytes[8..<24]) == control.bytes)
        #expect(Array(bytes[24..<32]) == [0, 0, 0, 0, 0, 0, 0, 0], "the rest of the DeviceInterrupt-sized union")
    }
}
