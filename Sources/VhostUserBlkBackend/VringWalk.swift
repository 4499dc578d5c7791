#if os(Linux)
import CVhostUser
import Glibc

/// A run of guest memory one descriptor names, mapped here.
struct Segment {
    var pointer: UnsafeMutableRawPointer
    var length: Int
}

/// A descriptor chain as the device sees it (virtio 1.2 section 2.7.5):
/// the device-readable segments, then the device-writable ones.
struct DescriptorChain {
    var readable: [Segment] = []
    var writable: [Segment] = []
    /// Whether every descriptor was usable: inside guest RAM, not INDIRECT
    /// (not offered), no readable one after a writable one, `next` in range.
    var valid = true
}

extension BlockServer {
    /// Serves every available request of `queue` from its last index, then
    /// signals its call fd (virtio 1.2 section 2.7.13, "Receiving Used Buffers").
    func process(queue index: Int) {
        var queue = queues[index]
        guard queue.started, queue.enabled, queue.addressed, let rings = rings(of: queue) else { return }
        let size = UInt16(queue.size)
        var completed = 0
        while true {
            let availableIndex = UInt16(littleEndian: rings.available.loadUnaligned(fromByteOffset: 2, as: UInt16.self))
            vhost_user_fence()
            if availableIndex == queue.lastAvailable { break }
            // More outstanding than the ring holds: a broken driver; stop here rather than loop.
            if availableIndex &- queue.lastAvailable > size {
                log("queue \(index): available index jumped by more than the ring size")
                break
            }
            let slot = 4 + 2 * Int(queue.lastAvailable % size)
            let head = UInt16(littleEndian: rings.available.loadUnaligned(fromByteOffset: slot, as: UInt16.self))
            let length = serve(head: head, descriptors: rings.descriptors, size: size)
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
            _ = write(queue.call, &one, 8)
        }
    }

    /// Serves the chain at `head`; returns the bytes written to device-writable descriptors.
    func serve(head: UInt16, descriptors: UnsafeMutableRawPointer, size: UInt16) -> UInt32 {
        // A head beyond the ring names no chain: nothing to complete but the element (length 0).
        guard head < size, let chain = walk(head: head, descriptors: descriptors, size: size) else { return 0 }
        return execute(chain)
    }

    /// The chain at `head` (virtio 1.2 section 2.7.5), or nil when it is longer
    /// than the ring (it loops): then no status byte can be trusted.
    func walk(head: UInt16, descriptors: UnsafeMutableRawPointer, size: UInt16) -> DescriptorChain? {
        var chain = DescriptorChain()
        var index = head
        var steps = 0
        while true {
            steps += 1
            let at = 16 * Int(index)
            let address = UInt64(littleEndian: descriptors.loadUnaligned(fromByteOffset: at, as: UInt64.self))
            let length = UInt32(littleEndian: descriptors.loadUnaligned(fromByteOffset: at + 8, as: UInt32.self))
            let flags = UInt16(littleEndian: descriptors.loadUnaligned(fromByteOffset: at + 12, as: UInt16.self))
            let next = UInt16(littleEndian: descriptors.loadUnaligned(fromByteOffset: at + 14, as: UInt16.self))
            guard steps <= Int(size) else { return nil }
            // INDIRECT was not offered; memory outside RAM; readable after writable: the
            // request fails, but the walk goes on to find the status descriptor.
            if flags & 4 == 0, let pointer = host(guest: address, length: UInt64(length)),
                flags & 2 != 0 || chain.writable.isEmpty
            {
                let segment = Segment(pointer: pointer, length: Int(length))
                if flags & 2 != 0 { chain.writable.append(segment) } else { chain.readable.append(segment) }
            } else {
                chain.valid = false
            }
            if flags & 1 == 0 { break }
            guard next < size else {
                chain.valid = false
                break
            }
            index = next
        }
        return chain
    }
}
#endif
