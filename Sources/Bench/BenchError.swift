public import IrqFdCore

/// Why a benchmark run stopped.
public enum BenchError: Error, CustomStringConvertible, Sendable {
    /// A library call failed (what was being done, and the library's error).
    case library(String, IrqFdError)
    /// A floor (C) call failed: the call and the negative errno it returned.
    case floor(String, Int32)
    /// The benchmark could not set something up, and why.
    case setup(String)
    /// An interrupt signalled on `path` never reached the guest (within 2 s), and in which step.
    case lost(path: String, vector: UInt8, during: String)

    public var description: String {
        switch self {
        case .library(let what, let error): "\(what): \(error)"
        case .floor(let call, let negativeErrno): "\(call) (C floor) failed: errno \(-negativeErrno)"
        case .setup(let why): "setup: \(why)"
        case .lost(let path, let vector, let step):
            "\(path): an interrupt on vector 0x\(String(vector, radix: 16)) never reached the guest during \(step) (waited 2 s)"
        }
    }
}
