#if os(Windows)
// Compiled only on Windows; never built or run on the machine this package is
// developed on.
public import IrqFdCore
import Synchronization
import SystemPackage
import WinSDK

/// The relay's Windows thread: `WaitForMultipleObjects` over the watched
/// events plus a private wake event, re-read whenever the set changes.
///
/// A wait on an auto-reset event consumes its signal, so before reporting a
/// token the poller signals the event again (`SetEvent`; harmless on a
/// manual-reset event, which a wait leaves set). The relay then consumes it
/// with `Event.tryWait()` under the route's lock, exactly as on Linux, and a
/// route that was masked meanwhile keeps the signal latched.
///
/// One wait covers at most 63 events (MAXIMUM_WAIT_OBJECTS is 64, one is the
/// wake event); `watch` beyond that throws `unsupported`.
public final class WaitPoller: RelayPoller {
    private static let capacity = 63
    private let watched = Mutex<[UInt64: Int]>([:])
    /// The wake event's HANDLE bits (auto-reset; owned here).
    private let wake: Int
    private let thread = Mutex<Int?>(nil)
    private let stopped = Atomic<Bool>(false)

    /// Creates the wake event (CreateEventW, auto-reset, unsignalled).
    public init() throws(IrqFdError) {
        guard let event = CreateEventW(nil, false, false, nil) else {
            throw .systemCall(SystemCallError(call: "CreateEventW (error \(GetLastError()))", errno: .ioError))
        }
        wake = Int(bitPattern: event)
    }

    deinit {
        stop()
        _ = CloseHandle(HANDLE(bitPattern: wake)!)
    }

    /// Starts the relay thread (CreateThread).
    public func start(_ ready: @escaping @Sendable (UInt64) -> Void) throws(IrqFdError) {
        let context = Unmanaged.passRetained(Context(poller: self, ready: ready))
        let handle = CreateThread(
            nil, 0,
            { raw in
                let context = Unmanaged<Context>.fromOpaque(raw!).takeRetainedValue()
                context.poller.run(context.ready)
                return 0
            }, context.toOpaque(), 0, nil)
        guard let handle else {
            context.release()
            throw .systemCall(SystemCallError(call: "CreateThread (error \(GetLastError()))", errno: .ioError))
        }
        thread.withLock { $0 = Int(bitPattern: handle) }
    }

    /// What the thread needs; it holds the poller until `stop()` ends it.
    private final class Context: Sendable {
        let poller: WaitPoller
        let ready: @Sendable (UInt64) -> Void
        init(poller: WaitPoller, ready: @escaping @Sendable (UInt64) -> Void) {
            self.poller = poller
            self.ready = ready
        }
    }

    private func run(_ ready: @Sendable (UInt64) -> Void) {
        while !stopped.load(ordering: .acquiring) {
            let snapshot = watched.withLock { Array($0) }
            var handles: [HANDLE?] = [HANDLE(bitPattern: wake)] + snapshot.map { HANDLE(bitPattern: $0.value) }
            // 0xFFFFFFFF is INFINITE; WAIT_OBJECT_0 is 0.
            let result = WaitForMultipleObjects(DWORD(handles.count), &handles, false, 0xFFFF_FFFF)
            let index = Int(result)
            guard index < handles.count else { continue }  // WAIT_FAILED or an abandoned wait: look again
            if index == 0 { continue }  // the set changed, or stop()
            let (token, raw) = snapshot[index - 1]
            _ = SetEvent(HANDLE(bitPattern: raw))
            ready(token)
        }
    }

    /// Adds `handle` to the wait set and wakes the thread to re-read it.
    public func watch(_ handle: NativeEventHandle, token: UInt64) throws(IrqFdError) {
        try watched.withLock { (w: inout [UInt64: Int]) throws(IrqFdError) in
            guard w.count < Self.capacity else {
                throw .unsupported("the Windows relay waits on at most \(Self.capacity) events")
            }
            w[token] = handle.rawValue
        }
        _ = SetEvent(HANDLE(bitPattern: wake))
    }

    /// Removes `token` from the wait set and wakes the thread to re-read it.
    public func unwatch(_ handle: NativeEventHandle, token: UInt64) throws(IrqFdError) {
        watched.withLock { $0[token] = nil }
        _ = SetEvent(HANDLE(bitPattern: wake))
    }

    /// Wakes the thread, waits for it to exit and closes its handle.
    public func stop() {
        guard !stopped.exchange(true, ordering: .acquiringAndReleasing) else { return }
        _ = SetEvent(HANDLE(bitPattern: wake))
        if let raw = thread.withLock({ $0 }), let handle = HANDLE(bitPattern: raw) {
            _ = WaitForSingleObject(handle, 0xFFFF_FFFF)
            _ = CloseHandle(handle)
        }
    }
}
#endif
