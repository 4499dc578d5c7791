#if os(Windows)
// Compiled only on Windows; never built or run on the machine this package is
// developed on. Its WHP calls and structure layouts are checked against
// Microsoft's header (mingw-w64's winhvplatform.h) by Tools/whp-abi-check in
// CI; see WHPIrqFd for what a Windows machine must still confirm.
import CWinHvPlatform
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

/// WHP's trigger API on a real partition: WinHvPlatform's functions as
/// Microsoft's WinHvPlatform.h declares them (module CWinHvPlatform), linked
/// against WinHvPlatform.lib. The trigger calls are newer than the DLL's first
/// release: this needs Windows 10 20H2 or later on x64.
///
/// The structures are filled as bytes (`WHPTriggerParameters.bytes`,
/// `WHPInterruptControl.bytes`, pinned by EncodingTests on every platform)
/// and passed as the SDK's types; Tools/whp-abi-check asserts, against the
/// real header, that those bytes are the SDK's layout.
public final class WinHvPlatformTriggers: TriggerProvider {
    /// A `WHV_TRIGGER_HANDLE` (a pointer's bits).
    public struct Trigger: Hashable, Sendable {
        /// The handle's bits.
        public let raw: Int
    }

    /// The partition (`WHV_PARTITION_HANDLE`) bits; the caller owns the partition.
    private let partition: Int

    /// Binds to `partition` (a `WHV_PARTITION_HANDLE` the caller keeps alive
    /// longer than this object and its triggers).
    public init(partition: UnsafeMutableRawPointer) {
        self.partition = Int(bitPattern: partition)
    }

    private var partitionHandle: WHV_PARTITION_HANDLE? { UnsafeMutableRawPointer(bitPattern: partition) }

    /// A failed HRESULT as the package's error: the call and the HRESULT by
    /// name (an HRESULT is not an errno; EIO stands in for it).
    private static func check(_ result: HRESULT, _ call: String) throws(IrqFdError) {
        guard result < 0 else { return }
        let hex = String(UInt32(bitPattern: result), radix: 16, uppercase: true)
        throw .systemCall(SystemCallError(call: "\(call) (HRESULT 0x\(hex))", errno: .ioError))
    }

    /// Runs `body` with `bytes` as the SDK structure `T` (the same size:
    /// checked here, and against the header by Tools/whp-abi-check).
    private static func withStructure<T, R>(_ bytes: [UInt8], as type: T.Type, _ body: (UnsafePointer<T>) -> R) -> R {
        precondition(
            bytes.count == MemoryLayout<T>.size, "\(T.self) is \(MemoryLayout<T>.size) bytes, not \(bytes.count)")
        return withUnsafeTemporaryAllocation(of: T.self, capacity: 1) { buffer in
            UnsafeMutableRawBufferPointer(buffer).copyBytes(from: bytes)
            return body(UnsafePointer(buffer.baseAddress!))
        }
    }

    /// WHvCreateTrigger(partition, &parameters, &trigger, &event).
    public func createTrigger(_ interrupt: WHPInterruptControl) throws(IrqFdError) -> (
        trigger: Trigger, event: any Event
    ) {
        var trigger: WHV_TRIGGER_HANDLE? = nil
        var event: HANDLE? = nil
        let bytes = WHPTriggerParameters(interrupt: interrupt).bytes
        let result = Self.withStructure(bytes, as: WHV_TRIGGER_PARAMETERS.self) { parameters in
            WHvCreateTrigger(partitionHandle, parameters, &trigger, &event)
        }
        try Self.check(result, "WHvCreateTrigger")
        guard let trigger, let event else {
            throw .systemCall(SystemCallError(call: "WHvCreateTrigger (returned no handle)", errno: .ioError))
        }
        return (Trigger(raw: Int(bitPattern: trigger)), Win32Event(adopting: event))
    }

    /// WHvUpdateTriggerParameters(partition, &parameters, trigger).
    public func updateTrigger(_ trigger: Trigger, to interrupt: WHPInterruptControl) throws(IrqFdError) {
        let bytes = WHPTriggerParameters(interrupt: interrupt).bytes
        let result = Self.withStructure(bytes, as: WHV_TRIGGER_PARAMETERS.self) { parameters in
            WHvUpdateTriggerParameters(partitionHandle, parameters, UnsafeMutableRawPointer(bitPattern: trigger.raw))
        }
        try Self.check(result, "WHvUpdateTriggerParameters")
    }

    /// WHvDeleteTrigger(partition, trigger). The event stays open: its
    /// `Win32Event` closes it.
    public func deleteTrigger(_ trigger: Trigger) throws(IrqFdError) {
        try Self.check(
            WHvDeleteTrigger(partitionHandle, UnsafeMutableRawPointer(bitPattern: trigger.raw)), "WHvDeleteTrigger")
    }

    /// WHvRequestInterrupt(partition, &control, sizeof(WHV_INTERRUPT_CONTROL)).
    public func requestInterrupt(_ interrupt: WHPInterruptControl) throws(IrqFdError) {
        let bytes = interrupt.bytes
        let result = Self.withStructure(bytes, as: WHV_INTERRUPT_CONTROL.self) { control in
            WHvRequestInterrupt(partitionHandle, control, UInt32(bytes.count))
        }
        try Self.check(result, "WHvRequestInterrupt")
    }
}

extension WHPIrqFd where Provider == WinHvPlatformTriggers {
    /// The WHP backend on a real partition: WinHvPlatform's triggers, relayed
    /// (after a mask) by a `WaitForMultipleObjects` thread.
    public convenience init(partition: UnsafeMutableRawPointer) throws(IrqFdError) {
        try self.init(provider: WinHvPlatformTriggers(partition: partition), poller: WaitPoller())
    }
}
#endif
