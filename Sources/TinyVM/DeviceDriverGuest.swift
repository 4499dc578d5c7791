#if os(Linux)
import Foundation
import PCI
public import IrqFdCore

/// The host's side of the device-driver guest (`GuestProgram.msixDriver`):
/// each call writes a command into the guest's mailbox, wakes vCPU 0 and waits
/// for it to finish, so every configuration cycle and MMIO access the PCI
/// test device sees is made by the guest itself, through KVM's exits.
///
/// Interrupts the guest takes are counted per vCPU and vector at the
/// `InterruptCounterLayout` addresses; `count(cpu:vector:)` reads them.
public final class DeviceDriverGuest: Sendable {
    /// The VM running the guest.
    public let vm: TinyVM
    /// The vector the host wakes vCPU 0 with (counted like any other; tests use vectors above it).
    public static let wakeVector: UInt8 = 0x20
    /// How long one command may take before `run` gives up.
    public let commandTimeout: Duration

    package enum Mailbox {
        package static let seq: UInt64 = 0x5C0
        package static let op: UInt64 = 0x5C4
        package static let arguments: UInt64 = 0x5C8
        package static let result: UInt64 = 0x5E0
        package static let done: UInt64 = 0x5E4
    }

    /// The guest's commands.
    package enum Op: UInt32 {
        case mmioWrite = 1
        case mmioRead, configWrite, configRead, programTable, exit, stridedWrite
    }

    /// Why a command did not complete.
    public struct Timeout: Error, CustomStringConvertible {
        /// The command that did not finish.
        public var command: String
        /// How the run ended, if it did.
        public var outcome: String
        public var description: String { "the guest did not finish \(command) (\(outcome))" }
    }

    /// Loads the driver guest into `vm` (not yet started).
    public init(vm: TinyVM, commandTimeout: Duration = .seconds(20)) throws(TinyVMError) {
        self.vm = vm
        self.commandTimeout = commandTimeout
        try vm.load(GuestProgram.msixDriver.image)
    }

    /// Starts the vCPUs and waits until each has its APIC and IVT set up.
    public func start() throws(Timeout) {
        vm.start()
        let cpus = vm.vcpus.count
        guard
            vm.waitUntil(
                timeout: commandTimeout,
                { (0..<cpus).allSatisfy { vm.memory.read32(at: InterruptCounterLayout.ready(cpu: $0)) == 1 } })
        else { throw Timeout(command: "start-up", outcome: vm.hasEnded ? "\(vm.wait())" : "still running") }
    }

    /// Runs one command in the guest and returns its result word.
    @discardableResult
    func run(_ op: Op, _ args: [UInt32] = []) throws(Timeout) -> UInt32 {
        precondition(args.count <= 6)
        for (i, a) in args.enumerated() { vm.memory.write32(a, at: Mailbox.arguments + 4 * UInt64(i)) }
        vm.memory.write32(op.rawValue, at: Mailbox.op)
        let seq = vm.memory.read32(at: Mailbox.seq) &+ 1
        vm.memory.write32(seq, at: Mailbox.seq)
        let wake = MsiMessage(destination: 0, vector: Self.wakeVector)
        _ = try? vm.vm.signalMsi(address: wake.address, data: wake.data)
        guard vm.waitUntil(timeout: commandTimeout, { vm.memory.read32(at: Mailbox.done) == seq }) else {
            throw Timeout(command: "\(op)", outcome: vm.hasEnded ? "\(vm.wait())" : "still running")
        }
        return vm.memory.read32(at: Mailbox.result)
    }

    // MARK: - Raw accesses, made by the guest

    /// The guest writes `value` to MMIO `address` (a 32-bit access).
    public func write32(_ address: UInt64, _ value: UInt32) throws(Timeout) {
        try run(.mmioWrite, [UInt32(address), value])
    }

    /// The guest reads MMIO `address` (a 32-bit access).
    public func read32(_ address: UInt64) throws(Timeout) -> UInt32 { try run(.mmioRead, [UInt32(address)]) }

    /// The guest writes `size` bytes of configuration space of 00:`device`.0 through 0xCF8/0xCFC.
    public func configWrite(device: Int = MsixTestDevice.slot, offset: Int, size: Int, _ value: UInt32) throws(Timeout)
    {
        try run(
            .configWrite,
            [PCIBus.configAddress(device: device, offset: offset), value, UInt32(offset & 3), UInt32(size)])
    }

    /// The guest reads `size` bytes of configuration space of 00:`device`.0.
    public func configRead(device: Int = MsixTestDevice.slot, offset: Int, size: Int) throws(Timeout) -> UInt32 {
        try run(
            .configRead, [PCIBus.configAddress(device: device, offset: offset), 0, UInt32(offset & 3), UInt32(size)])
    }

    /// The guest writes `value` at `count` addresses `stride` bytes apart from `address`.
    public func stridedWrite(_ address: UInt64, count: Int, stride: Int, _ value: UInt32) throws(Timeout) {
        try run(.stridedWrite, [UInt32(address), UInt32(count), UInt32(stride), value])
    }

    /// The guest writes `status` to the exit port; the run ends.
    public func exit(_ status: UInt8) {
        _ = try? run(.exit, [UInt32(status)])
    }

    // MARK: - What a driver does with the test device

    private static let table = MsixTestDevice.msixBase
    private static let pba = MsixTestDevice.msixBase + UInt64(MsixTestDevice.pbaOffset)

    /// Writes Message Control (a 16-bit configuration write at 0x42): MSI-X
    /// enable and function mask.
    public func setMsix(enabled: Bool, functionMasked: Bool = false) throws(Timeout) {
        try configWrite(
            offset: MsixTestDevice.capabilityOffset + 2, size: 2, (enabled ? 0x8000 : 0) | (functionMasked ? 0x4000 : 0)
        )
    }

    /// Programs table entry `v` with four DWORD writes (address low, high, data, vector control).
    public func program(_ v: Int, _ message: MsiMessage, masked: Bool) throws(Timeout) {
        let entry = Self.table + 16 * UInt64(v)
        try write32(entry, UInt32(truncatingIfNeeded: message.address))
        try write32(entry + 4, UInt32(truncatingIfNeeded: message.address >> 32))
        try write32(entry + 8, message.data)
        try write32(entry + 12, masked ? 1 : 0)
    }

    /// Programs entries 0..<count in one guest loop: destination APIC
    /// `destination`, vector `firstVector + (v & vectorMask)`.
    public func programTable(count: Int, destination: UInt32 = 0, firstVector: UInt8, vectorMask: UInt32, masked: Bool)
        throws(Timeout)
    {
        let address = MsiMessage(destination: destination, vector: 0).address
        try run(
            .programTable,
            [UInt32(Self.table), UInt32(count), UInt32(address), UInt32(firstVector), vectorMask, masked ? 1 : 0])
    }

    /// Sets or clears entry `v`'s mask bit.
    public func setMasked(_ v: Int, _ masked: Bool) throws(Timeout) {
        try write32(Self.table + 16 * UInt64(v) + 12, masked ? 1 : 0)
    }

    /// Sets or clears the mask bit of entries 0..<count.
    public func setAllMasked(count: Int, _ masked: Bool) throws(Timeout) {
        try stridedWrite(Self.table + 12, count: count, stride: 16, masked ? 1 : 0)
    }

    /// Reads entry `v`'s `field` (0 address low, 1 address high, 2 data, 3 vector control).
    public func readEntry(_ v: Int, field: Int) throws(Timeout) -> UInt32 {
        try read32(Self.table + 16 * UInt64(v) + 4 * UInt64(field))
    }

    /// Reads PBA DWORD `index` (vectors 32*index ..< 32*index + 32).
    public func readPBA(dword index: Int = 0) throws(Timeout) -> UInt32 {
        try read32(Self.pba + 4 * UInt64(index))
    }

    /// Writes DOORBELL: the device signals `v` once, from its own thread.
    public func ring(_ v: Int) throws(Timeout) {
        try write32(MsixTestDevice.registersBase + MsixTestDevice.Register.doorbell.rawValue, UInt32(v))
    }

    /// Writes BURST: the device signals `v` `count` times.
    public func burst(_ v: Int, count: Int) throws(Timeout) {
        try write32(
            MsixTestDevice.registersBase + MsixTestDevice.Register.burst.rawValue, UInt32(count) << 16 | UInt32(v))
    }

    /// Reads SIGNALED.
    public func signaled() throws(Timeout) -> UInt32 {
        try read32(MsixTestDevice.registersBase + MsixTestDevice.Register.signaled.rawValue)
    }

    // MARK: - What the guest took

    /// Interrupts of `vector` that vCPU `cpu` has taken.
    public func count(cpu: Int = 0, vector: UInt8) -> UInt32 {
        vm.memory.read32(at: InterruptCounterLayout.count(cpu: cpu, vector: vector))
    }

    /// Waits until vCPU `cpu` has taken `vector` at least `atLeast` times.
    @discardableResult
    public func waitForCount(cpu: Int = 0, vector: UInt8, atLeast: UInt32, timeout: Duration = .seconds(10)) -> Bool {
        vm.waitUntil(timeout: timeout) { count(cpu: cpu, vector: vector) >= atLeast }
    }
}
#endif
