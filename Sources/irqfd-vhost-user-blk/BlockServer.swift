#if os(Linux)
import CVhostUser
import Glibc
import VhostUser

/// A failure that ends the back-end (not one connection).
struct ServerFailure: Error, CustomStringConvertible {
    var description: String
}

/// One guest memory region mapped here (SET_MEM_TABLE): the fd mapped
/// MAP_SHARED from offset 0 for mmap_offset + size bytes.
struct MappedRegion {
    var guestPhysical: UInt64
    var user: UInt64
    var size: UInt64
    var host: UnsafeMutableRawPointer  // the region's first byte (mapping + mmap_offset)
    var mapping: UnsafeMutableRawPointer
    var mappingLength: Int
}

/// One queue's state (vhost-user.rst, "Ring states").
struct QueueState {
    var size: UInt32 = 0
    var descriptorUser: UInt64 = 0
    var availableUser: UInt64 = 0
    var usedUser: UInt64 = 0
    var addressed = false
    var lastAvailable: UInt16 = 0
    var used: UInt16 = 0
    var kick: Int32 = -1
    var call: Int32 = -1
    var enabled = false
    var started = false

    mutating func closeFiles() {
        if kick >= 0 { close(kick) }
        if call >= 0 { close(call) }
        kick = -1
        call = -1
    }
}

/// The back-end: serves one front-end at a time and, when it disconnects,
/// accepts the next. One thread, one poll(2) loop over the connection and
/// every started, enabled queue's kick eventfd; requests are served
/// synchronously with pread/pwrite, so a ring's completions are in order.
///
/// The front-end and the guest are untrusted: every message is size-checked,
/// a partial message must complete within 5 s, every descriptor chain is
/// validated against the mapped regions and the queue size, and a bad chain
/// completes with IOERR/UNSUPP (or length 0 when no status byte can be
/// found), never a crash.
final class BlockServer {
    let image: Int32
    let sectors: UInt64
    let readOnly: Bool
    let queueCount: Int
    let offeredFeatures: UInt64
    let offeredProtocol = VhostUserProtocolFeature.multiQueue | VhostUserProtocolFeature.replyAck | VhostUserProtocolFeature.config

    // Per connection.
    var features: UInt64 = 0
    var protocolFeatures: UInt64 = 0
    var regions: [MappedRegion] = []
    var queues: [QueueState]

    /// `--misbehave`: how this back-end breaks the protocol on purpose (nil: it does not).
    var misbehaviour: Misbehaviour?
    /// `--misbehave-on`: the message whose reply a reply-corrupting mode breaks.
    var misbehaveOn: VhostUserRequest = .getFeatures
    /// call-flood: signals written so far.
    var floodSignals = 0

    init(image path: String, readOnly: Bool, queues: Int) throws {
        image = open(path, (readOnly ? O_RDONLY : O_RDWR) | O_CLOEXEC)
        guard image >= 0 else { throw ServerFailure(description: "open(\(path)): \(String(cString: strerror(errno)))") }
        var info = stat()
        guard fstat(image, &info) == 0 else { throw ServerFailure(description: "fstat(\(path)) failed") }
        sectors = UInt64(info.st_size) / 512
        self.readOnly = readOnly
        queueCount = queues
        var offered = VhostUserFeature.version1 | VhostUserFeature.protocolFeatures
            | VhostUserFeature.blkSizeMax | VhostUserFeature.blkSegMax | VhostUserFeature.blkBlockSize | VhostUserFeature.blkFlush
        if readOnly { offered |= VhostUserFeature.blkReadOnly }
        if queues > 1 { offered |= VhostUserFeature.blkMultiQueue }
        offeredFeatures = offered
        self.queues = Array(repeating: QueueState(), count: queues)
    }

    /// struct virtio_blk_config (virtio 1.2 section 5.2.4), 60 bytes.
    var config: [UInt8] {
        var bytes: [UInt8] = []
        bytes.appendLE(sectors)  // capacity
        bytes.appendLE(UInt32(1 << 20))  // size_max
        bytes.appendLE(UInt32(126))  // seg_max
        bytes += [0, 0, 0, 0]  // geometry
        bytes.appendLE(UInt32(512))  // blk_size
        bytes += [UInt8](repeating: 0, count: 10)  // topology, writeback, unused0
        bytes.appendLE(UInt16(queueCount))  // num_queues
        bytes += [UInt8](repeating: 0, count: 60 - bytes.count)
        return bytes
    }

    func log(_ message: String) {
        let line = Array("irqfd-vhost-user-blk: \(message)\n".utf8)
        _ = line.withUnsafeBytes { write(STDERR_FILENO, $0.baseAddress, $0.count) }
    }

    /// Listens at `socketPath` and serves front-ends one after another, forever.
    func serve(socketPath: String) throws {
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

    /// Back to the state before any front-end: rings stopped, memory unmapped.
    func reset() {
        for index in queues.indices { queues[index].closeFiles() }
        queues = Array(repeating: QueueState(), count: queueCount)
        unmapRegions()
        features = 0
        protocolFeatures = 0
    }

    func unmapRegions() {
        for region in regions { munmap(region.mapping, region.mappingLength) }
        regions = []
    }

    func serveConnection(_ connection: VhostUserChannel) {
        while true {
            var entries = [pollfd(fd: connection.fd, events: Int16(POLLIN), revents: 0)]
            var polled: [Int] = []
            for (index, queue) in queues.enumerated() where queue.kick >= 0 && queue.started && queue.enabled {
                entries.append(pollfd(fd: queue.kick, events: Int16(POLLIN), revents: 0))
                polled.append(index)
            }
            // call-flood: the loop never blocks, and signals every call fd each round.
            let flooding = misbehaviour == .callFlood
            let ready = poll(&entries, nfds_t(entries.count), flooding ? 0 : -1)
            if flooding { floodCalls() }
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

    // MARK: Messages

    func handleMessage(_ connection: VhostUserChannel) throws(ChannelFailure) {
        let deadline = ContinuousClock.now + .seconds(5)
        let head = try connection.receive(exactly: VhostUserHeader.byteCount, maximumDescriptors: Int(VHOST_USER_MAX_FDS), deadline: deadline)
        var descriptors = head.descriptors
        defer { for fd in descriptors { close(fd) } }
        let header = VhostUserHeader(head.bytes)!
        guard header.flags & VhostUserFlags.versionMask == VhostUserFlags.version, header.flags & VhostUserFlags.reply == 0,
              Int(header.size) <= VhostUserLimits.maxPayload, head.received <= Int(VHOST_USER_MAX_FDS)
        else {
            throw .system("message \(header.request) flags 0x\(String(header.flags, radix: 16)) size \(header.size) fds \(head.received)", .invalidArgument)
        }
        let body = try connection.receive(exactly: Int(header.size), maximumDescriptors: Int(VHOST_USER_MAX_FDS) - descriptors.count, deadline: deadline)
        descriptors += body.descriptors
        let payload = body.bytes
        let request = VhostUserRequest(rawValue: header.request)

        func reply(_ bytes: [UInt8]) throws(ChannelFailure) {
            let message = VhostUserHeader(request: header.request, flags: VhostUserFlags.version | VhostUserFlags.reply, size: UInt32(bytes.count)).bytes + bytes
            try sendReply(message, request: header.request, on: connection, deadline: deadline)
        }
        func u64(_ value: UInt64) -> [UInt8] {
            var bytes: [UInt8] = []
            bytes.appendLE(value)
            return bytes
        }
        let wantsAck = header.flags & VhostUserFlags.needReply != 0 && protocolFeatures & VhostUserProtocolFeature.replyAck != 0
        // The result of a message without a reply of its own: acknowledged when asked.
        var ok = true
        switch request {
        case .getFeatures?: try reply(u64(offeredFeatures)); return
        case .getProtocolFeatures?: try reply(u64(offeredProtocol)); return
        case .getQueueNum?: try reply(u64(UInt64(queueCount))); return
        case .setFeatures?:
            ok = payload.count == 8 && payload.u64(at: 0) & ~offeredFeatures == 0
            if ok {
                features = payload.u64(at: 0)
                // Without PROTOCOL_FEATURES a ring is enabled from the start (vhost-user.rst, "Ring states").
                if features & VhostUserFeature.protocolFeatures == 0 { for index in queues.indices { queues[index].enabled = true } }
            }
        case .setProtocolFeatures?:
            ok = payload.count == 8 && payload.u64(at: 0) & ~offeredProtocol == 0
            if ok { protocolFeatures = payload.u64(at: 0) }
        case .setOwner?, .resetOwner?: ok = payload.isEmpty
        case .setMemTable?: ok = setMemTable(payload, descriptors: &descriptors)
        case .setVringNum?:
            ok = withQueue(payload) { queue, num in
                guard num > 0, num <= 32768, num & (num - 1) == 0 else { return false }
                queue.size = num
                return true
            }
        case .setVringAddr?: ok = setVringAddr(payload)
        case .setVringBase?:
            ok = withQueue(payload) { queue, num in
                guard num <= 0xFFFF else { return false }
                queue.lastAvailable = UInt16(num)
                queue.used = UInt16(num)
                return true
            }
        case .getVringBase?:
            guard payload.count == 8, Int(payload.u32(at: 0)) < queueCount else { throw .system("GET_VRING_BASE for a queue that does not exist", .invalidArgument) }
            let index = Int(payload.u32(at: 0))
            // Stops the ring (vhost-user.rst, "Ring states"): kick and call are dropped.
            queues[index].started = false
            queues[index].closeFiles()
            var state: [UInt8] = []
            state.appendLE(UInt32(index))
            state.appendLE(UInt32(queues[index].lastAvailable))
            try reply(state)
            return
        case .setVringKick?, .setVringCall?, .setVringErr?:
            ok = setVringFile(request!, payload, descriptors: &descriptors)
        case .setVringEnable?:
            ok = withQueue(payload) { queue, num in
                guard self.features & VhostUserFeature.protocolFeatures != 0, num <= 1 else { return false }
                queue.enabled = num == 1
                return true
            }
            if ok, queues[Int(payload.u32(at: 0))].enabled { process(queue: Int(payload.u32(at: 0))) }
        case .getConfig?:
            var answer: [UInt8] = []
            if payload.count >= 12, protocolFeatures & VhostUserProtocolFeature.config != 0 {
                let offset = Int(payload.u32(at: 0)), size = Int(payload.u32(at: 4))
                if payload.count == 12 + size, size > 0, offset + size <= config.count {
                    answer = Array(payload[0..<12]) + Array(config[offset..<(offset + size)])
                }
            }
            // An empty payload is the protocol's "failed".
            try reply(answer)
            return
        case .setConfig?, nil:
            ok = false
        }
        if !ok { log("refused \(request?.name ?? "message \(header.request)") (\(payload.count) bytes)") }
        if wantsAck { try reply(u64(ok ? 0 : 1)) }
    }

    func withQueue(_ payload: [UInt8], _ body: (inout QueueState, UInt32) -> Bool) -> Bool {
        guard payload.count == 8 else { return false }
        let index = Int(payload.u32(at: 0))
        guard index < queueCount else { return false }
        return body(&queues[index], payload.u32(at: 4))
    }

    /// SET_MEM_TABLE: "Multiple memory regions description", one fd per region.
    func setMemTable(_ payload: [UInt8], descriptors: inout [Int32]) -> Bool {
        guard payload.count >= 8 else { return false }
        let count = Int(payload.u32(at: 0))
        guard (1...VhostUserLimits.maxRegions).contains(count), payload.count == 8 + 32 * count, descriptors.count == count else { return false }
        var mapped: [MappedRegion] = []
        for index in 0..<count {
            let at = 8 + 32 * index
            let gpa = payload.u64(at: at), size = payload.u64(at: at + 8), user = payload.u64(at: at + 16), offset = payload.u64(at: at + 24)
            let (length, overflow) = size.addingReportingOverflow(offset)
            guard size > 0, !overflow, length <= UInt64(Int.max), gpa.addingReportingOverflow(size).overflow == false,
                  user.addingReportingOverflow(size).overflow == false,
                  let mapping = vhost_user_mmap_shared(descriptors[index], Int(length))
            else {
                for region in mapped { munmap(region.mapping, region.mappingLength) }
                return false
            }
            mapped.append(MappedRegion(guestPhysical: gpa, user: user, size: size, host: mapping + Int(offset), mapping: mapping, mappingLength: Int(length)))
        }
        unmapRegions()
        regions = mapped
        return true
    }

    /// SET_VRING_ADDR: "Vring address description" (front-end user addresses).
    func setVringAddr(_ payload: [UInt8]) -> Bool {
        guard payload.count == 40 else { return false }
        let index = Int(payload.u32(at: 0))
        guard index < queueCount, queues[index].size > 0 else { return false }
        queues[index].descriptorUser = payload.u64(at: 8)
        queues[index].usedUser = payload.u64(at: 16)
        queues[index].availableUser = payload.u64(at: 24)
        queues[index].addressed = rings(of: queues[index]) != nil
        return queues[index].addressed
    }

    func setVringFile(_ request: VhostUserRequest, _ payload: [UInt8], descriptors: inout [Int32]) -> Bool {
        guard payload.count == 8 else { return false }
        let value = payload.u64(at: 0)
        let index = Int(value & 0xFF)
        let noFile = value & VhostUserLimits.invalidFdFlag != 0
        guard index < queueCount, descriptors.count == (noFile ? 0 : 1) else { return false }
        let fd = noFile ? -1 : descriptors.removeFirst()
        switch request {
        case .setVringKick:
            if queues[index].kick >= 0 { close(queues[index].kick) }
            queues[index].kick = fd
            // A kick fd starts the ring (vhost-user.rst, "Ring states"); serve what is already there.
            queues[index].started = true
            process(queue: index)
        case .setVringCall:
            if queues[index].call >= 0 { close(queues[index].call) }
            queues[index].call = fd
            callArrived(fd, queue: index)
        default:
            if fd >= 0 { close(fd) }
        }
        return true
    }

    // MARK: Guest memory

    func host(user address: UInt64, length: UInt64) -> UnsafeMutableRawPointer? {
        for region in regions where address >= region.user {
            let offset = address - region.user
            if offset <= region.size, length <= region.size - offset { return region.host + Int(offset) }
        }
        return nil
    }

    func host(guest address: UInt64, length: UInt64) -> UnsafeMutableRawPointer? {
        for region in regions where address >= region.guestPhysical {
            let offset = address - region.guestPhysical
            if offset <= region.size, length <= region.size - offset { return region.host + Int(offset) }
        }
        return nil
    }

    func rings(of queue: QueueState) -> (descriptors: UnsafeMutableRawPointer, available: UnsafeMutableRawPointer, used: UnsafeMutableRawPointer)? {
        let n = UInt64(queue.size)
        guard n > 0,
              let descriptors = host(user: queue.descriptorUser, length: 16 * n),
              let available = host(user: queue.availableUser, length: 6 + 2 * n),
              let used = host(user: queue.usedUser, length: 6 + 8 * n)
        else { return nil }
        return (descriptors, available, used)
    }

    // MARK: Requests (virtio 1.2 section 5.2.6)

    /// Serves every available request of `queue` from its last index, then signals its call fd.
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
            if availableIndex &- queue.lastAvailable > size { log("queue \(index): available index jumped by more than the ring size"); break }
            let head = UInt16(littleEndian: rings.available.loadUnaligned(fromByteOffset: 4 + 2 * Int(queue.lastAvailable % size), as: UInt16.self))
            let length = serve(head: head, descriptors: rings.descriptors, size: size)
            let element = 4 + 8 * Int(queue.used % size)
            let published = usedGarbage(head: head, usedIndex: queue.used &+ 1, size: size)
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

    struct Segment {
        var pointer: UnsafeMutableRawPointer
        var length: Int
    }

    /// Serves the chain at `head`; returns the bytes written to device-writable descriptors.
    func serve(head: UInt16, descriptors: UnsafeMutableRawPointer, size: UInt16) -> UInt32 {
        var readable: [Segment] = [], writable: [Segment] = []
        var index = head
        // A head beyond the ring names no chain: nothing to complete but the element (length 0).
        guard head < size else { return 0 }
        var valid = true
        var steps = 0
        while true {
            steps += 1
            let at = 16 * Int(index)
            let address = UInt64(littleEndian: descriptors.loadUnaligned(fromByteOffset: at, as: UInt64.self))
            let length = UInt32(littleEndian: descriptors.loadUnaligned(fromByteOffset: at + 8, as: UInt32.self))
            let flags = UInt16(littleEndian: descriptors.loadUnaligned(fromByteOffset: at + 12, as: UInt16.self))
            let next = UInt16(littleEndian: descriptors.loadUnaligned(fromByteOffset: at + 14, as: UInt16.self))
            // INDIRECT was not offered; a chain longer than the ring loops; memory outside RAM; readable after writable.
            // A chain longer than the ring loops: no status byte can be trusted, length 0.
            guard steps <= Int(size) else { return 0 }
            // INDIRECT was not offered; memory outside RAM; readable after writable: the
            // request fails, but the walk goes on to find the status descriptor.
            if flags & 4 == 0, let pointer = host(guest: address, length: UInt64(length)), flags & 2 != 0 || writable.isEmpty {
                if flags & 2 != 0 { writable.append(Segment(pointer: pointer, length: Int(length))) } else { readable.append(Segment(pointer: pointer, length: Int(length))) }
            } else {
                valid = false
            }
            if flags & 1 == 0 { break }
            guard next < size else { valid = false; break }
            index = next
        }
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
        guard valid else { return finish(ioError, written: 0) }
        // The 16-byte header, possibly split across readable descriptors.
        var header = [UInt8]()
        var data: [Segment] = []
        for segment in readable {
            let take = min(16 - header.count, segment.length)
            header += Array(UnsafeRawBufferPointer(start: segment.pointer, count: take))
            if segment.length > take { data.append(Segment(pointer: segment.pointer + take, length: segment.length - take)) }
        }
        guard header.count == 16 else { return finish(ioError, written: 0) }
        let type = header.u32(at: 0), sector = header.u64(at: 8)
        switch type {
        case 0, 1:  // IN, OUT
            let segments = type == 0 ? writable : data
            let total = segments.reduce(0) { $0 + $1.length }
            guard total % 512 == 0, sector <= sectors, UInt64(total / 512) <= sectors - sector else { return finish(ioError, written: 0) }
            if type == 1, readOnly { return finish(ioError, written: 0) }
            var offset = off_t(sector * 512)
            for segment in segments {
                let done = type == 0 ? pread(image, segment.pointer, segment.length, offset) : pwrite(image, segment.pointer, segment.length, offset)
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
                id[written..<(written + take)].withUnsafeBytes { segment.pointer.copyMemory(from: $0.baseAddress!, byteCount: take) }
                written += take
            }
            return finish(0, written: written)
        default:
            return finish(unsupported, written: 0)
        }
    }
}
#endif
