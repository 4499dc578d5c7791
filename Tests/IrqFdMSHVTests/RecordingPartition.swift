import Foundation
import IrqFdCore
import IrqFdMSHV
import IrqFdRouting
import Synchronization
import SystemPackage

/// A routing-kernel call, as both backends' recorders write it down: the GSIs
/// and messages each call carried. mshv's recorder decodes it from the bytes of
/// the ioctl argument; KVM's (`ForwardingRecorder`) sees it on its way to KVM.
enum KernelCall: Equatable, CustomStringConvertible {
    case push([RoutingEntry])
    case assign(gsi: UInt32)
    case deassign(gsi: UInt32)

    var description: String {
        switch self {
        case .push(let entries):
            "push(\(entries.map { "\($0.gsi):\(String($0.msi.address, radix: 16))/\(String($0.msi.data, radix: 16))" }.joined(separator: ",")))"
        case .assign(let gsi): "assign(\(gsi))"
        case .deassign(let gsi): "deassign(\(gsi))"
        }
    }
}

/// An mshv partition descriptor that records every ioctl it is given and
/// answers as the mainline driver does (drivers/hv/mshv_eventfd.c,
/// mshv_irq.c, mshv_root_main.c): the same argument checks, the same errnos.
/// It decodes the argument bytes with its own offsets, so a wrong encoding
/// shows up as a wrong call.
///
/// It stands in for /dev/mshv, which this machine does not have.
final class RecordingPartition: MSHVPartitionIoctls {
    struct Raw: Equatable {
        var request: UInt
        var bytes: [UInt8]
    }

    private struct State {
        var calls: [KernelCall] = []
        /// Every call made, including those that failed.
        var attempts: [KernelCall] = []
        var raw: [Raw] = []
        var table: [UInt32: MsiMessage] = [:]
        /// Armed irqfds: eventfd -> GSI.
        var irqfds: [Int32: UInt32] = [:]
        var failNext: (request: UInt, errno: Errno)?
        /// The eventfd's counter when each assign arrived (from /proc/self/fdinfo).
        var countsAtAssign: [UInt64?] = []
    }

    private let state = Mutex(State())

    var calls: [KernelCall] { state.withLock { $0.calls } }
    var attempts: [KernelCall] { state.withLock { $0.attempts } }
    var countsAtAssign: [UInt64?] { state.withLock { $0.countsAtAssign } }

    /// An eventfd's counter without consuming it: the kernel's `eventfd-count`
    /// line in /proc/self/fdinfo (hexadecimal).
    static func eventfdCount(_ fd: Int32) -> UInt64? {
        guard let info = try? String(contentsOfFile: "/proc/self/fdinfo/\(fd)", encoding: .utf8),
            let line = info.split(separator: "\n").first(where: { $0.hasPrefix("eventfd-count:") })
        else { return nil }
        return UInt64(line.dropFirst("eventfd-count:".count).trimmingCharacters(in: .whitespaces), radix: 16)
    }
    var rawCalls: [Raw] { state.withLock { $0.raw } }
    var table: [UInt32: MsiMessage] { state.withLock { $0.table } }
    var armed: [Int32: UInt32] { state.withLock { $0.irqfds } }
    func reset() {
        state.withLock {
            $0.calls = []
            $0.raw = []
        }
    }
    /// The next call of `request` fails with `errno`, changing nothing.
    func failNext(_ request: IoctlRequest, errno: Errno = .ioError) {
        state.withLock { $0.failNext = (request.number, errno) }
    }

    func ioctl(_ request: IoctlRequest, argument: UnsafeMutableRawBufferPointer) throws(SystemCallError) {
        let bytes = UnsafeRawBufferPointer(argument)
        try state.withLock { (s: inout State) throws(SystemCallError) in
            func fail(_ errno: Errno) -> SystemCallError { SystemCallError(call: request.name, errno: errno) }
            if request.number == 0x4010_B803, bytes.count == 16 {
                let gsi = Self.u32(bytes, 8)
                s.attempts.append(Self.u32(bytes, 12) & 1 != 0 ? .deassign(gsi: gsi) : .assign(gsi: gsi))
            } else if request.number == 0x4008_B805 {
                s.attempts.append(.push([]))
            }
            if let planned = s.failNext, planned.request == request.number {
                s.failNext = nil
                throw fail(planned.errno)
            }
            switch request.number {
            case 0x4010_B803:  // MSHV_IRQFD
                guard bytes.count == 16 else { throw fail(.badAddress) }
                let fd = Int32(bitPattern: Self.u32(bytes, 0))
                let gsi = Self.u32(bytes, 8)
                let flags = Self.u32(bytes, 12)
                guard flags & ~0b11 == 0 else { throw fail(.invalidArgument) }
                if flags & 1 != 0 {
                    // Deassign removes any irqfd matching fd and gsi, and succeeds either way.
                    if s.irqfds[fd] == gsi { s.irqfds[fd] = nil }
                    s.calls.append(.deassign(gsi: gsi))
                } else {
                    guard flags == 0 else { throw fail(.invalidArgument) }  // resample is not used
                    // The driver's EBUSY for an eventfd already bound compares eventfd
                    // contexts, not descriptor numbers, and it forgets an irqfd whose
                    // eventfd is closed (EPOLLHUP); numbers are reused, so this model
                    // cannot tell and does not check. Real KVM, which makes the same
                    // check, sees the same calls in KVMParityTests.
                    s.irqfds[fd] = gsi
                    s.countsAtAssign.append(Self.eventfdCount(fd))
                    s.calls.append(.assign(gsi: gsi))
                }
            case 0x4008_B805:  // MSHV_SET_MSI_ROUTING
                guard bytes.count >= 8 else { throw fail(.badAddress) }
                let count = Int(Self.u32(bytes, 0))
                guard count <= 4096, Self.u32(bytes, 4) == 0 else { throw fail(.invalidArgument) }
                guard bytes.count >= 8 + 16 * count else { throw fail(.badAddress) }
                var table: [UInt32: MsiMessage] = [:]
                var entries: [RoutingEntry] = []
                for index in 0..<count {
                    let base = 8 + 16 * index
                    let gsi = Self.u32(bytes, base)
                    let low = Self.u32(bytes, base + 4)
                    let high = Self.u32(bytes, base + 8)
                    let data = Self.u32(bytes, base + 12)
                    guard gsi < 4096, high == 0, table[gsi] == nil else { throw fail(.invalidArgument) }
                    let msi = MsiMessage(address: UInt64(low), data: data)
                    table[gsi] = msi
                    entries.append(RoutingEntry(gsi: gsi, msi: msi))
                }
                s.table = table
                s.calls.append(.push(entries))
            default:
                throw fail(.inappropriateIOCTLForDevice)
            }
            s.raw.append(Raw(request: request.number, bytes: Array(bytes)))
        }
    }

    private static func u32(_ bytes: UnsafeRawBufferPointer, _ offset: Int) -> UInt32 {
        UInt32(bytes[offset]) | UInt32(bytes[offset + 1]) << 8 | UInt32(bytes[offset + 2]) << 16 | UInt32(
            bytes[offset + 3]) << 24
    }
}

/// A routing kernel that forwards every call to `inner` (a real kernel) and
/// writes down each call that succeeded, in order.
final class ForwardingRecorder<Inner: RoutingKernel>: RoutingKernel {
    let inner: Inner
    private let recorded = Mutex<[KernelCall]>([])

    init(_ inner: Inner) { self.inner = inner }

    var calls: [KernelCall] { recorded.withLock { $0 } }
    var gsiLimit: UInt32 { inner.gsiLimit }
    var reservedGsis: Range<UInt32> { inner.reservedGsis }
    var msiEntryCapacity: Int { inner.msiEntryCapacity }

    func pushRoutingTable(_ entries: [RoutingEntry]) throws(IrqFdError) {
        try inner.pushRoutingTable(entries)
        recorded.withLock { $0.append(.push(entries)) }
    }
    func assign(event: any Event, gsi: UInt32) throws(IrqFdError) {
        try inner.assign(event: event, gsi: gsi)
        recorded.withLock { $0.append(.assign(gsi: gsi)) }
    }
    func deassign(event: any Event, gsi: UInt32) throws(IrqFdError) {
        try inner.deassign(event: event, gsi: gsi)
        recorded.withLock { $0.append(.deassign(gsi: gsi)) }
    }
    func makeEvent() throws(IrqFdError) -> any Event { try inner.makeEvent() }
    func canDeliver(_ message: MsiMessage) -> Bool { inner.canDeliver(message) }
}
