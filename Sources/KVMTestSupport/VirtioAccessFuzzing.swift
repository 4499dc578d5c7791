#if os(Linux)
public import TestSupport
public import Virtio

/// Runs `steps` fuzzing steps from `seed` (`step` makes one), checking
/// `incoherence` every 64 steps and at the end: the first incoherence found,
/// with its step, or nil.
public func fuzz(
    seed: UInt64, steps: Int, step: (inout SplitMix64) -> Void, incoherence: () -> String?
) -> String? {
    var r = SplitMix64(seed: seed)
    for index in 0..<steps {
        step(&r)
        if index % 64 == 0, let why = incoherence() { return "step \(index): \(why)" }
    }
    return incoherence()
}

/// The seeded random guest accesses every virtio-pci device's fuzz test
/// makes, through the device's own entry points (the code a guest access
/// reaches): each draws from `r` in a fixed order, so a seed repeats a run.
extension VirtioPCIDevice {
    /// What must hold of the device's status whatever a guest wrote, or why
    /// it does not: none of `queues` runs without DRIVER_OK, and DRIVER_OK
    /// comes with FEATURES_OK.
    public func statusIncoherence(queues: Range<Int>) -> String? {
        let status = status
        for q in queues where isRunning(queue: q) && status & VirtioStatus.driverOK == 0 {
            return "queue \(q) runs without DRIVER_OK (status 0x\(String(status, radix: 16)))"
        }
        if status & VirtioStatus.driverOK != 0, status & VirtioStatus.featuresOK == 0 {
            return "DRIVER_OK without FEATURES_OK"
        }
        return nil
    }

    /// MSI data the guest's handlers take: a write into the MSI-X table gets
    /// vector 0x20..0xFF and fixed delivery; any other write passes unchanged.
    public static func tame(_ address: UInt64, _ size: Int, _ value: UInt64) -> UInt64 {
        guard address >= msixBase, address < msixBase + UInt64(pbaOffset) else { return value }
        var value = value
        for byte in 0..<size {
            let shift = UInt64(8 * byte)
            switch (address &+ UInt64(byte)) % 16 {
            case 8: if (value >> shift) & 0xFF < 0x20 { value |= 0x20 << shift }
            case 9: value &= ~(0x07 << shift)
            default: break
            }
        }
        return value
    }

    /// A ring address: usually aligned inside RAM of `memorySize` bytes, sometimes anything.
    public static func ringAddress(_ r: inout SplitMix64, memorySize: Int) -> UInt64 {
        switch r.next() % 4 {
        case 0: r.next()
        case 1: UInt64(memorySize) - UInt64(r.next() % 64) * 16
        default: (0x40000 + r.next() % UInt64(memorySize - 0x50000)) & ~0xF
        }
    }

    /// A read or a write of `width` bytes anywhere in `base`..<`base` + `size` + 64.
    private func access(_ r: inout SplitMix64, base: UInt64, size: UInt64, width: Int, tamed: Bool) {
        let address = base + r.next() % (size + 64)
        if r.next() % 2 == 0 {
            _ = read(address: address, size: width)
        } else {
            let value = r.next()
            write(address: address, size: width, value: tamed ? Self.tame(address, width, value) : value)
        }
    }

    /// Anywhere in BAR4 (and just past it), `width` bytes, any alignment.
    public func fuzzBAR4(_ r: inout SplitMix64, width: Int) {
        access(&r, base: Self.virtioBase, size: Self.virtioSize, width: width, tamed: false)
    }

    /// BAR1: the MSI-X table and PBA (and just past them), messages tamed.
    public func fuzzBAR1(_ r: inout SplitMix64, width: Int) {
        access(&r, base: Self.msixBase, size: Self.msixSize, width: width, tamed: true)
    }

    /// Configuration space: the command register, BARs, capabilities and
    /// MSI-X Message Control. A guest seldom turns memory decoding or bus
    /// mastering off: mostly they stay on.
    public func fuzzConfigurationSpace(_ r: inout SplitMix64) {
        let offset = r.next() % 3 == 0 ? Self.msixCapabilityOffset + Int(r.next() % 12) : Int(r.next() % 260)
        let size = [1, 2, 4][Int(r.next() % 3)]
        var value = UInt32(truncatingIfNeeded: r.next())
        if offset <= 0x04, offset + size > 0x04, r.next() % 8 != 0 {
            value |= UInt32(0x06) << (8 * UInt32(4 - offset))
        }
        if r.next() % 2 == 0 {
            _ = configRead(offset: offset, size: size)
        } else {
            configWrite(offset: offset, size: size, value: value)
        }
    }

    /// device_status: the steps, resets, and anything.
    public func fuzzStatus(_ r: inout SplitMix64) {
        let steps: [UInt64] = [0, 1, 3, 0x0B, 0x0F, 0x8F, 0x4F]
        writeCommon(0x14, 1, r.next() % 4 == 0 ? r.next() & 0xFF : steps[Int(r.next() % UInt64(steps.count))])
    }

    /// A feature select and a driver feature word.
    public func fuzzFeatureWords(_ r: inout SplitMix64) {
        writeCommon([0x00, 0x08][Int(r.next() % 2)], 4, r.next() % 3)
        writeCommon(0x0C, 4, r.next() % 2 == 0 ? r.next() : [0, 1][Int(r.next() % 2)])
    }

    /// A ring address field, whole or in halves, then sometimes queue_enable.
    public func fuzzRingAddressField(_ r: inout SplitMix64, memorySize: Int) {
        let field: UInt64 = [0x20, 0x28, 0x30][Int(r.next() % 3)]
        let address = Self.ringAddress(&r, memorySize: memorySize)
        if r.next() % 2 == 0 {
            writeCommon(field, 8, address)
        } else {
            writeCommon(field, 4, address & 0xFFFF_FFFF)
            writeCommon(field + 4, 4, address >> 32)
        }
        if r.next() % 2 == 0 { writeCommon(0x1C, 2, r.next() % 4 == 0 ? r.next() & 0xFFFF : 1) }
    }

    /// A notify: of queue 0, 1 or 2, sometimes misaligned, of the wrong width or value.
    public func fuzzNotify(_ r: inout SplitMix64, width: Int) {
        let q = r.next() % 3
        write(
            address: Self.notifyAddress(queue: Int(q)) + (r.next() % 8 == 0 ? 1 : 0),
            size: r.next() % 4 == 0 ? width : 2, value: r.next() % 3 == 0 ? r.next() : q)
    }

    /// A guest's initialisation up to FEATURES_OK (virtio 1.2 section 3.1.1),
    /// the driver's feature words sometimes random.
    public func fuzzNegotiation(_ r: inout SplitMix64) {
        writeCommon(0x14, 1, 0)
        writeCommon(0x14, 1, 1)
        writeCommon(0x14, 1, 3)
        writeCommon(0x08, 4, 0)
        writeCommon(0x0C, 4, r.next() % 4 == 0 ? r.next() & 0xFFFF_FFFF : 0)
        writeCommon(0x08, 4, 1)
        writeCommon(0x0C, 4, r.next() % 4 == 0 ? r.next() & 0xFFFF_FFFF : 1)
        writeCommon(0x14, 1, 0x0B)
    }

    /// Queue `select` set up as a guest does, with a random size now and then,
    /// a vector of 0, 1, 2 or none and random ring addresses, then enabled.
    public func fuzzQueueSetup(_ r: inout SplitMix64, select: UInt64, memorySize: Int) {
        writeCommon(0x16, 2, select)
        writeCommon(0x18, 2, r.next() % 4 == 0 ? r.next() & 0xFFFF : 1 << (2 + r.next() % 7))
        writeCommon(0x1A, 2, [0, 1, 2, 0xFFFF][Int(r.next() % 4)])
        writeCommon(0x20, 8, Self.ringAddress(&r, memorySize: memorySize))
        writeCommon(0x28, 8, Self.ringAddress(&r, memorySize: memorySize))
        writeCommon(0x30, 8, Self.ringAddress(&r, memorySize: memorySize))
        writeCommon(0x1C, 2, 1)
    }
}
#endif
