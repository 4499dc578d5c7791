#if os(Linux)
package import VhostUser

/// Which ring file a SET_VRING_KICK, SET_VRING_CALL or SET_VRING_ERR carries.
package enum VringFile: Equatable, Sendable {
    case kick, call, error
}

/// One SET_MEM_TABLE region as sent (vhost-user.rst, "Memory region description").
package struct RegionDescription: Equatable, Sendable {
    package var guestPhysical: UInt64
    package var size: UInt64
    package var user: UInt64
    package var mmapOffset: UInt64
}

/// A front-end message decoded and checked against its shape (vhost-user.rst,
/// "Front-end message types"): sizes, queue indices, reserved bits, attached
/// descriptors. Nothing here touches the system, so it can be fuzzed alone;
/// what depends on the connection's state is checked where it is applied.
package enum FrontendMessage: Equatable, Sendable {
    case getFeatures, getProtocolFeatures, getQueueNum
    case setFeatures(UInt64)
    case setProtocolFeatures(UInt64)
    case setOwner, resetOwner
    case setMemTable([RegionDescription])
    case setVringNum(queue: Int, size: UInt32)
    case setVringAddr(queue: Int, descriptor: UInt64, used: UInt64, available: UInt64)
    case setVringBase(queue: Int, base: UInt16)
    case getVringBase(queue: Int)
    case setVringFile(VringFile, queue: Int, hasFile: Bool)
    case setVringEnable(queue: Int, enabled: Bool)
    case getConfig(offset: Int, size: Int, head: [UInt8])
    case setConfig

    /// Why a message is not served.
    package enum Refusal: Error, Equatable {
        /// Refused with a REPLY_ACK status of 1 (or a failed reply); the connection stays.
        case refused(String)
        /// The stream cannot be trusted any more (a header out of protocol, a
        /// reply that cannot be refused): the connection is dropped.
        case fatal(String)
    }

    /// The most descriptors one message may carry (VHOST_MEMORY_BASELINE_NREGIONS).
    package static let maxDescriptors = VhostUserLimits.maxRegions

    /// Checks a header before its payload is read: version 1, not a reply, a
    /// payload of at most 4096 bytes, at most 8 descriptors so far.
    package static func check(_ header: VhostUserHeader, descriptors: Int) -> Refusal? {
        guard header.flags & VhostUserFlags.versionMask == VhostUserFlags.version,
            header.flags & VhostUserFlags.reply == 0,
            Int(header.size) <= VhostUserLimits.maxPayload,
            descriptors <= maxDescriptors
        else {
            return .fatal(
                "message \(header.request) flags 0x\(String(header.flags, radix: 16)) size \(header.size) "
                    + "fds \(descriptors)")
        }
        return nil
    }

    /// Decodes `payload`, the body of a message whose header is `header`, that
    /// came with `descriptors` descriptors, for a back-end with `queues` queues
    /// and a device configuration of `configSize` bytes.
    package static func decode(
        _ header: VhostUserHeader, payload: [UInt8], descriptors: Int, queues: Int, configSize: Int
    ) -> Result<FrontendMessage, Refusal> {
        guard let request = VhostUserRequest(rawValue: header.request) else {
            return .failure(.refused("message \(header.request)"))
        }
        func refused(_ why: String) -> Result<FrontendMessage, Refusal> {
            .failure(.refused("\(request.name) (\(payload.count) bytes): \(why)"))
        }
        func shape(_ size: Int) -> Bool { payload.count == size }
        /// A vring state (queue index, number) of a queue that exists.
        func state() -> (queue: Int, number: UInt32)? {
            guard shape(8), Int(payload.u32(at: 0)) < queues else { return nil }
            return (Int(payload.u32(at: 0)), payload.u32(at: 4))
        }
        switch request {
        // A payload on a getter is ignored: the reply is all that is asked for.
        case .getFeatures: return .success(.getFeatures)
        case .getProtocolFeatures: return .success(.getProtocolFeatures)
        case .getQueueNum: return .success(.getQueueNum)
        case .setFeatures: return shape(8) ? .success(.setFeatures(payload.u64(at: 0))) : refused("not a u64")
        case .setProtocolFeatures:
            return shape(8) ? .success(.setProtocolFeatures(payload.u64(at: 0))) : refused("not a u64")
        case .setOwner: return shape(0) ? .success(.setOwner) : refused("a payload")
        case .resetOwner: return shape(0) ? .success(.resetOwner) : refused("a payload")
        case .setMemTable:
            return decodeMemTable(payload, descriptors: descriptors).map { .success(.setMemTable($0)) }
                ?? refused("not a memory table with one descriptor per region")
        case .setVringNum:
            // Split rings: a power of 2 up to 32768 (virtio 1.2 section 2.7).
            guard let (queue, size) = state(), size > 0, size <= 32768, size & (size - 1) == 0 else {
                return refused("not a queue and a power of 2 up to 32768")
            }
            return .success(.setVringNum(queue: queue, size: size))
        case .setVringAddr:
            // "Vring address description": index, flags, descriptor, used, available, log.
            guard shape(40), Int(payload.u32(at: 0)) < queues else { return refused("not a queue's addresses") }
            // VHOST_VRING_F_LOG (bit 0) asks for dirty logging, which was not offered; no other bit exists.
            guard payload.u32(at: 4) == 0 else { return refused("flags 0x\(String(payload.u32(at: 4), radix: 16))") }
            return .success(
                .setVringAddr(
                    queue: Int(payload.u32(at: 0)), descriptor: payload.u64(at: 8), used: payload.u64(at: 16),
                    available: payload.u64(at: 24)))
        case .setVringBase:
            guard let (queue, base) = state(), base <= 0xFFFF else { return refused("not a queue and a 16-bit index") }
            return .success(.setVringBase(queue: queue, base: UInt16(base)))
        case .getVringBase:
            // Its reply is the ring's state; there is no way to refuse it but to drop the connection.
            guard let (queue, _) = state() else {
                return .failure(.fatal("GET_VRING_BASE for a queue that does not exist"))
            }
            return .success(.getVringBase(queue: queue))
        case .setVringKick, .setVringCall, .setVringErr:
            // A u64: bits 0-7 the queue, bit 8 "no file", the rest reserved (vhost-user.rst, SET_VRING_KICK).
            guard shape(8) else { return refused("not a u64") }
            let value = payload.u64(at: 0)
            guard value & ~(0xFF | VhostUserLimits.invalidFdFlag) == 0 else {
                return refused("reserved bits 0x\(String(value & ~0x1FF, radix: 16))")
            }
            let queue = Int(value & 0xFF)
            let hasFile = value & VhostUserLimits.invalidFdFlag == 0
            guard queue < queues else { return refused("queue \(queue) does not exist") }
            guard descriptors == (hasFile ? 1 : 0) else { return refused("\(descriptors) descriptors attached") }
            let file: VringFile = request == .setVringKick ? .kick : request == .setVringCall ? .call : .error
            return .success(.setVringFile(file, queue: queue, hasFile: hasFile))
        case .setVringEnable:
            guard let (queue, enabled) = state(), enabled <= 1 else { return refused("not a queue and 0 or 1") }
            return .success(.setVringEnable(queue: queue, enabled: enabled == 1))
        case .getConfig:
            // "Device config space": offset, size, flags, then size bytes.
            guard payload.count >= 12 else { return .success(.getConfig(offset: 0, size: 0, head: [])) }
            let offset = Int(payload.u32(at: 0))
            let size = Int(payload.u32(at: 4))
            guard payload.count == 12 + size, size > 0, offset <= configSize, size <= configSize - offset else {
                return .success(.getConfig(offset: 0, size: 0, head: []))
            }
            return .success(.getConfig(offset: offset, size: size, head: Array(payload[0..<12])))
        case .setConfig:
            return .success(.setConfig)
        }
    }

    /// SET_MEM_TABLE: "Multiple memory regions description", one descriptor per region.
    static func decodeMemTable(_ payload: [UInt8], descriptors: Int) -> [RegionDescription]? {
        guard payload.count >= 8 else { return nil }
        let count = Int(payload.u32(at: 0))
        guard (1...VhostUserLimits.maxRegions).contains(count), payload.count == 8 + 32 * count, descriptors == count
        else { return nil }
        var regions: [RegionDescription] = []
        for index in 0..<count {
            let at = 8 + 32 * index
            let region = RegionDescription(
                guestPhysical: payload.u64(at: at), size: payload.u64(at: at + 8), user: payload.u64(at: at + 16),
                mmapOffset: payload.u64(at: at + 24))
            let (length, overflow) = region.size.addingReportingOverflow(region.mmapOffset)
            guard region.size > 0, !overflow, length <= UInt64(Int.max),
                !region.guestPhysical.addingReportingOverflow(region.size).overflow,
                !region.user.addingReportingOverflow(region.size).overflow
            else { return nil }
            regions.append(region)
        }
        return regions
    }
}
#endif
