public import IrqFdCore

/// WHP's trigger API as Microsoft documents it (WinHvPlatform.h, "Trigger
/// Data Types"), which the WHP backend is written against:
///
/// - `WHvCreateTrigger(partition, parameters, &trigger, &event)` creates a
///   trigger and returns a Win32 event; signalling it delivers the configured
///   interrupt. Signals that arrive before delivery may coalesce.
/// - `WHvUpdateTriggerParameters(partition, parameters, trigger)` retargets a
///   live trigger: the same event keeps working, and a signal racing the update
///   sees the old or the new parameters. The type (here always
///   `WHvTriggerTypeInterrupt`) cannot change.
/// - `WHvDeleteTrigger(partition, trigger)`: signalling the event has no effect
///   on the partition any more; the event stays open and the caller closes it.
/// - There is no call to mask, disable or re-enable a trigger, and no call
///   that attaches an existing event to a new trigger.
/// - `WHvRequestInterrupt(partition, &control, size)` injects once, now.
///
/// `WinHvPlatformTriggers` (Windows) calls WinHvPlatform; `KVMTriggerModel`
/// (Linux) behaves as documented on top of KVM so the strategy runs here.
public protocol TriggerProvider: Sendable {
    /// The handle `WHvCreateTrigger` returned (`WHV_TRIGGER_HANDLE`).
    associatedtype Trigger: Sendable

    /// `WHvCreateTrigger` with an interrupt trigger: live at once.
    func createTrigger(_ interrupt: WHPInterruptControl) throws(IrqFdError) -> (trigger: Trigger, event: any Event)
    /// `WHvUpdateTriggerParameters`: retargets the live trigger.
    func updateTrigger(_ trigger: Trigger, to interrupt: WHPInterruptControl) throws(IrqFdError)
    /// `WHvDeleteTrigger`: the event no longer reaches the partition; it stays open.
    func deleteTrigger(_ trigger: Trigger) throws(IrqFdError)
    /// `WHvRequestInterrupt`: injects once, now (the relay's injector).
    func requestInterrupt(_ interrupt: WHPInterruptControl) throws(IrqFdError)
}

/// `WHV_TRIGGER_PARAMETERS` for an interrupt trigger: 32 bytes, `TriggerType`
/// (UINT32, `WHvTriggerTypeInterrupt` = 0), `Reserved` (UINT32), then the
/// union, whose largest member (`DeviceInterrupt`, 24 bytes) sets its size;
/// the interrupt member is the 16-byte `WHV_INTERRUPT_CONTROL` at offset 8.
public struct WHPTriggerParameters: Hashable, Sendable {
    /// `WHvTriggerTypeInterrupt`.
    public static let interruptTriggerType: UInt32 = 0
    /// `sizeof(WHV_TRIGGER_PARAMETERS)`.
    public static let size = 32
    /// The interrupt the trigger delivers.
    public var interrupt: WHPInterruptControl

    /// Parameters for an interrupt trigger.
    public init(interrupt: WHPInterruptControl) { self.interrupt = interrupt }

    /// The structure's bytes, little-endian, as WinHvPlatform reads them.
    public var bytes: [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(Self.size)
        withUnsafeBytes(of: Self.interruptTriggerType.littleEndian) { out += $0 }
        out += [0, 0, 0, 0]
        out += interrupt.bytes
        out += [UInt8](repeating: 0, count: Self.size - out.count)
        return out
    }
}

/// Makes a trigger provider's `WHvRequestInterrupt` the relay's injector.
struct RequestInterruptInjector<Provider: TriggerProvider>: MsiInjector {
    let provider: Provider
    func inject(_ message: MsiMessage) throws(IrqFdError) {
        try provider.requestInterrupt(WHPInterruptControl(message))
    }
}
