#if os(Linux)
import IrqFdLinux
public import SystemPackage

// A vhost-user session handed from one VMM process to its successor. The
// back-end is not told (vhost-user.rst has no message for a front-end that
// changes process): the successor goes on over the same connected socket,
// received by SCM_RIGHTS, and believes what the predecessor negotiated and
// sent. The memory table in particular stays the one the back-end mapped,
// with the predecessor's user addresses, until the successor's next
// SET_MEM_TABLE: a later SET_VRING_ADDR is translated with it, so its
// addresses match the back-end's mapping.

extension VhostUserFrontend {
    /// A session as the back-end knows it: what the handshake negotiated,
    /// the last SET_FEATURES, the last SET_MEM_TABLE (without its
    /// descriptors, which the back-end already mapped) and each ring's last
    /// SET_VRING_NUM. Codable, so that a VMM can send it to its successor.
    public struct HandOffState: Hashable, Sendable, Codable {
        /// One region of the last SET_MEM_TABLE, as sent ("Multiple memory regions description").
        public struct Region: Hashable, Sendable, Codable {
            /// Where the region starts in guest-physical address space.
            public var guestPhysicalAddress: UInt64
            /// Its length in bytes.
            public var size: UInt64
            /// The sender's user address of the region (ring addresses are sent in these).
            public var userAddress: UInt64
            /// The region's offset in its file.
            public var mmapOffset: UInt64

            /// A region as sent.
            public init(guestPhysicalAddress: UInt64, size: UInt64, userAddress: UInt64, mmapOffset: UInt64) {
                self.guestPhysicalAddress = guestPhysicalAddress
                self.size = size
                self.userAddress = userAddress
                self.mmapOffset = mmapOffset
            }

            /// The region of a sent table, without its descriptor.
            init(_ region: VhostUserMemoryRegion) {
                self.init(
                    guestPhysicalAddress: region.guestPhysicalAddress, size: region.size,
                    userAddress: region.userAddress, mmapOffset: region.mmapOffset)
            }

            /// The region for translating ring addresses: no descriptor (-1),
            /// since the table is never sent again as it is.
            var placeholder: VhostUserMemoryRegion {
                VhostUserMemoryRegion(
                    guestPhysicalAddress: guestPhysicalAddress, size: size, userAddress: userAddress,
                    mmapOffset: mmapOffset, fd: FileDescriptor(rawValue: -1))
            }
        }

        /// One ring's size, as the last SET_VRING_NUM sent it.
        public struct RingSize: Hashable, Sendable, Codable {
            /// The ring's index.
            public var queue: UInt32
            /// Its size.
            public var size: UInt32

            /// A ring's size.
            public init(queue: UInt32, size: UInt32) {
                self.queue = queue
                self.size = size
            }
        }

        /// The back-end's features (GET_FEATURES).
        public var backendFeatures: UInt64
        /// The protocol features the back-end offered (GET_PROTOCOL_FEATURES).
        public var offeredProtocolFeatures: UInt64
        /// The protocol features negotiated (SET_PROTOCOL_FEATURES).
        public var protocolFeatures: UInt64
        /// The features of the last SET_FEATURES.
        public var acceptedFeatures: UInt64
        /// The last SET_MEM_TABLE.
        public var memoryTable: [Region]
        /// Each ring's last SET_VRING_NUM, by ring.
        public var ringSizes: [RingSize]

        /// A session's state.
        public init(
            backendFeatures: UInt64, offeredProtocolFeatures: UInt64, protocolFeatures: UInt64,
            acceptedFeatures: UInt64, memoryTable: [Region], ringSizes: [RingSize]
        ) {
            self.backendFeatures = backendFeatures
            self.offeredProtocolFeatures = offeredProtocolFeatures
            self.protocolFeatures = protocolFeatures
            self.acceptedFeatures = acceptedFeatures
            self.memoryTable = memoryTable
            self.ringSizes = ringSizes
        }
    }

    /// Goes on with a session another front-end (in another process, or
    /// another VM of this one) negotiated: `socket` is that session's
    /// connected socket, now this front-end's (closed on ``close()`` or in
    /// deinit; nil when the connection was already gone: the front-end is
    /// then closed), and `state` is that front-end's ``handOffState``.
    /// Sends nothing: the back-end sees the same connection and the same
    /// session. REPLY_ACK, ring address translation and the feature checks
    /// of later messages work from `state`.
    public convenience init(
        resuming socket: FileDescriptor?, socketPath: String, timeout: Duration = .seconds(5), state: HandOffState
    ) {
        self.init(
            socketPath: socketPath, timeout: timeout,
            channel: socket.map { VhostUserChannel(UnixSocket(adopting: $0)) }, negotiated: state)
    }
}
#endif
