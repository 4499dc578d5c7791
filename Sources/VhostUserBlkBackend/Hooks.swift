#if os(Linux)
package import VhostUser

/// Where test equipment breaks the back-end on purpose (a hostile back-end
/// for the VMM's tests). `package` access: no shipped executable sets one;
/// every default here is the ordinary behaviour.
package protocol BlockServerHooks: AnyObject {
    /// Sends `message`, the reply to `request`; throwing `.closed` ends the connection.
    func sendReply(
        _ message: [UInt8], request: UInt32, on connection: VhostUserChannel, deadline: ContinuousClock.Instant,
        server: BlockServer
    ) throws(ChannelFailure)
    /// Whether the poll loop must not block (it then calls `afterPoll` each round).
    var pollsWithoutBlocking: Bool { get }
    /// Called after each poll round.
    func afterPoll(_ server: BlockServer)
    /// Called when SET_VRING_CALL hands over `fd` for `queue`.
    func callArrived(_ fd: Int32, queue: Int, server: BlockServer)
    /// What the used ring receives for a completion of `head` that makes the used index `usedIndex`.
    func usedElement(head: UInt16, usedIndex: UInt16, size: UInt16) -> (id: UInt32, index: UInt16)
}

extension BlockServerHooks {
    package func sendReply(
        _ message: [UInt8], request: UInt32, on connection: VhostUserChannel, deadline: ContinuousClock.Instant,
        server: BlockServer
    ) throws(ChannelFailure) {
        try connection.send(message, deadline: deadline)
    }
    package var pollsWithoutBlocking: Bool { false }
    package func afterPoll(_ server: BlockServer) {}
    package func callArrived(_ fd: Int32, queue: Int, server: BlockServer) {}
    package func usedElement(head: UInt16, usedIndex: UInt16, size: UInt16) -> (id: UInt32, index: UInt16) {
        (UInt32(head), usedIndex)
    }
}
#endif
