#if os(Windows)
// Compiled only on Windows; never built or run on the machine this package is
// developed on. Written against the signatures in Microsoft's documentation
// (WinHvPlatform.h); see WHPIrqFd for what a Windows machine must confirm.
public import IrqFdCore
import IrqFdRelay
import SystemPackage
import WinSDK

/// A Win32 event handle owned by this object (closed with `CloseHandle`).
///
/// `tryWait`/`wait` reset the event after a successful wait, which is right
/// whether WHP made it auto-reset (the wait already reset it) or
/// manual-reset: a signal arriving in between coalesces with the one being
/// reported, and the consumer acts after the reset.
public final class Win32Event: Event {
    /// The HANDLE's bits (a HANDLE is a pointer, which is not Sendable; the
    /// value itself is just a kernel object index).
    private let raw: Int

    /// Takes ownership of `handle` (a HANDLE).
    public init(adopting handle: UnsafeMutableRawPointer) { raw = Int(bitPattern: handle) }

    private var handle: HANDLE { HANDLE(bitPattern: raw)! }

    deinit { _ = CloseHandle(handle) }

    /// SetEvent.
    public func signal() { _ = SetEvent(handle) }

    /// WaitForSingleObject with a zero timeout, then ResetEvent.
    public func tryWait() -> Bool { waitMilliseconds(0) }

    /// WaitForSingleObject with `timeout`, then ResetEvent.
    public func wait(timeout: Duration) -> Bool {
        let (seconds, attoseconds) = timeout.components
        let millis = max(0, seconds * 1000 + attoseconds / 1_000_000_000_000_000)
        // 0xFFFFFFFF is INFINITE; clamp below it.
        return waitMilliseconds(DWORD(min(millis, Int64(DWORD.max - 1))))
    }

    private func waitMilliseconds(_ millis: DWORD) -> Bool {
        // 0 is WAIT_OBJECT_0.
        guard WaitForSingleObject(handle, millis) == 0 else { return false }
        _ = ResetEvent(handle)
        return true
    }

    /// The HANDLE, borrowed.
    public var nativeHandle: NativeEventHandle { NativeEventHandle(rawValue: raw) }
}

/// WHP's trigger API on a real partition (WinHvPlatform.dll, loaded at run
/// time as OpenVMM does, since the trigger calls are newer than the DLL's
/// first release: Windows 10 20H2 on x64).
public final class WinHvPlatformTriggers: TriggerProvider {
    /// A `WHV_TRIGGER_HANDLE` (a pointer's bits).
    public struct Trigger: Hashable, Sendable {
        /// The handle's bits.
        public let raw: Int
    }

    private typealias CreateTrigger = @convention(c) (
        UnsafeMutableRawPointer?, UnsafeRawPointer?, UnsafeMutablePointer<UnsafeMutableRawPointer?>?,
        UnsafeMutablePointer<UnsafeMutableRawPointer?>?
    ) -> Int32
    private typealias UpdateTriggerParameters = @convention(c) (UnsafeMutableRawPointer?, UnsafeRawPointer?, UnsafeMutableRawPointer?) -> Int32
    private typealias DeleteTrigger = @convention(c) (UnsafeMutableRawPointer?, UnsafeMutableRawPointer?) -> Int32
    private typealias RequestInterrupt = @convention(c) (UnsafeMutableRawPointer?, UnsafeRawPointer?, UInt32) -> Int32

    /// The partition (`WHV_PARTITION_HANDLE`) bits; the caller owns the partition.
    private let partition: Int
    // Procedure addresses, resolved once (function pointers are not Sendable).
    private let createAddress: Int
    private let updateAddress: Int
    private let deleteAddress: Int
    private let requestAddress: Int

    /// Binds to `partition` (a `WHV_PARTITION_HANDLE` the caller keeps alive
    /// longer than this object and its triggers). Throws `unsupported` if
    /// WinHvPlatform.dll or one of the calls is missing.
    public init(partition: UnsafeMutableRawPointer) throws(IrqFdError) {
        self.partition = Int(bitPattern: partition)
        guard let module = "WinHvPlatform.dll".withCString(encodedAs: UTF16.self, { LoadLibraryW($0) }) else {
            throw .unsupported("WinHvPlatform.dll cannot be loaded (is the Windows Hypervisor Platform feature on?)")
        }
        func address(_ name: String) throws(IrqFdError) -> Int {
            guard let proc = GetProcAddress(module, name) else {
                throw .unsupported("WinHvPlatform.dll has no \(name) (it needs Windows 10 20H2 or later)")
            }
            return Int(bitPattern: unsafeBitCast(proc, to: UnsafeRawPointer.self))
        }
        createAddress = try address("WHvCreateTrigger")
        updateAddress = try address("WHvUpdateTriggerParameters")
        deleteAddress = try address("WHvDeleteTrigger")
        requestAddress = try address("WHvRequestInterrupt")
    }

    private func function<F>(_ address: Int, as type: F.Type) -> F {
        unsafeBitCast(UnsafeRawPointer(bitPattern: address)!, to: F.self)
    }

    private var partitionHandle: UnsafeMutableRawPointer? { UnsafeMutableRawPointer(bitPattern: partition) }

    /// A failed HRESULT as the package's error: the call and the HRESULT by
    /// name (an HRESULT is not an errno; EIO stands in for it).
    private static func check(_ result: Int32, _ call: String) throws(IrqFdError) {
        guard result < 0 else { return }
        let hex = String(UInt32(bitPattern: result), radix: 16, uppercase: true)
        throw .systemCall(SystemCallError(call: "\(call) (HRESULT 0x\(hex))", errno: .ioError))
    }

    /// Runs `body` with `bytes` in an 8-byte-aligned buffer (the structures hold UINT64s).
    private static func withAligned<R>(_ bytes: [UInt8], _ body: (UnsafeRawPointer) -> R) -> R {
        withUnsafeTemporaryAllocation(byteCount: bytes.count, alignment: 8) { buffer in
            buffer.copyBytes(from: bytes)
            return body(UnsafeRawPointer(buffer.baseAddress!))
        }
    }

    /// WHvCreateTrigger(partition, &parameters, &trigger, &event).
    public func createTrigger(_ interrupt: WHPInterruptControl) throws(IrqFdError) -> (trigger: Trigger, event: any Event) {
        let create = function(createAddress, as: CreateTrigger.self)
        var trigger: UnsafeMutableRawPointer? = nil
        var event: UnsafeMutableRawPointer? = nil
        let result = Self.withAligned(WHPTriggerParameters(interrupt: interrupt).bytes) { parameters in
            create(partitionHandle, parameters, &trigger, &event)
        }
        try Self.check(result, "WHvCreateTrigger")
        guard let trigger, let event else {
            throw .systemCall(SystemCallError(call: "WHvCreateTrigger (returned no handle)", errno: .ioError))
        }
        return (Trigger(raw: Int(bitPattern: trigger)), Win32Event(adopting: event))
    }

    /// WHvUpdateTriggerParameters(partition, &parameters, trigger).
    public func updateTrigger(_ trigger: Trigger, to interrupt: WHPInterruptControl) throws(IrqFdError) {
        let update = function(updateAddress, as: UpdateTriggerParameters.self)
        let result = Self.withAligned(WHPTriggerParameters(interrupt: interrupt).bytes) { parameters in
            update(partitionHandle, parameters, UnsafeMutableRawPointer(bitPattern: trigger.raw))
        }
        try Self.check(result, "WHvUpdateTriggerParameters")
    }

    /// WHvDeleteTrigger(partition, trigger). The event stays open: its
    /// `Win32Event` closes it.
    public func deleteTrigger(_ trigger: Trigger) throws(IrqFdError) {
        let delete = function(deleteAddress, as: DeleteTrigger.self)
        try Self.check(delete(partitionHandle, UnsafeMutableRawPointer(bitPattern: trigger.raw)), "WHvDeleteTrigger")
    }

    /// WHvRequestInterrupt(partition, &control, sizeof(WHV_INTERRUPT_CONTROL)).
    public func requestInterrupt(_ interrupt: WHPInterruptControl) throws(IrqFdError) {
        let request = function(requestAddress, as: RequestInterrupt.self)
        let bytes = interrupt.bytes
        let result = Self.withAligned(bytes) { control in request(partitionHandle, control, UInt32(bytes.count)) }
        try Self.check(result, "WHvRequestInterrupt")
    }
}

extension WHPIrqFd where Provider == WinHvPlatformTriggers {
    /// The WHP backend on a real partition: WinHvPlatform's triggers, relayed
    /// (after a mask) by a `WaitForMultipleObjects` thread.
    public convenience init(partition: UnsafeMutableRawPointer) throws(IrqFdError) {
        try self.init(provider: WinHvPlatformTriggers(partition: partition), poller: try WaitPoller())
    }
}
#endif
