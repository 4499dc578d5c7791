#if os(Linux)
import Dispatch
import MSIX
import PCI

/// What the guest reaches of the transport: PCI configuration space (the
/// header and the capability list, virtio 1.2 section 4.1.4) and the two
/// BARs: BAR1 the MSI-X table and PBA, BAR4 the common configuration, ISR,
/// device configuration and notify structures.
extension VirtioPCIDevice {
    /// The capability list (virtio 1.2 section 4.1.4), from 0x40: struct
    /// virtio_pci_cap at 0x40 common, 0x50 ISR, 0x60 device, 0x70 notify
    /// (+ multiplier), 0x84 PCI config access (+ pci_cfg_data), then MSI-X at
    /// 0x98 (served by the emulator).
    static func capabilityBytes(configurationSize: Int) -> [UInt8] {
        let start = PCIConfigurationSpace.capabilitiesStart
        var bytes = [UInt8](repeating: 0, count: msixCapabilityOffset + MsixLayout.capabilityLength - start)
        func cap(_ at: Int, next: Int, length: Int, type: UInt8, bar: UInt8, offset: UInt64, size: UInt32) {
            let i = at - start
            bytes[i] = 0x09
            bytes[i + 1] = UInt8(next)
            bytes[i + 2] = UInt8(length)
            bytes[i + 3] = type
            bytes[i + 4] = bar
            for k in 0..<4 {
                bytes[i + 8 + k] = UInt8(truncatingIfNeeded: offset >> (8 * UInt64(k)))
                bytes[i + 12 + k] = UInt8(truncatingIfNeeded: size >> (8 * UInt32(k)))
            }
        }
        cap(0x40, next: 0x50, length: 16, type: 1, bar: 4, offset: commonOffset, size: 0x38)
        cap(0x50, next: 0x60, length: 16, type: 3, bar: 4, offset: isrOffset, size: 1)
        cap(0x60, next: 0x70, length: 16, type: 4, bar: 4, offset: deviceOffset, size: UInt32(configurationSize))
        cap(0x70, next: 0x84, length: 20, type: 2, bar: 4, offset: notifyOffset, size: 4 * UInt32(notifySlots))
        bytes[0x70 + 16 - start] = UInt8(notifyMultiplier)
        cap(0x84, next: msixCapabilityOffset, length: 20, type: 5, bar: 0, offset: 0, size: 0)
        return bytes
    }

    /// The configuration header: vendor 0x1AF4, device 0x1040 + the virtio
    /// device ID, revision 1, the type's class, subsystem 0x1AF4:0x1100, no
    /// INTx (MSI-X only), BAR1 and BAR4 fixed at their addresses.
    static func configurationSpace(_ deviceType: DeviceType, configurationSize: Int) -> PCIConfigurationSpace {
        PCIConfigurationSpace(
            identity: .init(
                vendorID: 0x1AF4, deviceID: deviceType.pciDeviceID, revision: 1, classCode: deviceType.classCode,
                subsystemVendorID: 0x1AF4, subsystemID: 0x1100),
            bars: [
                .init(index: 1, address: msixBase, size: msixSize, kind: .fixed),
                .init(index: 4, address: virtioBase, size: virtioSize, kind: .fixed),
            ],
            capabilities: capabilityBytes(configurationSize: configurationSize),
            forwarded: msixCapabilityOffset..<msixCapabilityOffset + MsixLayout.capabilityLength,
            hasInterruptLine: false)
    }

    /// BAR1 and BAR4 (`PCIFunction`).
    public var memoryWindows: [Range<UInt64>] {
        [Self.msixBase..<Self.msixBase + Self.msixSize, Self.virtioBase..<Self.virtioBase + Self.virtioSize]
    }

    // MARK: - Memory space

    private enum Region {
        case msix(UInt64)
        case common(UInt64)
        case isr
        case device(UInt64)
        case notify(UInt64)
    }

    private func decode(_ address: UInt64, _ s: DeviceState) -> Region? {
        guard let (bar, offset) = s.pci.decode(address) else { return nil }
        if bar == 1 { return .msix(offset) }
        switch offset {
        case 0..<0x38: return .common(offset)
        case Self.isrOffset: return .isr
        case Self.deviceOffset..<Self.deviceOffset + UInt64(deviceConfiguration.count):
            return .device(offset - Self.deviceOffset)
        case Self.notifyOffset..<Self.notifyOffset + 4 * UInt64(Self.notifySlots):
            return .notify(offset - Self.notifyOffset)
        default: return nil
        }
    }

    /// A memory read in BAR1 or BAR4 (`PCIFunction`).
    public func read(address: UInt64, size: Int) -> UInt64 {
        let ones: UInt64 = size >= 8 ? .max : (1 << (8 * UInt64(size))) - 1
        let region = state.withLock { s -> Region? in
            let r = decode(address, s)
            if r == nil { s.counters.badAccesses += 1 }
            return r
        }
        switch region {
        case nil: return ones
        case .msix(let offset): return emulator.read(bar: 1, offset: offset, size: size)
        case .common(let offset): return state.withLock { readCommon(offset, size, &$0) }
        case .isr:
            // Read to clear (virtio 1.2 section 4.1.4.5). With MSI-X only bit 1
            // (configuration change) is ever set: queue interrupts never use it.
            return state.withLock { s in
                defer { s.isr = 0 }
                return UInt64(s.isr)
            }
        case .device(let offset):
            guard [1, 2, 4, 8].contains(size), Int(offset) + size <= deviceConfiguration.count else {
                state.withLock { $0.counters.badAccesses += 1 }
                return 0
            }
            var value: UInt64 = 0
            for i in 0..<size { value |= UInt64(deviceConfiguration[Int(offset) + i]) << (8 * UInt64(i)) }
            return value
        case .notify: return 0
        }
    }

    /// A memory write in BAR1 or BAR4 (`PCIFunction`).
    public func write(address: UInt64, size: Int, value: UInt64) {
        let region = state.withLock { s -> Region? in
            let r = decode(address, s)
            if r == nil { s.counters.badAccesses += 1 }
            return r
        }
        switch region {
        case nil: return
        case .msix(let offset): emulator.write(bar: 1, offset: offset, size: size, value: value)
        case .common(let offset):
            let queued = state.withLock { s in
                let before = s.operations
                writeCommon(offset, size, value, &s)
                return s.operations > before
            }
            // Outside the lock, and briefly (`briefWaitMilliseconds`): never for the backend's sake.
            if queued { _ = pending.wait(timeout: .now() + .milliseconds(Self.briefWaitMilliseconds)) }
        case .isr, .device: state.withLock { $0.counters.readOnlyWrites += 1 }
        case .notify(let offset):
            state.withLock { s in
                s.counters.notifyExits += 1
                let q = Int(offset / 4)
                // A notify carries its queue's index (no NOTIFICATION_DATA).
                guard offset % 4 == 0, q < queueCount, value & 0xFFFF == UInt64(q) else {
                    s.counters.badNotifies += 1
                    return
                }
                // Exited because of its size (a doorbell matches 2 bytes): pass it on.
                if s.queues[q].notifiable { kicks[q].signal() }
            }
        }
    }

    // MARK: - Configuration space

    /// A configuration read (`PCIFunction`).
    public func configRead(offset: Int, size: Int) -> UInt32 {
        guard PCIConfigurationSpace.isAccess(offset: offset, size: size) else {
            state.withLock { $0.counters.badAccesses += 1 }
            return .max
        }
        let (header, forwarded) = state.withLock { s in (s.pci, s.pci.forwarded(offset)) }
        if let forwarded { return emulator.readCapability(offset: forwarded, size: size) }
        return header.read(offset: offset, size: size)
    }

    /// A configuration write (`PCIFunction`): Command (any byte lanes) and the
    /// MSI-X capability are writable; the BARs are fixed (sizing reads them
    /// back unchanged); the rest is read-only and counted.
    public func configWrite(offset: Int, size: Int, value: UInt32) {
        guard PCIConfigurationSpace.isAccess(offset: offset, size: size) else {
            state.withLock { $0.counters.badAccesses += 1 }
            return
        }
        if let forwarded = state.withLock({ $0.pci.forwarded(offset) }) {
            emulator.writeCapability(offset: forwarded, size: size, value: value)
            return
        }
        let busMaster: Bool? = state.withLock { s in
            guard s.pci.write(offset: offset, size: size, value: value) else {
                s.counters.readOnlyWrites += 1
                return nil
            }
            return s.pci.isBusMasterEnabled
        }
        // PCI: Bus Master Enable clear stops MSI-X (held as pending by the emulator).
        // Outside the device lock: the emulator takes its own.
        if let busMaster { emulator.setBusMaster(busMaster) }
    }
}
#endif
