import GuestPrograms

/// The guest programs built into the package (sources in Sources/GuestPrograms/*.S).
public enum GuestProgram: String, CaseIterable, Sendable {
    /// Counts every interrupt per vCPU and vector; see `InterruptCounterLayout`.
    case interruptCounter = "irq-counter"
    /// Prints "hello from vCPU n" per vCPU and exits with status 42.
    case hello
    /// Executes UD2 with no handler: a guest fault.
    case fault
    /// Spins forever with interrupts off: ends only by timeout.
    case spin
    /// Counts interrupts like `interruptCounter`; vCPU 0 runs the host's
    /// commands against the PCI test device (see `DeviceDriverGuest`).
    case msixDriver = "msix-driver"
    /// Enables the test device's MSI-X, rings it, masks, reads the PBA and
    /// unmasks, all by itself; exits with 22 when everything arrived exactly once.
    case msixSelfTest = "msix-selftest"
    /// Makes `count` 16-bit writes of `value` to `address` (words the host
    /// writes at 0x5C8, 0x5CC and 0x5D0 before start), then exits with 0.
    case mmioWriter = "mmio-writer"
    /// A virtio-blk driver for the device at 00:02.0 (virtio_blk.S): batches
    /// of requests the host describes at 0x5C0...0x5DC; see `VirtioBlkGuestLayout`.
    case virtioBlk = "virtio-blk"
    /// The vhost-user benchmark's virtio-blk driver (virtio_blk_bench.S):
    /// rounds of reads at a queue depth, notify -> handler stamped with RDTSC.
    case virtioBlkBench = "virtio-blk-bench"
    /// The MSI-X benchmark guest (msix_bench.S): brings the test device's
    /// vectors live in Linux's order or under the function mask, or times
    /// each vector's first interrupt; see `MsixBenchGuestLayout`.
    case msixBench = "msix-bench"
    /// The virtio-blk lossless-under-load driver (virtio_blk_stress.S): many
    /// reads in flight, each completion taken and checked in the interrupt
    /// handler; see `VirtioBlkStressLayout`.
    case virtioBlkStress = "virtio-blk-stress"
    /// A virtio-net driver (virtio_net.S): frames sent on one or two pairs
    /// and checked as they come back, each taken in the interrupt handler;
    /// see `VirtioNetGuestLayout`.
    case virtioNet = "virtio-net"
    /// A virtio-fs driver for the device at 00:02.0 (virtio_fs.S): FUSE_INIT,
    /// then LOOKUP, OPEN and READ of a host file, CREATE and WRITE of a new
    /// one, and gated READ rounds; see `VirtioFsGuestLayout`.
    case virtioFs = "virtio-fs"

    /// The flat image, to load at 0x1000.
    public var image: [UInt8] {
        var length = 0
        let start: UnsafePointer<UInt8>? =
            switch self {
            case .interruptCounter: guest_irq_counter(&length)
            case .hello: guest_hello(&length)
            case .fault: guest_fault(&length)
            case .spin: guest_spin(&length)
            case .msixDriver: guest_msix_driver(&length)
            case .msixSelfTest: guest_msix_selftest(&length)
            case .mmioWriter: guest_mmio_writer(&length)
            case .virtioBlk: guest_virtio_blk(&length)
            case .virtioBlkBench: guest_virtio_blk_bench(&length)
            case .msixBench: guest_msix_bench(&length)
            case .virtioBlkStress: guest_virtio_blk_stress(&length)
            case .virtioNet: guest_virtio_net(&length)
            case .virtioFs: guest_virtio_fs(&length)
            }
        return Array(UnsafeBufferPointer(start: start, count: length))
    }
}

/// Where the interrupt-counting guest keeps what the host reads.
public enum InterruptCounterLayout {
    /// 1 once vCPU `cpu` has its APIC and IVT set up.
    public static func ready(cpu: Int) -> UInt64 { 0x500 + 4 * UInt64(cpu) }
    /// Write v != 0 here, then send any interrupt: the guest exits with status v.
    public static let command: UInt64 = 0x580
    /// Interrupts vCPU `cpu` has taken.
    public static func total(cpu: Int) -> UInt64 { 0x600 + 4 * UInt64(cpu) }
    /// The last vector vCPU `cpu` took.
    public static func lastVector(cpu: Int) -> UInt64 { 0x700 + 4 * UInt64(cpu) }
    /// Interrupts of `vector` taken by vCPU `cpu`.
    public static func count(cpu: Int, vector: UInt8) -> UInt64 { 0x8000 + 0x400 * UInt64(cpu) + 4 * UInt64(vector) }
    /// The lowest vector the guest handles (0x20..0xFF).
    public static let firstVector: UInt8 = 0x20
}

/// Where the virtio-blk driver guest (virtio_blk.S) takes its parameters and
/// leaves its results (32-bit words; the host writes parameters before start).
public enum VirtioBlkGuestLayout {
    /// Batches to run.
    public static let batches: UInt64 = 0x5C0
    /// Requests per batch and queue (1...8), all in flight at once.
    public static let requestsPerBatch: UInt64 = 0x5C4
    /// The first sector.
    public static let firstSector: UInt64 = 0x5C8
    /// 0: read (VIRTIO_BLK_T_IN), 1: write (VIRTIO_BLK_T_OUT).
    public static let type: UInt64 = 0x5CC
    /// Queues used (1 or 2).
    public static let queues: UInt64 = 0x5D0
    /// The APIC ID queue `q`'s vector targets.
    public static func destination(queue q: Int) -> UInt64 { 0x5D4 + 4 * UInt64(q) }
    /// Nonzero: batch b starts only once `gate` > b.
    public static let gated: UInt64 = 0x5DC
    /// 1 once DRIVER_OK is set, 2 when every batch is done.
    public static let phase: UInt64 = 0x5E0
    /// Requests completed.
    public static let completed: UInt64 = 0x5E4
    /// Requests whose status byte was not 0.
    public static let failed: UInt64 = 0x5E8
    /// Batches completed.
    public static let batchesDone: UInt64 = 0x5EC
    /// The host's gate word.
    public static let gate: UInt64 = 0x5F0
    /// Request j's 512-byte buffer on queue q.
    public static func buffer(queue q: Int, request j: Int) -> UInt64 {
        0x10_0000 + 0x10_0000 * UInt64(q) + 512 * UInt64(j)
    }
    /// Request j's sector on queue q.
    public static func sector(first: Int, queue q: Int, request j: Int) -> Int { first + j + 0x800 * q }
    /// The IDT vector of MSI-X vector v (0 config, q + 1 queue q).
    public static func idtVector(msix v: Int) -> UInt8 { UInt8(0x40 + v) }
}

/// Where the MSI-X benchmark guest (msix_bench.S) takes its parameters
/// (32-bit words the host writes before start) and marks its progress.
public enum MsixBenchGuestLayout {
    /// 1: `linux_order`, 2: `function_mask_batch`, 3: first interrupt per vector.
    public static let mode: UInt64 = 0x5C0
    /// Vectors to bring live (1...2048).
    public static let vectors: UInt64 = 0x5C4
    /// Interrupts the handler took (mode 3).
    public static let count: UInt64 = 0x5C8
    /// The port the guest marks on: 1 before its first write, 2 after its
    /// last, 3 first thing in its interrupt handler (IDT vector 0x40).
    public static let markPort: UInt16 = 0xE0
    /// The IDT vector mode 3's handler serves.
    public static let vector: UInt8 = 0x40
}
