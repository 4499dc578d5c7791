#if os(Linux)
import CBlkBackend
import Glibc
import IrqFdCore
import IrqFdLinux
import SystemPackage
import VhostUser

extension BlockServer {
    /// Listens at `socketPath` and serves front-ends one after another, forever.
    package func serve(socketPath: String) throws(ServerFailure) -> Never {
        // The socket appears at `socketPath` already listening (IrqFdLinux renames it into
        // place), so a front-end that sees it appear can connect at once.
        let listener: UnixSocket
        do throws(IrqFdError) { listener = try UnixSocket.listen(at: socketPath, backlog: 1) } catch {
            throw ServerFailure(description: error.description)
        }
        signal(SIGPIPE, SIG_IGN)
        do throws(SystemCallError) {
            _ = try retryingInterrupts("sigaction(SIGBUS)") { blk_guard_install() }
        } catch {
            throw ServerFailure(description: error.description)
        }
        while true {
            let connection: UnixSocket
            do throws(IrqFdError) { connection = try listener.accept() } catch {
                // A front-end that gave up while queued: the next one is served.
                if case .systemCall(let failure) = error, failure.errno == .connectionAbort { continue }
                throw ServerFailure(description: error.description)
            }
            serveConnection(VhostUserChannel(connection))
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
            // Rebuilt each round: queues start, stop and change their kick between rounds.
            var watched: [(descriptor: FileDescriptor, events: Readiness)] = [
                (connection.socket.fileDescriptor, .readable)
            ]
            var polled: [Int] = []
            for (index, queue) in queues.enumerated() where queue.started && queue.enabled {
                guard let kick = queue.kick else { continue }
                watched.append((kick.fileDescriptor, .readable))
                polled.append(index)
            }
            let nonBlocking = hooks?.pollsWithoutBlocking ?? false || !pending.isEmpty
            let polling = Result { () throws(SystemCallError) -> [Readiness] in
                try Readiness.wait(on: watched, timeout: nonBlocking ? .zero : nil)
            }
            hooks?.afterPoll(self)
            let ready: [Readiness]
            do throws(SystemCallError) { ready = try polling.get() } catch {
                log("\(error)")
                return
            }
            for (slot, index) in polled.enumerated() where !ready[slot + 1].isEmpty {
                let events = ready[slot + 1]
                if !events.isDisjoint(with: [.hangUp, .error, .invalid]) {
                    // An eventfd polls POLLERR when its counter is 2^64 - 1 (fs/eventfd.c, eventfd_poll):
                    // write(2) stops at 2^64 - 2, so only a front-end that loaded its kick there and a
                    // kernel signal on top (the guest's doorbell, KVM_IOEVENTFD) get it there. It never
                    // polls POLLHUP, and POLLNVAL would mean the back-end closed a kick it still polls:
                    // kept as a defence. Either way the kick cannot be trusted: stop the queue.
                    guestLog.log(
                        "queue \(index): kick descriptor reports 0x\(String(events.rawValue, radix: 16)); queue stopped"
                    )
                    queues[index].started = false
                    queues[index].kick = nil
                    pending.remove(index)
                    continue
                }
                // Non-blocking: 0 when another reader emptied it; the ring is read regardless.
                _ = queues[index].kick?.consume()
                pending.insert(index)
            }
            for index in pending.sorted() where !process(queue: index) { pending.remove(index) }
            if blk_guard_faults() != faultsSeen {
                log("guest memory shrank under its mapping (SIGBUS contained): front-end dropped")
                return
            }
            if !ready[0].isEmpty {
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
