#if os(Linux)
import Glibc
import IrqFdLinux
import VirtqueueWalk

extension BlockServer {
    /// VIRTIO_BLK_S_IOERR and VIRTIO_BLK_S_UNSUPP (virtio 1.2 section 5.2.6).
    static let ioError: UInt8 = 1, unsupported: UInt8 = 2

    /// Serves one virtio-blk request (virtio 1.2 section 5.2.6) on the image:
    /// the 16-byte header in the readable segments, the data after it, the
    /// status in the last byte of the last writable descriptor. Returns the
    /// bytes written to device-writable memory (0 when no status byte exists).
    /// A chain the walker faulted (out of memory, over seg_max or size_max,
    /// looping...) completes with IOERR and one rate-limited log line.
    func execute(_ chain: DescriptorChain, queue index: Int) -> UInt32 {
        guard let status = chain.lastWritableByte else { return 0 }
        // At most UInt32.max writable bytes (ChainLimits), so the status byte's count fits.
        func finish(_ code: UInt8, written: UInt64) -> UInt32 {
            status.storeBytes(of: code, as: UInt8.self)
            return UInt32(clamping: written + 1)
        }
        if let fault = chain.fault {
            guestLog.log("queue \(index): request refused with IOERR: \(fault)")
            return finish(Self.ioError, written: 0)
        }
        // No fault: the status byte ends the last writable segment.
        var writable = chain.writable
        writable[writable.count - 1].length -= 1
        if writable[writable.count - 1].length == 0 { writable.removeLast() }
        // The 16-byte header, possibly split across readable descriptors.
        var header = [UInt8]()
        var data: [MemorySegment] = []
        for segment in chain.readable {
            let take = min(16 - header.count, segment.length)
            header += Array(UnsafeRawBufferPointer(start: segment.pointer, count: take))
            if segment.length > take {
                data.append(MemorySegment(pointer: segment.pointer + take, length: segment.length - take))
            }
        }
        guard header.count == 16 else { return finish(Self.ioError, written: 0) }
        let type = header.u32(at: 0)
        let sector = header.u64(at: 8)
        switch type {
        case 0, 1:  // IN, OUT
            let segments = type == 0 ? writable : data
            // Each direction is at most UInt32.max bytes (ChainLimits): no overflow in Int.
            let total = segments.reduce(0) { $0 + $1.length }
            guard total % 512 == 0, sector <= sectors, UInt64(total / 512) <= sectors - sector else {
                guestLog.log("queue \(index): request for \(total) bytes at sector \(sector) is not within the image")
                return finish(Self.ioError, written: 0)
            }
            if type == 1, readOnly { return finish(Self.ioError, written: 0) }
            var offset = off_t(sector * 512)
            for segment in segments {
                // A failed or short transfer is the guest's IOERR.
                let done = try? retryingInterrupts(type == 0 ? "pread" : "pwrite") {
                    type == 0
                        ? pread(image.rawValue, segment.pointer, segment.length, offset)
                        : pwrite(image.rawValue, segment.pointer, segment.length, offset)
                }
                guard done == segment.length else { return finish(Self.ioError, written: 0) }
                offset += off_t(segment.length)
            }
            return finish(0, written: type == 0 ? UInt64(total) : 0)
        case 4:  // FLUSH
            let flushed = (try? retryingInterrupts("fsync") { fsync(image.rawValue) }) != nil
            return finish(flushed ? 0 : Self.ioError, written: 0)
        case 8:  // GET_ID: up to 20 bytes
            let id = Array("irqfd-vhost-user-blk".utf8)
            var written = 0
            for segment in writable where written < id.count {
                let take = min(segment.length, id.count - written)
                id[written..<(written + take)].withUnsafeBytes {
                    segment.pointer.copyMemory(from: $0.baseAddress!, byteCount: take)
                }
                written += take
            }
            return finish(0, written: UInt64(written))
        default:
            return finish(Self.unsupported, written: 0)
        }
    }
}
#endif
