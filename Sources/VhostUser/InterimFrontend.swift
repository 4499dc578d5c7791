// INTERIM, to be replaced at merge: branch h-vhost owns the real VhostUser
// module (validation, deadlines, REPLY_ACK handling). This file implements the
// agreed API minimally (QEMU docs/interop/vhost-user.rst message layouts) so
// that the Virtio device and its KVM tests build and run against
// qemu-storage-daemon before that branch lands. Drop this file when merging.
import Glibc
import IrqFdLinux
public import SystemPackage
import Synchronization

public enum VhostUserRequest: UInt32, Sendable { case getFeatures = 1, setFeatures = 2, setOwner = 3, resetOwner = 4, setMemTable = 5, setVringNum = 8, setVringAddr = 9, setVringBase = 10, getVringBase = 11, setVringKick = 12, setVringCall = 13, setVringErr = 14, getProtocolFeatures = 15, setProtocolFeatures = 16, getQueueNum = 17, setVringEnable = 18, getConfig = 24, setConfig = 25 }
public enum VhostUserError: Error, Equatable { case systemCall(call: String, errno: Errno), timeout(VhostUserRequest), disconnected(VhostUserRequest?), badReply(VhostUserRequest, String), rejected(VhostUserRequest, status: UInt64), unsupported(String) }
public struct VhostUserMemoryRegion: Sendable {
    public var guestPhysicalAddress, size, userAddress, mmapOffset: UInt64
    public var fd: Int32
    public init(guestPhysicalAddress: UInt64, size: UInt64, userAddress: UInt64, mmapOffset: UInt64, fd: Int32) {
        self.guestPhysicalAddress = guestPhysicalAddress; self.size = size; self.userAddress = userAddress; self.mmapOffset = mmapOffset; self.fd = fd
    }
}
public final class VhostUserFrontend: Sendable {
    let socket: UnixSocket
    let lock = Mutex<(sent: Int, features: UInt64, protocol: UInt64, regions: [VhostUserMemoryRegion])>((0, 0, 0, []))
    public init(socketPath: String, timeout: Duration = .seconds(5)) throws(VhostUserError) {
        do { socket = try UnixSocket.connect(to: socketPath) } catch { throw .disconnected(nil) }
    }
    public func close() { try? socket.fileDescriptor.close() }
    public var messagesSent: Int { lock.withLock { $0.sent } }
    public var backendFeatures: UInt64 { lock.withLock { $0.features } }
    public var protocolFeatures: UInt64 { lock.withLock { $0.protocol } }
    func u32(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } }
    func u64(_ v: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: v >> (8 * UInt64($0))) } }
    func rd64(_ b: [UInt8], _ o: Int) -> UInt64 { (0..<8).reduce(0) { $0 | UInt64(b[o + $1]) << (8 * UInt64($1)) } }
    @discardableResult
    func send(_ r: VhostUserRequest, _ payload: [UInt8], fd: Int32? = nil, reply: Bool = false) throws(VhostUserError) -> [UInt8] {
        let ack = !reply && lock.withLock { $0.protocol } & (1 << 3) != 0
        let msg = u32(r.rawValue) + u32(1 | (ack ? 8 : 0)) + u32(UInt32(payload.count)) + payload
        lock.withLock { $0.sent += 1 }
        do {
            if let fd { try socket.send(msg, passing: FileDescriptor(rawValue: fd)) } else { try socket.send(msg) }
        } catch { throw .disconnected(r) }
        guard reply || ack else { return [] }
        func exact(_ n: Int) throws(VhostUserError) -> [UInt8] {
            var out: [UInt8] = []
            while out.count < n {
                let got: [UInt8]
                do { got = try socket.receive(maximum: n - out.count) } catch { throw .disconnected(r) }
                if got.isEmpty { throw .disconnected(r) }
                out += got
            }
            return out
        }
        let h = try exact(12)
        let size = Int(h[8]) | Int(h[9]) << 8 | Int(h[10]) << 16 | Int(h[11]) << 24
        let body = try exact(size)
        guard body.count >= 8 else { throw .badReply(r, "short") }
        if ack { let s = rd64(body, 0); if s != 0 { throw .rejected(r, status: s) } }
        return body
    }
    public func getFeatures() throws(VhostUserError) -> UInt64 { let b = try send(.getFeatures, [], reply: true); return rd64(b, 0) }
    public func setFeatures(_ f: UInt64) throws(VhostUserError) { try send(.setFeatures, u64(f)) }
    public func getProtocolFeatures() throws(VhostUserError) -> UInt64 { rd64(try send(.getProtocolFeatures, [], reply: true), 0) }
    public func setProtocolFeatures(_ f: UInt64) throws(VhostUserError) { try send(.setProtocolFeatures, u64(f)) }
    public func setOwner() throws(VhostUserError) { try send(.setOwner, []) }
    public func getQueueNum() throws(VhostUserError) -> UInt64 { rd64(try send(.getQueueNum, [], reply: true), 0) }
    public func getConfig(offset: UInt32, size: UInt32) throws(VhostUserError) -> [UInt8] {
        let b = try send(.getConfig, u32(offset) + u32(size) + u32(0) + [UInt8](repeating: 0, count: Int(size)), reply: true)
        return Array(b[12...])
    }
    public func setMemTable(_ regions: [VhostUserMemoryRegion]) throws(VhostUserError) {
        var p = u32(UInt32(regions.count)) + u32(0)
        for r in regions { p += u64(r.guestPhysicalAddress) + u64(r.size) + u64(r.userAddress) + u64(r.mmapOffset) }
        lock.withLock { $0.regions = regions }
        try send(.setMemTable, p, fd: regions[0].fd)
    }
    public func setVringNum(queue: UInt32, size: UInt32) throws(VhostUserError) { try send(.setVringNum, u32(queue) + u32(size)) }
    func ua(_ g: UInt64) -> UInt64 { lock.withLock { s in for r in s.regions where g >= r.guestPhysicalAddress && g < r.guestPhysicalAddress + r.size { return g - r.guestPhysicalAddress + r.userAddress }; return 0 } }
    public func setVringAddr(queue: UInt32, descriptor: UInt64, available: UInt64, used: UInt64) throws(VhostUserError) {
        try send(.setVringAddr, u32(queue) + u32(0) + u64(ua(descriptor)) + u64(ua(used)) + u64(ua(available)) + u64(0))
    }
    public func setVringBase(queue: UInt32, index: UInt32) throws(VhostUserError) { try send(.setVringBase, u32(queue) + u32(index)) }
    public func getVringBase(queue: UInt32) throws(VhostUserError) -> UInt32 { UInt32(truncatingIfNeeded: rd64(try send(.getVringBase, u32(queue) + u32(0), reply: true), 0) >> 32) }
    public func setVringKick(queue: UInt32, fd: Int32) throws(VhostUserError) { try send(.setVringKick, u64(UInt64(queue)), fd: fd) }
    public func setVringCall(queue: UInt32, fd: Int32) throws(VhostUserError) { try send(.setVringCall, u64(UInt64(queue)), fd: fd) }
    public func setVringEnable(queue: UInt32, enabled: Bool) throws(VhostUserError) { try send(.setVringEnable, u32(queue) + u32(enabled ? 1 : 0)) }
    public func handshake(wantedProtocolFeatures: UInt64) throws(VhostUserError) -> UInt64 {
        let f = try getFeatures()
        lock.withLock { $0.features = f }
        if f & (1 << 30) != 0 {
            let p = try getProtocolFeatures() & wantedProtocolFeatures
            try setProtocolFeatures(p)
            lock.withLock { $0.protocol = p }
        }
        try setOwner()
        return f
    }
}
