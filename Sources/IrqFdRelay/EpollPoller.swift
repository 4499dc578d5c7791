#if os(Linux)
import CLinuxKVM
import Glibc
public import IrqFdCore
import IrqFdLinux
import Synchronization
import SystemPackage

/// The relay's Linux thread: one epoll(7) instance, level-triggered, with a
/// private eventfd to wake the thread for shutdown.
///
/// The epoll descriptor is owned here and closed by `stop()` after the thread
/// has been joined, so a dropped partition leaves no descriptor open.
public final class EpollPoller: RelayPoller {
    private let epoll: Int32
    private let wake: EventFD
    private let thread = Mutex<pthread_t?>(nil)
    private let stopped = Atomic<Bool>(false)
    /// The token the wake eventfd is registered under; routes never get it.
    static let wakeToken: UInt64 = 0

    /// Creates the epoll instance (epoll_create1(EPOLL_CLOEXEC)) and its wake eventfd.
    public convenience init() throws(IrqFdError) {
        try self.init { (epoll, wake) throws(IrqFdError) in
            try Self.control(epoll, EPOLL_CTL_ADD, wake, token: Self.wakeToken)
        }
    }

    /// The initializer proper; `registerWake` adds the wake eventfd to the
    /// epoll instance (tests make it fail).
    ///
    /// Every step that can fail runs before the last stored property is set:
    /// a failed init then has no deinit, so the epoll descriptor is closed
    /// exactly once, here, and never again by `stop()` (a second close could
    /// hit a descriptor another thread opened meanwhile).
    init(registeringWakeWith registerWake: (_ epoll: Int32, _ wake: Int32) throws(IrqFdError) -> Void) throws(IrqFdError) {
        let fd = epoll_create1(Int32(EPOLL_CLOEXEC))
        guard fd >= 0 else { throw .call("epoll_create1", Errno(rawValue: errno)) }
        let wakeEvent: EventFD
        do throws(IrqFdError) {
            wakeEvent = try EventFD()
            try registerWake(fd, wakeEvent.fileDescriptor.rawValue)
        } catch {
            close(fd)
            throw error
        }
        epoll = fd
        wake = wakeEvent
    }

    deinit { stop() }

    /// epoll_ctl(2) on `fd`, EPOLLIN, level-triggered.
    private static func control(_ epoll: Int32, _ op: Int32, _ fd: Int32, token: UInt64) throws(IrqFdError) {
        var event = epoll_event()
        event.events = EPOLLIN.rawValue
        event.data.u64 = token
        guard epoll_ctl(epoll, op, fd, &event) == 0 else {
            throw .call(op == EPOLL_CTL_ADD ? "epoll_ctl(EPOLL_CTL_ADD)" : "epoll_ctl(EPOLL_CTL_DEL)", Errno(rawValue: errno))
        }
    }

    /// Starts the relay thread (pthread_create).
    public func start(_ ready: @escaping @Sendable (UInt64) -> Void) throws(IrqFdError) {
        let context = Unmanaged.passRetained(ThreadContext(epoll: epoll, ready: ready))
        var id = pthread_t()
        let result = pthread_create(&id, nil, { raw in
            let context = Unmanaged<ThreadContext>.fromOpaque(raw!).takeRetainedValue()
            context.run()
            return nil
        }, context.toOpaque())
        guard result == 0 else {
            context.release()
            throw .call("pthread_create", Errno(rawValue: result))
        }
        thread.withLock { $0 = id }
    }

    /// EPOLL_CTL_ADD.
    public func watch(_ handle: NativeEventHandle, token: UInt64) throws(IrqFdError) {
        try Self.control(epoll, EPOLL_CTL_ADD, Int32(handle.rawValue), token: token)
    }

    /// EPOLL_CTL_DEL.
    public func unwatch(_ handle: NativeEventHandle, token: UInt64) throws(IrqFdError) {
        try Self.control(epoll, EPOLL_CTL_DEL, Int32(handle.rawValue), token: token)
    }

    /// Wakes the thread, joins it (pthread_join) and closes the epoll descriptor.
    public func stop() {
        guard !stopped.exchange(true, ordering: .acquiringAndReleasing) else { return }
        wake.signal()
        if let id = thread.withLock({ $0 }) {
            precondition(!pthread_equal(id, pthread_self()).isTrue, "the relay thread cannot stop itself")
            pthread_join(id, nil)
        }
        close(epoll)
    }

    /// What the thread needs; retained by the thread for its whole life.
    private final class ThreadContext: Sendable {
        let epoll: Int32
        let ready: @Sendable (UInt64) -> Void

        init(epoll: Int32, ready: @escaping @Sendable (UInt64) -> Void) {
            self.epoll = epoll
            self.ready = ready
        }

        func run() {
            var events = [epoll_event](repeating: epoll_event(), count: 64)
            while true {
                let count = events.withUnsafeMutableBufferPointer { epoll_wait(epoll, $0.baseAddress, Int32($0.count), -1) }
                if count < 0 {
                    if errno == EINTR { continue }
                    preconditionFailure("epoll_wait failed: \(Errno(rawValue: errno))")
                }
                for index in 0..<Int(count) {
                    let token = events[index].data.u64
                    // The wake eventfd is signalled only by stop(); it is never consumed, so
                    // a stop cannot be missed however the reports are batched.
                    if token == EpollPoller.wakeToken {
                        return
                    } else {
                        ready(token)
                    }
                }
            }
        }
    }
}

extension Int32 {
    fileprivate var isTrue: Bool { self != 0 }
}
#endif
