#if os(Linux)
import Foundation
import Glibc
import IrqFdCore
import IrqFdLinux
import Synchronization

/// What the watcher thread tells its device.
protocol BackendWatcherClient: AnyObject, Sendable {
    /// Call signals seen with `.userspace` delivery, and flood warnings.
    var callMonitor: CallFloodMonitor { get }
    /// Userspace delivery: queue `q`'s backend signalled its call fd.
    func completed(queue q: Int)
    /// Connection `connection`'s socket hung up.
    func backendHungUp(connection: Int)
}

/// The device's VMM thread (poll(2)): it watches the backend socket for a
/// hang-up, so that a backend that dies while the device is idle is noticed
/// at once rather than at the next message; and with `.userspace` delivery it
/// waits on the queues' call fds and injects each completion through the
/// emulator's userspace path (KVM_SIGNAL_MSI), which is what a VMM without
/// irqfd does.
///
/// The socket is watched through a dup(2) the thread owns (the front-end may
/// close its own descriptor at any time, and a number polled after close(2)
/// could be a new file); ``watch(socket:connection:)`` hands over a new one
/// and only the thread closes the old, between two polls.
final class CallPoller: Sendable {
    private let calls: [Int32]
    private let stopEvent: EventFD
    /// Signalled when the watched socket changes.
    private let wake: EventFD
    private let done: EventFD
    private struct Watch {
        /// The dup of the backend socket being watched, and its connection.
        var socket: (fd: Int32, connection: Int)?
        /// Dups no longer watched, closed by the thread before its next poll.
        var retired: [Int32] = []
    }
    private let watched = Mutex(Watch())
    /// The thread's pthread_self(), once it runs (``stop()`` must not wait for itself).
    private let thread = Mutex<pthread_t?>(nil)
    /// POLLRDHUP (Linux, <poll.h> with _GNU_SOURCE, which Glibc's module does not export).
    private static let pollRDHUP: Int16 = 0x2000

    init(calls: [EventFD]) throws(IrqFdError) {
        self.calls = calls.map(\.fileDescriptor.rawValue)
        stopEvent = try EventFD()
        wake = try EventFD()
        done = try EventFD()
    }

    /// Watches `socket` (duplicated; nil: nothing) as connection `connection`;
    /// the previous socket's copy is closed by the thread.
    func watch(socket: Int32?, connection: Int) {
        let copy = socket.map { fcntl($0, F_DUPFD_CLOEXEC, 0) }.flatMap { $0 >= 0 ? $0 : nil }
        watched.withLock { w in
            if let old = w.socket { w.retired.append(old.fd) }
            w.socket = copy.map { ($0, connection) }
        }
        wake.signal()
    }

    /// The socket copy being watched (a test checks that it is closed once the connection is).
    var watchedDescriptor: Int32? { watched.withLock { $0.socket?.fd } }

    /// The thread holds the device weakly: the device's deinit stops it.
    /// `name` names the thread.
    func start(device: any BackendWatcherClient, name: String) {
        let thread = Thread { [self, weak device] in
            self.thread.withLock { $0 = pthread_self() }
            while true {
                let socket = watched.withLock { w in
                    for fd in w.retired { Glibc.close(fd) }
                    w.retired = []
                    return w.socket
                }
                var fds = calls.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
                fds.append(pollfd(fd: stopEvent.fileDescriptor.rawValue, events: Int16(POLLIN), revents: 0))
                fds.append(pollfd(fd: wake.fileDescriptor.rawValue, events: Int16(POLLIN), revents: 0))
                // POLLRDHUP: the peer closed its end; POLLHUP and POLLERR are always reported.
                fds.append(pollfd(fd: socket?.fd ?? -1, events: Self.pollRDHUP, revents: 0))
                let n = poll(&fds, nfds_t(fds.count), 1000)
                if n < 0, errno != EINTR { break }
                if fds[calls.count].revents != 0 { break }
                if fds[calls.count + 1].revents != 0 { _ = wake.consume() }
                for q in calls.indices where fds[q].revents != 0 {
                    var count: UInt64 = 0
                    guard Glibc.read(calls[q], &count, 8) == 8 else { continue }
                    // One interrupt per wake-up: signals coalesce, as in the kernel's irqfd.
                    device?.callMonitor.observe(queue: q, signals: count)
                    device?.completed(queue: q)
                }
                if let socket, fds[calls.count + 2].revents & (Self.pollRDHUP | Int16(POLLHUP) | Int16(POLLERR)) != 0 {
                    // Stop watching it (no busy loop on a dead socket), then tell the device.
                    watched.withLock { w in
                        if w.socket?.fd == socket.fd {
                            w.retired.append(socket.fd)
                            w.socket = nil
                        }
                    }
                    device?.backendHungUp(connection: socket.connection)
                }
            }
            watched.withLock { w in
                for fd in w.retired { Glibc.close(fd) }
                if let socket = w.socket { Glibc.close(socket.fd) }
                w = Watch()
            }
            done.signal()
        }
        thread.name = "\(name) backend"
        thread.stackSize = 1 << 20
        thread.start()
    }

    /// Tells the thread to end and waits (up to 5 s) until it has closed
    /// its descriptors. On the thread itself it only tells: the thread holds
    /// the device for the length of one call, so the device's last reference
    /// can go there and its deinit run on this thread, which ends when the
    /// deinit returns; waiting for it would stall the release 5 s.
    func stop() {
        stopEvent.signal()
        let onThread = thread.withLock { t in t.map { pthread_equal($0, pthread_self()) != 0 } ?? false }
        if !onThread { _ = done.wait(timeout: .seconds(5)) }
    }
}
#endif
