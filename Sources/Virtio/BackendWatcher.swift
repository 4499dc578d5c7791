#if os(Linux)
import Foundation
import Glibc
import IrqFdCore
import IrqFdLinux
import Synchronization
import SystemPackage

/// What the watcher thread tells its device.
protocol BackendWatcherClient: AnyObject, Sendable {
    /// Call signals seen with `.userspace` delivery, and flood warnings.
    var callMonitor: CallFloodMonitor { get }
    /// Userspace delivery: queue `q`'s backend signalled its call fd.
    func completed(queue q: Int)
    /// Connection `connection`'s socket hung up.
    func backendHungUp(connection: Int)
}

/// The device's VMM thread (epoll(7)): it watches the backend socket for a
/// hang-up, so that a backend that dies while the device is idle is noticed
/// at once rather than at the next message; it enforces the deadline of the
/// backend operation under way (``arm(deadline:socket:)``); and with
/// `.userspace` delivery it waits on the queues' call fds and injects each
/// completion through the emulator's userspace path (KVM_SIGNAL_MSI), which
/// is what a VMM without irqfd does.
///
/// Every socket is watched through a copy the thread owns
/// (``FileDescriptor/duplicateCloseOnExec()``): the front-end may close its
/// own descriptor at any time, and a number watched after close(2) could be
/// a new file. ``watch(socket:connection:)`` hands over a new copy and only
/// the thread closes the old, between two waits.
final class CallPoller: Sendable {
    /// With `.userspace` delivery, the call eventfds waited on (nil: none).
    private let calls: ConnectionScopedCalls?
    private let epoll: Epoll
    private let stopEvent: EventFD
    /// Signalled when the watched socket or the deadline changes.
    private let wake: EventFD
    private let done: EventFD
    private struct Watch {
        /// The copy of the backend socket being watched, and its connection.
        var socket: (descriptor: FileDescriptor, connection: Int)?
        /// The copy registered with epoll (the thread's view).
        var registered: FileDescriptor?
        /// The operation deadline, and a copy of the socket it is talking on.
        var deadline: (instant: ContinuousClock.Instant, socket: FileDescriptor)?
        /// Copies no longer used, closed by the thread before its next wait.
        var retired: [FileDescriptor] = []
        /// Deadlines that passed (the socket was shut down).
        var expired = 0
    }
    private let watched = Mutex(Watch())
    /// The thread's pthread_self(), once it runs (``stop()`` must not wait for itself).
    private let thread = Mutex<pthread_t?>(nil)
    /// The device the thread reports to, held weakly (the device's deinit stops the thread).
    private let client = Mutex(WeakClient())
    private struct WeakClient: @unchecked Sendable {
        // @unchecked: a weak reference to a Sendable class, read and written under `client`'s lock only.
        weak var device: (any BackendWatcherClient)?
    }

    private static let stopToken: UInt64 = 0
    private static let wakeToken: UInt64 = 1
    private static let socketToken: UInt64 = 2
    private static let firstCallToken: UInt64 = 3

    /// A watcher that also waits on `calls` (their current generation, whichever it is).
    init(calls: ConnectionScopedCalls?) throws(IrqFdError) {
        self.calls = calls
        stopEvent = try EventFD()
        wake = try EventFD()
        done = try EventFD()
        do throws(SystemCallError) {
            epoll = try Epoll()
            try epoll.add(stopEvent.fileDescriptor, token: Self.stopToken)
            try epoll.add(wake.fileDescriptor, token: Self.wakeToken)
            try calls?.watch(in: epoll, firstToken: Self.firstCallToken)
        } catch {
            throw .systemCall(error)
        }
    }

    /// Watches `socket` (copied; nil: nothing) as connection `connection`;
    /// the previous socket's copy is closed by the thread.
    func watch(socket: FileDescriptor?, connection: Int) {
        let copy = socket.flatMap { try? $0.duplicateCloseOnExec() }
        watched.withLock { w in
            if let old = w.socket { w.retired.append(old.descriptor) }
            w.socket = copy.map { ($0, connection) }
        }
        wake.signal()
    }

    /// The socket copy being watched (a test checks that it is closed once the connection is).
    var watchedDescriptor: FileDescriptor? { watched.withLock { $0.socket?.descriptor } }

    /// One deadline for a whole backend operation (a start, a reset, a
    /// reconnection), however many messages it takes: when it passes, the
    /// thread shuts `socket` down (shutdown(2) on its own copy), so the
    /// exchange waiting on it fails at once and the connection closes.
    func arm(deadline: ContinuousClock.Instant, socket: FileDescriptor?) {
        let copy = socket.flatMap { try? $0.duplicateCloseOnExec() }
        watched.withLock { w in
            if let old = w.deadline { w.retired.append(old.socket) }
            w.deadline = copy.map { (deadline, $0) }
        }
        wake.signal()
    }

    /// The operation ended: no deadline.
    func disarm() {
        watched.withLock { w in
            if let old = w.deadline { w.retired.append(old.socket) }
            w.deadline = nil
        }
    }

    /// Shuts the connection of `socket` down now (shutdown(2), SHUT_RDWR on a
    /// copy): an exchange waiting on it fails at once, so that a caller can
    /// then close the front-end without waiting for the backend.
    static func shutDown(_ socket: FileDescriptor?) {
        guard let socket else { return }
        _ = Glibc.shutdown(socket.rawValue, Int32(SHUT_RDWR))
    }

    /// Shuts the watched connection down now (and the socket an operation
    /// is talking on): whatever waits on it fails at once.
    func shutDownConnection() {
        watched.withLock { w in
            Self.shutDown(w.socket?.descriptor)
            Self.shutDown(w.deadline?.socket)
        }
    }

    /// Operation deadlines that passed.
    var expiredDeadlines: Int { watched.withLock { $0.expired } }

    /// Starts the thread (`name` names it). It enforces deadlines at once,
    /// before there is a device to report to: the device's first connection
    /// runs under one (``report(to:)`` names the device once it exists).
    /// Once ``stop()`` has returned it may start again (a device thawed
    /// after a hand-off that failed): the thread then watches nothing until
    /// ``watch(socket:connection:)``.
    func start(name: String) {
        // The previous thread, if any, ended: its stop request and end are not this one's.
        _ = stopEvent.consume()
        _ = done.consume()
        let thread = Thread { [self] in
            self.thread.withLock { $0 = pthread_self() }
            run(device: { client.withLock { $0.device } })
            done.signal()
        }
        thread.name = "\(name) backend"
        thread.stackSize = 1 << 20
        thread.start()
    }

    /// From now on the thread reports hang-ups and completions to `device` (held weakly).
    func report(to device: any BackendWatcherClient) { client.withLock { $0.device = device } }

    /// Starts the thread reporting to `device` (held weakly: the device's deinit stops it).
    func start(device: any BackendWatcherClient, name: String) {
        report(to: device)
        start(name: name)
    }

    private func run(device: () -> (any BackendWatcherClient)?) {
        var registered: FileDescriptor?
        loop: while true {
            let (socket, deadline) = watched.withLock { w in
                // Expired deadlines shut their socket down here, on the thread.
                if let d = w.deadline, d.instant <= .now {
                    Self.shutDown(d.socket)
                    w.retired.append(d.socket)
                    w.deadline = nil
                    w.expired += 1
                }
                return (w.socket, w.deadline?.instant)
            }
            if registered != socket?.descriptor {
                if let registered { try? epoll.remove(registered) }
                registered = nil
                if let socket {
                    // POLLRDHUP: the peer closed its end; EPOLLHUP and EPOLLERR are always reported.
                    if (try? epoll.add(socket.descriptor, events: .peerClosed, token: Self.socketToken)) != nil {
                        registered = socket.descriptor
                    }
                }
            }
            watched.withLock { w in
                // Not registered any more, so safe to close.
                for fd in w.retired where fd != registered { try? fd.close() }
                w.retired.removeAll { $0 != registered }
            }
            let timeout: Duration = deadline.map { max(.zero, min(.seconds(1), $0 - .now)) } ?? .seconds(1)
            let events: [Epoll.Event]
            do throws(SystemCallError) { events = try epoll.wait(timeout: timeout) } catch { break }
            for event in events {
                switch event.token {
                case Self.stopToken: break loop
                case Self.wakeToken: _ = wake.consume()
                case Self.socketToken:
                    guard let socket, registered == socket.descriptor else { continue }
                    // Stop watching it (no busy loop on a dead socket), shut it down (an
                    // exchange under way fails at once), then tell the device.
                    try? epoll.remove(socket.descriptor)
                    Self.shutDown(socket.descriptor)
                    registered = nil
                    watched.withLock { w in
                        if w.socket?.descriptor == socket.descriptor {
                            w.retired.append(socket.descriptor)
                            w.socket = nil
                        }
                    }
                    device()?.backendHungUp(connection: socket.connection)
                default:
                    // A retired generation's report is dropped: that call fd reaches nobody.
                    guard let (q, count) = calls?.consume(token: event.token), count != 0 else { continue }
                    // One interrupt per wake-up: signals coalesce, as in the kernel's irqfd.
                    device()?.callMonitor.observe(queue: q, signals: count)
                    device()?.completed(queue: q)
                }
            }
        }
        if let registered { try? epoll.remove(registered) }
        watched.withLock { w in
            for fd in w.retired { try? fd.close() }
            if let socket = w.socket { try? socket.descriptor.close() }
            if let deadline = w.deadline { try? deadline.socket.close() }
            w = Watch()
        }
    }

    /// Tells the thread to end and waits (up to 5 s) until it has closed
    /// its descriptors. On the thread itself it only tells: the thread holds
    /// the device for the length of one call, so the device's last reference
    /// can go there and its deinit run on this thread, which ends when the
    /// deinit returns; waiting for it would stall the release 5 s.
    func stop() {
        stopEvent.signal()
        let onThread = thread.withLock { t in t.map { pthread_equal($0, pthread_self()) != 0 } ?? false }
        // The end stays latched: a second stop (a frozen device's deinit) returns at once.
        if !onThread, done.wait(timeout: .seconds(5)) { done.signal() }
    }
}
#endif
