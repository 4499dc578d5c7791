/// Where the virtio-fs driver guest (virtio_fs.S) takes its parameters and
/// leaves its results (32-bit words unless said; the host writes parameters
/// before start).
public enum VirtioFsGuestLayout {
    /// 1 once DRIVER_OK is set, 2 when every request is done.
    public static let phase: UInt64 = 0x9000
    /// The FUSE opcode of the last request sent.
    public static let step: UInt64 = 0x9004
    /// The out header's error of the last reply (0, or a negative errno).
    public static let error: UInt64 = 0x9008
    /// Bytes the last FUSE_READ returned.
    public static let readLength: UInt64 = 0x900C
    /// Bytes FUSE_WRITE wrote (fuse_write_out.size).
    public static let written: UInt64 = 0x9010
    /// Gated READ rounds done.
    public static let roundsDone: UInt64 = 0x9014
    /// The first byte READ got wrong, plus 1 (0: none).
    public static let mismatch: UInt64 = 0x9018
    /// FUSE requests answered without error.
    public static let requests: UInt64 = 0x901C
    /// The device configuration as the guest read it (40 bytes: tag, num_request_queues).
    public static let configuration: UInt64 = 0x9020
    /// The backend's FUSE major version (fuse_init_out.major).
    public static let fuseMajor: UInt64 = 0x9050
    /// The backend's FUSE minor version.
    public static let fuseMinor: UInt64 = 0x9054
    /// The name of the file to look up, open and read (NUL-terminated, at most 63 bytes).
    public static let readName: UInt64 = 0x9100
    /// Bytes to read (1...4096).
    public static let readSize: UInt64 = 0x9140
    /// Bytes to write into the new file (1...4000).
    public static let writeSize: UInt64 = 0x9144
    /// Extra READ rounds after the first (0: none); round r starts once `gate` > r.
    public static let rounds: UInt64 = 0x9148
    /// The host's gate word.
    public static let gate: UInt64 = 0x914C
    /// Nonzero: recover from DEVICE_NEEDS_RESET (reset, re-initialise, FUSE_INIT again).
    public static let recover: UInt64 = 0x9150
    /// Nonzero: the benchmark mode (READs stamped with RDTSC, not compared; the
    /// guest sleeps at the gate until an interrupt).
    public static let bench: UInt64 = 0x9154
    /// Recoveries the guest made.
    public static let recoveries: UInt64 = 0x9058
    /// Requests stamped so far (benchmark mode).
    public static let samplesTaken: UInt64 = 0x9060
    /// Request k's TSC ticks, notify to reply seen (benchmark mode; low 32 bits).
    public static func sample(_ k: Int) -> UInt64 { 0x7_0000 + 4 * UInt64(k % maxSamples) }
    /// Samples the ring holds.
    public static let maxSamples = 16384
    /// The name of the file to create (NUL-terminated, at most 63 bytes).
    public static let createName: UInt64 = 0x9180
    /// The bytes READ must return.
    public static let expected: UInt64 = 0x5_0000
    /// The bytes FUSE_WRITE writes.
    public static let writeData: UInt64 = 0x6_0000
    /// Request queue 1's device area (used ring): its idx is the 16-bit word at + 2.
    public static let requestUsedRing: UInt64 = 0x3_2000
    /// The IDT vector of MSI-X vector v (0 config, 1 hiprio, 2 request queue 1).
    public static func idtVector(msix v: Int) -> UInt8 { UInt8(0x40 + v) }
    /// The guest's exit statuses.
    public enum Exit: Int32 {
        case ok = 0
        case capabilityWalk = 2
        case features = 3
        case queueSetup = 4
        case brokenUsedRing = 5
        case fuseError = 6
        case readMismatch = 7
    }
}
