/// A PCI function as its bus sees it: configuration space, and memory
/// accesses inside the windows its memory BARs were assigned. A VMM routes
/// configuration cycles (configuration mechanism #1, ``PCIBus``) and the
/// MMIO exits that fall in ``memoryWindows`` here; the function decodes them
/// itself (Memory Space Enable, the BAR's current value), so a window that
/// does not decode at the moment reads as all ones.
///
/// Called on the vCPU thread that made the access.
public protocol PCIFunction: AnyObject, Sendable {
    /// A configuration read of `size` bytes (1, 2 or 4) at `offset`, within one DWORD.
    func configRead(offset: Int, size: Int) -> UInt32
    /// A configuration write of `size` bytes at `offset`, within one DWORD.
    func configWrite(offset: Int, size: Int, value: UInt32)
    /// The guest-physical windows of the function's memory BARs, as firmware
    /// assigned them: a bus sends memory accesses inside them to
    /// ``read(address:size:)`` and ``write(address:size:value:)``.
    var memoryWindows: [Range<UInt64>] { get }
    /// A memory read of `size` bytes (1, 2, 4 or 8) at guest-physical `address`.
    func read(address: UInt64, size: Int) -> UInt64
    /// A memory write of `size` bytes at guest-physical `address`.
    func write(address: UInt64, size: Int, value: UInt64)
}

/// Where a VMM plugs PCI functions: bus 0 of its configuration mechanism, and
/// the MMIO routing of each function's ``PCIFunction/memoryWindows``.
public protocol PCIHost: AnyObject, Sendable {
    /// Puts `function` at 00:`device`.0 and routes its memory windows to it.
    func plug(_ function: any PCIFunction, device: Int)
}
