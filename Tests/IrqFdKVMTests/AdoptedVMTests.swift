#if os(Linux)
import CLinuxKVM
import Glibc
import IrqFdCore
import IrqFdKVM
import IrqFdLinux
import KVM
import SystemPackage
import TestSupport
import Testing

/// A VM this package did not make: /dev/kvm opened and KVM_CREATE_VM and
/// KVM_CREATE_IRQCHIP issued by raw ioctls, as a VMM's own code would.
private final class ForeignVM {
    let kvm: Int32
    let vm: Int32
    init() throws {
        kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC)
        guard kvm >= 0 else { throw TestFailure("open(/dev/kvm): errno \(errno)") }
        vm = irqfd_ioctl_val(kvm, IRQFD_KVM_CREATE_VM, 0)
        guard vm >= 0 else {
            close(kvm)
            throw TestFailure("KVM_CREATE_VM: errno \(irqfd_errno())")
        }
        guard irqfd_ioctl_val(vm, IRQFD_KVM_CREATE_IRQCHIP, 0) == 0 else {
            close(vm)
            close(kvm)
            throw TestFailure("KVM_CREATE_IRQCHIP: errno \(irqfd_errno())")
        }
    }
    deinit {
        close(vm)
        close(kvm)
    }

    /// KVM_IRQFD (assign, or deassign) of `event` for `gsi` on this VM's own
    /// descriptor: 0, or the errno.
    func irqfd(_ event: any Event, gsi: UInt32, deassign: Bool = false) -> Int32 {
        var request = kvm_irqfd(
            fd: UInt32(event.nativeHandle.rawValue), gsi: gsi, flags: deassign ? UInt32(KVM_IRQFD_FLAG_DEASSIGN) : 0,
            resamplefd: 0, pad: (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0))
        return irqfd_ioctl_ptr(vm, IRQFD_KVM_IRQFD, &request) == 0 ? 0 : irqfd_errno()
    }
}

/// `KVMSystem.adoptVM(_:)`: a VMM with its own VM puts this package's irqfd
/// backend on it.
@Suite(needsKVM) struct AdoptedVMTests {
    /// The adopted duplicate names the VMM's own VM: a route armed through it
    /// is the irqfd the kernel holds for that VM (assigning the same eventfd
    /// again through the VMM's descriptor is refused with EBUSY; once the
    /// route is masked it is accepted). Releasing the adopted VM closes the
    /// duplicate only.
    @Test func routesOnAnAdoptedVMAreArmedInTheVMMsOwnVM() throws {
        let foreign = try ForeignVM()
        let copy = fcntl(foreign.vm, F_DUPFD_CLOEXEC, 0)
        try #require(copy >= 0)
        let record = OwnedDescriptor(copy)
        do {
            let vm = try KVMSystem().adoptVM(FileDescriptor(rawValue: copy))
            let irqfd = try KVMIrqFd(vm: vm)
            let route = try irqfd.newRoute()
            try route.setMsi(MsiMessage(destination: 0, vector: 0x41))
            let counts = vm.counters.snapshot
            #expect(counts.routingPushes == 1 && counts.irqfdAssigns == 1, "\(counts)")
            #expect(irqfd.kernel.kernelMsiEntries[route.gsi] == MsiMessage(destination: 0, vector: 0x41))
            #expect(foreign.irqfd(route.event, gsi: route.gsi) == EBUSY, "the kernel holds this irqfd in the VMM's VM")
            try route.mask()
            #expect(foreign.irqfd(route.event, gsi: route.gsi) == 0, "masked: the VMM's VM has no irqfd for it")
            #expect(foreign.irqfd(route.event, gsi: route.gsi, deassign: true) == 0)
            try route.unmask()
            #expect(foreign.irqfd(route.event, gsi: route.gsi) == EBUSY, "unmasked: armed again, in the same VM")
        }
        #expect(!record.isOpen, "the adopted duplicate is closed with the VM")
        #expect(fcntl(foreign.vm, F_GETFD) != -1, "the VMM's own descriptor is its own")
        #expect(
            irqfd_ioctl_val(foreign.vm, IRQFD_KVM_CHECK_EXTENSION, UInt(Capability.irqfd.rawValue)) > 0,
            "and still works")
    }

    /// Anything but a VM descriptor is refused, naming what it is, and left open.
    @Test func aDescriptorThatIsNotAVMIsRefusedAndLeftOpen() throws {
        let foreign = try ForeignVM()
        let system = try KVMSystem()
        let event = try EventFD()
        let vcpu = irqfd_ioctl_val(foreign.vm, IRQFD_KVM_CREATE_VCPU, 0)
        try #require(vcpu >= 0)
        defer { close(vcpu) }
        for (fd, what) in [
            (foreign.kvm, "/dev/kvm"), (vcpu, "anon_inode:kvm-vcpu:0"),
            (event.fileDescriptor.rawValue, "anon_inode:[eventfd]"),
        ] {
            #expect {
                _ = try system.adoptVM(FileDescriptor(rawValue: fd))
            } throws: { error in
                guard let error = error as? SystemCallError else { return false }
                return error.errno == .invalidArgument && error.call.contains(what)
                    && error.call.contains("anon_inode:kvm-vm")
            }
            #expect(fcntl(fd, F_GETFD) != -1, "\(what) left open")
        }
        #expect {
            _ = try system.adoptVM(FileDescriptor(rawValue: Int32.max))
        } throws: { error in
            (error as? SystemCallError)?.errno == .badFileDescriptor
        }
    }
}
#endif
