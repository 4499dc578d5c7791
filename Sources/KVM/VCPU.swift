#if os(Linux)
public import CLinuxKVM
import Glibc
public import IrqFdCore
import SystemPackage

/// A vCPU and its mapped `struct kvm_run`.
///
/// `@unchecked Sendable` because it holds the `kvm_run` mapping as a raw
/// pointer. That is safe under KVM's own contract, which this type keeps:
/// only the thread inside `run()` reads or writes the exit data, and other
/// threads touch only `immediate_exit` (through `requestExit()`, an atomic
/// store), which KVM documents as writable while the vCPU runs.
public final class VCPU: @unchecked Sendable {
    /// The vCPU index (its initial APIC ID).
    public let id: UInt32
    let descriptor: OwnedDescriptor
    let runPointer: UnsafeMutableRawPointer
    let mmapSize: Int
    /// The VM this vCPU belongs to; kept alive while the vCPU exists.
    public let vm: VirtualMachine

    init(id: UInt32, descriptor: OwnedDescriptor, run: UnsafeMutableRawPointer, mmapSize: Int, vm: VirtualMachine) {
        self.id = id
        self.descriptor = descriptor
        self.runPointer = run
        self.mmapSize = mmapSize
        self.vm = vm
    }

    deinit { munmap(runPointer, mmapSize) }

    private var runStruct: UnsafeMutablePointer<kvm_run> { runPointer.assumingMemoryBound(to: kvm_run.self) }

    /// Why KVM_RUN returned.
    public enum Exit {
        /// The guest executed IN or OUT. `data` holds `size * count` bytes: the
        /// value written (out), or the place to put the value read (in).
        case io(port: UInt16, isWrite: Bool, size: Int, count: Int, data: UnsafeMutableRawPointer)
        /// The guest accessed unbacked memory. `data` holds the value (write) or
        /// receives it (read).
        case mmio(address: UInt64, length: Int, isWrite: Bool, data: UnsafeMutableRawPointer)
        /// HLT reached userspace (only without an in-kernel irqchip).
        case halt
        /// Triple fault or similar: the guest is dead.
        case shutdown
        /// VM entry failed, with the hardware reason.
        case failEntry(reason: UInt64)
        /// KVM could not emulate something (suberror: KVM_INTERNAL_ERROR_*).
        case internalError(suberror: UInt32)
        /// A signal or `requestExit()` interrupted the run (EINTR).
        case interrupted
        /// A system event (reset, shutdown, crash) of `type`.
        case systemEvent(type: UInt32)
        /// An unhandled exception (`exception` vector).
        case exception(UInt32)
        /// An exit reason this package does not decode.
        case other(reason: UInt32)
    }

    /// KVM_RUN (with argument 0): runs the guest until it needs userspace.
    /// EINTR is not retried: it means someone asked this vCPU to stop.
    public func run() throws(SystemCallError) -> Exit {
        let result = irqfd_ioctl_val(descriptor.raw, IRQFD_KVM_RUN, 0)
        if result < 0 {
            let error = irqfd_errno()
            if error == EINTR || error == EAGAIN { return .interrupted }
            throw SystemCallError(call: "KVM_RUN", errno: Errno(rawValue: error))
        }
        let reason = irqfd_run_exit_reason(runStruct)
        switch reason {
        case IRQFD_KVM_EXIT_IO:
            let data = runPointer + Int(irqfd_run_io_data_offset(runStruct))
            return .io(
                port: irqfd_run_io_port(runStruct),
                isWrite: irqfd_run_io_direction(runStruct) == UInt8(IRQFD_KVM_EXIT_IO_OUT),
                size: Int(irqfd_run_io_size(runStruct)), count: Int(irqfd_run_io_count(runStruct)), data: data)
        case IRQFD_KVM_EXIT_MMIO:
            return .mmio(
                address: irqfd_run_mmio_phys_addr(runStruct), length: Int(irqfd_run_mmio_len(runStruct)),
                isWrite: irqfd_run_mmio_is_write(runStruct) != 0,
                data: UnsafeMutableRawPointer(irqfd_run_mmio_data(runStruct)))
        case IRQFD_KVM_EXIT_HLT: return .halt
        case IRQFD_KVM_EXIT_SHUTDOWN: return .shutdown
        case IRQFD_KVM_EXIT_FAIL_ENTRY: return .failEntry(reason: irqfd_run_fail_entry_reason(runStruct))
        case IRQFD_KVM_EXIT_INTERNAL_ERROR: return .internalError(suberror: irqfd_run_internal_suberror(runStruct))
        case IRQFD_KVM_EXIT_INTR: return .interrupted
        case IRQFD_KVM_EXIT_SYSTEM_EVENT: return .systemEvent(type: irqfd_run_system_event_type(runStruct))
        case IRQFD_KVM_EXIT_EXCEPTION: return .exception(irqfd_run_exception(runStruct))
        default: return .other(reason: reason)
        }
    }

    /// Sets `kvm_run.immediate_exit`: the next (or current, once kicked by a
    /// signal) KVM_RUN returns EINTR at once. Safe from any thread.
    public func requestExit() { irqfd_run_set_immediate_exit(runStruct, 1) }

    /// Clears `kvm_run.immediate_exit`.
    public func clearExitRequest() { irqfd_run_set_immediate_exit(runStruct, 0) }

    private func vcpuIoctl(_ call: StaticString, _ body: () -> Int32) throws(SystemCallError) {
        _ = try retryingIoctl(call, body)
    }

    /// A KVM_GET_* ioctl that fills one `struct kvm_*` (`empty`, zeroed) and returns it.
    func get<State: BitwiseCopyable>(
        _ call: StaticString, _ request: UInt, _ empty: State
    ) throws(SystemCallError) -> State {
        var state = empty
        try vcpuIoctl(call) { irqfd_ioctl_ptr(descriptor.raw, request, &state) }
        return state
    }

    /// A KVM_SET_* ioctl that passes one `struct kvm_*`.
    func set<State: BitwiseCopyable>(_ call: StaticString, _ request: UInt, _ value: State) throws(SystemCallError) {
        var state = value
        try vcpuIoctl(call) { irqfd_ioctl_ptr(descriptor.raw, request, &state) }
    }

    /// The general-purpose registers (`struct kvm_regs`).
    public typealias Registers = kvm_regs
    /// The segment and control registers (`struct kvm_sregs`).
    public typealias SpecialRegisters = kvm_sregs

    /// KVM_GET_REGS.
    public func registers() throws(SystemCallError) -> Registers {
        try get("KVM_GET_REGS", IRQFD_KVM_GET_REGS, kvm_regs())
    }

    /// KVM_SET_REGS.
    public func setRegisters(_ registers: Registers) throws(SystemCallError) {
        try set("KVM_SET_REGS", IRQFD_KVM_SET_REGS, registers)
    }

    /// KVM_GET_SREGS.
    public func specialRegisters() throws(SystemCallError) -> SpecialRegisters {
        try get("KVM_GET_SREGS", IRQFD_KVM_GET_SREGS, kvm_sregs())
    }

    /// KVM_SET_SREGS.
    public func setSpecialRegisters(_ registers: SpecialRegisters) throws(SystemCallError) {
        try set("KVM_SET_SREGS", IRQFD_KVM_SET_SREGS, registers)
    }

    /// KVM_SET_CPUID2: the CPUID leaves the guest sees.
    public func setCPUID(_ entries: [CPUIDEntry]) throws(SystemCallError) {
        var buffer = CPUIDBuffer(entries: entries)
        try vcpuIoctl("KVM_SET_CPUID2") {
            buffer.withUnsafeMutableBytes { irqfd_ioctl_ptr(descriptor.raw, IRQFD_KVM_SET_CPUID2, $0) }
        }
    }

    /// KVM_GET_LAPIC: the local APIC's 1 KiB register page.
    public func localAPIC() throws(SystemCallError) -> [UInt8] {
        var state = kvm_lapic_state()
        try vcpuIoctl("KVM_GET_LAPIC") { irqfd_ioctl_ptr(descriptor.raw, IRQFD_KVM_GET_LAPIC, &state) }
        return withUnsafeBytes(of: &state.regs) { Array($0) }
    }

    /// KVM_SET_LAPIC.
    public func setLocalAPIC(_ registers: [UInt8]) throws(SystemCallError) {
        precondition(registers.count == 1024, "the LAPIC page is 1 KiB")
        var state = kvm_lapic_state()
        withUnsafeMutableBytes(of: &state.regs) { $0.copyBytes(from: registers) }
        try vcpuIoctl("KVM_SET_LAPIC") { irqfd_ioctl_ptr(descriptor.raw, IRQFD_KVM_SET_LAPIC, &state) }
    }

    /// KVM_GET_MSRS: the values of `indices`, in order.
    public func msrs(_ indices: [UInt32]) throws(SystemCallError) -> [UInt64] {
        var buffer = MSRBuffer(entries: indices.map { ($0, 0) })
        let read = try retryingIoctl("KVM_GET_MSRS") {
            buffer.withPointer { irqfd_ioctl_ptr(descriptor.raw, IRQFD_KVM_GET_MSRS, $0) }
        }
        guard read == indices.count else { throw SystemCallError(call: "KVM_GET_MSRS", errno: .invalidArgument) }
        return buffer.values
    }

    /// KVM_SET_MSRS: writes each (index, value).
    public func setMSRs(_ entries: [(index: UInt32, value: UInt64)]) throws(SystemCallError) {
        var buffer = MSRBuffer(entries: entries)
        let written = try retryingIoctl("KVM_SET_MSRS") {
            buffer.withPointer { irqfd_ioctl_ptr(descriptor.raw, IRQFD_KVM_SET_MSRS, $0) }
        }
        guard written == entries.count else { throw SystemCallError(call: "KVM_SET_MSRS", errno: .invalidArgument) }
    }

    /// KVM_GET_MP_STATE (KVM_MP_STATE_*).
    public func mpState() throws(SystemCallError) -> UInt32 {
        try get("KVM_GET_MP_STATE", IRQFD_KVM_GET_MP_STATE, kvm_mp_state()).mp_state
    }

    /// KVM_SET_MP_STATE. Application processors start waiting for INIT/SIPI
    /// under an in-kernel irqchip; KVM_MP_STATE_RUNNABLE lets them run at once.
    public func setMPState(_ value: UInt32) throws(SystemCallError) {
        try set("KVM_SET_MP_STATE", IRQFD_KVM_SET_MP_STATE, kvm_mp_state(mp_state: value))
    }
}

/// `struct kvm_msrs` by hand: u32 nmsrs, u32 pad, then 16-byte entries
/// (u32 index, u32 reserved, u64 data).
struct MSRBuffer {
    var words: [UInt64]
    init(entries: [(index: UInt32, value: UInt64)]) {
        words = [UInt64(entries.count)]
        for entry in entries { words += [UInt64(entry.index), entry.value] }
    }
    var values: [UInt64] { stride(from: 2, to: words.count, by: 2).map { words[$0] } }
    mutating func withPointer<R>(_ body: (UnsafeMutableRawPointer) -> R) -> R {
        words.withUnsafeMutableBytes { body($0.baseAddress!) }
    }
}
#endif
