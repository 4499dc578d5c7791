public import IrqFdCore
import Synchronization

/// An MSI-X function's capability, table and Pending Bit Array (PCI Local Bus
/// spec 6.8.2), with each vector delivered through an irqfd route or a
/// userspace signalling path.
///
/// A vector *wants* to be live when bus mastering is on (`setBusMaster`),
/// MSI-X is enabled and neither the function nor the entry is masked. It *is*
/// live (`isLive`) when its route (or the userspace path) has been told so:
/// a vector's route is unmasked exactly when the vector is live. The two
/// differ only after a route call failed; the next write to the entry, to
/// Message Control or to the command register retries. Transitions:
/// - going live: a route is made if the vector has none (lazily: never 2048
///   up front), `setMsi` (skipped if the route already took this message),
///   `unmask`, then the vector's pending interrupt, if any, is delivered once
///   and its bit cleared. With the bit set, `consumePending()` first merges
///   what latched since into it: one pending bit is one interrupt. The pending
///   interrupt is delivered by signalling the route's event once it is
///   unmasked (so the hypervisor injects it, in order with the route's own),
///   or by the injector;
/// - going dead (entry mask, function mask, MSI-X disable, bus mastering
///   off): `mask`; signals latch in the route's event and show in the PBA;
/// - staying live with a new address/data: `setMsi`;
/// - a write that changes nothing: no route call at all;
/// - a failed route call: the message is recorded only once `setMsi`
///   succeeded (or refused it as undeliverable), and `live` changes only once
///   `mask`/`unmask` succeeded, so the record never claims more than the route
///   did;
/// - reset (`reset()`): every vector masked with a zero entry, MSI-X
///   disabled, pending bits cleared; routes are kept (masked, drained,
///   cleared), so each event handed out by `event(for:)` stays valid and
///   stays the vector's event;
/// - restore: the saved table, control bits and pending bits, then routes
///   reprogrammed in one batch; a live vector with its pending bit set
///   delivers it once.
///
/// A PBA read folds the latched signals of the vectors it covers that are not
/// live (`consumePending()`) into their pending bits.
///
/// Bad accesses, from the guest or the host API (wrong size, misaligned, out
/// of range, any offset or vector number), are ignored and counted, never a
/// trap.
///
/// Thread safety: guest accesses (any vCPU), device signals (any thread) and
/// host calls are serialised by one lock, which is held across route calls so
/// that a device signal racing a mask is either delivered before it or latched.
/// Route and partition locks are taken inside it, never the other way round.
public final class MsixEmulator: Sendable {
    /// The read-only shape of the function.
    public let layout: MsixLayout
    /// How interrupts reach the guest.
    public let delivery: MsixDelivery
    let state: Mutex<State>

    struct Vector {
        var addressLow: UInt32 = 0
        var addressHigh: UInt32 = 0
        var data: UInt32 = 0
        var masked = true
        var pending = false
        /// Made the first time the vector went live or its event was asked for,
        /// or, on a coalescing partition, once its entry was programmed (`preRoute`).
        var route: (any IrqFdRoute)?
        /// The message last handed to `route.setMsi`, and whether the route took it.
        var programmed: MsiMessage?
        var accepted = false
        /// Whether the vector is live as far as its route (or the userspace path)
        /// knows: its route is unmasked exactly when this is true.
        var live = false

        var message: MsiMessage { MsiMessage(address: UInt64(addressHigh) << 32 | UInt64(addressLow), data: data) }
        var entry: MsixSavedState.Entry {
            MsixSavedState.Entry(
                addressLow: addressLow, addressHigh: addressHigh, data: data, vectorControl: masked ? 1 : 0)
        }
    }

    struct State {
        var enabled = false
        var functionMasked = false
        /// The PCI function's Bus Master Enable (command bit 2), as last told.
        var busMaster = true
        var vectors: [Vector]
        var counters = MsixCounters()
        var lastRouteError: IrqFdError?

        func wantsLive(_ v: Int) -> Bool { busMaster && enabled && !functionMasked && !vectors[v].masked }

        /// Whether vector `v`, not live, should have its route and entry made
        /// now (see `MsixEmulator.preRoute`): MSI-X is on, the partition
        /// coalesces, the entry holds a deliverable message its route has not
        /// been given.
        func wantsPreRoute(_ v: Int, coalescing: Bool) -> Bool {
            guard coalescing, enabled, !vectors[v].live, vectors[v].message.isDeliverable else { return false }
            return vectors[v].route == nil || vectors[v].programmed != vectors[v].message
        }
    }

    /// A function with `layout`'s vectors in the reset state: all masked,
    /// MSI-X disabled, no routes yet, bus mastering on.
    public init(layout: MsixLayout, delivery: MsixDelivery) {
        self.layout = layout
        self.delivery = delivery
        state = Mutex(State(vectors: Array(repeating: Vector(), count: layout.vectorCount)))
    }

    /// Releasing the emulator releases its routes in one batch: one table
    /// push for all of them, not one per route.
    deinit {
        guard let partition else { return }
        var routes = state.withLock { s -> [any IrqFdRoute] in
            defer { for v in s.vectors.indices { s.vectors[v].route = nil } }
            return s.vectors.compactMap(\.route)
        }
        try? partition.withBatch { () throws(IrqFdError) in routes.removeAll() }
    }

    var partition: (any IrqFd)? {
        if case .irqfd(let partition, _) = delivery { partition } else { nil }
    }

    private var injector: (any MsiInjector)? {
        switch delivery {
        case .irqfd(_, let fallback): fallback
        case .userspace(let injector): injector
        }
    }

    // MARK: - Capability (configuration space)

    /// Message Control: Table Size (10:0), Function Mask (14), MSI-X Enable (15).
    private func messageControl(_ s: State) -> UInt16 {
        UInt16(layout.vectorCount - 1) | (s.functionMasked ? 1 << 14 : 0) | (s.enabled ? 1 << 15 : 0)
    }

    private func capabilityDword(_ index: Int, _ s: State) -> UInt32 {
        switch index {
        case 0: UInt32(MsixLayout.capabilityID) | UInt32(layout.nextCapability) << 8 | UInt32(messageControl(s)) << 16
        case 1: layout.tableOffset | UInt32(layout.tableBIR)
        default: layout.pbaOffset | UInt32(layout.pbaBIR)
        }
    }

    /// Checks a configuration-space access to the capability: 1, 2 or 4 bytes
    /// inside one DWORD (any byte enables within a DWORD are legal, PCI Local
    /// Bus spec 3.2.2.3.2: a 2-byte read at offset 1 is fine), inside its 12
    /// bytes. No arithmetic here can overflow, whatever the host passes
    /// (`offset: .max` once trapped in `offset + size`).
    private func capabilityAccessIsValid(offset: Int, size: Int, _ s: inout State) -> Bool {
        guard size == 1 || size == 2 || size == 4 else {
            s.counters.wrongSize += 1
            return false
        }
        guard offset >= 0, offset <= MsixLayout.capabilityLength - size else {
            s.counters.outOfRange += 1
            return false
        }
        guard offset % 4 + size <= 4 else {
            s.counters.misaligned += 1
            return false
        }
        return true
    }

    /// A configuration read of `size` bytes at `offset` from the capability's
    /// start (the ID byte). Bad accesses read as zero and are counted.
    public func readCapability(offset: Int, size: Int) -> UInt32 {
        state.withLock { s in
            guard capabilityAccessIsValid(offset: offset, size: size, &s) else { return 0 }
            let dword = capabilityDword(offset / 4, s)
            let shifted = dword >> (8 * UInt32(offset % 4))
            return size == 4 ? shifted : shifted & ((1 << (8 * UInt32(size))) - 1)
        }
    }

    /// A configuration write of `size` bytes at `offset` from the capability's
    /// start. Only Message Control's Function Mask and Enable bits are
    /// writable; writes to read-only fields are ignored, bad accesses counted.
    public func writeCapability(offset: Int, size: Int, value: UInt32) {
        state.withLock { s in
            guard capabilityAccessIsValid(offset: offset, size: size, &s) else { return }
            // Message Control is bytes 2 and 3; everything else is read-only.
            var control = messageControl(s)
            var touched = false
            for byte in 0..<size where (2...3).contains(offset + byte) {
                let shift = UInt16(8 * (offset + byte - 2))
                let incoming = UInt16(truncatingIfNeeded: value >> (8 * UInt32(byte))) & 0xFF
                control = control & ~(0xFF << shift) | incoming << shift
                touched = true
            }
            guard touched else { return }
            if control & 0x3800 != 0 { s.counters.reservedBits += 1 }
            let enabled = control & 0x8000 != 0
            let functionMasked = control & 0x4000 != 0
            s.enabled = enabled
            s.functionMasked = functionMasked
            // Even when neither bit changed: a vector that a failed route call
            // left not live is retried. Vectors already in line make no call.
            _ = reconcileAll(&s)
        }
    }

    // MARK: - Bus mastering (the PCI command register)

    /// Tells the emulator the function's Bus Master Enable (PCI command
    /// register bit 2). Any PCI function with MSI-X calls this whenever its
    /// command register is written (and after restoring it); the emulator
    /// starts with bus mastering on, as firmware leaves a device it assigned.
    ///
    /// With it clear the function must not send MSI or MSI-X (a message is a
    /// memory write, PCI Local Bus spec 6.8.1/6.8.2; PCIe base spec 7.5.1.1.3),
    /// and guests rely on that at shutdown, kexec and unbind. Here a vector
    /// cannot be live while it is clear: clearing it takes every live vector
    /// dead (`mask`, in one batch), so interrupts raised meanwhile are *held
    /// as pending*, exactly as under the function mask: they latch in the
    /// route's event, show in the PBA, and a vector that is live once the bit
    /// is set again delivers its pending interrupt once. A vector that is not
    /// live then (MSI-X disabled, masked) keeps its bit; `reset()` clears it.
    ///
    /// Why held and not dropped (QEMU drops: the write hits a disabled bus
    /// master address space): a driver that clears bus mastering around a
    /// short operation loses no completion; an event held by another process
    /// (a vhost-user call fd) cannot be un-signalled anyway, and draining it to
    /// drop would race that process; and it reuses the lossless mask path,
    /// one `mask` per live vector and no routing-table push. A stale interrupt
    /// after the bit comes back is at worst spurious, which MSI handlers must
    /// tolerate, and never reaches a vector the guest has not unmasked.
    public func setBusMaster(_ enabled: Bool) {
        state.withLock { s in
            s.busMaster = enabled
            // Even when unchanged: vectors a failed route call left behind are retried.
            _ = reconcileAll(&s)
        }
    }

    /// Whether the function may send interrupts (the last `setBusMaster`).
    public var isBusMasterEnabled: Bool { state.withLock { $0.busMaster } }

    // MARK: - Table and PBA (memory space)

    /// Checks a table or PBA access: 4 or 8 bytes, aligned, inside `length`.
    private func structureAccessIsValid(offset: UInt64, size: Int, length: Int, _ s: inout State) -> Bool {
        guard size == 4 || size == 8 else {
            s.counters.wrongSize += 1
            return false
        }
        guard offset % UInt64(size) == 0 else {
            s.counters.misaligned += 1
            return false
        }
        guard offset < UInt64(length), UInt64(size) <= UInt64(length) - offset else {
            s.counters.outOfRange += 1
            return false
        }
        return true
    }

    /// A read of `size` bytes at `offset` from the table's start.
    public func readTable(offset: UInt64, size: Int) -> UInt64 {
        state.withLock { s in
            guard structureAccessIsValid(offset: offset, size: size, length: layout.tableSize, &s) else { return 0 }
            var value: UInt64 = 0
            for i in 0..<size / 4 {
                let field = Int(offset % 16) / 4 + i
                let vector = s.vectors[Int(offset / 16)]
                let dword: UInt32 =
                    switch field {
                    case 0: vector.addressLow
                    case 1: vector.addressHigh
                    case 2: vector.data
                    default: vector.masked ? 1 : 0
                    }
                value |= UInt64(dword) << (32 * UInt64(i))
            }
            return value
        }
    }

    /// A write of `size` bytes at `offset` from the table's start. A QWORD
    /// write updates two fields of one entry and counts as one change.
    public func writeTable(offset: UInt64, size: Int, value: UInt64) {
        state.withLock { s in
            guard structureAccessIsValid(offset: offset, size: size, length: layout.tableSize, &s) else { return }
            let v = Int(offset / 16)
            for i in 0..<size / 4 {
                let dword = UInt32(truncatingIfNeeded: value >> (32 * UInt64(i)))
                switch Int(offset % 16) / 4 + i {
                case 0:
                    // Bits 1:0 keep the address DWORD-aligned: read-only zero.
                    if dword & 3 != 0 { s.counters.reservedBits += 1 }
                    s.vectors[v].addressLow = dword & ~3
                case 1:
                    s.vectors[v].addressHigh = dword
                case 2:
                    s.vectors[v].data = dword
                default:
                    // Bits 31:1 are reserved: read-only zero here.
                    if dword & ~1 != 0 { s.counters.reservedBits += 1 }
                    s.vectors[v].masked = dword & 1 != 0
                }
            }
            if let error = reconcile(v, &s) { note(error, &s) }
        }
    }

    /// A read of `size` bytes at `offset` from the PBA's start. Vectors that
    /// are not live first fold their routes' latched signals into their bits.
    public func readPBA(offset: UInt64, size: Int) -> UInt64 {
        state.withLock { s in
            guard structureAccessIsValid(offset: offset, size: size, length: layout.pbaSize, &s) else { return 0 }
            let first = Int(offset) * 8
            let end = min(first + size * 8, layout.vectorCount)
            var value: UInt64 = 0
            for v in first..<max(first, end) {
                foldLatched(v, &s)
                if s.vectors[v].pending { value |= 1 << UInt64(v - first) }
            }
            return value
        }
    }

    /// The PBA is read-only: writes are ignored and counted.
    public func writePBA(offset: UInt64, size: Int, value: UInt64) {
        state.withLock { s in
            guard structureAccessIsValid(offset: offset, size: size, length: layout.pbaSize, &s) else { return }
            s.counters.pbaWrites += 1
        }
    }

    /// A read from BAR `bar` at `offset`: routed to the table or the PBA by the
    /// layout; anything else in the BAR reads as zero and is counted.
    public func read(bar: Int, offset: UInt64, size: Int) -> UInt64 {
        switch locate(bar: bar, offset: offset) {
        case .table(let o): return readTable(offset: o, size: size)
        case .pba(let o): return readPBA(offset: o, size: size)
        case .neither:
            state.withLock { $0.counters.outOfRange += 1 }
            return 0
        }
    }

    /// A write to BAR `bar` at `offset`, routed like `read(bar:offset:size:)`.
    public func write(bar: Int, offset: UInt64, size: Int, value: UInt64) {
        switch locate(bar: bar, offset: offset) {
        case .table(let o): writeTable(offset: o, size: size, value: value)
        case .pba(let o): writePBA(offset: o, size: size, value: value)
        case .neither: state.withLock { $0.counters.outOfRange += 1 }
        }
    }

    private enum Place {
        case table(UInt64)
        case pba(UInt64)
        case neither
    }

    private func locate(bar: Int, offset: UInt64) -> Place {
        if bar == Int(layout.tableBIR), offset >= UInt64(layout.tableOffset),
            offset - UInt64(layout.tableOffset) < UInt64(layout.tableSize)
        {
            return .table(offset - UInt64(layout.tableOffset))
        }
        if bar == Int(layout.pbaBIR), offset >= UInt64(layout.pbaOffset),
            offset - UInt64(layout.pbaOffset) < UInt64(layout.pbaSize)
        {
            return .pba(offset - UInt64(layout.pbaOffset))
        }
        return .neither
    }

    // MARK: - The device side

    /// The device raises vector `v` (in-process devices). Live: delivered now
    /// (through the route's event, or the userspace path). Not live: latched,
    /// and seen as its pending bit. Never blocks on the guest.
    public func signal(vector v: Int) {
        let event = state.withLock { (s: inout State) -> (any Event)? in
            guard s.vectors.indices.contains(v) else {
                s.counters.badSignals += 1
                return nil
            }
            let vector = s.vectors[v]
            if let route = vector.route {
                if vector.live, !vector.accepted {
                    // The route refused this message: like hardware writing to a
                    // bogus address, the interrupt goes nowhere.
                    s.counters.undeliverable += 1
                    return nil
                }
                // Armed: the hypervisor injects it. Masked: it latches in the event.
                return route.event
            }
            guard vector.live else {
                s.vectors[v].pending = true
                return nil
            }
            deliverInUserspace(v, &s)
            return nil
        }
        // Outside the lock: an eventfd write is a system call, and the route's
        // own state decides delivery; a racing mask makes it latch instead.
        event?.signal()
    }

    /// Vector `v`'s event, for a device outside this process (vhost-user,
    /// VFIO): signalling it is the same as `signal(vector:)`. Makes the route
    /// now if the vector has none yet, masked unless the vector is live. Only
    /// irqfd delivery has events.
    ///
    /// The event stays the vector's for the emulator's whole life: `reset()`
    /// keeps routes, so a holder (a vhost-user backend's call fd) never needs
    /// a new one. Only a route whose `mask` failed during a reset is released
    /// (reported in `lastRouteError`); the next call then returns a new event.
    public func event(for v: Int) throws(IrqFdError) -> any Event {
        guard let partition else { throw .unsupported("userspace MSI-X delivery has no per-vector events") }
        return try state.withLock { (s: inout State) throws(IrqFdError) -> any Event in
            guard s.vectors.indices.contains(v) else {
                throw .unsupported("vector \(v) is outside the table (\(layout.vectorCount) vectors)")
            }
            if let route = s.vectors[v].route { return route.event }
            let route = try partition.newIrqFdRoute()
            // A new route has no message: whatever an earlier route (or an
            // earlier attempt of this call) was given is not this route's. Found
            // in review: a failed `setMsi` here left its message recorded, the
            // next route inherited the record, going live skipped `setMsi`, and
            // every signal on the vector counted as undeliverable.
            s.vectors[v].programmed = nil
            s.vectors[v].accepted = false
            if s.vectors[v].live {
                // Live without a route: its route failed before and the fallback
                // delivered it. From now on the route does. Any failure but a
                // refused message: the route is released and the fallback keeps
                // delivering.
                try offer(v, to: route, deferred: false, &s)
            } else {
                try route.mask()
            }
            s.vectors[v].route = route
            return route.event
        }
    }

    // MARK: - Transitions

    /// Brings vector `v`'s route (or userspace state) in line with the table
    /// and control bits. Returns the first route error; the state stays
    /// consistent so that the next write retries.
    private func reconcile(_ v: Int, _ s: inout State) -> IrqFdError? {
        if s.wantsLive(v) {
            return goLive(v, &s)
        } else if s.vectors[v].live {
            return goDead(v, &s)
        }
        preRoute(v, &s)
        return nil
    }

    /// Whether the partition coalesces deferred changes (see `IrqFd.coalescesDeferredChanges`).
    private var coalescing: Bool { partition?.coalescesDeferredChanges ?? false }

    /// Routes masked vector `v` as soon as its entry is programmed:
    /// the route is made masked (disarmed, rule 4) and given the message
    /// deferred, so the entry joins the partition's next coalesced commit and
    /// no interim serves it (nothing is armed). When the guest unmasks the
    /// vector, the entry is usually in the kernel already and going live costs
    /// one KVM_IRQFD: Linux writes every entry, masked, when it allocates its
    /// vectors, then unmasks each in request_irq. Only on a coalescing
    /// partition (otherwise each table write would push), only with MSI-X on
    /// and a deliverable message, so an entry never programmed takes no GSI.
    /// Failures change nothing the guest can see: going live retries.
    private func preRoute(_ v: Int, _ s: inout State) {
        guard s.wantsPreRoute(v, coalescing: coalescing), let partition else { return }
        let route: any IrqFdRoute
        if let existing = s.vectors[v].route {
            route = existing
        } else {
            do throws(IrqFdError) {
                route = try partition.newIrqFdRoute()
                try route.mask()
            } catch {
                return  // e.g. no free GSI: the vector goes live without a route made early
            }
            s.vectors[v].route = route
            s.vectors[v].programmed = nil
            s.vectors[v].accepted = false
        }
        do throws(IrqFdError) {
            try offer(v, to: route, deferred: true, &s)
        } catch {
            s.vectors[v].programmed = nil  // going live asks again
        }
    }

    /// Gives `route` vector `v`'s message (`setMsiDeferred` if `deferred`,
    /// else `setMsi`) and records the answer: taken, or refused as
    /// undeliverable, recorded too, so that an unchanged message is not
    /// offered again (refused for good, and only once the route has
    /// answered). Any other error is thrown with the record unchanged.
    private func offer(_ v: Int, to route: any IrqFdRoute, deferred: Bool, _ s: inout State) throws(IrqFdError) {
        let message = s.vectors[v].message
        do throws(IrqFdError) {
            if deferred { try route.setMsiDeferred(message) } else { try route.setMsi(message) }
            s.vectors[v].programmed = message
            s.vectors[v].accepted = true
        } catch {
            guard case .undeliverableAddress = error else { throw error }
            s.vectors[v].programmed = message
            s.vectors[v].accepted = false
        }
    }

    private func goLive(_ v: Int, _ s: inout State) -> IrqFdError? {
        let message = s.vectors[v].message
        let wasLive = s.vectors[v].live
        var fresh = false
        if s.vectors[v].route == nil, !wasLive, let partition {
            do throws(IrqFdError) {
                s.vectors[v].route = try partition.newIrqFdRoute()
                s.vectors[v].programmed = nil
                s.vectors[v].accepted = false
                fresh = true
            } catch {
                // No route (e.g. no free GSI): the fallback, if any, delivers this vector.
                note(error, &s)
            }
        }
        guard let route = s.vectors[v].route else {
            // Userspace delivery: the message is read at each signal.
            if !wasLive {
                s.vectors[v].live = true
                releasePending(v, &s)
            }
            return nil
        }
        if s.vectors[v].programmed != message {
            if wasLive, !s.vectors[v].accepted {
                // What latched while the message was refused had nowhere to go:
                // dropped, not delivered late to the new address.
                _ = route.consumePending()
            }
            do throws(IrqFdError) {
                // Deferred: a guest bringing vectors live one write at a time costs one
                // coalesced push, not one each (rule 8); the relay serves meanwhile.
                try offer(v, to: route, deferred: true, &s)
            } catch {
                // The hypervisor refused the call; the route kept what it had.
                return leaveNotLive(v, route, error, &s)
            }
        }
        guard !wasLive else { return nil }
        if !fresh, s.vectors[v].pending || !s.vectors[v].accepted {
            // Still masked here. With the pending bit set, what latched since is
            // the same interrupt (one bit, one message); with nowhere to deliver,
            // it is dropped, as hardware would drop it.
            _ = route.consumePending()
        }
        do throws(IrqFdError) {
            try route.unmask()
        } catch {
            // Still dead as far as the route knows: the next write retries.
            return error
        }
        s.vectors[v].live = true
        releasePending(v, &s)
        return nil
    }

    /// Delivers live vector `v`'s pending interrupt, if any, once, and clears
    /// its bit: through its route's event (the route is unmasked, or armed at
    /// the end of the batch, so the hypervisor injects this one signal, in
    /// order with the route's own), or the userspace path when it has none.
    func releasePending(_ v: Int, _ s: inout State) {
        guard s.vectors[v].pending else { return }
        guard let route = s.vectors[v].route else {
            deliverInUserspace(v, &s)
            return
        }
        s.vectors[v].pending = false
        if s.vectors[v].accepted {
            route.event.signal()
        } else {
            s.counters.undeliverable += 1
        }
    }

    /// A route call failed while bringing `v` live (found by fault injection:
    /// marking the vector live anyway lost every later interrupt, and the
    /// same write repeated did not retry). The vector is left not live with
    /// its route masked, so its signals latch and show as its pending bit,
    /// and its message unknown, so the next write to its entry or to Message
    /// Control calls `setMsi` and `unmask` again. Nothing is lost.
    ///
    /// If that `mask` fails too, the route is still unmasked (armed with the
    /// message it had), so the vector stays live as far as the route knows:
    /// `live` always says whether the route is unmasked. The guest's next mask
    /// then calls `mask` again instead of finding nothing to do (found in
    /// review: marking it not live here delivered while masked).
    private func leaveNotLive(_ v: Int, _ route: any IrqFdRoute, _ error: IrqFdError, _ s: inout State) -> IrqFdError {
        // A route that was live is disarmed by this; one that never was makes no call.
        do throws(IrqFdError) {
            try route.mask()
            s.vectors[v].live = false
        } catch {
            note(error, &s)
        }
        s.vectors[v].programmed = nil
        return error
    }

    private func goDead(_ v: Int, _ s: inout State) -> IrqFdError? {
        if let route = s.vectors[v].route {
            if !s.vectors[v].accepted {
                // Signals from another process latched while the message was
                // refused; they had nowhere to go and do not become pending.
                _ = route.consumePending()
            }
            do throws(IrqFdError) {
                try route.mask()
            } catch {
                // Still live as far as the route knows: the next write retries.
                return error
            }
        }
        s.vectors[v].live = false
        return nil
    }

    /// Delivers vector `v`'s interrupt through the userspace path (lock held,
    /// so a racing mask cannot overtake it) and clears its pending bit.
    private func deliverInUserspace(_ v: Int, _ s: inout State) {
        s.vectors[v].pending = false
        let message = s.vectors[v].message
        guard message.isDeliverable else {
            s.counters.undeliverable += 1
            return
        }
        guard let injector else {
            // irqfd delivery whose route could not be made, with no fallback.
            s.counters.deliveryErrors += 1
            return
        }
        do throws(IrqFdError) {
            try injector.inject(message)
        } catch {
            s.counters.deliveryErrors += 1
            s.lastRouteError = error
        }
    }

    /// Moves signals latched in a non-live vector's route into its pending bit.
    private func foldLatched(_ v: Int, _ s: inout State) {
        guard !s.vectors[v].live, let route = s.vectors[v].route else { return }
        if route.consumePending() { s.vectors[v].pending = true }
    }

    /// Reconciles every vector, in one routing batch: a control change that
    /// brings 2048 vectors live pushes the table once, not 2048 times.
    func reconcileAll(_ s: inout State) -> IrqFdError? {
        let coalescing = self.coalescing
        let changing = s.vectors.indices.filter { v in
            let vector = s.vectors[v]
            return s.wantsLive(v) != vector.live
                || (vector.live && vector.route != nil && vector.programmed != vector.message)
                || (!s.wantsLive(v) && s.wantsPreRoute(v, coalescing: coalescing))
        }
        guard !changing.isEmpty else { return nil }
        var firstError: IrqFdError?
        func each(_ s: inout State) {
            for v in changing {
                if let error = reconcile(v, &s) {
                    note(error, &s)
                    firstError = firstError ?? error
                }
            }
        }
        if let partition {
            do throws(IrqFdError) {
                try partition.withBatch { () throws(IrqFdError) in each(&s) }
            } catch {
                // The batch's push, or arming a route after it, failed, and which
                // route it hit is not known: the push's entries were rolled back, or
                // one route was left unarmed. Each vector that is live now asks its
                // route for its message again, outside the batch: an intact route
                // makes no call, a rolled-back one pushes, an unarmed one arms. A
                // route that fails again leaves its vector not live, for the next
                // write to retry (found by fault injection: these vectors were
                // believed live while their signals went nowhere).
                note(error, &s)
                firstError = firstError ?? error
                // A vector routed early (`preRoute`) had its entry rolled back with the
                // push: forget what it was given, so going live gives it again (else
                // it would go live on a route with no entry, its signals latching).
                for v in changing where !s.vectors[v].live && s.vectors[v].route != nil {
                    s.vectors[v].programmed = nil
                }
                for v in changing where s.vectors[v].live && s.vectors[v].accepted {
                    guard let route = s.vectors[v].route else { continue }
                    do throws(IrqFdError) { try route.setMsi(s.vectors[v].message) } catch {
                        note(leaveNotLive(v, route, error, &s), &s)
                    }
                }
            }
        } else {
            each(&s)
        }
        return firstError
    }

    func note(_ error: IrqFdError, _ s: inout State) {
        s.counters.routeErrors += 1
        s.lastRouteError = error
    }

    // MARK: - Save, restore, reset

    /// The function's state, with signals latched in the routes of vectors
    /// that are not live drained into the saved pending bits (they are kept
    /// in this emulator's PBA too, as a PBA read would).
    public func save() -> MsixSavedState {
        state.withLock { s in
            for v in s.vectors.indices { foldLatched(v, &s) }
            return MsixSavedState(
                enabled: s.enabled, functionMasked: s.functionMasked, entries: s.vectors.map(\.entry),
                pendingBits: pendingWords(s))
        }
    }

    private func pendingWords(_ s: State) -> [UInt64] {
        var words = [UInt64](repeating: 0, count: layout.pbaSize / 8)
        for (v, vector) in s.vectors.enumerated() where vector.pending { words[v / 64] |= 1 << UInt64(v % 64) }
        return words
    }

    /// Replaces the function's state with `saved` and reprograms the routes
    /// (in one batch): live vectors get their routes, and a live vector whose
    /// pending bit is set delivers it, once, whether or not it was live
    /// before. Signals latched under the old state are discarded. Bus Master
    /// Enable is not MSI-X state: the PCI function restores its command
    /// register and calls `setBusMaster` first. Throws after applying what it
    /// could if a route failed.
    public func restore(_ saved: MsixSavedState) throws(MsixError) {
        try check(saved)
        let error = state.withLock { s -> IrqFdError? in
            for v in s.vectors.indices where !s.vectors[v].live {
                if let route = s.vectors[v].route { _ = route.consumePending() }
            }
            return apply(saved, &s)
        }
        if let error { throw .routing(error) }
    }

    /// Throws unless `saved` is the state of a function with this emulator's layout.
    func check(_ saved: MsixSavedState) throws(MsixError) {
        guard saved.entries.count == layout.vectorCount else {
            throw .vectorCountMismatch(saved: saved.entries.count, emulator: layout.vectorCount)
        }
        guard saved.pendingBits.count == layout.pbaSize / 8 else {
            throw .malformedState("\(saved.pendingBits.count) PBA words for \(layout.vectorCount) vectors")
        }
    }

    /// Writes `saved` (checked) over the table, the control bits and the PBA,
    /// reconciles every vector's route, and delivers the saved pending bit of
    /// each vector live afterwards; returns the first route error.
    func apply(_ saved: MsixSavedState, _ s: inout State) -> IrqFdError? {
        for v in s.vectors.indices {
            let entry = saved.entries[v]
            s.vectors[v].addressLow = entry.addressLow & ~3
            s.vectors[v].addressHigh = entry.addressHigh
            s.vectors[v].data = entry.data
            s.vectors[v].masked = entry.isMasked
            s.vectors[v].pending = saved.isPending(v)
        }
        s.enabled = saved.enabled
        s.functionMasked = saved.functionMasked
        let error = reconcileAll(&s)
        // A vector live before and after the restore made no transition, so
        // its saved pending bit was never delivered (it would stay stuck,
        // shown in the PBA of an unmasked vector). Deliver it now, once.
        for v in s.vectors.indices where s.vectors[v].live && s.vectors[v].pending {
            releasePending(v, &s)
        }
        return error
    }

    /// The reset state: every vector masked with a zero entry, MSI-X disabled
    /// and no pending bits. Bus Master Enable is the PCI function's and is
    /// left as it is (the function resets its command register and says so).
    ///
    /// Routes are kept, each with its event: an event handed out by
    /// `event(for:)` may be held by another process (a vhost-user backend's
    /// call fd), so it must stay the vector's event across a reset; the next
    /// `event(for:)` returns the same one. Each route is masked (if its vector
    /// was live), drained (a signal latched before the reset is not an
    /// interrupt of the reset function) and cleared (`clearMsi`: no stale
    /// message stays in the routing table), all in one batch, so one table
    /// push. A signal that arrives after the reset latches and shows as the
    /// vector's pending bit, as a device raising a masked vector would.
    ///
    /// A route whose `mask` fails is released instead (that disarms it: its
    /// event closes) and the error is reported: a route the emulator cannot
    /// mask must not deliver into a reset function. A failed `clearMsi` keeps
    /// the route masked with its old message, recorded, so nothing is stale.
    public func reset() {
        state.withLock { s in
            s.enabled = false
            s.functionMasked = false
            let routed = s.vectors.indices.filter { s.vectors[$0].route != nil }
            for v in s.vectors.indices where s.vectors[v].route == nil { s.vectors[v] = Vector() }
            guard !routed.isEmpty else { return }
            var dropped: [any IrqFdRoute] = []
            func each(_ s: inout State) {
                for v in routed {
                    guard let route = s.vectors[v].route else { continue }
                    let old = s.vectors[v]
                    s.vectors[v] = Vector()
                    if old.live {
                        do throws(IrqFdError) { try route.mask() } catch {
                            note(error, &s)
                            dropped.append(route)
                            continue
                        }
                    }
                    _ = route.consumePending()
                    s.vectors[v].route = route
                    do throws(IrqFdError) {
                        try route.clearMsi()
                    } catch {
                        note(error, &s)
                        s.vectors[v].programmed = old.programmed
                        s.vectors[v].accepted = old.accepted
                    }
                }
            }
            guard let partition else {
                each(&s)
                return
            }
            // Clearing removes entries and releasing a route removes its entry;
            // inside a batch that is one push.
            do throws(IrqFdError) {
                try partition.withBatch { () throws(IrqFdError) in
                    each(&s)
                    dropped.removeAll()
                }
            } catch {
                note(error, &s)
            }
        }
    }

    // MARK: - For the VMM and tests

    /// Message Control bit 15.
    public var isEnabled: Bool { state.withLock { $0.enabled } }
    /// Message Control bit 14.
    public var isFunctionMasked: Bool { state.withLock { $0.functionMasked } }
    /// Message Control as the guest reads it.
    public var messageControl: UInt16 { state.withLock { messageControl($0) } }
    /// Vector `v`'s table entry (a masked zero entry for a vector the table
    /// does not have: these host calls never trap either).
    public func entry(_ v: Int) -> MsixSavedState.Entry {
        state.withLock { s in s.vectors.indices.contains(v) ? s.vectors[v].entry : MsixSavedState.Entry() }
    }
    /// Whether vector `v` is live (bus mastering on, MSI-X enabled, function
    /// and entry unmasked, and its route told so); false outside the table.
    public func isLive(_ v: Int) -> Bool {
        state.withLock { s in s.vectors.indices.contains(v) && s.vectors[v].live }
    }
    /// Vector `v`'s pending bit, folding latched signals first as a PBA read
    /// does; false outside the table.
    public func isPending(_ v: Int) -> Bool {
        state.withLock { s in
            guard s.vectors.indices.contains(v) else { return false }
            foldLatched(v, &s)
            return s.vectors[v].pending
        }
    }
    /// Vector `v`'s route, if it has one yet (nil outside the table).
    public func route(_ v: Int) -> (any IrqFdRoute)? {
        state.withLock { s in s.vectors.indices.contains(v) ? s.vectors[v].route : nil }
    }
    /// How many vectors have routes.
    public var routeCount: Int { state.withLock { $0.vectors.lazy.filter { $0.route != nil }.count } }
    /// What was ignored or failed so far.
    public var counters: MsixCounters { state.withLock { $0.counters } }
    /// The last route or delivery error, if any.
    public var lastRouteError: IrqFdError? { state.withLock { $0.lastRouteError } }
}
