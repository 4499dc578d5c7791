public import PCI

/// A device behind I/O ports. Called on the vCPU thread that made the access.
public protocol PortDevice: AnyObject, Sendable {
    /// An IN of `size` bytes (1, 2 or 4) from `port`.
    func read(port: UInt16, size: Int) -> UInt32
    /// An OUT of `size` bytes to `port`.
    func write(port: UInt16, size: Int, value: UInt32)
}

/// A device behind guest-physical addresses that RAM does not back.
/// Called on the vCPU thread that made the access.
public protocol MMIODevice: AnyObject, Sendable {
    /// A read of `size` bytes (1, 2, 4 or 8) at `address`.
    func read(address: UInt64, size: Int) -> UInt64
    /// A write of `size` bytes at `address`.
    func write(address: UInt64, size: Int, value: UInt64)
}

/// Configuration mechanism #1 on ports 0xCF8-0xCFF.
extension PCIBus: PortDevice {}
