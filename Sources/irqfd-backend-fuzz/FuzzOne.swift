#if os(Linux)
import VhostUser
import VhostUserBlkBackend
import VirtqueueWalk

/// Guest RAM the walker's segments must stay inside: every byte of every
/// segment is read, so AddressSanitizer reports a segment that strays.
nonisolated(unsafe) let guestRAM = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 16, alignment: 16)

/// One input. Byte 0 chooses the target: even, the front-end message
/// decoder (then a descriptor count, a 12-byte header and the payload); odd,
/// the descriptor-chain walker (then the queue size's log2, the head, two
/// regions' guest-physical bases and sizes, limits, whether indirect tables are
/// walked, and the descriptor table, also copied to guest RAM's start so that
/// an indirect descriptor can name it).
func fuzzOne(_ input: UnsafeRawBufferPointer) {
    guard input.count >= 2 else { return }
    var bytes = Array(input)
    if bytes[0] & 1 == 0 {
        guard bytes.count >= 14, let header = VhostUserHeader(bytes[2..<14]) else { return }
        let descriptors = Int(bytes[1] % 10)
        _ = FrontendMessage.check(header, descriptors: descriptors)
        _ = FrontendMessage.decode(
            header, payload: Array(bytes[14...]), descriptors: descriptors, queues: 1 + Int(bytes[1] >> 4) % 8,
            configSize: 60)
        return
    }
    guard bytes.count >= 24 else { return }
    let queueSize = UInt16(1) << (bytes[1] % 9)  // 1...256
    let head = UInt16(bytes[2]) | UInt16(bytes[3]) << 8
    func u16(_ at: Int) -> UInt64 { UInt64(bytes[at]) | UInt64(bytes[at + 1]) << 8 }
    // Two regions inside guestRAM, at guest-physical bases the input chooses (they may touch or overlap).
    let lowSize = min(u16(4) + 1, 1 << 15)
    let highSize = min(u16(6) + 1, 1 << 15)
    let lowBase = u16(8) << 4
    let highBase = bytes[10] & 1 == 0 ? lowBase + lowSize : u16(11) << 8
    let memory = GuestMemoryMap([
        .init(guestPhysical: lowBase, size: lowSize, host: guestRAM.baseAddress!),
        .init(guestPhysical: highBase, size: highSize, host: guestRAM.baseAddress! + (1 << 15)),
    ])
    let limits = ChainLimits(
        maxDescriptors: 1 + Int(bytes[13]), maxDescriptorLength: UInt32(u16(14)) << UInt32(bytes[16] % 17),
        maxBytes: u16(17) << (bytes[19] % 33))
    let tableBytes = 16 * Int(queueSize)
    var table = Array(bytes[24...].prefix(tableBytes))
    table += [UInt8](repeating: 0, count: tableBytes - table.count)
    let indirectTables = bytes[20] & 1 != 0
    // The whole largest table's window, zero-padded: nothing of an earlier input is left for this one to walk.
    if indirectTables { guestRAM.copyBytes(from: table + [UInt8](repeating: 0, count: 16 * 256 - tableBytes)) }
    table.withUnsafeBytes { table in
        let chain = DescriptorChain(
            head: head, table: table.baseAddress!, queueSize: queueSize, memory: memory, limits: limits,
            indirectTables: indirectTables)
        var sum: UInt8 = 0
        for segment in chain.readable + chain.writable {
            for offset in 0..<segment.length { sum &+= segment.pointer.load(fromByteOffset: offset, as: UInt8.self) }
        }
        if let status = chain.lastWritableByte { sum &+= status.load(as: UInt8.self) }
        precondition(chain.fault != nil || chain.readableBytes + chain.writableBytes <= 2 * UInt64(UInt32.max))
        bytes[0] = sum
    }
}
#endif
