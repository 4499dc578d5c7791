#if os(Linux)
import CVhostUser
import Glibc
import VhostUser

/// The front-end's messages (vhost-user.rst, "Front-end message types"): each
/// is size-checked, refused (with a REPLY_ACK status of 1 when one was asked
/// for) when it does not fit, and answered.
extension BlockServer {
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
            if let hooks {
                try hooks.sendReply(message, request: header.request, on: connection, deadline: deadline, server: self)
            } else {
                try connection.send(message, deadline: deadline)
            }
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
            if fd >= 0 { hooks?.callArrived(fd, queue: index, server: self) }
        default:
            if fd >= 0 { close(fd) }
        }
        return true
    }
}
#endif
