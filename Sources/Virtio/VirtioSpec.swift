/// device_status bits (virtio 1.2 section 2.1).
public enum VirtioStatus {
    /// The guest found the device.
    public static let acknowledge: UInt8 = 1
    /// The guest has a driver for it.
    public static let driver: UInt8 = 2
    /// The driver is ready: queues run.
    public static let driverOK: UInt8 = 4
    /// Feature negotiation is complete.
    public static let featuresOK: UInt8 = 8
    /// The device hit an error and needs a reset.
    public static let needsReset: UInt8 = 0x40
    /// The driver gave up.
    public static let failed: UInt8 = 0x80
}

/// Feature bits of the transport, whatever the device type (virtio 1.2 section 6).
public enum VirtioFeature {
    /// VIRTIO_F_VERSION_1 (32): modern device; required.
    public static let version1: UInt64 = 1 << 32
    /// VHOST_USER_F_PROTOCOL_FEATURES (30): between the VMM and the backend
    /// only, never offered to the guest.
    public static let vhostProtocolFeatures: UInt64 = 1 << 30
}
