#if os(Linux)
import Glibc
public import IrqFdCore
import IrqFdLinux
import Synchronization
import SystemPackage

/// The relay's Linux thread: IrqFdLinux's `Epoll` (level-triggered), with a
/// private eventfd to wake the thread for shutdown.
///
/// The epoll descriptor is closed by `stop()` after the thread has been
/// joined (or, for a poller whose thread never started, when it is released),
/// so a dropped partition leaves no descriptor open.
public final class EpollPoller: RelayPoller {
    private let epoll: Epoll
    private let wake: EventFD
    private let thread = Mutex<pthread_t?>(nil)
    private let stopped = Atomic<Bool>(false)
    /// The token the wake eventfd is registered under; routes never get it.
    static let wakeToken: UInt64 = 0

    /// Creates the epoll instance (epoll_create1(EPOLL_CLOEXEC)) and its wake eventfd.
    public convenience init() throws(IrqFdError) {
        try self.init { (epoll, wake) throws(IrqFdError) in
            do throws(SystemCallError) { try epoll.add(wake.fileDescriptor, token: Self.wakeToken) } catch {
                throw .systemCall(error)
            }
        }
    }

    /// The initializer proper; `registerWake` adds the wake eventfd to the
    /// epoll instance (tests make it fail).
    ///
    /// Every step that can fail runs before the last stored property is set:
    /// a failed init then has no deinit, so `stop()` (which signals the wake
    /// eventfd) never runs on a half-made poller; the epoll instance closes
    /// its descriptor once, when released.
    init(
        registeringWakeWith registerWake: (_ epoll: Epoll, _ wake: EventFD) throws(IrqFdError) -> Void
    ) throws(IrqFdError) {
        let instance: Epoll
        do throws(SystemCallError) { instance = try Epoll() } catch { throw .systemCall(error) }
        let wakeEvent = try EventFD()
        try registerWake(instance, wakeEvent)
        epoll = instance
        wake = wakeEvent
    }

    deinit { stop() }

    /// Starts the relay thread (pthread_create).
    public func start(_ ready: @escaping @Sendable (UInt64) -> Void) throws(IrqFdError) {
        let context = Unmanaged.passRetained(ThreadContext(epoll: epoll, ready: ready))
        var id = pthread_t()
        let result = pthread_create(
            &id, nil,
            { raw in
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

    /// EPOLL_CTL_ADD, EPOLLIN, level-triggered.
    public func watch(_ handle: NativeEventHandle, token: UInt64) throws(IrqFdError) {
        do throws(SystemCallError) {
            try epoll.add(FileDescriptor(rawValue: Int32(handle.rawValue)), token: token)
        } catch {
            throw .systemCall(error)
        }
    }

    /// EPOLL_CTL_DEL.
    public func unwatch(_ handle: NativeEventHandle, token: UInt64) throws(IrqFdError) {
        do throws(SystemCallError) {
            try epoll.remove(FileDescriptor(rawValue: Int32(handle.rawValue)))
        } catch {
            throw .systemCall(error)
        }
    }

    /// Wakes the thread, joins it (pthread_join) and closes the epoll descriptor.
    public func stop() {
        guard !stopped.exchange(true, ordering: .acquiringAndReleasing) else { return }
        wake.signal()
        if let id = thread.withLock({ $0 }) {
            precondition(!pthread_equal(id, pthread_self()).isTrue, "the relay thread cannot stop itself")
            pthread_join(id, nil)
        }
        epoll.close()
    }

    /// The relay thread's name (pthread_setname_np), as `/proc/self/task/*/comm` shows it.
    public static let threadName = "irqfd-relay"

    /// What the thread needs; retained by the thread for its whole life.
    private final class ThreadContext: Sendable {
        let epoll: Epoll
        let ready: @Sendable (UInt64) -> Void

        init(epoll: Epoll, ready: @escaping @Sendable (UInt64) -> Void) {
            self.epoll = epoll
            self.ready = ready
        }

        func run() {
            nameThisThread(EpollPoller.threadName)
            while true {
                let events: [Epoll.Event]
                do throws(SystemCallError) { events = try epoll.wait(maximum: 64) } catch {
                    preconditionFailure("\(error)")
                }
                for event in events {
                    // The wake eventfd is signalled only by stop(); it is never consumed, so
                    // a stop cannot be missed however the reports are batched.
                    if event.token == EpollPoller.wakeToken { return }
                    ready(event.token)
                }
            }
        }
    }
}

/// Names the calling thread by writing `/proc/thread-self/comm`, which is what
/// glibc's pthread_setname_np does (Glibc's module map leaves that GNU function
/// out). The name (at most 15 bytes) lets a VMM engineer find the relay in
/// `top -H` or a core dump, and lets tests count relay threads alone. Best
/// effort: a thread without a name works the same.
private func nameThisThread(_ name: String) {
    guard let comm = try? FileDescriptor.open("/proc/thread-self/comm", .writeOnly) else { return }
    _ = try? comm.closeAfter { try comm.writeAll(name.utf8.prefix(15)) }
}

extension Int32 {
    fileprivate var isTrue: Bool { self != 0 }
}
#endif
