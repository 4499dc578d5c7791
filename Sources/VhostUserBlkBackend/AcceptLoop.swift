#if os(Linux)
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

    /// Serves one front-end until it disconnects or breaks the protocol.
    func serveConnection(_ connection: VhostUserChannel) {
        while true {
            var entries = [pollfd(fd: connection.fd, events: Int16(POLLIN), revents: 0)]
            var polled: [Int] = []
            for (index, queue) in queues.enumerated() where queue.kick >= 0 && queue.started && queue.enabled {
                entries.append(pollfd(fd: queue.kick, events: Int16(POLLIN), revents: 0))
                polled.append(index)
            }
            let nonBlocking = hooks?.pollsWithoutBlocking ?? false
            let ready = poll(&entries, nfds_t(entries.count), nonBlocking ? 0 : -1)
            hooks?.afterPoll(self)
            if ready < 0 {
                if errno == EINTR { continue }
                log("poll: \(String(cString: strerror(errno)))")
                return
            }
            for (slot, index) in polled.enumerated() where entries[slot + 1].revents != 0 {
                var value: UInt64 = 0
                _ = read(queues[index].kick, &value, 8)
                process(queue: index)
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
