/// Where the virtio-net driver guest (virtio_net.S) takes its parameters and
/// leaves its results (32-bit words; the host writes parameters before start).
public enum VirtioNetGuestLayout {
    /// Frames to send on each pair.
    public static let frames: UInt64 = 0x5C0
    /// Pairs used (1 or 2; 2 negotiates MQ and CTRL_VQ and sends VQ_PAIRS_SET 2).
    public static let pairs: UInt64 = 0x5C4
    /// The APIC ID pair `p`'s receive and transmit vectors target.
    public static func destination(pair p: Int) -> UInt64 { 0x5C8 + 4 * UInt64(p) }
    /// Nonzero: a batch starting at frame i is sent only once `gate` > i.
    public static let gated: UInt64 = 0x5D0
    /// Frames in flight per pair (0 or 1: one at a time; at most 32).
    public static let batch: UInt64 = 0x5D4
    /// Nonzero: pair 0's frames are stamped (see `sample(_:)`).
    public static let stamp: UInt64 = 0x5D8
    /// Nonzero: every frame has this length (60...1514) instead of `frameLength(_:)`.
    public static let length: UInt64 = 0x5DC
    /// The TSC before the first frame was sent, and after the last came back (64-bit words).
    public static let tscStart: UInt64 = 0x5A0
    public static let tscEnd: UInt64 = 0x5A8
    /// Stamped runs: TSC ticks from pair 0's frame `i` transmit notify to the
    /// receive handler's entry that took it (i < `maxSamples`); with batch 1 (with more
    /// in flight the notify is the batch's latest).
    public static func sample(_ i: Int) -> UInt64 { 0x40_0000 + 4 * UInt64(i) }
    /// The most samples a run keeps.
    public static let maxSamples = 16384
    /// The MAC address the guest read from the device configuration (6 bytes).
    public static let mac: UInt64 = 0x5B0
    /// 1 once DRIVER_OK is set, 2 when every frame is back.
    public static let phase: UInt64 = 0x5E0
    /// Frames sent, all pairs.
    public static let sent: UInt64 = 0x5E4
    /// Frames received intact on pair `p`.
    public static func intact(pair p: Int) -> UInt64 { 0x5E8 + 4 * UInt64(p) }
    /// The host's gate word.
    public static let gate: UInt64 = 0x5F0
    /// Frames received with a wrong length or wrong bytes.
    public static let damaged: UInt64 = 0x5F4
    /// The control request's ack (0: VIRTIO_NET_OK).
    public static let controlAck: UInt64 = 0x5F8
    /// Queue `q`'s device area (used ring).
    public static func usedRing(queue q: Int) -> UInt64 { 0x2_2000 + 0x1_0000 * UInt64(q) }
    /// The length of frame `i` (60...1514 bytes for i < 100).
    public static func frameLength(_ i: Int) -> Int { 60 + (i * 1454 / 99) % 1455 }
    /// The IDT vector of MSI-X vector v (0 config, q + 1 queue q).
    public static func idtVector(msix v: Int) -> UInt8 { UInt8(0x40 + v) }
    /// The MSI-X vector of pair `p`'s receive queue.
    public static func receiveVector(pair p: Int) -> Int { 2 * p + 1 }
    /// The MSI-X vector of pair `p`'s transmit queue.
    public static func transmitVector(pair p: Int) -> Int { 2 * p + 2 }
}

extension TinyVM {
    /// Starts the loaded virtio-net driver guest with its frames held at its
    /// gate until `linkUp()` says the backend can carry them, then opens the
    /// gate for every frame: the guest sends each frame once, and a backend
    /// may drop what comes before its link is up (dpdk-testpmd:
    /// `TestpmdProcess.waitUntilLinkUp`). False, with the gate still shut,
    /// when `linkUp()` is false. Only for a guest not set up `gated` itself.
    public func startNetGuest(afterLinkUp linkUp: () -> Bool) -> Bool {
        memory.write32(1, at: VirtioNetGuestLayout.gated)
        memory.write32(0, at: VirtioNetGuestLayout.gate)
        start()
        guard linkUp() else { return false }
        memory.write32(UInt32.max, at: VirtioNetGuestLayout.gate)
        return true
    }
}
