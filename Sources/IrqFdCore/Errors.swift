public import SystemPackage

/// A system call that failed: the call's name (for an ioctl, its request name)
/// and the errno it returned.
public struct SystemCallError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The C call or ioctl request that failed, e.g. `"KVM_SET_GSI_ROUTING"`.
    public var call: String
    /// The errno the call returned.
    public var errno: Errno

    /// Makes an error for `call` having failed with `errno`.
    public init(call: String, errno: Errno) {
        self.call = call
        self.errno = errno
    }

    public var description: String { "\(call) failed: \(errno) (errno \(errno.rawValue))" }
}

/// Why an irqfd operation failed.
public enum IrqFdError: Error, Hashable, Sendable, CustomStringConvertible {
    /// A system call failed; the route and table are as they were before the call.
    case systemCall(SystemCallError)
    /// Every GSI the partition may hand out is in use (rule 1).
    case gsiExhausted(capacity: Int)
    /// The MSI address cannot be delivered by this platform (x86: not 0xFEExxxxx);
    /// the route was left disarmed (rule 7).
    case undeliverableAddress(UInt64)
    /// The partition (VM) this route belonged to is gone; nothing was done.
    case partitionGone
    /// The operation or backend is not available here, and why.
    case unsupported(String)

    /// Shorthand for a failed system call.
    public static func call(_ name: String, _ errno: Errno) -> IrqFdError {
        .systemCall(SystemCallError(call: name, errno: errno))
    }

    public var description: String {
        switch self {
        case .systemCall(let error): error.description
        case .gsiExhausted(let capacity): "no free GSI: all \(capacity) routable GSIs are in use"
        case .undeliverableAddress(let address):
            "MSI address 0x\(String(address, radix: 16)) is not deliverable (x86 needs 0xFEExxxxx)"
        case .partitionGone: "the partition (VM) is gone"
        case .unsupported(let why): "unsupported: \(why)"
        }
    }
}
