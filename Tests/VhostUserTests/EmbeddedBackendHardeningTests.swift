#if os(Linux)
import Foundation
import Glibc
import IrqFdLinux
import Synchronization
import SystemPackage
import Testing
import VhostUser

// The embedded back-end against a hostile guest and a hostile front-end
// (vhost-user.rst; virtio 1.2 sections 2.7 and 5.2). Every case ends the same
// way: the back-end is alive, a new front-end is answered, and its descriptors
// and guest mappings are back where they were before the attack.

/// The embedded back-end's process, seen from outside: descriptors and guest-memory mappings.
struct BackendProcessState: Equatable {
    var descriptors: Int
    var guestMappings: Int

    init(_ pid: Int32) {
        descriptors = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").count) ?? -1
        let maps = (try? String(contentsOfFile: "/proc/\(pid)/maps", encoding: .utf8)) ?? ""
        guestMappings = maps.split(separator: "\n").filter { $0.contains("/memfd:") }.count
    }
}

/// After an attack: the back-end runs, returns to `baseline` once the attacker
/// is gone, and a new front-end's GET_FEATURES is answered. Returns that answer's latency.
@discardableResult
func expectRecovered(_ backend: VhostUserBackendProcess, baseline: BackendProcessState) throws -> Duration {
    try expectRecovered(
        process: backend.processIdentifier, running: backend.isRunning, socketPath: backend.socketPath,
        baseline: baseline)
}

/// `expectRecovered(_:baseline:)` for a back-end process started some other way.
@discardableResult
func expectRecovered(
    process: pid_t, running: Bool, socketPath: String, baseline: BackendProcessState
) throws -> Duration {
    #expect(running, "the back-end died")
    guard running else { return .zero }
    let deadline = ContinuousClock.now + .seconds(10)
    var state = BackendProcessState(process)
    while state != baseline, ContinuousClock.now < deadline {
        usleep(2_000)
        state = BackendProcessState(process)
    }
    #expect(state == baseline, "descriptors and guest mappings: \(state), before: \(baseline)")
    let start = ContinuousClock.now
    let frontend = try VhostUserFrontend(socketPath: socketPath, timeout: .seconds(2))
    let features = try frontend.getFeatures()
    let latency = ContinuousClock.now - start
    #expect(features & VhostUserFeature.version1 != 0)
    frontend.close()
    return latency
}

/// A back-end on a fresh image, its state before any front-end, and a
/// negotiated front-end (REPLY_ACK, CONFIG, MQ) with no memory table yet.
final class HardeningFixture {
    let directory: String
    let image: String
    let backend: VhostUserBackendProcess
    let baseline: BackendProcessState
    let frontend: VhostUserFrontend

    init(imageSize: Int = 2048 * 512) throws {
        directory = NSTemporaryDirectory() + "irqfd-harden-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        image = directory + "/disk.img"
        let pattern = (0..<2048).flatMap { expectedSector($0 % 256) }
        _ = FileManager.default.createFile(atPath: image, contents: Data(pattern))
        if imageSize > pattern.count { truncate(image, off_t(imageSize)) }
        backend = try VhostUserBackendProcess.start(.embedded, image: image, socketPath: directory + "/blk.sock")
        baseline = BackendProcessState(backend.processIdentifier)
        frontend = try VhostUserFrontend(socketPath: backend.socketPath)
        let offered = try frontend.handshake(
            wantedProtocolFeatures: VhostUserProtocolFeature.multiQueue | VhostUserProtocolFeature.replyAck
                | VhostUserProtocolFeature.config)
        try frontend.setFeatures(VhostUserFeature.version1 | (offered & VhostUserFeature.protocolFeatures))
    }

    deinit {
        frontend.close()
        backend.stop()
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// A hand ring of `size` entries at guest-physical 0 of fresh guest memory (`memorySize` bytes,
    /// the whole memory table; the ring's `memory`), started on queue 0.
    func startedRing(size: UInt16, memorySize: Int = 4 << 20) throws -> HandRing {
        let memory = try MemfdGuestMemory(size: memorySize)
        try frontend.setMemTable([memory.region])
        let ring = try HandRing(memory: memory, size: size, base: 0)
        try ring.start(frontend)
        return ring
    }

    /// Ends the attack and checks the back-end recovered.
    func recovered() throws {
        frontend.close()
        let latency = try expectRecovered(backend, baseline: baseline)
        print("a new front-end's GET_FEATURES answered in \(latency)")
    }
}

/// A raw connection that sends any bytes and descriptors (a hostile front-end).
struct RawFrontend {
    let channel: VhostUserChannel

    init(_ path: String) throws { channel = try VhostUserChannel.connect(to: path) }

    func send(
        _ request: VhostUserRequest, flags: UInt32 = VhostUserFlags.version, payload: [UInt8],
        size: UInt32? = nil, descriptors: [FileDescriptor] = []
    ) throws {
        let header = VhostUserHeader(request: request.rawValue, flags: flags, size: size ?? UInt32(payload.count))
        try channel.send(header.bytes + payload, passing: descriptors, deadline: .now + .seconds(2))
    }

    /// The u64 of a reply (or REPLY_ACK).
    func replyU64() throws -> UInt64 {
        let head = try channel.receiveMessage(exactly: 12, maximumDescriptors: 0, deadline: .now + .seconds(2))
        let body = try channel.receiveMessage(
            exactly: Int(VhostUserHeader(head.bytes)!.size), maximumDescriptors: 0, deadline: .now + .seconds(2))
        return body.bytes.u64(at: 0)
    }
}

/// A flag a test thread polls.
final class Flag: Sendable {
    let raised = Atomic(true)
}

/// A 16-byte virtio-blk request header (virtio 1.2 section 5.2.6).
func blockHeader(type: UInt32, sector: UInt64) -> [UInt8] {
    var bytes: [UInt8] = []
    bytes.appendLE(type)
    bytes.appendLE(UInt32(0))
    bytes.appendLE(sector)
    return bytes
}

/// A split ring laid out by hand at guest-physical `base` of `memory`, for chains a driver would never build.
struct HandRing {
    let memory: MemfdGuestMemory
    let size: UInt16
    let descriptorTable: UInt64
    let availableRing: UInt64
    let usedRing: UInt64
    let kick: HostEventFD
    let call: HostEventFD
    var availableIndex: UInt16 = 0

    init(memory: MemfdGuestMemory, size: UInt16, base: UInt64) throws {
        self.memory = memory
        self.size = size
        descriptorTable = base
        availableRing = base + 16 * UInt64(size)
        usedRing = (availableRing + 6 + 2 * UInt64(size) + 4095) & ~4095
        memory.write([UInt8](repeating: 0, count: Int(usedRing + 6 + 8 * UInt64(size) - base)), at: base)
        kick = try HostEventFD()
        call = try HostEventFD()
    }

    /// The guest-physical byte after the rings.
    var end: UInt64 { usedRing + 6 + 8 * UInt64(size) }

    func descriptor(_ index: Int, address: UInt64, length: UInt32, flags: UInt16, next: UInt16 = 0) {
        let at = descriptorTable + UInt64(index) * 16
        memory.store(address, at: at)
        memory.store(length, at: at + 8)
        memory.store(flags, at: at + 12)
        memory.store(next, at: at + 14)
    }

    mutating func offer(_ head: UInt16) {
        memory.store(head, at: availableRing + 4 + UInt64(availableIndex % size) * 2)
        availableIndex &+= 1
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        memory.store(availableIndex, at: availableRing + 2)
    }

    var usedIndex: UInt16 { memory.load(UInt16.self, at: usedRing + 2) }
    func usedLength(_ index: UInt16) -> UInt32 {
        memory.load(UInt32.self, at: usedRing + 4 + 8 * UInt64(index % size) + 4)
    }

    func start(_ frontend: VhostUserFrontend, queue: UInt32 = 0) throws {
        try frontend.setVringNum(queue: queue, size: UInt32(size))
        try frontend.setVringAddr(queue: queue, descriptor: descriptorTable, available: availableRing, used: usedRing)
        try frontend.setVringBase(queue: queue, index: 0)
        try frontend.setVringCall(queue: queue, descriptor: call.fileDescriptor)
        try frontend.setVringKick(queue: queue, descriptor: kick.fileDescriptor)
        try frontend.setVringEnable(queue: queue, enabled: true)
    }

    /// Offers head 0 (a read whose status byte is at `status`), kicks, and expects it
    /// completed with VIRTIO_BLK_S_IOERR (virtio 1.2 section 5.2.6).
    mutating func expectHeadZeroCompletesWithIOERR(status: UInt64, timeout: Duration = .seconds(5)) {
        offer(0)
        kick.signal()
        #expect(waitUsed(1, timeout: timeout))
        #expect(memory.load(UInt8.self, at: status) == 1, "IOERR")
    }

    /// Waits until the used index reaches `index`.
    func waitUsed(_ index: UInt16, timeout: Duration = .seconds(5)) -> Bool {
        let deadline = ContinuousClock.now + timeout
        while usedIndex != index {
            guard ContinuousClock.now < deadline else { return false }
            usleep(1_000)
        }
        return true
    }
}

let next: UInt16 = 1
let writeOnly: UInt16 = 2

@Suite struct EmbeddedBackendGuestBoundsTests {
    /// seg_max is 126: a read of 200 writable 512-byte segments (all one buffer) is IOERR, not served.
    @Test func aRequestWithMoreSegmentsThanSegMaxCompletesWithIOERR() throws {
        let fixture = try HardeningFixture()
        var ring = try fixture.startedRing(size: 256)
        let memory = ring.memory
        let header = ring.end + 64
        let buffer = header + 64
        let status = buffer + 4096
        memory.write(blockHeader(type: 0, sector: 0), at: header)
        memory.store(UInt8(0xFF), at: status)
        ring.descriptor(0, address: header, length: 16, flags: next, next: 1)
        for index in 1...200 {
            ring.descriptor(index, address: buffer, length: 512, flags: next | writeOnly, next: UInt16(index + 1))
        }
        ring.descriptor(201, address: status, length: 1, flags: writeOnly)
        ring.expectHeadZeroCompletesWithIOERR(status: status)
        #expect(ring.usedLength(0) == 1)
        try fixture.recovered()
    }

    /// size_max is 1 MiB: one 2 MiB data descriptor is IOERR.
    @Test func aSegmentLongerThanSizeMaxCompletesWithIOERR() throws {
        let fixture = try HardeningFixture(imageSize: 8 << 20)
        var ring = try fixture.startedRing(size: 64)
        let memory = ring.memory
        let header = ring.end + 64
        let status = header + 32
        let buffer = UInt64(1 << 20)
        memory.write(blockHeader(type: 0, sector: 0), at: header)
        memory.store(UInt8(0xFF), at: status)
        ring.descriptor(0, address: header, length: 16, flags: next, next: 1)
        ring.descriptor(1, address: buffer, length: 2 << 20, flags: next | writeOnly, next: 2)
        ring.descriptor(2, address: status, length: 1, flags: writeOnly)
        ring.expectHeadZeroCompletesWithIOERR(status: status)
        try fixture.recovered()
    }

    /// 4096 writable descriptors of 1 MiB over one buffer add up to 2^32 bytes: the
    /// used length cannot hold it (the back-end used to trap converting it). IOERR.
    @Test func aRequestOf4GiBIsRefusedNotATrap() throws {
        let fixture = try HardeningFixture(imageSize: 5 << 30)
        var ring = try fixture.startedRing(size: 8192)
        let memory = ring.memory
        let header = ring.end + 64
        let status = header + 32
        let buffer = UInt64(2 << 20)
        memory.write(blockHeader(type: 0, sector: 0), at: header)
        memory.store(UInt8(0xFF), at: status)
        ring.descriptor(0, address: header, length: 16, flags: next, next: 1)
        for index in 1...4096 {
            ring.descriptor(index, address: buffer, length: 1 << 20, flags: next | writeOnly, next: UInt16(index + 1))
        }
        ring.descriptor(4097, address: status, length: 1, flags: writeOnly)
        ring.expectHeadZeroCompletesWithIOERR(status: status, timeout: .seconds(30))
        try fixture.recovered()
    }

    /// A buffer that crosses from one region into the next, contiguous in guest-physical space, is served.
    @Test func aBufferAcrossTwoContiguousRegionsIsServed() throws {
        let fixture = try HardeningFixture()
        let low = try MemfdGuestMemory(size: 2 << 20)
        let high = try MemfdGuestMemory(size: 2 << 20)
        let highRegion = VhostUserMemoryRegion(
            guestPhysicalAddress: 2 << 20, size: 2 << 20, userAddress: UInt64(UInt(bitPattern: high.base)),
            mmapOffset: 0, fd: high.fileDescriptor)
        try fixture.frontend.setMemTable([low.region, highRegion])
        var ring = try HandRing(memory: low, size: 64, base: 0)
        try ring.start(fixture.frontend)
        let header = ring.end + 64
        let status = header + 32
        let buffer = UInt64(2 << 20) - 200
        low.write(blockHeader(type: 0, sector: 7), at: header)
        low.store(UInt8(0xFF), at: status)
        ring.descriptor(0, address: header, length: 16, flags: next, next: 1)
        ring.descriptor(1, address: buffer, length: 512, flags: next | writeOnly, next: 2)
        ring.descriptor(2, address: status, length: 1, flags: writeOnly)
        ring.offer(0)
        ring.kick.signal()
        #expect(ring.waitUsed(1))
        #expect(low.load(UInt8.self, at: status) == 0)
        #expect(low.read(200, at: buffer) + high.read(312, at: 0) == expectedSector(7))
        try fixture.recovered()
    }

    /// A guest that keeps the available index ahead of a 32768-entry ring does not hold
    /// the control socket: GET_FEATURES is answered while the guest stays busy.
    @Test func aBusyGuestDoesNotStarveTheControlSocket() throws {
        let fixture = try HardeningFixture()
        let ring = try fixture.startedRing(size: 32768)
        let memory = ring.memory
        let header = ring.end + 64
        let id = header + 32
        let status = id + 32
        memory.write(blockHeader(type: 8, sector: 0), at: header)
        ring.descriptor(0, address: header, length: 16, flags: next, next: 1)
        ring.descriptor(1, address: id, length: 20, flags: next | writeOnly, next: 2)
        ring.descriptor(2, address: status, length: 1, flags: writeOnly)
        for slot in 0..<32768 { memory.store(UInt16(0), at: ring.availableRing + 4 + 2 * UInt64(slot)) }
        let busy = Flag()
        let usedRing = ring.usedRing
        let availableRing = ring.availableRing
        let kick = ring.kick
        let guest = Thread {
            // Keeps 32768 requests available (the idx a full ring ahead of the used one) and kicks.
            while busy.raised.load(ordering: .relaxed) {
                let used = memory.load(UInt16.self, at: usedRing + 2)
                memory.store(used &+ 32768, at: availableRing + 2)
                kick.signal()
                sched_yield()
            }
        }
        guest.start()
        defer { busy.raised.store(false, ordering: .relaxed) }
        let served = ContinuousClock.now + .seconds(5)
        while ring.usedIndex < 1000, ContinuousClock.now < served { usleep(1_000) }
        let start = ContinuousClock.now
        let answered = Result { try fixture.frontend.getFeatures() }
        let latency = ContinuousClock.now - start
        let completed = ring.usedIndex
        busy.raised.store(false, ordering: .relaxed)
        #expect((try? answered.get()) != nil, "GET_FEATURES unanswered under load: \(answered)")
        print("GET_FEATURES under a busy 32768-entry ring: \(latency) (\(completed) requests completed by then)")
        try fixture.recovered()
    }
}

@Suite struct EmbeddedBackendFrontendTests {
    /// A region larger than its file (or an mmap_offset beyond it) would fault at first touch: refused.
    @Test func aMemoryRegionLargerThanItsFileIsRefused() throws {
        let fixture = try HardeningFixture()
        let memory = try MemfdGuestMemory(size: 1 << 20)
        var region = memory.region
        region.size = 2 << 20
        #expect(throws: VhostUserError.rejected(.setMemTable, status: 1)) { try fixture.frontend.setMemTable([region]) }
        region = memory.region
        region.mmapOffset = 1 << 20
        #expect(throws: VhostUserError.rejected(.setMemTable, status: 1)) { try fixture.frontend.setMemTable([region]) }
        // The connection stays, and a fitting table is then taken.
        try fixture.frontend.setMemTable([memory.region])
        try fixture.recovered()
    }

    /// Guest memory truncated after the table was sent: the SIGBUS at the next ring access is
    /// contained, that front-end is dropped, and the back-end serves the next one.
    @Test func memoryTruncatedUnderTheMappingDropsTheFrontendNotTheBackend() throws {
        let fixture = try HardeningFixture()
        // A memfd of this test's own, unsealed as a hostile frontend would send it (the VMM's guest RAM is
        // sealed against shrinking): after the truncation this process must not touch its mapping either.
        let memory = try MemfdGuestMemory(size: 4 << 20, seals: [])
        try fixture.frontend.setMemTable([memory.region])
        var ring = try HandRing(memory: memory, size: 64, base: 0)
        try ring.start(fixture.frontend)
        let header = ring.end + 64
        let status = header + 32
        memory.write(blockHeader(type: 8, sector: 0), at: header)
        ring.descriptor(0, address: header, length: 16, flags: next, next: 1)
        ring.descriptor(1, address: status, length: 1, flags: writeOnly)
        ring.offer(0)
        ring.kick.signal()
        #expect(ring.waitUsed(1))
        #expect(ftruncate(memory.fileDescriptor.rawValue, 0) == 0)
        ring.kick.signal()
        // The back-end drops the connection: the next request on it fails.
        let deadline = ContinuousClock.now + .seconds(5)
        while fixture.frontend.isConnected, ContinuousClock.now < deadline {
            _ = try? fixture.frontend.getFeatures()
            usleep(5_000)
        }
        #expect(!fixture.frontend.isConnected)
        try fixture.recovered()
        // Restore a size so the mapping this process holds is valid again at deinit.
        _ = ftruncate(memory.fileDescriptor.rawValue, off_t(4 << 20))
    }

    /// Kick and call must be eventfds: a pipe, a regular file, a directory or a memfd is refused.
    @Test func aKickOrCallThatIsNotAnEventfdIsRefused() throws {
        let fixture = try HardeningFixture()
        let memory = try MemfdGuestMemory(size: 4 << 20)
        try fixture.frontend.setMemTable([memory.region])
        let ring = try HandRing(memory: memory, size: 64, base: 0)
        try fixture.frontend.setVringNum(queue: 0, size: 64)
        try fixture.frontend.setVringAddr(
            queue: 0, descriptor: ring.descriptorTable, available: ring.availableRing, used: ring.usedRing)
        var pipeEnds: [Int32] = [0, 0]
        #expect(pipe(&pipeEnds) == 0)
        defer {
            close(pipeEnds[0])
            close(pipeEnds[1])
        }
        let file = open(fixture.image, O_RDONLY | O_CLOEXEC)
        defer { close(file) }
        let directory = open(fixture.directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        defer { close(directory) }
        for fd in [pipeEnds[0], file, directory, memory.fileDescriptor.rawValue] {
            #expect(throws: VhostUserError.rejected(.setVringKick, status: 1)) {
                try fixture.frontend.setVringKick(queue: 0, descriptor: FileDescriptor(rawValue: fd))
            }
            #expect(throws: VhostUserError.rejected(.setVringCall, status: 1)) {
                try fixture.frontend.setVringCall(queue: 0, descriptor: FileDescriptor(rawValue: fd))
            }
        }
        try fixture.recovered()
    }

    /// A blocking call eventfd at its maximum count: the back-end's write must not block
    /// (it sets O_NONBLOCK; EAGAIN means a signal is pending already).
    @Test func aCallEventfdAtItsMaximumDoesNotBlockTheBackend() throws {
        let fixture = try HardeningFixture()
        let memory = try MemfdGuestMemory(size: 4 << 20)
        try fixture.frontend.setMemTable([memory.region])
        var ring = try HandRing(memory: memory, size: 64, base: 0)
        // A blocking eventfd: the frontend's, with O_NONBLOCK cleared (write(2) then blocks at the maximum).
        let call = try EventFD()
        let fd = call.fileDescriptor.rawValue
        #expect(fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK) == 0)
        var maximum: UInt64 = 0xFFFF_FFFF_FFFF_FFFE
        #expect(write(fd, &maximum, 8) == 8)
        try fixture.frontend.setVringNum(queue: 0, size: 64)
        try fixture.frontend.setVringAddr(
            queue: 0, descriptor: ring.descriptorTable, available: ring.availableRing, used: ring.usedRing)
        try fixture.frontend.setVringBase(queue: 0, index: 0)
        try fixture.frontend.setVringCall(queue: 0, descriptor: call.fileDescriptor)
        try fixture.frontend.setVringKick(queue: 0, descriptor: ring.kick.fileDescriptor)
        try fixture.frontend.setVringEnable(queue: 0, enabled: true)
        let header = ring.end + 64
        let status = header + 32
        memory.write(blockHeader(type: 8, sector: 0), at: header)
        ring.descriptor(0, address: header, length: 16, flags: next, next: 1)
        ring.descriptor(1, address: status, length: 1, flags: writeOnly)
        for _ in 0..<2 { ring.offer(0) }
        ring.kick.signal()
        #expect(ring.waitUsed(2))
        // The back-end is not stuck in write(2): the socket is answered.
        #expect((try? fixture.frontend.getFeatures()) != nil)
        try fixture.recovered()
    }

    /// SET_VRING_KICK's bits above 8 are reserved: a value with one set is refused.
    @Test func setVringKickWithReservedBitsIsRefused() throws {
        let fixture = try HardeningFixture()
        fixture.frontend.close()
        do {
            let raw = try RawFrontend(fixture.backend.socketPath)
            var features: [UInt8] = []
            features.appendLE(VhostUserFeature.version1 | VhostUserFeature.protocolFeatures)
            try raw.send(.setFeatures, payload: features)
            var protocolFeatures: [UInt8] = []
            protocolFeatures.appendLE(VhostUserProtocolFeature.replyAck)
            try raw.send(.setProtocolFeatures, payload: protocolFeatures)
            let kick = try HostEventFD()
            var value: [UInt8] = []
            value.appendLE(UInt64(1) << 20)
            try raw.send(
                .setVringKick, flags: VhostUserFlags.version | VhostUserFlags.needReply, payload: value,
                descriptors: [kick.fileDescriptor])
            #expect(try raw.replyU64() == 1)
        }
        try fixture.recovered()
    }
}

/// Where qemu-storage-daemon 7.2 fails and the embedded back-end must not.
@Suite struct EmbeddedBackendBeyondTheReferenceTests {
    /// qemu-storage-daemon segfaults on a queue index of 1000 and aborts on GET_VRING_BASE
    /// for a queue that does not exist: here the first is refused, the second drops only that front-end.
    @Test func aQueueThatDoesNotExistIsRefusedAndGetVringBaseForItDropsOnlyTheFrontend() throws {
        let fixture = try HardeningFixture()
        #expect(throws: VhostUserError.rejected(.setVringNum, status: 1)) {
            try fixture.frontend.setVringNum(queue: 1000, size: 64)
        }
        fixture.frontend.close()
        let raw = try RawFrontend(fixture.backend.socketPath)
        var state: [UInt8] = []
        state.appendLE(UInt32(1000))
        state.appendLE(UInt32(0))
        try raw.send(.getVringBase, payload: state)
        #expect(throws: ChannelFailure.closed) { _ = try raw.replyU64() }
        try fixture.recovered()
    }

    /// qemu-storage-daemon leaks descriptors attached to messages that take none.
    @Test func descriptorsOnMessagesThatTakeNoneAreClosed() throws {
        let fixture = try HardeningFixture()
        fixture.frontend.close()
        do {
            let raw = try RawFrontend(fixture.backend.socketPath)
            let spares = try (0..<3).map { _ in try HostEventFD() }
            for _ in 0..<20 { try raw.send(.setOwner, payload: [], descriptors: spares.map(\.fileDescriptor)) }
            try raw.send(.getFeatures, payload: [])
            _ = try raw.replyU64()
            // The connection is the one descriptor more.
            let state = BackendProcessState(fixture.backend.processIdentifier)
            #expect(state.descriptors == fixture.baseline.descriptors + 1)
        }
        try fixture.recovered()
    }

    /// qemu-storage-daemon never completes a request whose header sits in a device-writable descriptor.
    @Test func aHeaderInAWritableDescriptorCompletesWithIOERR() throws {
        let fixture = try HardeningFixture()
        var ring = try fixture.startedRing(size: 64)
        let memory = ring.memory
        let header = ring.end + 64
        let status = header + 32
        memory.write(blockHeader(type: 8, sector: 0), at: header)
        memory.store(UInt8(0xFF), at: status)
        ring.descriptor(0, address: header, length: 16, flags: next | writeOnly, next: 1)
        ring.descriptor(1, address: status, length: 1, flags: writeOnly)
        ring.offer(0)
        ring.kick.signal()
        #expect(ring.waitUsed(1))
        #expect(memory.load(UInt8.self, at: status) == 1)
        try fixture.recovered()
    }

    /// qemu-storage-daemon waits forever on a message shorter than its declared size: here
    /// the front-end that sent it is dropped when it goes, and the next one is served.
    @Test func aMessageShorterThanItsDeclaredSizeDoesNotHoldTheBackend() throws {
        let fixture = try HardeningFixture()
        fixture.frontend.close()
        let raw = try RawFrontend(fixture.backend.socketPath)
        // Served first: the back-end has accepted this connection before the short message.
        try raw.send(.getFeatures, payload: [])
        _ = try raw.replyU64()
        try raw.send(.setFeatures, payload: [1, 2, 3, 4], size: 8)
        // The stalled front-end stays connected; the back-end gives up on it (5 s) and serves the next.
        try withExtendedLifetime(raw) { try fixture.recovered() }
    }
}
#endif

#if os(Linux)
/// The embedded back-end with its standard error captured: what it logs for what a guest or front-end did.
final class LoggingBackend {
    let directory: String
    let socketPath: String
    let process = Process()
    let errors = Pipe()

    init() throws {
        directory = NSTemporaryDirectory() + "irqfd-harden-log-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let image = directory + "/disk.img"
        _ = FileManager.default.createFile(atPath: image, contents: Data(count: 2048 * 512))
        socketPath = directory + "/blk.sock"
        guard let executable = VhostUserBackendProcess.embeddedPath() else {
            throw VhostUserError.unsupported("irqfd-vhost-user-blk was not built")
        }
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = [image, "--socket", socketPath]
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = FileHandle.nullDevice
        process.standardError = errors
        try process.run()
        let deadline = ContinuousClock.now + .seconds(20)
        while !FileManager.default.fileExists(atPath: socketPath) {
            guard process.isRunning, ContinuousClock.now < deadline else {
                throw VhostUserError.unsupported("irqfd-vhost-user-blk did not listen")
            }
            usleep(5_000)
        }
        baseline = BackendProcessState(process.processIdentifier)
    }

    /// The back-end's descriptors and mappings before any front-end.
    private(set) var baseline: BackendProcessState?

    /// The attack is over: the back-end is back at its baseline and answers a new front-end.
    func recovered() throws {
        try expectRecovered(
            process: process.processIdentifier, running: process.isRunning, socketPath: socketPath,
            baseline: baseline ?? BackendProcessState(process.processIdentifier))
    }

    /// A front-end connected and negotiated (VERSION_1, REPLY_ACK), with no memory table yet.
    func negotiatedFrontend() throws -> VhostUserFrontend {
        let frontend = try VhostUserFrontend(socketPath: socketPath)
        let offered = try frontend.handshake(wantedProtocolFeatures: VhostUserProtocolFeature.replyAck)
        try frontend.setFeatures(VhostUserFeature.version1 | (offered & VhostUserFeature.protocolFeatures))
        return frontend
    }

    /// Stops the back-end and returns every line it wrote to standard error.
    /// SIGKILL: a child of a test thread inherits its blocked SIGTERM.
    func lines() -> [String] {
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        let text = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        return text.split(separator: "\n").map(String.init)
    }

    deinit {
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
        try? FileManager.default.removeItem(atPath: directory)
    }
}

@Suite struct EmbeddedBackendLogTests {
    /// 300 heads beyond the ring are each consumed (length 0, or the ring would stall) and
    /// logged, but at most 5 lines a second: a guest cannot flood the back-end's log.
    @Test func headsBeyondTheRingAreLoggedAtARateLimit() throws {
        let backend = try LoggingBackend()
        let frontend = try backend.negotiatedFrontend()
        let memory = try MemfdGuestMemory(size: 4 << 20)
        try frontend.setMemTable([memory.region])
        var ring = try HandRing(memory: memory, size: 64, base: 0)
        try ring.start(frontend)
        let start = ContinuousClock.now
        for round in 0..<5 {
            for _ in 0..<60 { ring.offer(1000) }
            ring.kick.signal()
            #expect(ring.waitUsed(UInt16(60 * (round + 1))))
        }
        let seconds = Int((ContinuousClock.now - start).components.seconds)
        #expect(ring.usedLength(0) == 0)
        frontend.close()
        try backend.recovered()
        let logged = backend.lines().filter { $0.contains("head 1000 is not below the queue size 64") }
        // 5 lines a second: at most 5 per second begun while the guest was at it.
        #expect(!logged.isEmpty && logged.count <= 5 * (seconds + 2), "\(logged.count) lines in \(seconds) s")
    }

    /// SET_VRING_NUM that leaves a queue's addressed rings outside guest memory says so.
    @Test func aQueueResizedPastGuestMemorySaysItIsNotServed() throws {
        let backend = try LoggingBackend()
        let frontend = try backend.negotiatedFrontend()
        let memory = try MemfdGuestMemory(size: 1 << 20)
        try frontend.setMemTable([memory.region])
        try frontend.setVringNum(queue: 0, size: 64)
        // The used ring near the end of RAM: it fits 64 entries, not 32768.
        try frontend.setVringAddr(queue: 0, descriptor: 0, available: 0x8000, used: (1 << 20) - 4096)
        try frontend.setVringNum(queue: 0, size: 32768)
        frontend.close()
        try backend.recovered()
        let lines = backend.lines()
        #expect(
            lines.contains { $0.contains("queue 0's rings no longer fit in guest memory at size 32768") }, "\(lines)")
    }
}
#endif
