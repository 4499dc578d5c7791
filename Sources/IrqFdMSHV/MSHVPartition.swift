public import IrqFdCore
public import SystemPackage

#if os(Linux)
import CLinuxKVM
import Glibc
import IrqFdLinux
#endif

/// The ioctls of an mshv partition descriptor that the irqfd backend makes,
/// behind one small seam: a request number and the argument's bytes, exactly
/// as ioctl(2) hands them to the kernel.
///
/// `MSHVPartition` implements it with ioctl(2) on a real partition fd. Because
/// the seam sits below every encoding step, an implementation that records the
/// bytes it is given sees precisely what the kernel would read; that is how the
/// backend is tested on machines without /dev/mshv.
public protocol MSHVPartitionIoctls: AnyObject, Sendable {
    /// ioctl(2) on the partition descriptor with `request` and a pointer to
    /// `argument`. Throws an error naming the request and its errno.
    func ioctl(_ request: IoctlRequest, argument: UnsafeMutableRawBufferPointer) throws(SystemCallError)
}

#if os(Linux)
/// `/dev/mshv`: the Microsoft Hypervisor's root-partition driver, present only
/// when Linux runs as the root partition of the Microsoft Hypervisor (for
/// example a Linux host of Azure's or Cloud Hypervisor's mshv flavour).
public final class MSHVSystem: Sendable {
    private let descriptor: Int32
    /// The device node this handle was opened from.
    public let path: String

    /// Opens the mshv device (open(2), O_RDWR | O_CLOEXEC).
    ///
    /// Where there is no such device (no node, or no driver behind it) this
    /// throws `.unsupported` saying so; any other failure is `.systemCall`
    /// naming `open(path)` and the errno.
    public init(path: String = "/dev/mshv") throws(IrqFdError) {
        let fd = Glibc.open(path, O_RDWR | O_CLOEXEC)
        guard fd >= 0 else {
            let error = Errno(rawValue: errno)
            if error == .noSuchFileOrDirectory || error == .operationNotSupportedByDevice
                || error == .noSuchAddressOrDevice
            {
                throw .unsupported(Self.absenceMessage(path: path, errno: error))
            }
            throw .call("open(\(path))", error)
        }
        descriptor = fd
        self.path = path
    }

    deinit { _ = Glibc.close(descriptor) }

    /// What `init(path:)` says when the device is absent.
    public static func absenceMessage(path: String = "/dev/mshv", errno: Errno = .noSuchFileOrDirectory) -> String {
        "\(path) is not present (\(errno)): this kernel is not running as the Microsoft Hypervisor's root partition with the mshv driver"
    }

    /// Whether the device node exists (it may still refuse to open).
    public static func isPresent(path: String = "/dev/mshv") -> Bool { access(path, F_OK) == 0 }

    /// MSHV_CREATE_PARTITION: a new partition, not yet initialized. Early
    /// partition properties are set before `MSHVPartition.initialize()`.
    public func createPartition(_ description: MSHV.CreatePartition = MSHV.CreatePartition()) throws(IrqFdError)
        -> MSHVPartition
    {
        var bytes = description.bytes
        let request = MSHV.createPartition
        let fd: Int32
        let result = bytes.withUnsafeMutableBytes { raw in
            Result { () throws(SystemCallError) -> Int32 in
                try retryingInterrupts(request.name) { irqfd_ioctl_ptr(descriptor, request.number, raw.baseAddress) }
            }
        }
        do throws(SystemCallError) { fd = try result.get() } catch { throw .systemCall(error) }
        return MSHVPartition(adopting: fd)
    }
}

/// An mshv partition descriptor (from MSHV_CREATE_PARTITION), owned by this
/// object and closed when it is released.
public final class MSHVPartition: MSHVPartitionIoctls {
    /// The partition descriptor; borrowed, this object owns it.
    public let rawDescriptor: Int32

    /// Takes ownership of a partition descriptor made elsewhere.
    public init(adopting descriptor: Int32) {
        rawDescriptor = descriptor
    }

    deinit { _ = Glibc.close(rawDescriptor) }

    /// ioctl(2) on the partition descriptor, retrying on EINTR.
    public func ioctl(_ request: IoctlRequest, argument: UnsafeMutableRawBufferPointer) throws(SystemCallError) {
        _ = try retryingInterrupts(request.name) {
            irqfd_ioctl_ptr(rawDescriptor, request.number, argument.baseAddress)
        }
    }

    /// MSHV_INITIALIZE_PARTITION: makes the partition usable (vCPUs, memory, interrupts).
    public func initialize() throws(SystemCallError) {
        let request = MSHV.initializePartition
        _ = try retryingInterrupts(request.name) { irqfd_ioctl_val(rawDescriptor, request.number, 0) }
    }
}
#endif
