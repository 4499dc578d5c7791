#if os(Linux)
import CLinuxKVM
import Glibc
public import IrqFdCore
import IrqFdLinux
public import SystemPackage

/// `/dev/kvm`: the system-level KVM handle.
public final class KVMSystem: Sendable {
    let descriptor: OwnedDescriptor

    /// Opens `/dev/kvm` (open(2), O_RDWR | O_CLOEXEC) and checks the API version is 12.
    public init(path: String = "/dev/kvm") throws(SystemCallError) {
        let fd = try retryingInterrupts("open(\(path))") { Glibc.open(path, O_RDWR | O_CLOEXEC) }
        descriptor = OwnedDescriptor(fd)
        let version = try apiVersion()
        guard version == 12 else { throw SystemCallError(call: "KVM_GET_API_VERSION", errno: .notSupported) }
    }

    /// Whether `/dev/kvm` exists and can be opened here.
    public static var isAvailable: Bool { (try? KVMSystem()) != nil }

    /// KVM_GET_API_VERSION: 12 on every kernel since 2.6.22.
    public func apiVersion() throws(SystemCallError) -> Int {
        Int(try retryingIoctl("KVM_GET_API_VERSION") { irqfd_ioctl_val(descriptor.raw, IRQFD_KVM_GET_API_VERSION, 0) })
    }

    /// KVM_CHECK_EXTENSION on /dev/kvm: 0 if unsupported, else a capability-specific value.
    public func checkExtension(_ capability: Capability) -> Int {
        Int(max(0, irqfd_ioctl_val(descriptor.raw, IRQFD_KVM_CHECK_EXTENSION, UInt(capability.rawValue))))
    }

    /// KVM_GET_VCPU_MMAP_SIZE: bytes to mmap for a vCPU's `struct kvm_run`.
    public func vcpuMmapSize() throws(SystemCallError) -> Int {
        Int(
            try retryingIoctl("KVM_GET_VCPU_MMAP_SIZE") {
                irqfd_ioctl_val(descriptor.raw, IRQFD_KVM_GET_VCPU_MMAP_SIZE, 0)
            })
    }

    /// KVM_GET_SUPPORTED_CPUID: the CPUID leaves KVM can offer a guest.
    public func supportedCPUID() throws(SystemCallError) -> [CPUIDEntry] {
        var capacity = 128
        while true {
            var buffer = CPUIDBuffer(capacity: capacity)
            do throws(SystemCallError) {
                _ = try retryingIoctl("KVM_GET_SUPPORTED_CPUID") {
                    buffer.withUnsafeMutableBytes { irqfd_ioctl_ptr(descriptor.raw, IRQFD_KVM_GET_SUPPORTED_CPUID, $0) }
                }
                return buffer.entries
            } catch {
                // E2BIG: more leaves than the buffer holds; try again with room for twice as many.
                guard error.errno == .argListTooLong, capacity < 4096 else { throw error }
                capacity *= 2
            }
        }
    }

    /// KVM_CREATE_VM: a new VM with no memory, vCPUs or irqchip.
    public func createVM() throws(SystemCallError) -> VirtualMachine {
        let fd = try retryingIoctl("KVM_CREATE_VM") { irqfd_ioctl_val(descriptor.raw, IRQFD_KVM_CREATE_VM, 0) }
        return VirtualMachine(descriptor: OwnedDescriptor(fd), system: self)
    }

    /// Takes over `descriptor`, a VM that other code made with KVM_CREATE_VM
    /// (a VMM that has its own VM and wants this package's irqfd backend on
    /// it): the returned VM owns the descriptor and closes it when released.
    /// A caller that goes on using its own descriptor passes a duplicate
    /// (fcntl(F_DUPFD_CLOEXEC)): both name the same VM.
    ///
    /// The descriptor must be a KVM VM: readlink(2) of /proc/self/fd/N reads
    /// `anon_inode:kvm-vm`. A /dev/kvm handle, a vCPU or any other file throws
    /// `EINVAL` and a closed number `EBADF`, naming what the descriptor is;
    /// nothing is closed when it throws.
    public func adoptVM(_ descriptor: FileDescriptor) throws(SystemCallError) -> VirtualMachine {
        let fd = descriptor.rawValue
        guard fcntl(fd, F_GETFD) != -1 else {
            throw SystemCallError(call: "fcntl(\(fd), F_GETFD)", errno: Errno(rawValue: errno))
        }
        var link = [CChar](repeating: 0, count: 256)
        let count = readlink("/proc/self/fd/\(fd)", &link, link.count - 1)
        guard count >= 0 else {
            throw SystemCallError(call: "readlink(/proc/self/fd/\(fd))", errno: Errno(rawValue: errno))
        }
        let target = String(decoding: link[..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        guard target == Self.vmDescriptorLink else {
            throw SystemCallError(
                call: "adoptVM(descriptor \(fd): \(target), not \(Self.vmDescriptorLink))", errno: .invalidArgument)
        }
        return VirtualMachine(descriptor: OwnedDescriptor(fd), system: self)
    }

    /// What /proc/self/fd/N links to for a KVM VM descriptor (the anonymous
    /// inode KVM_CREATE_VM makes, named in virt/kvm/kvm_main.c).
    static let vmDescriptorLink = "anon_inode:kvm-vm"
}

/// KVM capabilities the package asks about (KVM_CAP_*).
public enum Capability: Int32, Sendable, CaseIterable {
    /// In-kernel PIC, IOAPIC and local APICs.
    case irqchip
    /// KVM_IRQFD.
    case irqfd
    /// KVM_SET_GSI_ROUTING; the value is the number of routing entries (GSIs).
    case irqRouting
    /// KVM_SIGNAL_MSI.
    case signalMsi
    /// Local APICs in the kernel, IOAPIC and PIC in userspace.
    case splitIrqchip
    /// 32-bit x2APIC IDs in MSI routes.
    case x2apicAPI
    /// Recommended number of vCPUs.
    case nrVCPUs
    /// Maximum number of vCPUs.
    case maxVCPUs
    /// `kvm_run.immediate_exit`.
    case immediateExit

    /// The KVM_CAP_* number.
    public var rawValue: Int32 {
        switch self {
        case .irqchip: IRQFD_KVM_CAP_IRQCHIP
        case .irqfd: IRQFD_KVM_CAP_IRQFD
        case .irqRouting: IRQFD_KVM_CAP_IRQ_ROUTING
        case .signalMsi: IRQFD_KVM_CAP_SIGNAL_MSI
        case .splitIrqchip: IRQFD_KVM_CAP_SPLIT_IRQCHIP
        case .x2apicAPI: IRQFD_KVM_CAP_X2APIC_API
        case .nrVCPUs: IRQFD_KVM_CAP_NR_VCPUS
        case .maxVCPUs: IRQFD_KVM_CAP_MAX_VCPUS
        case .immediateExit: IRQFD_KVM_CAP_IMMEDIATE_EXIT
        }
    }
}
#endif
