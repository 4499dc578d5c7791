#if os(Linux)
import CBlkBackend
import CVhostUser
import Glibc
import VhostUser

/// The front-end's messages (vhost-user.rst, "Front-end message types"):
/// decoded and shape-checked by `FrontendMessage`, then applied here against
/// the connection's state. A refused message gets a REPLY_ACK status of 1
/// when one was asked for; one that leaves the stream untrustworthy ends the
/// connection. Descriptors attached to a message that takes none are closed.
extension BlockServer {
    func handleMessage(_ connection: VhostUserChannel) throws(ChannelFailure) {
        let deadline = ContinuousClock.now + .seconds(5)
        let head = try connection.receive(
            exactly: VhostUserHeader.byteCount, maximumDescriptors: Int(VHOST_USER_MAX_FDS), deadline: deadline)
        var descriptors = head.descriptors
        defer { for fd in descriptors { close(fd) } }
        let header = VhostUserHeader(head.bytes)!
        if case .fatal(let why)? = FrontendMessage.check(header, descriptors: head.received) {
            throw .system(why, .invalidArgument)
        }
        let body = try connection.receive(
            exactly: Int(header.size), maximumDescriptors: Int(VHOST_USER_MAX_FDS) - descriptors.count,
            deadline: deadline)
        descriptors += body.descriptors

        func reply(_ bytes: [UInt8]) throws(ChannelFailure) {
            let message =
                VhostUserHeader(
                    request: header.request, flags: VhostUserFlags.version | VhostUserFlags.reply,
                    size: UInt32(bytes.count)
                ).bytes + bytes
            if let hooks {
                try hooks.sendReply(message, request: header.request, on: connection, deadline: deadline, server: self)
            } else {
                try connection.send(message, deadline: deadline)
            }
        }
        let wantsAck =
            header.flags & VhostUserFlags.needReply != 0
            && protocolFeatures & VhostUserProtocolFeature.replyAck != 0
        let decoded = FrontendMessage.decode(
            header, payload: body.bytes, descriptors: descriptors.count, queues: queueCount, configSize: config.count)
        // The result of a message without a reply of its own: acknowledged when asked.
        var refusal: String?
        switch decoded {
        case .failure(.fatal(let why)):
            throw .system(why, .invalidArgument)
        case .failure(.refused(let why)):
            refusal = why
        case .success(let message):
            if let answer = answer(message) {
                try reply(answer)
                return
            }
            refusal = apply(message, descriptors: &descriptors)
        }
        if let refusal { guestLog.log("refused \(refusal)") }
        if wantsAck { try reply(u64(refusal == nil ? 0 : 1)) }
    }

    func u64(_ value: UInt64) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.appendLE(value)
        return bytes
    }

    /// The reply of a message that has one of its own; nil for the others.
    func answer(_ message: FrontendMessage) -> [UInt8]? {
        switch message {
        case .getFeatures: return u64(offeredFeatures)
        case .getProtocolFeatures: return u64(offeredProtocol)
        case .getQueueNum: return u64(UInt64(queueCount))
        case .getVringBase(let index):
            // Stops the ring (vhost-user.rst, "Ring states"): kick and call are dropped.
            queues[index].started = false
            queues[index].closeFiles()
            var state: [UInt8] = []
            state.appendLE(UInt32(index))
            state.appendLE(UInt32(queues[index].lastAvailable))
            return state
        case .getConfig(let offset, let size, let head):
            // An empty payload is the protocol's "failed".
            guard size > 0, protocolFeatures & VhostUserProtocolFeature.config != 0 else { return [] }
            return head + Array(config[offset..<(offset + size)])
        default:
            return nil
        }
    }

    /// Applies a message without a reply of its own; returns why it was refused, or nil.
    func apply(_ message: FrontendMessage, descriptors: inout [Int32]) -> String? {
        switch message {
        case .setFeatures(let wanted):
            guard wanted & ~offeredFeatures == 0 else { return "SET_FEATURES 0x\(String(wanted, radix: 16))" }
            features = wanted
            // Without PROTOCOL_FEATURES a ring is enabled from the start (vhost-user.rst, "Ring states").
            if features & VhostUserFeature.protocolFeatures == 0 {
                for index in queues.indices { queues[index].enabled = true }
            }
        case .setProtocolFeatures(let wanted):
            guard wanted & ~offeredProtocol == 0 else { return "SET_PROTOCOL_FEATURES 0x\(String(wanted, radix: 16))" }
            protocolFeatures = wanted
        case .setOwner, .resetOwner:
            break
        case .setMemTable(let table):
            return setMemTable(table, descriptors: &descriptors)
        case .setVringNum(let index, let size):
            queues[index].size = size
            // Rings addressed before must still fit in guest memory at the new size. A front-end
            // that re-sizes a queue sends SET_VRING_ADDR next (vhost-user.rst, "Ring states"), so
            // the size is taken; until new addresses arrive the queue is not served, and says so.
            if queues[index].addressed, rings(of: queues[index]) == nil {
                queues[index].addressed = false
                log("SET_VRING_NUM: queue \(index)'s rings no longer fit in guest memory at size \(size): "
                    + "not served until SET_VRING_ADDR")
            }
        case .setVringAddr(let index, let descriptor, let used, let available):
            guard queues[index].size > 0 else { return "SET_VRING_ADDR: queue \(index) has no size" }
            queues[index].descriptorUser = descriptor
            queues[index].usedUser = used
            queues[index].availableUser = available
            queues[index].addressed = rings(of: queues[index]) != nil
            if !queues[index].addressed { return "SET_VRING_ADDR: queue \(index)'s rings are not in guest memory" }
        case .setVringBase(let index, let base):
            queues[index].lastAvailable = base
            queues[index].used = base
        case .setVringFile(let file, let index, let hasFile):
            return setVringFile(file, queue: index, fd: hasFile ? descriptors.removeFirst() : -1)
        case .setVringEnable(let index, let enabled):
            guard features & VhostUserFeature.protocolFeatures != 0 else {
                return "SET_VRING_ENABLE without VHOST_USER_F_PROTOCOL_FEATURES"
            }
            queues[index].enabled = enabled
            if enabled { pending.insert(index) }
        case .setConfig:
            return "SET_CONFIG: the configuration is read-only"
        case .getFeatures, .getProtocolFeatures, .getQueueNum, .getVringBase, .getConfig:
            break
        }
        return nil
    }

    /// SET_MEM_TABLE: maps each region's descriptor, after checking with
    /// fstat(2) that the file backs `mmap_offset + size` bytes (a mapping past
    /// a file's end faults with SIGBUS at first touch). A file can still shrink
    /// afterwards unless it is a memfd sealed with F_SEAL_SHRINK (memfd_create(2)),
    /// so seals are not required: every mapping is guarded instead
    /// (`blk_guard_add`), a fault past the new end is contained, and the
    /// connection ends at the next poll round.
    func setMemTable(_ table: [RegionDescription], descriptors: inout [Int32]) -> String? {
        var mapped: [MappedRegion] = []
        func undo(_ why: String) -> String {
            for region in mapped {
                blk_guard_remove(region.mapping)
                munmap(region.mapping, region.mappingLength)
            }
            return "SET_MEM_TABLE: \(why)"
        }
        for (index, region) in table.enumerated() {
            let fd = descriptors[index]
            let length = region.size + region.mmapOffset
            var info = stat()
            guard fstat(fd, &info) == 0 else { return undo("fstat: \(String(cString: strerror(errno)))") }
            guard info.st_size >= 0, UInt64(info.st_size) >= length else {
                return undo("region \(index) needs \(length) bytes of its file, which has \(info.st_size)")
            }
            guard let mapping = vhost_user_mmap_shared(fd, Int(length)) else {
                return undo("mmap: \(String(cString: strerror(errno)))")
            }
            mapped.append(
                MappedRegion(
                    guestPhysical: region.guestPhysical, user: region.user, size: region.size,
                    host: mapping + Int(region.mmapOffset), mapping: mapping, mappingLength: Int(length)))
            guard blk_guard_add(mapping, Int(length)) == 0 else { return undo("too many mappings guarded") }
        }
        unmapRegions()
        regions = mapped
        faultsSeen = blk_guard_faults()
        return nil
    }

    /// SET_VRING_KICK / SET_VRING_CALL / SET_VRING_ERR: takes `fd` (or none:
    /// -1). Kick and call must be eventfds (a file, a pipe or a socket polls
    /// readable or hung up for good, and the poll loop would spin); they are
    /// made O_NONBLOCK, so a call eventfd at its maximum count cannot block
    /// the back-end (eventfd(2)): a pending signal is already there.
    func setVringFile(_ file: VringFile, queue index: Int, fd: Int32) -> String? {
        if fd >= 0, file != .error {
            guard blk_is_eventfd(fd) != 0 else {
                close(fd)
                return "SET_VRING_\(file == .kick ? "KICK" : "CALL"): queue \(index)'s descriptor is not an eventfd"
            }
            let flags = fcntl(fd, F_GETFL)
            _ = fcntl(fd, F_SETFL, flags | O_NONBLOCK)
        }
        switch file {
        case .kick:
            if queues[index].kick >= 0 { close(queues[index].kick) }
            queues[index].kick = fd
            // A kick fd starts the ring (vhost-user.rst, "Ring states"); serve what is already there.
            queues[index].started = true
            pending.insert(index)
        case .call:
            if queues[index].call >= 0 { close(queues[index].call) }
            queues[index].call = fd
            if fd >= 0 { hooks?.callArrived(fd, queue: index, server: self) }
        case .error:
            if fd >= 0 { close(fd) }
        }
        return nil
    }
}
#endif
