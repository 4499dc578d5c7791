#if os(Linux)
public import IrqFdCore
public import VhostUser

/// Why a virtio device could not be made.
public enum VirtioError: Error, CustomStringConvertible {
    /// The vhost-user backend refused or failed, and how.
    case backend(VhostUserError)
    /// An eventfd or route could not be made.
    case irqfd(IrqFdError)
    /// The configuration is out of range, and why.
    case configuration(String)

    public var description: String {
        switch self {
        case .backend(let e): "vhost-user backend: \(e)"
        case .irqfd(let e): "irqfd: \(e)"
        case .configuration(let why): "configuration: \(why)"
        }
    }
}

/// What the device ignored or refused, by kind (virtio 1.2 says what a device
/// does with bad driver values; none is fatal).
public struct VirtioCounters: Hashable, Sendable, CustomStringConvertible {
    /// Writes to read-only fields (device_feature, num_queues, queue_notify_off, config_generation, device config).
    public var readOnlyWrites = 0
    /// Accesses of a size or alignment the field does not have, or outside a structure.
    public var badAccesses = 0
    /// queue_size writes that were not a power of two in 1...256.
    public var badQueueSizes = 0
    /// Ring addresses outside RAM (or misaligned) at DRIVER_OK: the queue was not started.
    public var badRingAddresses = 0
    /// Notifies for queues that do not exist, or whose value is not the queue index.
    public var badNotifies = 0
    /// Notifies that reached the VMM (no ioeventfd bound at that moment).
    public var notifyExits = 0
    /// Vectors outside the MSI-X table written to msix_config or queue_msix_vector.
    public var badVectors = 0
    /// device_status writes that cleared bits or skipped a step (virtio 1.2 section 3.1.1).
    public var badStatusWrites = 0
    /// Feature sets the device refused at FEATURES_OK.
    public var refusedFeatures = 0
    /// Backend calls that failed (each set DEVICE_NEEDS_RESET).
    public var backendFailures = 0
    /// Requests on a queue the VMM serves that broke the ring's rules (a bad
    /// descriptor chain, an index too far ahead): refused, used with nothing written.
    public var badServedRequests = 0

    public var description: String {
        "read-only writes \(readOnlyWrites), bad accesses \(badAccesses), bad queue sizes \(badQueueSizes), "
            + "bad ring addresses \(badRingAddresses), bad notifies \(badNotifies), notify exits \(notifyExits), "
            + "bad vectors \(badVectors), bad status writes \(badStatusWrites), "
            + "refused features \(refusedFeatures), backend failures \(backendFailures), "
            + "bad served requests \(badServedRequests)"
    }
}
#endif
