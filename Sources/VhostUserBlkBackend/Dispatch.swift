#if os(Linux)
import CBlkBackend
import Glibc
import IrqFdCore
import IrqFdLinux
import SystemPackage
import VhostUser

/// The front-end's messages (vhost-user.rst, "Front-end message types"):
/// decoded and shape-checked by `FrontendMessage`, then applied here against
/// the connection's state. A refused message gets a REPLY_ACK status of 1
/// when one was asked for; one that leaves the stream untrustworthy ends the
/// connection. Descriptors attached to a message that takes none are closed.
extension BlockServer {
    func handleMessage(_ connection: VhostUserChannel) throws(ChannelFailure) {
        let deadline = ContinuousClock.now + .seconds(5)
        let head = try connection.receiveMessage(
            exactly: VhostUserHeader.byteCount, maximumDescriptors: FrontendMessage.maxDescriptors, deadline: deadline)
        // Received descriptors no message took: closed (a close(2) failure leaves nothing to do).
        var descriptors = head.descriptors
        defer { for descriptor in descriptors { try? descriptor.close() } }
        let header = VhostUserHeader(head.bytes)!
        if case .fatal(let why)? = FrontendMessage.check(header, descriptors: head.received) {
            throw .system(why, .invalidArgument)
        }
        let body = try connection.receiveMessage(
            exactly: Int(header.size), maximumDescriptors: FrontendMessage.maxDescriptors - descriptors.count,
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
    func apply(_ message: FrontendMessage, descriptors: inout [FileDescriptor]) -> String? {
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
                log(
                    "SET_VRING_NUM: queue \(index)'s rings no longer fit in guest memory at size \(size): "
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
            return setVringFile(file, queue: index, descriptor: hasFile ? descriptors.removeFirst() : nil)
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
    /// (`MappedRegion`), a fault past the new end is contained, and the
    /// connection ends at the next poll round. The table's descriptors are
    /// taken from `descriptors`: each is mapped (its region owns it) or closed.
    func setMemTable(_ table: [RegionDescription], descriptors: inout [FileDescriptor]) -> String? {
        var files = descriptors.prefix(table.count)
        descriptors.removeFirst(files.count)
        // Those not reached when a region is refused (close(2) failing leaves nothing to do).
        defer { for file in files { try? file.close() } }
        // Released on a refusal, before the old table is touched: unguarded, unmapped, closed.
        var mapped: [MappedRegion] = []
        for (index, (region, file)) in zip(table, files).enumerated() {
            let length = region.size + region.mmapOffset
            var info = stat()
            do throws(SystemCallError) {
                _ = try retryingInterrupts("fstat") { fstat(file.rawValue, &info) }
            } catch {
                return "SET_MEM_TABLE: \(error)"
            }
            guard info.st_size >= 0, UInt64(info.st_size) >= length else {
                return "SET_MEM_TABLE: region \(index) needs \(length) bytes of its file, which has \(info.st_size)"
            }
            // The region takes the file (and closes it if the mapping fails).
            files.removeFirst()
            do throws(SystemCallError) {
                mapped.append(try MappedRegion(region, file: file, length: Int(length)))
            } catch {
                return "SET_MEM_TABLE: \(error)"
            }
        }
        regions = mapped
        faultsSeen = blk_guard_faults()
        return nil
    }

    /// SET_VRING_KICK / SET_VRING_CALL / SET_VRING_ERR: takes `descriptor`
    /// (or none). Kick and call must be eventfds (a file, a pipe or a socket
    /// polls readable or hung up for good, and the poll loop would spin); they
    /// are made O_NONBLOCK, so a call eventfd at its maximum count cannot block
    /// the back-end (eventfd(2)): a pending signal is already there. IrqFdLinux's
    /// `EventFD.adopting(checking:)` does both.
    func setVringFile(_ file: VringFile, queue index: Int, descriptor: FileDescriptor?) -> String? {
        var event: EventFD?
        if let descriptor {
            // The error eventfd is not used: closed (a close(2) failure leaves nothing to do).
            guard file != .error else {
                try? descriptor.close()
                return nil
            }
            do throws(EventFD.AdoptionFailure) { event = try EventFD.adopting(checking: descriptor) } catch {
                return "SET_VRING_\(file == .kick ? "KICK" : "CALL"): queue \(index)'s descriptor \(error)"
            }
        }
        switch file {
        case .kick:
            queues[index].kick = event
            // A kick fd starts the ring (vhost-user.rst, "Ring states"); serve what is already there.
            queues[index].started = true
            pending.insert(index)
        case .call:
            queues[index].call = event
            if let event { hooks?.callArrived(event, queue: index, server: self) }
        case .error:
            break
        }
        return nil
    }
}
#endif
