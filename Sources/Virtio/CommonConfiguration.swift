#if os(Linux)
import VhostUser

/// The common configuration structure (virtio 1.2 section 4.1.4.3) at BAR4 +
/// 0: feature words, msix_config, device_status, and the selected queue's
/// fields. Bad accesses and writes to read-only fields are counted, never fatal.
extension VirtioPCIDevice {
    func readCommon(_ offset: UInt64, _ size: Int, _ s: inout DeviceState) -> UInt64 {
        let q = Int(s.queueSelect)
        let queue: Queue? = s.queues.indices.contains(q) ? s.queues[q] : nil
        func half(_ value: UInt64, _ base: UInt64) -> UInt64? {
            switch (offset - base, size) {
            case (0, 8): value
            case (0, 4): value & 0xFFFF_FFFF
            case (4, 4): value >> 32
            default: nil
            }
        }
        let value: UInt64?
        switch offset {
        case 0x00 where size == 4: value = UInt64(s.deviceFeatureSelect)
        case 0x04 where size == 4:
            let shift = 32 * UInt64(s.deviceFeatureSelect)
            value = s.deviceFeatureSelect < 2 ? (offeredFeatures >> shift) & 0xFFFF_FFFF : 0
        case 0x08 where size == 4: value = UInt64(s.driverFeatureSelect)
        case 0x0C where size == 4:
            let shift = 32 * UInt64(s.driverFeatureSelect)
            value = s.driverFeatureSelect < 2 ? (s.driverFeatures >> shift) & 0xFFFF_FFFF : 0
        case 0x10 where size == 2: value = UInt64(s.configVector)
        case 0x12 where size == 2: value = UInt64(queueCount)
        case 0x14 where size == 1: value = UInt64(s.status)
        case 0x15 where size == 1: value = UInt64(s.configGeneration)
        case 0x16 where size == 2: value = UInt64(s.queueSelect)
        case 0x18 where size == 2: value = UInt64(queue?.size ?? 0)  // 0: no such queue
        case 0x1A where size == 2: value = UInt64(queue?.vector ?? Self.noVector)
        case 0x1C where size == 2: value = queue?.enabled == true ? 1 : 0
        case 0x1E where size == 2: value = queue == nil ? 0 : UInt64(q)
        case 0x20..<0x28: value = half(queue?.descriptor ?? 0, 0x20)
        case 0x28..<0x30: value = half(queue?.driver ?? 0, 0x28)
        case 0x30..<0x38: value = half(queue?.device ?? 0, 0x30)
        default: value = nil
        }
        guard let value else {
            s.counters.badAccesses += 1
            return 0
        }
        return value
    }

    func writeCommon(_ offset: UInt64, _ size: Int, _ value: UInt64, _ s: inout DeviceState) {
        let q = Int(s.queueSelect)
        let exists = s.queues.indices.contains(q)
        // Queue fields are writable until DRIVER_OK (section 4.1.4.3.2: the
        // driver configures a queue before enabling it, and enables before DRIVER_OK).
        let queueWritable = exists && s.status & Status.driverOK == 0
        func setHalf(_ field: inout UInt64, _ base: UInt64) -> Bool {
            switch (offset - base, size) {
            case (0, 8): field = value
            case (0, 4): field = field & ~0xFFFF_FFFF | value & 0xFFFF_FFFF
            case (4, 4): field = field & 0xFFFF_FFFF | (value & 0xFFFF_FFFF) << 32
            default: return false
            }
            return true
        }
        switch offset {
        case 0x00 where size == 4: s.deviceFeatureSelect = UInt32(truncatingIfNeeded: value)
        case 0x08 where size == 4: s.driverFeatureSelect = UInt32(truncatingIfNeeded: value)
        case 0x0C where size == 4:
            guard s.status & (Status.featuresOK | Status.driverOK) == 0, s.driverFeatureSelect < 2 else {
                s.counters.readOnlyWrites += 1
                return
            }
            let shift = 32 * UInt64(s.driverFeatureSelect)
            s.driverFeatures = s.driverFeatures & ~(0xFFFF_FFFF << shift) | (value & 0xFFFF_FFFF) << shift
        case 0x10 where size == 2:
            let v = UInt16(truncatingIfNeeded: value)
            if v != Self.noVector, Int(v) >= emulator.layout.vectorCount {
                s.counters.badVectors += 1
                s.configVector = Self.noVector  // reads back NO_VECTOR: not mapped (section 4.1.5.1.2.1)
            } else {
                s.configVector = v
            }
        case 0x14 where size == 1: writeStatus(UInt8(truncatingIfNeeded: value), &s)
        case 0x16 where size == 2: s.queueSelect = UInt16(truncatingIfNeeded: value)
        case 0x18 where size == 2:
            guard queueWritable, !s.queues[q].enabled else {
                s.counters.readOnlyWrites += 1
                return
            }
            let n = UInt16(truncatingIfNeeded: value)
            guard n != 0, n <= Self.maxQueueSize, n & (n - 1) == 0 else {
                s.counters.badQueueSizes += 1  // ignored: the size keeps its value
                return
            }
            s.queues[q].size = n
        case 0x1A where size == 2:
            guard exists else {
                s.counters.readOnlyWrites += 1
                return
            }
            let v = UInt16(truncatingIfNeeded: value)
            var chosen = v
            if v != Self.noVector, Int(v) >= emulator.layout.vectorCount {
                s.counters.badVectors += 1
                chosen = Self.noVector
            }
            guard chosen != s.queues[q].vector else { return }
            // The route is made now, so that the vector's event exists by DRIVER_OK.
            guard callFD(queue: q, vector: chosen) != nil else {
                s.queues[q].vector = Self.noVector
                return
            }
            s.queues[q].vector = chosen
            // Before DRIVER_OK the backend has no call fd (it gets one when the
            // queue starts); a running queue gets the new one from the worker.
            if s.queues[q].notifiable, delivery != .userspace, !deviceType.isServedByVMM(queue: q) {
                enqueue(.setCall(queue: q), &s)
            }
        case 0x1C where size == 2:
            guard queueWritable else {
                s.counters.readOnlyWrites += 1
                return
            }
            // Only 1 may be written (section 4.1.4.3.2); disabling is a reset.
            guard value & 0xFFFF == 1 else {
                s.counters.readOnlyWrites += 1
                return
            }
            s.queues[q].enabled = true
        case 0x20..<0x38:
            guard queueWritable, !s.queues[q].enabled else {
                s.counters.readOnlyWrites += 1
                return
            }
            let ok: Bool
            switch offset {
            case 0x20..<0x28: ok = setHalf(&s.queues[q].descriptor, 0x20)
            case 0x28..<0x30: ok = setHalf(&s.queues[q].driver, 0x28)
            default: ok = setHalf(&s.queues[q].device, 0x30)
            }
            if !ok { s.counters.badAccesses += 1 }
        case 0x04, 0x12, 0x15, 0x1E: s.counters.readOnlyWrites += 1
        default: s.counters.badAccesses += 1
        }
    }
}
#endif
