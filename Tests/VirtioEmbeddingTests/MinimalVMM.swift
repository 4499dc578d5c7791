#if os(Linux)
import CLinuxKVM
import Foundation
import GuestPrograms
import IrqFdCore
import IrqFdKVM
import IrqFdRelay
import KVM
import PCI
import Synchronization
import SystemPackage
import VhostUser
import Virtio

/// A VMM of this test's own on KVM, as small as a virtio-blk guest allows:
/// one vCPU in big real mode at 0x1000, 16 MiB of memfd RAM at 0, PCI
/// configuration mechanism #1 on 0xCF8-0xCFF, MMIO exits routed to the
/// plugged functions' windows, the console (0x3F8) and exit (0xF4) ports, and
/// a KVM irqfd partition. It is what `VirtioHost` asks of a VMM, written here
/// without TinyVM.
final class MinimalVMM: VirtioHost {
    static let ramSize = 16 << 20
    static let exitPort: UInt16 = 0xF4

    let vm: VirtualMachine
    let vcpu: VCPU
    let ram: SharedRAM
    let partition: KVMIrqFd
    let bus = PCIBus()
    private let functions = Mutex<[any PCIFunction]>([])
    private let console = Mutex<[UInt8]>([])
    private let stopping = Atomic<Bool>(false)
    private let vcpuThread = Mutex<pthread_t?>(nil)

    init() throws {
        let kvm = try KVMSystem()
        vm = try kvm.createVM()
        // VMX needs three pages for real mode's TSS outside RAM and MMIO.
        try vm.setTSSAddress(0xFFFB_D000)
        try vm.createIrqchip()
        ram = SharedRAM(try MemfdGuestMemory(size: Self.ramSize))
        try vm.setUserMemoryRegion(slot: 0, guestPhysical: 0, size: UInt64(Self.ramSize), host: ram.memory.base)
        vcpu = try vm.createVCPU(id: 0)
        // x2APIC offered (CPUID 1 ECX bit 21): the guest programs its APIC through MSRs.
        try vcpu.setCPUID(
            try kvm.supportedCPUID().map { entry in
                var e = entry
                if e.function == 1 { e.ecx |= 1 << 21 }
                return e
            })
        // CS base 0 at IP 0x1000; data and stack segments flat with 4 GiB limits,
        // so the guest's addr32 accesses reach MMIO at 0xFE000000.
        try vcpu.enterBigRealMode(ip: 0x1000, stack: 0x7000)
        partition = try KVMIrqFd(vm: vm)
    }

    // MARK: - VirtioHost

    func plug(_ function: any PCIFunction, device: Int) {
        bus.plug(function, device: device)
        functions.withLock { $0.append(function) }
    }
    var irqfdPartition: any IrqFd { partition }
    var msiInjector: any MsiInjector { KVMSignalMsiInjector(vm: vm) }
    /// The partition does not coalesce: no commit fails without a caller to hear it.
    func addCommitErrorListener(owner: AnyObject, _ report: @escaping @Sendable (IrqFdError) -> Void) {}
    var guestMemory: any GuestMemoryMap { ram }
    var doorbells: any Doorbells { IoeventfdDoorbells(vm: vm) }

    // MARK: - Running

    /// What the guest wrote to the console.
    var consoleOutput: String { String(decoding: console.withLock { $0 }, as: UTF8.self) }

    /// Runs the vCPU until the guest writes the exit port (its value), faults
    /// (nil) or `timeout` passes (nil): the vCPU is then kicked out of KVM_RUN.
    func run(timeout: Duration) -> UInt8? {
        let result = Mutex<UInt8?>(nil)
        let done = DispatchSemaphore(value: 0)
        _ = irqfd_install_kick_handler(SIGUSR1)
        let thread = Thread { [self] in
            _ = irqfd_unblock_signal(SIGUSR1)
            vcpuThread.withLock { $0 = pthread_self() }
            let code = loop()
            result.withLock { $0 = code }
            vcpuThread.withLock { $0 = nil }
            done.signal()
        }
        thread.stackSize = 1 << 20
        thread.start()
        let (seconds, attoseconds) = timeout.components
        if done.wait(timeout: .now() + Double(seconds) + Double(attoseconds) / 1e18) == .timedOut {
            stopping.store(true, ordering: .releasing)
            vcpu.requestExit()
            vcpuThread.withLock { t in if let t { _ = irqfd_pthread_kick(t, SIGUSR1) } }
            done.wait()
        }
        return result.withLock { $0 }
    }

    private func loop() -> UInt8? {
        while !stopping.load(ordering: .acquiring) {
            guard let exit = try? vcpu.run() else { return nil }
            switch exit {
            case .io(let port, let isWrite, let size, let count, let data):
                for i in 0..<count {
                    let slot = data + i * size
                    if isWrite {
                        let value = UInt32(truncatingIfNeeded: VCPU.Exit.load(slot, size: size))
                        if port == Self.exitPort { return UInt8(truncatingIfNeeded: value) }
                        if port == 0x3F8 { console.withLock { $0.append(UInt8(truncatingIfNeeded: value)) } }
                        if PCIBus.ports.contains(port) { bus.write(port: port, size: size, value: value) }
                    } else {
                        let value: UInt32 =
                            port == 0x3FD ? 0x60 : PCIBus.ports.contains(port) ? bus.read(port: port, size: size) : .max
                        VCPU.Exit.store(UInt64(value), slot, size: size)
                    }
                }
            case .mmio(let address, let length, let isWrite, let data):
                let function = functions.withLock { all in
                    all.first { $0.memoryWindows.contains { $0.contains(address) } }
                }
                if isWrite {
                    function?.write(address: address, size: length, value: VCPU.Exit.load(data, size: length))
                } else {
                    VCPU.Exit.store(function?.read(address: address, size: length) ?? .max, data, size: length)
                }
            case .interrupted:
                continue
            default:
                return nil
            }
        }
        return nil
    }
}

/// The VMM's RAM as devices see it: one memfd region at guest-physical 0.
final class SharedRAM: GuestMemoryMap {
    let memory: MemfdGuestMemory
    init(_ memory: MemfdGuestMemory) { self.memory = memory }
    var regions: [GuestMemoryRegion] {
        [
            GuestMemoryRegion(
                guestPhysicalAddress: 0, size: UInt64(memory.size), hostAddress: UInt(bitPattern: memory.base),
                descriptor: memory.fileDescriptor, offset: 0)
        ]
    }
}

/// Doorbells as KVM_IOEVENTFD bindings with a data match.
struct IoeventfdDoorbells: Doorbells {
    let vm: VirtualMachine
    func bind(_ event: FileDescriptor, address: UInt64, length: Int, datamatch: UInt64) throws(SystemCallError) {
        try vm.assignIoeventfd(eventFD: event, address: address, length: UInt32(length), datamatch: datamatch)
    }
    func unbind(_ event: FileDescriptor, address: UInt64, length: Int, datamatch: UInt64) throws(SystemCallError) {
        try vm.deassignIoeventfd(
            eventFD: event, address: address, length: UInt32(length), datamatch: datamatch)
    }
}
#endif
