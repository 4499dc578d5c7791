/// The driver's side of virtio feature negotiation through a virtio-pci common
/// configuration structure (virtio 1.2 section 3.1.1 steps 2 to 5, with the
/// field offsets of section 4.1.4.3): device_status ACKNOWLEDGE, then DRIVER;
/// driver features `features` in bits 0..31 and VIRTIO_F_VERSION_1 (bit 32)
/// alone in bits 32..63; then FEATURES_OK. It neither resets first nor reads
/// FEATURES_OK back, since the host drivers in the tests each do those their
/// own way. `write(offset, size, value)` writes the structure's field at
/// `offset`, so this needs no device type.
public func acknowledgeAndAcceptFeatures(_ features: UInt32 = 0, write: (UInt64, Int, UInt64) -> Void) {
    write(0x14, 1, 1)  // ACKNOWLEDGE
    write(0x14, 1, 3)  // ACKNOWLEDGE | DRIVER
    write(0x08, 4, 0)  // driver_feature_select: bits 0..31
    write(0x0C, 4, UInt64(features))
    write(0x08, 4, 1)  // bits 32..63
    write(0x0C, 4, 1)  // VIRTIO_F_VERSION_1
    write(0x14, 1, 0x0B)  // ACKNOWLEDGE | DRIVER | FEATURES_OK
}

/// A device reset (device_status 0, done when it reads 0 again: virtio 1.2
/// section 4.1.4.3.1, waited for up to 10 seconds), then
/// ``acknowledgeAndAcceptFeatures(_:write:)``. True if the reset finished and
/// the device kept FEATURES_OK. `read(offset, size)` and `write(offset, size,
/// value)` access the common configuration structure's field at `offset`.
public func resetAndNegotiateFeatures(
    _ features: UInt32 = 0,
    read: (UInt64, Int) -> UInt64,
    write: (UInt64, Int, UInt64) -> Void
) -> Bool {
    write(0x14, 1, 0)
    guard eventually(.seconds(10), { read(0x14, 1) == 0 }) else { return false }
    acknowledgeAndAcceptFeatures(features, write: write)
    return read(0x14, 1) & 8 != 0
}

/// Sets up virtqueue `queue` through the common configuration structure
/// (virtio 1.2 section 4.1.4.3): queue_select, queue_size `size`,
/// queue_msix_vector `vector` (0xFFFF: none), and the descriptor table,
/// driver area and device area at `ring`, `ring` + 0x1000 and `ring` + 0x2000.
/// It does not set queue_enable, so that the caller can fill the rings first.
public func setUpQueue(
    _ queue: Int,
    size: some BinaryInteger,
    vector: UInt16,
    at ring: UInt64,
    write: (UInt64, Int, UInt64) -> Void
) {
    write(0x16, 2, UInt64(queue))
    write(0x18, 2, UInt64(size))
    write(0x1A, 2, UInt64(vector))
    write(0x20, 8, ring)
    write(0x28, 8, ring + 0x1000)
    write(0x30, 8, ring + 0x2000)
}
