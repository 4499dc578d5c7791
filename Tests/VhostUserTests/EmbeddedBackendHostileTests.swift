#if os(Linux)
import Foundation
import Testing
import VhostUser

/// The embedded back-end against a hostile driver and a reconnecting front-end.
@Suite struct EmbeddedBackendHostileTests {
    @Test func refusedMessageIsRejectedByReplyAck() throws {
        let fixture = try BlockFixture(.embedded)
        #expect(throws: VhostUserError.rejected(.setVringNum, status: 1)) {
            try fixture.frontend.setVringNum(queue: 5, size: 64)
        }
        // A nonzero ack keeps the connection.
        #expect(fixture.frontend.isConnected)
        _ = try fixture.queue(0)
    }

    @Test func ringsStartDisabledUntilSetVringEnable() throws {
        let fixture = try BlockFixture(.embedded)
        let queue = try HostVirtqueueDriver(memory: fixture.memory, queue: 0, size: 64, base: 0)
        try fixture.frontend.setVringNum(queue: 0, size: 64)
        try fixture.frontend.setVringAddr(
            queue: 0, descriptor: queue.descriptorTable, available: queue.availableRing, used: queue.usedRing)
        try fixture.frontend.setVringBase(queue: 0, index: 0)
        try fixture.frontend.setVringKick(queue: 0, descriptor: queue.kick.fileDescriptor)
        try fixture.frontend.setVringCall(queue: 0, descriptor: queue.call.fileDescriptor)
        queue.submit(.getID, sector: 0, length: 20, slot: 0)
        queue.kick.signal()
        #expect(queue.collect(1, timeout: .milliseconds(300)).isEmpty)
        try fixture.frontend.setVringEnable(queue: 0, enabled: true)
        let done = queue.collect(1)
        #expect(done.count == 1 && done.first?.length == 21)
        #expect(queue.status(slot: 0) == 0)
        #expect(fixture.memory.read(20, at: queue.dataAddress(slot: 0)) == Array("irqfd-vhost-user-blk".utf8))
    }

    @Test func badChainsCompleteWithErrorsNotACrash() throws {
        let fixture = try BlockFixture(.embedded)
        let queue = try fixture.queue(0)
        // A data descriptor outside guest RAM: IOERR.
        queue.submit(.read, sector: 0, length: 512, slot: 0)
        fixture.memory.store(UInt64(1) << 40, at: queue.descriptorTable + 16)
        // A chain that loops on itself: the status byte is never reached, so length 0 and no status.
        queue.submit(.read, sector: 0, length: 512, slot: 1)
        fixture.memory.store(UInt16(4), at: queue.descriptorTable + 4 * 16 + 14)
        // An unknown request type: UNSUPP.
        queue.submit(.read, sector: 0, length: 512, slot: 2)
        fixture.memory.store(UInt32(77), at: queue.dataAddress(slot: 2) - 32)
        // A head beyond the ring: completes with length 0.
        queue.publish(1000)
        // An unaligned length: IOERR.
        queue.submit(.read, sector: 0, length: 100, slot: 3)
        queue.kick.signal()
        let done = queue.collect(5)
        #expect(done.count == 5, "\(done)")
        #expect(queue.status(slot: 0) == 1)
        #expect(done[1].length == 0 && queue.status(slot: 1) == 0xFF)
        #expect(queue.status(slot: 2) == 2)
        #expect(done[3].length == 0)
        #expect(queue.status(slot: 3) == 1)
        // The back-end still serves good requests.
        queue.submit(.read, sector: 3, length: 512, slot: 4)
        queue.kick.signal()
        #expect(queue.collect(1).count == 1)
        #expect(fixture.memory.read(512, at: queue.dataAddress(slot: 4)) == expectedSector(3))
    }

    @Test func theNextFrontendIsServedAfterADisconnect() throws {
        let fixture = try BlockFixture(.embedded)
        _ = try fixture.queue(0)
        fixture.frontend.close()
        let second = try VhostUserFrontend(socketPath: fixture.backend.socketPath)
        let features = try second.handshake(wantedProtocolFeatures: VhostUserProtocolFeature.config)
        #expect(features & VhostUserFeature.version1 != 0)
        #expect(second.protocolFeatures == VhostUserProtocolFeature.config)
        let config = try second.getConfig(offset: 0, size: 8)
        #expect(config == (0..<8).map { UInt8(truncatingIfNeeded: BlockFixture.sectors >> (8 * UInt64($0))) })
    }
}
#endif
