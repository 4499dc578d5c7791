#if os(Linux)
import Foundation
import KVMTestSupport
import TestSupport
import Testing
import TinyVM
import VhostUser
import Virtio

/// A virtio-fs driver on the host, through the device's own MMIO entry points
/// (the same code a guest access reaches), for the loops a 1M-instruction/s
/// guest is too slow for. It speaks FUSE on request queue 1: request `slot`'s
/// in buffer at 0x100000 + 0x4000 slot (header and arguments, one readable
/// descriptor), its reply 0x1000 further (0x3000 bytes, one writable
/// descriptor). The VM is built but not run.
struct FsHostDriver {
    let device: VirtioFsDevice
    let memory: GuestMemory
    static let common = VirtioFsDevice.virtioBase + VirtioFsDevice.commonOffset
    /// Queue q's rings at 0x20000 + 0x10000 q: descriptors, driver area + 0x1000, device area + 0x2000.
    static func ring(_ q: Int) -> UInt64 { 0x20000 + 0x10000 * UInt64(q) }
    static let size = 16
    var avail: UInt16 = 0
    var unique: UInt64 = 0

    /// A FUSE reply: the out header and what follows it.
    struct Reply {
        var length: UInt32
        var error: Int32
        var unique: UInt64
        var payload: [UInt8]
    }

    func w(_ offset: UInt64, _ size: Int, _ value: UInt64) {
        device.write(address: Self.common + offset, size: size, value: value)
    }
    func r(_ offset: UInt64, _ size: Int) -> UInt64 { device.read(address: Self.common + offset, size: size) }

    /// Virtio 1.2 section 3.1.1, VERSION_1 only; hiprio and request queue 1 of
    /// size 16, request queue 1 on MSI-X vector `vector` (0xFFFF: none).
    mutating func initialise(vector: UInt16 = 0xFFFF) -> Bool {
        avail = 0
        let queues = (0..<2).map { q in
            HostQueue(q, size: Self.size, vector: q == 1 ? vector : 0xFFFF, ring: Self.ring(q))
        }
        return device.bringUp(queues: queues, memory: memory)
    }

    static func inBuffer(_ slot: Int) -> UInt64 { 0x10_0000 + 0x4000 * UInt64(slot) }
    static func outBuffer(_ slot: Int) -> UInt64 { inBuffer(slot) + 0x1000 }

    /// Builds request `slot` (0..<8) and makes it available, without a notify.
    mutating func submit(slot: Int, opcode: UInt32, nodeid: UInt64, arguments: [UInt8] = []) {
        unique += 1
        var header = [UInt8]()
        func le<T: FixedWidthInteger>(_ value: T) { withUnsafeBytes(of: value.littleEndian) { header += $0 } }
        le(UInt32(40 + arguments.count))
        le(opcode)
        le(unique)
        le(nodeid)
        le(UInt64(0))  // uid, gid
        le(UInt64(0))  // pid, padding
        memory.load(header + arguments, at: Self.inBuffer(slot))
        memory.load([UInt8](repeating: 0, count: 16), at: Self.outBuffer(slot))
        let table = Self.ring(1)
        let d = table + 32 * UInt64(slot)
        memory.write64(Self.inBuffer(slot), at: d)
        memory.write64(UInt64(header.count + arguments.count) | 1 << 32 | UInt64(2 * slot + 1) << 48, at: d + 8)
        memory.write64(Self.outBuffer(slot), at: d + 16)
        memory.write64(0x3000 | 2 << 32, at: d + 24)
        memory.store(UInt16(2 * slot), at: table + 0x1004 + 2 * UInt64(Int(avail) % Self.size))
        avail &+= 1
        memory.store(avail, at: table + 0x1002)
    }

    func notify() { device.write(address: VirtioFsDevice.notifyAddress(queue: 1), size: 2, value: 1) }

    /// Request queue 1's used idx.
    var used: UInt16 { memory.load(UInt16.self, at: Self.ring(1) + 0x2002) }

    func reply(slot: Int) -> Reply {
        let out = Self.outBuffer(slot)
        let length = memory.read32(at: out)
        return Reply(
            length: length, error: Int32(bitPattern: memory.read32(at: out + 4)), unique: memory.read64(at: out + 8),
            payload: memory.bytes(at: out + 16, count: Int(min(max(length, 16), 0x3000)) - 16))
    }

    /// One request on slot 0, waited for (10 s at most).
    mutating func call(_ opcode: UInt32, nodeid: UInt64, _ arguments: [UInt8] = []) -> Reply? {
        let before = used
        submit(slot: 0, opcode: opcode, nodeid: nodeid, arguments: arguments)
        notify()
        guard eventually(.seconds(10), { used != before }) else { return nil }
        return reply(slot: 0)
    }
}

/// FUSE opcodes and argument structures (the Linux kernel's include/uapi/linux/fuse.h).
enum Fuse {
    static let lookup: UInt32 = 1
    static let open: UInt32 = 14
    static let read: UInt32 = 15
    static let initialise: UInt32 = 26

    static func bytes<T: FixedWidthInteger>(_ values: T...) -> [UInt8] {
        values.flatMap { v in withUnsafeBytes(of: v.littleEndian) { Array($0) } }
    }
    /// fuse_init_in of protocol 7.31: major, minor, max_readahead, flags.
    static let initArguments = bytes(UInt32(7), 31, 0, 0)
    /// fuse_read_in: fh, offset, size, read_flags, lock_owner, flags, padding.
    static func readArguments(fh: UInt64, size: UInt32) -> [UInt8] {
        bytes(fh, 0) + bytes(size, 0) + bytes(UInt64(0)) + bytes(UInt32(0), 0)
    }
    static func u64(_ bytes: [UInt8], at offset: Int) -> UInt64 {
        (0..<8).reduce(0) { $0 | UInt64(bytes[offset + $1]) << (8 * UInt64($1)) }
    }

    /// INIT, LOOKUP `name` in the root, OPEN read-only, READ `size` bytes: the file's first bytes, or nil.
    static func readFile(_ driver: inout FsHostDriver, name: String, size: Int) -> [UInt8]? {
        guard let initReply = driver.call(initialise, nodeid: 0, initArguments), initReply.error == 0,
            let entry = driver.call(lookup, nodeid: 1, Array(name.utf8) + [0]), entry.error == 0
        else { return nil }
        let node = u64(entry.payload, at: 0)
        guard let opened = driver.call(open, nodeid: node, bytes(UInt32(0), 0)), opened.error == 0 else { return nil }
        let fh = u64(opened.payload, at: 0)
        guard let data = driver.call(read, nodeid: node, readArguments(fh: fh, size: UInt32(size))), data.error == 0
        else { return nil }
        return data.payload
    }
}

@Suite(needsKVM, virtiofsdInstalled) struct VirtioFsResetTests {
    @Test func resetWithFuseRequestsInFlightThenReinitialiseAHundredTimes() throws {
        let share = try SharedDirectory()
        let data = (0..<4096).map { UInt8(truncatingIfNeeded: $0 &* 11 &+ 3) }
        try share.write("file", data)
        let backend = try FileSystemBackend(sharedDirectory: share.path)
        defer { backend.stop() }
        let vm = try TinyVM()
        let device = try VirtioFsDevice.attach(to: vm, socketPath: backend.socketPath, tag: "t")
        defer { device.disconnect() }
        var driver = FsHostDriver(device: device, memory: vm.memory)
        for round in 0..<100 {
            let ok = driver.initialise()
            #expect(ok, "round \(round): DRIVER_OK")
            // FUSE_INIT and seven READs, all in flight (a READ before INIT's reply is an error reply: still a request).
            driver.submit(slot: 0, opcode: Fuse.initialise, nodeid: 0, arguments: Fuse.initArguments)
            for slot in 1..<8 {
                driver.submit(
                    slot: slot, opcode: Fuse.read, nodeid: 1, arguments: Fuse.readArguments(fh: 0, size: 4096))
            }
            driver.notify()
            device.writeStatus(0)
            #expect(
                device.status == 0,
                "round \(round): reset, not NEEDS_RESET (\(String(describing: device.lastBackendError)))")
            #expect(!device.isRunning(queue: 1))
        }
        // A last initialisation: virtiofsd takes FUSE_INIT again (it drops the
        // old session) and serves the file.
        let ok = driver.initialise()
        #expect(ok)
        let read = Fuse.readFile(&driver, name: "file", size: 4096)
        #expect(read == data)
        #expect(device.resetCount == 100, "every reset stopped running rings")
        #expect(device.counters.backendFailures == 0)
        #expect(backend.isRunning)
        device.writeStatus(0)
    }

    @Test func aHundredLifecyclesCloseTheirDescriptorsAndLeaveTheVMsGSIsAsTheyWere() throws {
        let share = try SharedDirectory()
        try share.write("file", [1, 2, 3, 4])
        let vm = try TinyVM()
        let free = vm.irqfd.freeGsiCount
        let backend = try FileSystemBackend(sharedDirectory: share.path)
        defer { backend.stop() }
        for round in 0..<100 {
            var owned: [OwnedDescriptor] = []
            do {
                let device = try VirtioFsDevice(
                    host: vm, deviceType: try VirtioFs(tag: "t"), socketPath: backend.socketPath)
                var driver = FsHostDriver(device: device, memory: vm.memory)
                device.configWrite(offset: 0x04, size: 2, value: 6)
                // Request queue 1 on vector 2, a route of its own.
                device.write(address: VirtioFsDevice.msixBase + 32, size: 4, value: 0xFEE0_0000)
                device.write(address: VirtioFsDevice.msixBase + 40, size: 4, value: 0x42)
                _ = try device.emulator.event(for: 2)
                let ok = driver.initialise(vector: 2)
                #expect(ok, "round \(round)")
                let read = Fuse.readFile(&driver, name: "file", size: 4)
                #expect(read == [1, 2, 3, 4], "round \(round)")
                device.writeStatus(0)
                owned = try descriptorsOwned(by: device)
                #expect(owned.count == 5, "the socket, and a kick and a call eventfd per queue")
            }
            expectClosedAfterRelease(owned, round: round)
            // virtiofsd exits once its connection closes: the next device needs a new one.
            _ = eventually(.seconds(2)) { !backend.isRunning }
            try backend.restart()
        }
        #expect(vm.irqfd.freeGsiCount == free)
    }
}

@Suite(needsKVM, virtiofsdInstalled) struct VirtioFsBackendDeathTests {
    /// virtiofsd is killed (SIGKILL, as a crash) at a random moment while the
    /// guest reads round after round; the device sets DEVICE_NEEDS_RESET and
    /// raises the config interrupt; the guest resets, and once virtiofsd is
    /// back the reset reconnects, the guest initialises FUSE again and every
    /// round reads the right bytes.
    @Test(arguments: 0..<3)
    func theGuestRecoversFromVirtiofsdKilledAtRandomAndReadsTheRightData(trial: Int) throws {
        let share = try SharedDirectory()
        let guest = try FsGuest(share: share, rounds: 30)
        typealias L = FsGuest.L
        guest.vm.memory.write32(1, at: L.recover)
        guest.vm.memory.write32(1000, at: L.gate)  // every round open
        guest.vm.start()
        defer {
            guest.vm.stop()
            _ = guest.vm.wait()
        }
        #expect(guest.vm.waitUntil(timeout: .seconds(60)) { guest.word(L.roundsDone) >= 1 }, "\(guest.report)")
        usleep(UInt32.random(in: 0...150_000))
        guest.backend.kill()
        #expect(eventually(.seconds(10)) { guest.device.counters.backendFailures >= 1 }, "the device noticed")
        usleep(UInt32.random(in: 0...100_000))
        try guest.backend.restart()
        let outcome = guest.vm.wait(timeout: .seconds(120))
        #expect(outcome == .exited(code: 0), "trial \(trial): \(outcome); \(guest.report)")
        #expect(guest.word(L.roundsDone) == 30, "every round read and compared")
        #expect(guest.word(L.recoveries) >= 1, "the guest recovered")
        #expect(guest.interrupts(msix: 0) >= 1, "the config interrupt")
        #expect(guest.device.reconnectCount >= 1)
        #expect(share.read("from-guest.bin") == guest.writeData, "the file written before the kill is intact")
    }
}
#endif
