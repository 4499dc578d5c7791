extension VirtioBlkGuestLayout {
    /// Nonzero: the guest recovers from DEVICE_NEEDS_RESET (a config
    /// interrupt, device_status read, reset, re-initialisation, the batch again).
    public static let recover: UInt64 = 0x5F4
    /// Recoveries the guest made (resets after it saw DEVICE_NEEDS_RESET).
    public static let recoveries: UInt64 = 0x5F8
    /// The device_status the guest read at its last config interrupt.
    public static let lastStatus: UInt64 = 0x5FC
}
