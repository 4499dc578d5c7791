#if os(Linux)
import IrqFdCore
import Synchronization
public import IrqFdLinux
public import SystemPackage

/// Guest RAM for a vhost-user back-end with no guest (what a test or the
/// benchmark drives queues in): IrqFdLinux's `MemfdMemory`, sealed against
/// resizing, with the accessors the host driver uses and its errors named as
/// the frontend's. Owns the memfd and the mapping.
public final class MemfdGuestMemory: Sendable {
    /// The memfd and its mapping.
    public let memory: MemfdMemory
    /// Bytes of guest RAM.
    public var size: Int { memory.size }
    /// Where this process mapped it.
    public var base: UnsafeMutableRawPointer { memory.base }
    /// The memfd (borrowed from this object).
    public var fileDescriptor: FileDescriptor { memory.fileDescriptor }

    /// `size` bytes of zeroed guest RAM (memfd_create(2), ftruncate(2),
    /// F_ADD_SEALS of `seals`, mmap(2)). A test that plays a hostile frontend
    /// passes no seals, to send a backend memory that can shrink under it.
    public init(size: Int, seals: MemfdSeals = .fixedSize) throws(VhostUserError) {
        do throws(SystemCallError) {
            memory = try MemfdMemory(size: size, name: "irqfd-guest-ram", seals: seals)
        } catch {
            throw .systemCall(call: error.call, errno: error.errno)
        }
    }

    /// The whole of RAM as one SET_MEM_TABLE region at guest-physical 0 (fd borrowed from this object).
    public var region: VhostUserMemoryRegion {
        VhostUserMemoryRegion(
            guestPhysicalAddress: 0, size: UInt64(size), userAddress: UInt64(UInt(bitPattern: base)), mmapOffset: 0,
            fd: fileDescriptor)
    }

    /// Stores `value` little-endian at guest-physical `address` (trap if out of RAM: a test bug).
    public func store<T: FixedWidthInteger>(_ value: T, at address: UInt64) { memory.store(value, at: address) }

    /// Loads a little-endian `T` at guest-physical `address`.
    public func load<T: FixedWidthInteger>(_: T.Type = T.self, at address: UInt64) -> T {
        memory.load(T.self, at: address)
    }

    /// Copies `bytes` into RAM at `address`.
    public func write(_ bytes: [UInt8], at address: UInt64) { memory.load(bytes, at: address) }

    /// `count` bytes of RAM at `address`.
    public func read(_ count: Int, at address: UInt64) -> [UInt8] { memory.bytes(at: address, count: count) }
}

/// A queue's kick or call descriptor on the host-driver side: IrqFdLinux's
/// `EventFD` (non-blocking, close-on-exec), owned by this object.
public final class HostEventFD: Sendable {
    /// The eventfd.
    public let event: EventFD

    /// The descriptor (borrowed from this object).
    public var fileDescriptor: FileDescriptor { event.fileDescriptor }

    /// A new eventfd at 0 (eventfd(2)).
    public init() throws(VhostUserError) {
        do throws(IrqFdError) {
            event = try EventFD()
        } catch {
            guard case .systemCall(let failure) = error else { throw .unsupported("\(error)") }
            throw .systemCall(call: failure.call, errno: failure.errno)
        }
    }

    /// Adds 1 (write(2)).
    public func signal() { event.signal() }

    /// Reads and clears the counter; 0 when it was 0 (read(2)).
    public func consume() -> UInt64 { event.consume() }

    /// Waits (poll(2)) up to `timeout` for the counter to be nonzero, then consumes it; 0 on timeout.
    public func wait(timeout: Duration) -> UInt64 { event.consume(waitingUpTo: timeout) }
}

/// Garbage a back-end wrote into a used ring (virtio 1.2 section 2.7.8: the
/// device adds to idx only the elements it has used, and each element's id
/// is the head of a descriptor chain the driver made available). The back-end
/// is untrusted, so a driver refuses rather than believe it.
public enum VirtqueueError: Error, Equatable, CustomStringConvertible {
    /// The used idx moved on by `advance` while only `inFlight` requests were outstanding.
    case usedIndexAhead(queue: UInt32, advance: UInt16, inFlight: UInt16)
    /// A used element's id is not below the queue size, so it names no descriptor chain
    /// (and the driver did not make it available).
    case usedIDOutOfRange(queue: UInt32, id: UInt32, size: UInt16)
    /// A used element's id names a chain that is not in flight (never made available, or already used).
    case usedIDNotInFlight(queue: UInt32, id: UInt32)

    /// One line naming the queue and the garbage.
    public var description: String {
        switch self {
        case .usedIndexAhead(let queue, let advance, let inFlight):
            "virtqueue \(queue): the used index advanced by \(advance) with \(inFlight) requests in flight"
        case .usedIDOutOfRange(let queue, let id, let size):
            "virtqueue \(queue): used element id \(id) is out of range for a ring of \(size)"
        case .usedIDNotInFlight(let queue, let id):
            "virtqueue \(queue): used element id \(id) is not a chain in flight"
        }
    }
}

/// A virtio-blk request type (virtio 1.2 section 5.2.6).
public enum BlockRequestType: UInt32, Sendable {
    /// VIRTIO_BLK_T_IN: read sectors.
    case read = 0
    /// VIRTIO_BLK_T_OUT: write sectors.
    case write = 1
    /// VIRTIO_BLK_T_FLUSH.
    case flush = 4
    /// VIRTIO_BLK_T_GET_ID: the 20-byte device id.
    case getID = 8
}

/// One split virtqueue (virtio 1.2 section 2.7) driven from the host, in a
/// ``MemfdGuestMemory``: it builds virtio-blk requests as three-descriptor
/// chains (header, data, status), publishes them in the available ring, and
/// collects the used ring. It is the driver side of a vhost-user queue
/// without a guest: the tests' driver and the benchmark's floor.
///
/// Layout at `base` (guest-physical): descriptor table (16·size), available
/// ring (6+2·size), used ring at the next 4-byte boundary (6+8·size), then one
/// request slot per chain: 16-byte header, status byte, `maxData` data bytes.
public final class HostVirtqueueDriver: @unchecked Sendable {
    // @unchecked: one thread drives a queue at a time (documented); the
    // state below is that thread's. The rings themselves are shared memory.
    /// The queue index.
    public let queue: UInt32
    /// Ring size (a power of two).
    public let size: UInt16
    /// Guest RAM.
    public let memory: MemfdGuestMemory
    /// Guest-physical address of the descriptor table.
    public let descriptorTable: UInt64
    /// Guest-physical address of the available ring.
    public let availableRing: UInt64
    /// Guest-physical address of the used ring.
    public let usedRing: UInt64
    /// Bytes of data a request slot holds.
    public let maxData: Int
    /// The kick eventfd (the driver signals it).
    public let kick: HostEventFD
    /// The call eventfd (the back-end signals it).
    public let call: HostEventFD
    private let slotsBase: UInt64
    /// The next available index this driver publishes.
    public private(set) var availableIndex: UInt16 = 0
    /// The used index this driver has consumed up to.
    public private(set) var usedIndex: UInt16 = 0
    /// Heads made available and not yet used, with how many times each is
    /// outstanding (kept across a restart: requests published after its base are still in flight).
    private var outstanding: [UInt32: Int] = [:]

    /// Bytes of RAM a queue of `size` with `maxData`-byte slots needs.
    public static func footprint(size: UInt16, maxData: Int) -> UInt64 {
        let n = UInt64(size)
        let rings = (16 * n + 6 + 2 * n + 3) & ~3
        return rings + 6 + 8 * n + 64 + UInt64(size / 3) * UInt64(32 + maxData)
    }

    /// A queue at guest-physical `base` (which must leave ``footprint(size:maxData:)`` bytes).
    public init(memory: MemfdGuestMemory, queue: UInt32, size: UInt16, base: UInt64, maxData: Int = 4096)
        throws(VhostUserError)
    {
        precondition(size >= 4 && size & (size - 1) == 0)
        precondition(base + Self.footprint(size: size, maxData: maxData) <= UInt64(memory.size))
        self.memory = memory
        self.queue = queue
        self.size = size
        self.maxData = maxData
        let n = UInt64(size)
        descriptorTable = base
        availableRing = base + 16 * n
        usedRing = (availableRing + 6 + 2 * n + 3) & ~3
        slotsBase = (usedRing + 6 + 8 * n + 63) & ~63
        kick = try HostEventFD()
        call = try HostEventFD()
    }

    /// Sends this queue's NUM, ADDR, BASE, CALL, KICK and ENABLE (when
    /// PROTOCOL_FEATURES was accepted) through `frontend`, starting at available index `base`.
    public func start(_ frontend: VhostUserFrontend, base: UInt16? = nil) throws(VhostUserError) {
        if let base {
            availableIndex = base
            usedIndex = base
        }
        try frontend.setVringNum(queue: queue, size: UInt32(size))
        try frontend.setVringAddr(queue: queue, descriptor: descriptorTable, available: availableRing, used: usedRing)
        try frontend.setVringBase(queue: queue, index: UInt32(availableIndex))
        // CALL before KICK: a back-end may serve the ring as soon as it has the kick fd
        // (a kick still pending from before a stop makes it readable at once), and
        // qemu-storage-daemon 7.2 then signals a call fd it does not have yet
        // (vu_panic "Error writing eventfd: Bad file descriptor", connection lost).
        _ = kick.consume()
        try frontend.setVringCall(queue: queue, descriptor: call.fileDescriptor)
        try frontend.setVringKick(queue: queue, descriptor: kick.fileDescriptor)
        if frontend.acceptedFeatures & VhostUserFeature.protocolFeatures != 0 {
            try frontend.setVringEnable(queue: queue, enabled: true)
        }
    }

    /// Guest-physical address of slot `slot`'s data buffer.
    public func dataAddress(slot: Int) -> UInt64 { slotsBase + UInt64(slot) * UInt64(32 + maxData) + 32 }
    private func headerAddress(slot: Int) -> UInt64 { slotsBase + UInt64(slot) * UInt64(32 + maxData) }
    private func statusAddress(slot: Int) -> UInt64 { headerAddress(slot: slot) + 16 }

    private func descriptor(_ index: Int, address: UInt64, length: UInt32, flags: UInt16, next: UInt16) {
        let at = descriptorTable + UInt64(index) * 16
        memory.store(address, at: at)
        memory.store(length, at: at + 8)
        memory.store(flags, at: at + 12)
        memory.store(next, at: at + 14)
    }

    /// Builds a request in slot `slot` (0 ..< size/3) and publishes it in the
    /// available ring (without kicking). `data` is written for `.write`;
    /// `length` bytes are read for `.read` / `.getID`. Returns the chain's head.
    @discardableResult
    public func submit(_ type: BlockRequestType, sector: UInt64, length: Int, data: [UInt8] = [], slot: Int) -> UInt16 {
        precondition(slot < Int(size) / 3 && length <= maxData)
        let head = slot * 3
        memory.store(type.rawValue, at: headerAddress(slot: slot))
        memory.store(UInt32(0), at: headerAddress(slot: slot) + 4)
        memory.store(sector, at: headerAddress(slot: slot) + 8)
        memory.store(UInt8(0xFF), at: statusAddress(slot: slot))
        if type == .write { memory.write(data, at: dataAddress(slot: slot)) }
        let next: UInt16 = 1  // VIRTQ_DESC_F_NEXT
        let writable: UInt16 = 2  // VIRTQ_DESC_F_WRITE
        descriptor(head, address: headerAddress(slot: slot), length: 16, flags: next, next: UInt16(head + 1))
        if length > 0 {
            descriptor(
                head + 1, address: dataAddress(slot: slot), length: UInt32(length),
                flags: next | (type == .write ? 0 : writable), next: UInt16(head + 2))
            descriptor(head + 2, address: statusAddress(slot: slot), length: 1, flags: writable, next: 0)
        } else {
            descriptor(head + 1, address: statusAddress(slot: slot), length: 1, flags: writable, next: 0)
        }
        publish(UInt16(head))
        return UInt16(head)
    }

    /// Puts `head` in the available ring and advances its index (release order).
    public func publish(_ head: UInt16) {
        memory.store(head, at: availableRing + 4 + UInt64(availableIndex % size) * 2)
        outstanding[UInt32(head), default: 0] += 1
        availableIndex &+= 1
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        memory.store(availableIndex, at: availableRing + 2)
    }

    /// The status byte of slot `slot` (0 OK, 1 IOERR, 2 UNSUPP; 0xFF not written).
    public func status(slot: Int) -> UInt8 { memory.load(UInt8.self, at: statusAddress(slot: slot)) }

    /// The used ring's index as the back-end last wrote it.
    public var backendUsedIndex: UInt16 { memory.load(UInt16.self, at: usedRing + 2) }

    /// Requests made available and not yet collected: the available ring's idx
    /// as published in memory (a restart from a base keeps what was published
    /// after it) less the used index consumed.
    public var inFlight: UInt16 { memory.load(UInt16.self, at: availableRing + 2) &- usedIndex }

    /// Waits on the call eventfd (with a deadline) until `count` more used
    /// elements arrived, and returns them as (head, length). Spurious call
    /// signals (qemu-storage-daemon signals once at SET_VRING_CALL) are
    /// tolerated; returns what arrived when the deadline passes, or what
    /// arrived before the back-end wrote garbage (see ``collectValidated(_:timeout:)``,
    /// which says what the garbage was).
    public func collect(_ count: Int, timeout: Duration = .seconds(5)) -> [(head: UInt32, length: UInt32)] {
        gather(count, timeout: timeout).elements
    }

    /// ``collect(_:timeout:)`` that refuses a used ring the back-end broke: a
    /// used idx that advanced by more than ``inFlight``, or an element whose id
    /// is not a head this driver made available and has not seen used (an id
    /// not below the queue size never is, unless the driver itself published
    /// one). Nothing past the garbage is consumed.
    public func collectValidated(_ count: Int, timeout: Duration = .seconds(5)) throws(VirtqueueError) -> [(
        head: UInt32, length: UInt32
    )] {
        let result = gather(count, timeout: timeout)
        if let garbage = result.garbage { throw garbage }
        return result.elements
    }

    private func gather(_ count: Int, timeout: Duration) -> (
        elements: [(head: UInt32, length: UInt32)], garbage: VirtqueueError?
    ) {
        let deadline = ContinuousClock.now + timeout
        var out: [(UInt32, UInt32)] = []
        while out.count < count {
            let published = backendUsedIndex
            // Read once: the back-end may move it; more than was made available is garbage.
            guard published &- usedIndex <= inFlight else {
                return (out, .usedIndexAhead(queue: queue, advance: published &- usedIndex, inFlight: inFlight))
            }
            while usedIndex != published, out.count < count {
                atomicMemoryFence(ordering: .sequentiallyConsistent)  // the element after the index that published it
                let element = usedRing + 4 + UInt64(usedIndex % size) * 8
                let id = memory.load(UInt32.self, at: element)
                guard let times = outstanding[id] else {
                    return (
                        out,
                        id < UInt32(size)
                            ? .usedIDNotInFlight(queue: queue, id: id)
                            : .usedIDOutOfRange(queue: queue, id: id, size: size)
                    )
                }
                outstanding[id] = times > 1 ? times - 1 : nil
                out.append((id, memory.load(UInt32.self, at: element + 4)))
                usedIndex &+= 1
            }
            if out.count >= count { break }
            let remaining = deadline - .now
            guard remaining > .zero else { break }
            _ = call.wait(timeout: min(remaining, .milliseconds(100)))
        }
        return (out, nil)
    }
}

#endif
