#if os(Linux)
import CBlkBackend
import CVhostUser
import Glibc
import VhostUser

extension BlockServer {
    /// Listens at `socketPath` and serves front-ends one after another, forever.
    package func serve(socketPath: String) throws(ServerFailure) -> Never {
        let listener = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard listener >= 0 else { throw ServerFailure(description: "socket failed") }
        // Bound and listening under a temporary name, then renamed into place: a
        // frontend that sees the socket appear can connect at once (between
        // bind(2) and listen(2) a connect is refused).
        let temporary = socketPath + ".\(getpid()).tmp"
        unlink(temporary)
        guard vhost_user_bind(listener, temporary) == 0, listen(listener, 1) == 0 else {
            throw ServerFailure(description: "bind/listen(\(temporary)): \(String(cString: strerror(errno)))")
        }
        guard rename(temporary, socketPath) == 0 else {
            unlink(temporary)
            throw ServerFailure(description: "rename(\(temporary), \(socketPath)): \(String(cString: strerror(errno)))")
        }
        signal(SIGPIPE, SIG_IGN)
        guard blk_guard_install() == 0 else {
            throw ServerFailure(description: "sigaction(SIGBUS): \(String(cString: strerror(errno)))")
        }
        while true {
            let fd = vhost_user_accept(listener)
            if fd < 0 {
                if errno == EINTR || errno == ECONNABORTED { continue }
                throw ServerFailure(description: "accept: \(String(cString: strerror(errno)))")
            }
            let connection = VhostUserChannel(adopting: fd)
            serveConnection(connection)
            reset()
        }
    }

    /// Serves one front-end until it disconnects or breaks the protocol. Each
    /// round polls the connection and every started, enabled queue's kick;
    /// a queue serves at most `budget` requests per round and, with more
    /// available, stays pending: the next poll does not block, and the
    /// control socket is answered between rounds under any guest load.
    func serveConnection(_ connection: VhostUserChannel) {
        while true {
            var entries = [pollfd(fd: connection.fd, events: Int16(POLLIN), revents: 0)]
            var polled: [Int] = []
            for (index, queue) in queues.enumerated() where queue.kick >= 0 && queue.started && queue.enabled {
                entries.append(pollfd(fd: queue.kick, events: Int16(POLLIN), revents: 0))
                polled.append(index)
            }
            let nonBlocking = hooks?.pollsWithoutBlocking ?? false || !pending.isEmpty
            let ready = poll(&entries, nfds_t(entries.count), nonBlocking ? 0 : -1)
            hooks?.afterPoll(self)
            if ready < 0 {
                if errno == EINTR { continue }
                log("poll: \(String(cString: strerror(errno)))")
                return
            }
            for (slot, index) in polled.enumerated() where entries[slot + 1].revents != 0 {
                let events = Int32(entries[slot + 1].revents)
                if events & (POLLHUP | POLLERR | POLLNVAL) != 0 {
                    // An eventfd never hangs up: the descriptor is not what it was. Stop the queue.
                    guestLog.log(
                        "queue \(index): kick descriptor reports 0x\(String(events, radix: 16)); queue stopped")
                    queues[index].started = false
                    if queues[index].kick >= 0 { close(queues[index].kick) }
                    queues[index].kick = -1
                    pending.remove(index)
                    continue
                }
                var value: UInt64 = 0
                // O_NONBLOCK: EAGAIN when another reader emptied it; the ring is read regardless.
                _ = read(queues[index].kick, &value, 8)
                pending.insert(index)
            }
            for index in pending.sorted() where !process(queue: index) { pending.remove(index) }
            if blk_guard_faults() != faultsSeen {
                log("guest memory shrank under its mapping (SIGBUS contained): front-end dropped")
                return
            }
            if entries[0].revents != 0 {
                do { try handleMessage(connection) } catch {
                    if case .closed = error {} else { log("front-end dropped: \(error)") }
                    return
                }
            }
        }
    }
}

/// The embedded vhost-user-blk back-end (vhost-user.rst; virtio 1.2 section
/// 5.2): serves a raw image file on a Unix socket to one front-end at a time,
/// and signals each queue's call eventfd when requests complete. The
/// `irqfd-vhost-user-blk` executable and `irqfd vhost-user-blk` run it.
public enum VhostUserBlkBackend {
    /// Why the back-end could not start or stopped.
    public struct Failure: Error, CustomStringConvertible {
        /// What failed: the call and its error.
        public var description: String
    }

    /// Serves `image` on `socketPath` with `queues` queues (1...8), forever;
    /// returns only by throwing when the image cannot be opened or the socket
    /// cannot be bound.
    public static func serve(image: String, socketPath: String, queues: Int, readOnly: Bool) throws(Failure) -> Never {
        do {
            let server = try BlockServer(image: image, readOnly: readOnly, queues: queues)
            try server.serve(socketPath: socketPath)
        } catch {
            throw Failure(description: error.description)
        }
    }
}
#endif
