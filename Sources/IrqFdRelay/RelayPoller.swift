public import IrqFdCore

/// The one platform-specific part of the relay: a thread that sleeps until
/// one of the watched events is signalled and reports which.
///
/// - Linux: `EpollPoller` (epoll(7), level-triggered, one thread).
/// - Windows: `WaitPoller`, a thread blocked in `WaitForMultipleObjects` on
///   the route events (up to 63; thread-pool waits, `SetThreadpoolWait`, would
///   lift that), injecting with `WHvRequestInterrupt`. Compiled only on Windows.
/// - macOS: kqueue(2) with `EVFILT_USER` or a pipe per route, injecting with
///   Hypervisor.framework's `hv_gic_send_msi`.
///
/// Reports are level-triggered: a watched event that is still signalled is
/// reported again, so the relay must either consume it or stop watching it.
/// That is what makes masking lossless: a masked route is not watched, and
/// its signals stay latched in the event until unmask or `consumePending`.
public protocol RelayPoller: AnyObject, Sendable {
    /// Starts the relay thread. It calls `ready(token)` for each watched event
    /// that is signalled, one call at a time, until `stop()`.
    func start(_ ready: @escaping @Sendable (UInt64) -> Void) throws(IrqFdError)
    /// Starts reporting `handle` under `token` (one system call).
    func watch(_ handle: NativeEventHandle, token: UInt64) throws(IrqFdError)
    /// Stops reporting `handle` (one system call). A report already taken from
    /// the kernel may still be delivered after this returns: the relay checks,
    /// under the route's lock, that the route is still armed before acting.
    func unwatch(_ handle: NativeEventHandle, token: UInt64) throws(IrqFdError)
    /// Stops the thread, waits for it to exit and releases the poller's
    /// descriptors. Idempotent. Must not be called from the relay thread.
    func stop()
}
