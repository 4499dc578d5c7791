#if os(Linux)
import Glibc

extension BlockServer {
    /// Serves one virtio-blk request (virtio 1.2 section 5.2.6) on the image:
    /// the 16-byte header in the readable segments, the data after it, the
    /// status in the last byte of the last writable segment. Returns the
    /// bytes written to device-writable memory (0 when no status byte exists).
    func execute(_ chain: DescriptorChain) -> UInt32 {
        var writable = chain.writable
        // The status byte is the last byte of the last writable descriptor.
        guard let last = writable.last, last.length >= 1 else { return 0 }
        let status = last.pointer + (last.length - 1)
        writable[writable.count - 1].length -= 1
        if writable[writable.count - 1].length == 0 { writable.removeLast() }
        func finish(_ code: UInt8, written: Int) -> UInt32 {
            status.storeBytes(of: code, as: UInt8.self)
            return UInt32(written + 1)
        }
        let ioError: UInt8 = 1, unsupported: UInt8 = 2
        guard chain.valid else { return finish(ioError, written: 0) }
        // The 16-byte header, possibly split across readable descriptors.
        var header = [UInt8]()
        var data: [Segment] = []
        for segment in chain.readable {
            let take = min(16 - header.count, segment.length)
            header += Array(UnsafeRawBufferPointer(start: segment.pointer, count: take))
            if segment.length > take {
                data.append(Segment(pointer: segment.pointer + take, length: segment.length - take))
            }
        }
        guard header.count == 16 else { return finish(ioError, written: 0) }
        let type = header.u32(at: 0), sector = header.u64(at: 8)
        switch type {
        case 0, 1:  // IN, OUT
            let segments = type == 0 ? writable : data
            let total = segments.reduce(0) { $0 + $1.length }
            guard total % 512 == 0, sector <= sectors, UInt64(total / 512) <= sectors - sector else {
                return finish(ioError, written: 0)
            }
            if type == 1, readOnly { return finish(ioError, written: 0) }
            var offset = off_t(sector * 512)
            for segment in segments {
                let done =
                    type == 0
                    ? pread(image, segment.pointer, segment.length, offset)
                    : pwrite(image, segment.pointer, segment.length, offset)
                guard done == segment.length else { return finish(ioError, written: 0) }
                offset += off_t(segment.length)
            }
            return finish(0, written: type == 0 ? total : 0)
        case 4:  // FLUSH
            return finish(fsync(image) == 0 ? 0 : ioError, written: 0)
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
            return finish(0, written: written)
        default:
            return finish(unsupported, written: 0)
        }
    }
}
#endif
