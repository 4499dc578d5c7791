/// The platform's native handle of an event: a file descriptor on Linux, a
/// `HANDLE` on Windows. It is borrowed: the `Event` that returned it owns it.
public struct NativeEventHandle: Hashable, Sendable {
    /// The raw value (an `Int32` file descriptor on Linux, a `HANDLE` on Windows).
    public var rawValue: Int
    /// Wraps a raw handle value.
    public init(rawValue: Int) { self.rawValue = rawValue }
}

/// A counting event that a device signals and a hypervisor (or the relay) waits on.
///
/// On Linux this is an eventfd; signals accumulate in its counter until they are
/// consumed, which is what makes masking lossless: a signal that arrives while
/// nobody listens stays latched.
public protocol Event: AnyObject, Sendable {
    /// Adds one to the counter (a device interrupt). Never blocks.
    func signal()
    /// Consumes everything latched; returns whether anything was. Never blocks.
    func tryWait() -> Bool
    /// Waits until the event is signalled or `timeout` passes, consuming the
    /// signal if there was one. Returns whether it was signalled.
    func wait(timeout: Duration) -> Bool
    /// The native handle, to hand to a device, another process or the kernel.
    var nativeHandle: NativeEventHandle { get }
}
