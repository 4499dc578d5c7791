#if os(Linux)
import CVhostUser
import Glibc
import VirtqueueWalk

extension BlockServer {
    /// Requests one queue serves per poll round before the loop looks at the
    /// control socket and the other queues again.
    package static let budget = 64

    /// What a virtio-blk request may carry (the config's seg_max and
    /// size_max): data segments, plus the header and the status descriptor.
    static let chainLimits = ChainLimits(maxDescriptors: Int(segMax) + 2, maxDescriptorLength: sizeMax)

    /// The guest memory map of the mapped regions.
    var memoryMap: GuestMemoryMap {
        GuestMemoryMap(regions.map { .init(guestPhysical: $0.guestPhysical, size: $0.size, host: $0.host) })
    }

    /// Serves up to `budget` available requests of `queue` from its last
    /// index, then signals its call fd (virtio 1.2 section 2.7.13, "Receiving
    /// Used Buffers"). Returns whether more requests are available.
    func process(queue index: Int) -> Bool {
        var queue = queues[index]
        guard queue.started, queue.enabled, queue.addressed, let rings = rings(of: queue) else { return false }
        let size = UInt16(truncatingIfNeeded: queue.size)
        let memory = memoryMap
        var completed = 0
        var more = false
        while true {
            let availableIndex = UInt16(littleEndian: rings.available.loadUnaligned(fromByteOffset: 2, as: UInt16.self))
            vhost_user_fence()
            if availableIndex == queue.lastAvailable { break }
            // More outstanding than the ring holds: a broken driver; stop here rather than loop.
            if availableIndex &- queue.lastAvailable > size {
                guestLog.log("queue \(index): available index jumped by more than the ring size")
                break
            }
            if completed == Self.budget {
                more = true
                break
            }
            let slot = 4 + 2 * Int(queue.lastAvailable % size)
            let head = UInt16(littleEndian: rings.available.loadUnaligned(fromByteOffset: slot, as: UInt16.self))
            let chain = DescriptorChain(
                head: head, table: rings.descriptors, queueSize: size, memory: memory, limits: Self.chainLimits)
            if case .headOutOfRange? = chain.fault {
                // Virtio 1.2 section 2.7.13: the driver offers heads below the queue size. The
                // element is still consumed (and completed with length 0), or the ring stalls.
                guestLog.log("queue \(index): head \(head) is not below the queue size \(size)")
            }
            let length = execute(chain, queue: index)
            let element = 4 + 8 * Int(queue.used % size)
            let published =
                hooks?.usedElement(head: head, usedIndex: queue.used &+ 1, size: size)
                ?? (id: UInt32(head), index: queue.used &+ 1)
            rings.used.storeBytes(of: published.id.littleEndian, toByteOffset: element, as: UInt32.self)
            rings.used.storeBytes(of: length.littleEndian, toByteOffset: element + 4, as: UInt32.self)
            queue.used &+= 1
            queue.lastAvailable &+= 1
            vhost_user_fence()
            rings.used.storeBytes(of: published.index.littleEndian, toByteOffset: 2, as: UInt16.self)
            completed += 1
        }
        queues[index].lastAvailable = queue.lastAvailable
        queues[index].used = queue.used
        if completed > 0, queue.call >= 0 {
            var one: UInt64 = 1
            // O_NONBLOCK: EAGAIN means the count is at its maximum, a signal already pending.
            _ = write(queue.call, &one, 8)
        }
        return more
    }
}
#endif
