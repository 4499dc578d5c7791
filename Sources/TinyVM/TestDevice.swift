#if os(Linux)
import Foundation
public import IrqFdCore
import IrqFdLinux
public import IrqFdRelay
public import MSIX
public import PCI
import Synchronization

/// The tiny VMM's PCI test device, 00:01.0: an MSI-X function whose vectors
/// are raised by doorbell writes and delivered from the device's own thread,
/// as real hardware raises them independently of the CPU that asked.
///
/// Configuration space: vendor 0x5344, device 0x5849 (a made-up ID: the
/// device exists only here), class 0xFF (unclassified); memory decoding and
/// bus mastering on (clearing command bit 2 stops MSI-X: interrupts are held
/// as pending, see `MsixEmulator.setBusMaster`); BAR0 and BAR1 assigned; the
/// MSI-X capability at 0x40.
///
/// BAR0 at 0xFE000000 (4 KiB, 32-bit accesses):
///
///     0x00 ID         read: 0x58495344 ("DSIX")
///     0x04 VECTORS    read: the vector count
///     0x08 DOORBELL   write v: signal vector v once
///     0x0C BURST      write count << 16 | v: signal vector v `count` times
///     0x10 SIGNALED   read: signals sent so far
///
/// BAR1 at 0xFE010000 (64 KiB): the MSI-X table at offset 0 (16 bytes a
/// vector), the Pending Bit Array at offset 0x8000.
///
/// BARs are fixed at those addresses: the sizing protocol (write all ones,
/// read the size mask) works, and a BAR decodes only while it holds its
/// assigned address and memory decoding is on.
public final class MsixTestDevice: PCIFunction, MMIODevice {
    /// The PCI slot: 00:01.0.
    public static let slot = 1
    /// BAR0, the registers.
    public static let registersBase: UInt64 = 0xFE00_0000
    /// BAR0's size.
    public static let registersSize: UInt64 = 0x1000
    /// BAR1, the MSI-X table and PBA.
    public static let msixBase: UInt64 = 0xFE01_0000
    /// BAR1's size.
    public static let msixSize: UInt64 = 0x1_0000
    /// The PBA's offset in BAR1.
    public static let pbaOffset: UInt32 = 0x8000
    /// Where the MSI-X capability sits in configuration space.
    public static let capabilityOffset = 0x40
    /// What the ID register (and configuration DWORD 0) reads.
    public static let id: UInt32 = 0x5849_5344

    /// BAR0 register offsets.
    public enum Register: UInt64, Sendable {
        /// Reads `id`.
        case id = 0x00
        /// Reads the vector count.
        case vectors = 0x04
        /// Write v: signal vector v once.
        case doorbell = 0x08
        /// Write count << 16 | v: signal v `count` times.
        case burst = 0x0C
        /// Reads the signals sent so far.
        case signaled = 0x10
    }

    /// The device's MSI-X function.
    public let emulator: MsixEmulator
    /// How its interrupts reach the guest.
    public let delivery: InterruptDelivery
    /// The relay partition, when `delivery` is `.relay`.
    public let relay: RelayIrqFd?

    private let worker: Worker
    private let config = Mutex(MsixTestDevice.configurationSpace)
    private let ignored = Atomic<Int>(0)
    /// The routes a live-update freeze disarmed, re-armed by a thaw.
    let disarmedForHandOff = Mutex<[any IrqFdRoute]>([])

    /// The configuration header: IDs, class 0xFF, BAR0 and BAR1 relocatable
    /// (sizing works; each decodes only at its assigned address), the MSI-X
    /// capability at 0x40 (served by the emulator), an Interrupt Line.
    static let configurationSpace = PCIConfigurationSpace(
        identity: .init(
            vendorID: UInt16(id & 0xFFFF), deviceID: UInt16(id >> 16), revision: 1, classCode: 0xFF_0000,
            subsystemVendorID: UInt16(id & 0xFFFF), subsystemID: UInt16(id >> 16)),
        bars: [
            .init(index: 0, address: registersBase, size: registersSize, kind: .relocatable),
            .init(index: 1, address: msixBase, size: msixSize, kind: .relocatable),
        ],
        capabilities: [UInt8](repeating: 0, count: MsixLayout.capabilityLength),
        forwarded: capabilityOffset..<capabilityOffset + MsixLayout.capabilityLength,
        hasInterruptLine: true)

    /// A device with `vectors` MSI-X vectors (1...2048) delivering through
    /// `delivery` into `vm`. Use `attach(to:vectors:delivery:)` to plug it in.
    public init(vm: TinyVM, vectors: Int = 8, delivery: InterruptDelivery = .irqfd) throws(TinyVMError) {
        guard
            let layout = MsixLayout(
                vectorCount: vectors, tableBIR: 1, tableOffset: 0, pbaBIR: 1, pbaOffset: Self.pbaOffset)
        else { throw .configuration("--vectors must be 1...\(MsixLayout.maxVectors), not \(vectors)") }
        // A coalesced commit that fails has no caller: the emulator hears of it through `vm`.
        do { (emulator, relay) = try delivery.makeEmulator(layout: layout, host: vm) } catch { throw .irqfd(error) }
        self.delivery = delivery
        do { worker = try Worker(emulator: emulator) } catch { throw .irqfd(error) }
    }

    deinit { worker.stop() }

    /// Makes a device and plugs it into `vm`: PCI 00:01.0, BAR0 and BAR1 on the MMIO bus.
    @discardableResult
    public static func attach(
        to vm: TinyVM, vectors: Int = 8, delivery: InterruptDelivery = .irqfd
    ) throws(TinyVMError) -> MsixTestDevice {
        let device = try MsixTestDevice(vm: vm, vectors: vectors, delivery: delivery)
        vm.plug(device, device: slot)
        return device
    }

    /// BAR0 and BAR1 as firmware assigned them (`PCIFunction`).
    public var memoryWindows: [Range<UInt64>] {
        [Self.registersBase..<Self.registersBase + Self.registersSize, Self.msixBase..<Self.msixBase + Self.msixSize]
    }

    // MARK: - The device side, for the host

    /// Signals vector `v` `count` times from the device thread: what a DOORBELL
    /// (count 1) or BURST write does. Returns at once.
    public func ring(vector v: Int, count: Int = 1) {
        guard (0..<emulator.layout.vectorCount).contains(v), count > 0 else {
            ignored.add(1, ordering: .relaxed)
            return
        }
        worker.enqueue(vector: v, count: count)
    }

    /// Signals sent so far (the SIGNALED register).
    public var signaled: Int { worker.signaled.load(ordering: .acquiring) }

    /// Waits until every doorbell rung so far has been signalled.
    @discardableResult
    public func waitUntilIdle(timeout: Duration = .seconds(10)) -> Bool { worker.waitUntilIdle(timeout: timeout) }

    /// Register and configuration accesses the device ignored (bad size,
    /// unknown register, out-of-range vector). The emulator counts its own.
    public var ignoredAccesses: Int { ignored.load(ordering: .relaxed) }

    // MARK: - Save and restore

    /// The device's state: every writable configuration register (command,
    /// BAR0, BAR1, Interrupt Line), SIGNALED, and the MSI-X function with
    /// latched signals drained into the PBA.
    public struct State: Hashable, Sendable, Codable {
        /// The PCI command register.
        public var command: UInt16
        /// BAR0 as the guest last wrote it (a sizing write of all ones included).
        public var bar0: UInt32
        /// BAR1 as the guest last wrote it.
        public var bar1: UInt32
        /// The Interrupt Line register (0x3C).
        public var interruptLine: UInt8
        /// SIGNALED.
        public var signaled: Int
        /// The MSI-X function.
        public var msix: MsixSavedState
    }

    /// Saves the device after letting queued doorbells finish.
    public func save() -> State {
        waitUntilIdle()
        let c = config.withLock { $0 }
        return State(
            command: c.command, bar0: c.barValues[0], bar1: c.barValues[1], interruptLine: c.interruptLine,
            signaled: signaled, msix: emulator.save())
    }

    /// Restores a saved device: its configuration registers (bus mastering
    /// included, told to the emulator before its routes are reprogrammed),
    /// SIGNALED and the MSI-X function; a pending interrupt of a live vector
    /// is delivered.
    public func restore(_ state: State) throws(MsixError) {
        config.withLock { c in
            c.restore(command: state.command, barValues: [state.bar0, state.bar1], interruptLine: state.interruptLine)
            emulator.setBusMaster(c.isBusMasterEnabled)
        }
        worker.signaled.store(state.signaled, ordering: .releasing)
        try emulator.restore(state.msix)
    }

    /// Restores a device saved in another VM, each vector of `events` routed
    /// over the event given (`MsixEmulator.restore(_:adopting:)`): what
    /// latched in an event while no VM listened reaches the guest, once.
    public func restore(_ state: State, adopting events: [Int: any Event]) throws(MsixError) {
        config.withLock { c in
            c.restore(command: state.command, barValues: [state.bar0, state.bar1], interruptLine: state.interruptLine)
            emulator.setBusMaster(c.isBusMasterEnabled)
        }
        worker.signaled.store(state.signaled, ordering: .releasing)
        try emulator.restore(state.msix, adopting: events)
    }

    // MARK: - Configuration space

    /// A configuration read (`PCIFunction`). An access the bus never makes
    /// (fuzzing found that a size above 4 once overflowed the read mask and
    /// crashed the VMM) is ignored, reads as all ones, and is counted.
    public func configRead(offset: Int, size: Int) -> UInt32 {
        guard PCIConfigurationSpace.isAccess(offset: offset, size: size) else {
            ignored.add(1, ordering: .relaxed)
            return .max
        }
        let c = config.withLock { $0 }
        if let forwarded = c.forwarded(offset) { return emulator.readCapability(offset: forwarded, size: size) }
        return c.read(offset: offset, size: size)
    }

    /// A configuration write (`PCIFunction`): the command register, BAR
    /// sizing, the interrupt line and the MSI-X capability are writable, each
    /// byte by byte: a write changes exactly the bytes it enables. A change of
    /// Bus Master Enable is passed to the emulator (`setBusMaster`).
    public func configWrite(offset: Int, size: Int, value: UInt32) {
        guard PCIConfigurationSpace.isAccess(offset: offset, size: size) else {
            ignored.add(1, ordering: .relaxed)
            return
        }
        if let forwarded = Self.configurationSpace.forwarded(offset) {
            emulator.writeCapability(offset: forwarded, size: size, value: value)
            return
        }
        config.withLock { c in
            let before = c.isBusMasterEnabled
            c.write(offset: offset, size: size, value: value)
            if before != c.isBusMasterEnabled {
                // Under the configuration lock, so that two vCPUs' writes reach the
                // emulator in the order they took effect. The emulator never calls
                // back into the device: its lock is only ever taken inside this one.
                emulator.setBusMaster(c.isBusMasterEnabled)
            }
        }
    }

    // MARK: - Memory space

    /// Which BAR `address` falls in, if that BAR decodes now.
    private func decode(_ address: UInt64) -> (bar: Int, offset: UInt64)? { config.withLock { $0.decode(address) } }

    /// An MMIO read (`MMIODevice`).
    public func read(address: UInt64, size: Int) -> UInt64 {
        guard let (bar, offset) = decode(address) else {
            ignored.add(1, ordering: .relaxed)
            // Nothing answers: all ones (any size this API is given, without a trapping shift).
            return (1...7).contains(size) ? (1 << (8 * UInt64(size))) - 1 : .max
        }
        if bar == 1 { return emulator.read(bar: 1, offset: offset, size: size) }
        guard size == 4, offset % 4 == 0, let register = Register(rawValue: offset) else {
            ignored.add(1, ordering: .relaxed)
            return 0
        }
        switch register {
        case .id: return UInt64(Self.id)
        case .vectors: return UInt64(emulator.layout.vectorCount)
        case .signaled: return UInt64(UInt32(truncatingIfNeeded: signaled))
        case .doorbell, .burst: return 0
        }
    }

    /// An MMIO write (`MMIODevice`).
    public func write(address: UInt64, size: Int, value: UInt64) {
        guard let (bar, offset) = decode(address) else {
            ignored.add(1, ordering: .relaxed)
            return
        }
        if bar == 1 {
            emulator.write(bar: 1, offset: offset, size: size, value: value)
            return
        }
        guard size == 4, offset % 4 == 0, let register = Register(rawValue: offset) else {
            ignored.add(1, ordering: .relaxed)
            return
        }
        switch register {
        case .doorbell: ring(vector: Int(value & 0xFFFF_FFFF))
        case .burst: ring(vector: Int(value & 0xFFFF), count: Int((value >> 16) & 0xFFFF))
        case .id, .vectors, .signaled: ignored.add(1, ordering: .relaxed)
        }
    }

    // MARK: - The device thread

    /// The device's own thread: doorbells queue work, the thread signals.
    final class Worker: Sendable {
        let emulator: MsixEmulator
        let signaled = Atomic<Int>(0)
        private let queue = Mutex<(jobs: [(vector: Int, count: Int)], busy: Bool, stopping: Bool)>(([], false, false))
        private let wake: EventFD
        private let idle: EventFD

        init(emulator: MsixEmulator) throws(IrqFdError) {
            self.emulator = emulator
            wake = try EventFD()
            idle = try EventFD()
            let thread = Thread { [self] in run() }
            thread.name = "test device"
            thread.stackSize = 1 << 20
            thread.start()
        }

        func enqueue(vector: Int, count: Int) {
            queue.withLock { $0.jobs.append((vector, count)) }
            wake.signal()
        }

        func stop() {
            queue.withLock { $0.stopping = true }
            wake.signal()
        }

        func waitUntilIdle(timeout: Duration) -> Bool {
            let deadline = ContinuousClock.now + timeout
            while true {
                if queue.withLock({ $0.jobs.isEmpty && !$0.busy }) { return true }
                let left = ContinuousClock.now.duration(to: deadline)
                if left <= .zero { return false }
                _ = idle.wait(timeout: min(left, .milliseconds(20)))
            }
        }

        /// The thread holds the worker strongly until `stop()`: the device's
        /// deinit stops it, and then it lets go.
        private func run() {
            while true {
                let jobs = queue.withLock { q -> [(vector: Int, count: Int)]? in
                    if q.stopping { return nil }
                    defer { q.jobs = [] }
                    q.busy = !q.jobs.isEmpty
                    return q.jobs
                }
                guard let jobs else { return }
                if jobs.isEmpty {
                    idle.signal()
                    _ = wake.wait(timeout: .seconds(3600))
                    continue
                }
                for job in jobs {
                    for _ in 0..<job.count {
                        // Counted before it is sent: a guest that took the interrupt
                        // and then reads SIGNALED must see it (the relay injects
                        // fast enough to beat an increment made afterwards).
                        signaled.add(1, ordering: .releasing)
                        emulator.signal(vector: job.vector)
                    }
                }
                queue.withLock { $0.busy = false }
            }
        }
    }
}
#endif
