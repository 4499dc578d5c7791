#if os(Linux)
import IrqFdCore
import IrqFdKVM
import KVM
import TestSupport
import Testing

/// The README's "library in a dozen lines", compiled and run as written
/// (with a stand-in for the device that receives the eventfd).
@Suite(needsKVM) struct ReadmeExampleTests {
    final class Device { var interruptEventFD: Int = -1 }

    @Test func theReadmeExampleWorks() throws {
        let device = Device()
        let vm = try KVMSystem().createVM()
        try vm.createIrqchip()
        let irqfd = try KVMIrqFd(vm: vm)

        let route = try irqfd.newRoute()
        try route.setMsi(MsiMessage(destination: 1, vector: 0x41))
        device.interruptEventFD = route.event.nativeHandle.rawValue

        try route.mask()
        route.event.signal()
        let pending = route.consumePending()
        try route.unmask()

        let routes = try (0..<4).map { _ in try irqfd.newRoute() }
        let table = (0..<4).map { MsiMessage(destination: 0, vector: UInt8(0x50 + $0)) }
        try irqfd.withBatch { () throws(IrqFdError) in
            for (route, msi) in zip(routes, table) { try route.setMsi(msi) }
        }
        #expect(pending && device.interruptEventFD >= 0)
        #expect(irqfd.pushedEntries.count == 5)
    }
}
#endif
