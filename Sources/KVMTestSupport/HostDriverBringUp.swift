#if os(Linux)
public import TinyVM
import TestSupport
public import Virtio

/// One virtqueue as a host driver sets it up: its index, size, MSI-X vector
/// (0xFFFF: none) and rings (descriptor table at `ring`, driver area at
/// `ring` + 0x1000, device area at `ring` + 0x2000).
public struct HostQueue {
    /// The queue's index.
    public var index: Int
    /// Its size.
    public var size: Int
    /// Its MSI-X vector, 0xFFFF for none.
    public var vector: UInt16
    /// Its descriptor table; the driver and device areas follow at 4 KiB steps.
    public var ring: UInt64

    /// Queue `index` of `size` entries on `vector`, its rings at `ring`.
    public init(_ index: Int, size: Int, vector: UInt16, ring: UInt64) {
        self.index = index
        self.size = size
        self.vector = vector
        self.ring = ring
    }
}

extension VirtioPCIDevice {
    /// Writes the common configuration field at `offset` as a driver's MMIO write does.
    public func writeCommon(_ offset: UInt64, _ size: Int, _ value: UInt64) {
        write(address: Self.virtioBase + Self.commonOffset + offset, size: size, value: value)
    }

    /// Reads the common configuration field at `offset` as a driver's MMIO read does.
    public func readCommon(_ offset: UInt64, _ size: Int) -> UInt64 {
        read(address: Self.virtioBase + Self.commonOffset + offset, size: size)
    }

    /// A host driver's initialisation (virtio 1.2 section 3.1.1): a reset and
    /// the negotiation of `features` (and VERSION_1), then each of `queues`
    /// set up, its rings in `memory` cleared (a reset forgets the indices:
    /// SET_VRING_BASE 0) and enabled, then DRIVER_OK. The write of DRIVER_OK
    /// returns at once and the device's worker starts the queues: this waits
    /// for it. True if the device is then DRIVER_OK.
    public func bringUp(features: UInt32 = 0, queues: [HostQueue], memory: GuestMemory) -> Bool {
        guard resetAndNegotiateFeatures(features, read: readCommon, write: writeCommon) else { return false }
        for queue in queues {
            setUpQueue(queue.index, size: queue.size, vector: queue.vector, at: queue.ring, write: writeCommon)
            memory.load([UInt8](repeating: 0, count: 0x3000), at: queue.ring)
            writeCommon(0x1C, 2, 1)
        }
        writeCommon(0x14, 1, 0x0F)
        waitUntilIdle()
        return readCommon(0x14, 1) == 0x0F
    }
}
#endif
