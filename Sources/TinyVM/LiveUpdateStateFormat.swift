#if os(Linux)
import KVM

/// The state one VMM sends its successor, in a versioned binary format. The
/// descriptors travel beside it (SCM_RIGHTS), in the order of `routes`.
///
/// A successor reads the versions it knows and refuses any other, so the old
/// VMM carries on; a newer build keeps reading the versions before it (the
/// point of an upgrade). Versions 1 and 2 lay the state out alike; they
/// differ in the conversation around it (``LiveUpdateChannel``: from
/// version 2 the routes and their events are offered before the pause). All
/// integers little-endian:
///
///     "IRQFD-LU"            8 bytes, the magic
///     version               u32 (1 or 2)
///     clock                 u64, kvmclock nanoseconds
///     vCPUs                 u32, then per vCPU:
///       regs, sregs, fpu, lapic, events   each a blob: u32 length, then the
///                                         kernel's struct as KVM_GET_* gave it
///       mp state            u32
///       MSRs                u32 count, then (u32 index, u64 value) each
///     routes                u32, then per route: u8 has MSI, u64 address,
///                           u32 data, u8 masked
///     devices               u32, then per device: a name blob (UTF-8) and a
///                           state blob (the device's own encoding)
///
/// The kernel structures are x86-64 KVM's fixed ABI (include/uapi/asm/kvm.h);
/// a blob of another length is refused rather than guessed at.
public struct LiveUpdateState: Sendable {
    /// Every vCPU's state and the VM clock.
    public var machine: MachineState
    /// Each route handed over, in the order its event is passed.
    public var routes: [Route]
    /// Each device's state by name, in the device's own encoding.
    public var devices: [(name: String, state: [UInt8])]

    /// A route as it crosses: its event goes as a descriptor, beside.
    public struct Route: Sendable, Equatable {
        /// The MSI, if the route has one (address, data).
        public var msi: (address: UInt64, data: UInt32)?
        /// Whether the route is masked.
        public var masked: Bool

        /// A route's state.
        public init(msi: (address: UInt64, data: UInt32)?, masked: Bool) {
            self.msi = msi
            self.masked = masked
        }

        public static func == (a: Route, b: Route) -> Bool {
            a.masked == b.masked && a.msi?.address == b.msi?.address && a.msi?.data == b.msi?.data
        }
    }

    /// A state from its parts.
    public init(machine: MachineState, routes: [Route], devices: [(name: String, state: [UInt8])] = []) {
        self.machine = machine
        self.routes = routes
        self.devices = devices
    }

    /// The magic every version starts with.
    public static let magic = Array("IRQFD-LU".utf8)
    /// The version this build writes to a successor that reads it.
    public static let currentVersion: UInt32 = 2
    /// The versions this build reads, and writes to a successor that reads no later one.
    public static let readableVersions: ClosedRange<UInt32> = 1...2
    /// The first version whose conversation offers the routes and their events before the pause.
    public static let routesOfferedVersion: UInt32 = 2

    /// Why bytes are not a state this build takes.
    public enum DecodingError: Error, Equatable, CustomStringConvertible {
        /// Not a live-update state at all.
        case notAState
        /// A version this build does not read.
        case unsupportedVersion(UInt32)
        /// Cut short or inconsistent, and where.
        case malformed(String)

        public var description: String {
            switch self {
            case .notAState: "not a live-update state (no magic)"
            case .unsupportedVersion(let v):
                "live-update state version \(v); this build reads \(LiveUpdateState.readableVersions)"
            case .malformed(let why): "malformed live-update state: \(why)"
            }
        }
    }

    /// The state in `version`'s format (one of `readableVersions`).
    public func encoded(version: UInt32 = currentVersion) -> [UInt8] {
        precondition(Self.readableVersions.contains(version), "version \(version) is not one this build writes")
        var out = Self.magic
        func u8(_ v: UInt8) { out.append(v) }
        func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { out += $0 } }
        func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { out += $0 } }
        func blob(_ bytes: [UInt8]) {
            u32(UInt32(bytes.count))
            out += bytes
        }
        func raw<T>(_ value: T) -> [UInt8] { withUnsafeBytes(of: value) { Array($0) } }
        u32(version)
        u64(machine.clock)
        u32(UInt32(machine.vcpus.count))
        for vcpu in machine.vcpus {
            blob(raw(vcpu.registers))
            blob(raw(vcpu.specialRegisters))
            blob(raw(vcpu.fpu))
            blob(vcpu.localAPIC)
            blob(raw(vcpu.events))
            u32(vcpu.mpState)
            u32(UInt32(vcpu.msrs.count))
            for msr in vcpu.msrs {
                u32(msr.index)
                u64(msr.value)
            }
        }
        u32(UInt32(routes.count))
        for route in routes {
            u8(route.msi == nil ? 0 : 1)
            u64(route.msi?.address ?? 0)
            u32(route.msi?.data ?? 0)
            u8(route.masked ? 1 : 0)
        }
        u32(UInt32(devices.count))
        for device in devices {
            blob(Array(device.name.utf8))
            blob(device.state)
        }
        return out
    }

    /// Reads a state; refuses an unknown version and anything cut short,
    /// inconsistent or followed by extra bytes.
    public init(decoding bytes: [UInt8]) throws(DecodingError) {
        var reader = Reader(bytes: bytes)
        guard bytes.count >= Self.magic.count, Array(bytes.prefix(Self.magic.count)) == Self.magic else {
            throw .notAState
        }
        reader.offset = Self.magic.count
        let version = try reader.u32("version")
        guard Self.readableVersions.contains(version) else { throw .unsupportedVersion(version) }
        let clock = try reader.u64("clock")
        let cpuCount = try reader.u32("vCPU count")
        guard cpuCount >= 1, cpuCount <= 64 else { throw .malformed("\(cpuCount) vCPUs") }
        var vcpus: [VCPUState] = []
        for index in 0..<Int(cpuCount) {
            let registers: VCPU.Registers = try reader.structure("vCPU \(index) regs")
            let special: VCPU.SpecialRegisters = try reader.structure("vCPU \(index) sregs")
            let fpu: VCPU.FPU = try reader.structure("vCPU \(index) fpu")
            let lapic = try reader.blob("vCPU \(index) lapic")
            guard lapic.count == 1024 else { throw .malformed("vCPU \(index) lapic is \(lapic.count) bytes, not 1024") }
            let events: VCPU.Events = try reader.structure("vCPU \(index) events")
            let mpState = try reader.u32("vCPU \(index) mp state")
            let msrCount = try reader.u32("vCPU \(index) MSR count")
            guard msrCount <= 1024 else { throw .malformed("vCPU \(index): \(msrCount) MSRs") }
            var msrs: [(index: UInt32, value: UInt64)] = []
            for _ in 0..<msrCount {
                msrs.append((index: try reader.u32("MSR index"), value: try reader.u64("MSR value")))
            }
            vcpus.append(
                VCPUState(
                    registers: registers, specialRegisters: special, fpu: fpu, localAPIC: lapic, events: events,
                    msrs: msrs, mpState: mpState))
        }
        let routes = try Self.routes(&reader)
        let deviceCount = try reader.u32("device count")
        guard deviceCount <= 1024 else { throw .malformed("\(deviceCount) devices") }
        var devices: [(name: String, state: [UInt8])] = []
        for _ in 0..<deviceCount {
            guard let name = String(validating: try reader.blob("device name"), as: UTF8.self) else {
                throw .malformed("a device name is not UTF-8")
            }
            devices.append((name, try reader.blob("device \(name) state")))
        }
        guard reader.offset == bytes.count else {
            throw .malformed("\(bytes.count - reader.offset) bytes after the end")
        }
        self.init(machine: MachineState(vcpus: vcpus, clock: clock), routes: routes, devices: devices)
    }

    /// Writes `routes` as the state lays them out: a u32 count, then each
    /// route's u8 has MSI, u64 address, u32 data, u8 masked. A version-2 offer
    /// carries them so too.
    static func write(_ routes: [Route], into writer: inout PayloadWriter) {
        writer.u32(UInt32(routes.count))
        for route in routes {
            writer.u8(route.msi == nil ? 0 : 1)
            writer.u64(route.msi?.address ?? 0)
            writer.u32(route.msi?.data ?? 0)
            writer.u8(route.masked ? 1 : 0)
        }
    }

    /// Reads routes `write(_:into:)` wrote.
    static func routes(_ reader: inout Reader) throws(DecodingError) -> [Route] {
        let routeCount = try reader.u32("route count")
        guard routeCount <= 65_536 else { throw .malformed("\(routeCount) routes") }
        var routes: [Route] = []
        for _ in 0..<routeCount {
            let hasMsi = try reader.u8("route MSI flag")
            let address = try reader.u64("route address")
            let data = try reader.u32("route data")
            let masked = try reader.u8("route mask")
            guard hasMsi <= 1, masked <= 1 else { throw .malformed("a route flag is neither 0 nor 1") }
            routes.append(Route(msi: hasMsi == 1 ? (address, data) : nil, masked: masked == 1))
        }
        return routes
    }

    /// Reads little-endian fields, each named for the error that says it is missing.
    struct Reader {
        let bytes: [UInt8]
        var offset = 0

        mutating func take(_ count: Int, _ what: String) throws(DecodingError) -> ArraySlice<UInt8> {
            guard count >= 0, bytes.count - offset >= count else { throw .malformed("cut short in \(what)") }
            defer { offset += count }
            return bytes[offset..<offset + count]
        }

        mutating func integer<T: FixedWidthInteger>(_ what: String) throws(DecodingError) -> T {
            let slice = try take(MemoryLayout<T>.size, what)
            return T(littleEndian: slice.withUnsafeBytes { $0.loadUnaligned(as: T.self) })
        }

        mutating func u8(_ what: String) throws(DecodingError) -> UInt8 { try integer(what) }
        mutating func u32(_ what: String) throws(DecodingError) -> UInt32 { try integer(what) }
        mutating func u64(_ what: String) throws(DecodingError) -> UInt64 { try integer(what) }

        mutating func blob(_ what: String) throws(DecodingError) -> [UInt8] {
            let length = try u32("\(what) length")
            return Array(try take(Int(length), what))
        }

        /// A kernel structure: a blob exactly its size.
        mutating func structure<T>(_ what: String) throws(DecodingError) -> T {
            let bytes = try blob(what)
            guard bytes.count == MemoryLayout<T>.size else {
                throw .malformed("\(what) is \(bytes.count) bytes, not \(MemoryLayout<T>.size)")
            }
            return bytes.withUnsafeBytes { $0.loadUnaligned(as: T.self) }
        }
    }
}
#endif
