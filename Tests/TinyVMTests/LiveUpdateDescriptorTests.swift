#if os(Linux)
import Foundation
import IrqFdLinux
import Synchronization
import SystemPackage
import TestSupport
import Testing
import TinyVM

/// A successor whose hand-off fails keeps nothing: every descriptor it was
/// sent (the RAM memfd, route events, device descriptors) and every one it
/// made (its VM, its socket) is closed. It counts the whole process's
/// descriptors, so it runs in a process of its own.
@Suite(needsKVM, .serialized) struct LiveUpdateDescriptorTests {
    static let filter = "TinyVMTests.LiveUpdateDescriptorTests"

    @Test(notInOwnProcess) func aSuccessorThatFailsKeepsNoDescriptorInItsOwnProcess() throws {
        try runInOwnProcess(Self.filter)
    }

    /// Where the test's old VMM breaks off.
    enum Failure: CaseIterable {
        case unknownVersion, closesAfterThePreparedVM, garbageState, unknownDeviceAfterItsDescriptors
        /// Version 2: the successor made the offered route (masked, pushed) before the old VMM closes.
        case closesAfterOfferingARoute
    }

    static func openDescriptors() -> Int {
        (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").count) ?? -1
    }

    /// What the successor's thread ended with.
    final class Outcome: Sendable {
        let text = Mutex<String?>(nil)
    }

    /// Runs `LiveUpdateIncoming.takeOver` against an old VMM that breaks off at `failure`.
    static func failedTakeOver(_ failure: Failure, machine: MachineState) throws -> String {
        let path = "/tmp/irqfd-lu-own-\(getpid()).sock"
        let listener = try UnixSocket.listen(at: path)
        let ram = try GuestMemory(size: 16 << 20)
        let outcome = Outcome()
        let thread = Thread {
            let text: String
            do {
                _ = try LiveUpdateIncoming.takeOver(
                    from: path, kinds: [MsixTestDevice.liveUpdateKind], deadline: .seconds(5))
                text = "took over"
            } catch { text = "\(error)" }
            outcome.text.withLock { $0 = text }
        }
        thread.start()
        func converse() throws {
            let channel = LiveUpdateChannel(try listener.accept())
            let deadline = ContinuousClock.now + .seconds(20)
            _ = try channel.receive(.hello, step: "test", deadline: deadline)
            var offer: [UInt8] = []
            let version: UInt32 =
                switch failure {
                case .unknownVersion: 99
                case .closesAfterOfferingARoute: 2
                default: 1
                }
            withUnsafeBytes(of: version.littleEndian) { offer += $0 }
            withUnsafeBytes(of: UInt32(1).littleEndian) { offer += $0 }
            withUnsafeBytes(of: UInt64(16 << 20).littleEndian) { offer += $0 }
            offer.append(1)
            let routeEvent = try EventFD()
            if version == 2 {
                // One route: has an MSI, address, data, not masked.
                withUnsafeBytes(of: UInt32(1).littleEndian) { offer += $0 }
                offer.append(1)
                withUnsafeBytes(of: UInt64(0xFEE0_0000).littleEndian) { offer += $0 }
                withUnsafeBytes(of: UInt32(0x45).littleEndian) { offer += $0 }
                offer.append(0)
            }
            try channel.send(.offer, offer, descriptors: [ram.fileDescriptor], step: "test", deadline: deadline)
            if failure == .unknownVersion { return }
            if version == 2 {
                try channel.sendDescriptors([routeEvent.fileDescriptor], step: "test", deadline: deadline)
            }
            _ = try channel.receive(.prepared, step: "test", deadline: deadline)
            switch failure {
            case .closesAfterThePreparedVM, .closesAfterOfferingARoute: return
            case .garbageState:
                try channel.send(.state, Array(repeating: 0x5A, count: 64), step: "test", deadline: deadline)
            default:
                let state = LiveUpdateState(
                    machine: machine, routes: [.init(msi: nil, masked: true)], devices: [("no-such-device", [1, 2])])
                var header: [UInt8] = []
                withUnsafeBytes(of: UInt64(0).littleEndian) { header += $0 }
                for word: UInt32 in [1, 1, 2] { withUnsafeBytes(of: word.littleEndian) { header += $0 } }
                try channel.send(.state, header + state.encoded(), step: "test", deadline: deadline)
                let events = try (0..<3).map { _ in try EventFD() }
                try channel.sendDescriptors(events.map(\.fileDescriptor), step: "test", deadline: deadline)
            }
            // The successor gives up and closes.
            _ = try? channel.receive(.ready, step: "test", deadline: deadline)
        }
        try converse()
        while outcome.text.withLock({ $0 }) == nil { usleep(1_000) }
        return outcome.text.withLock { $0 } ?? ""
    }

    @Test(inOwnProcess(Self.filter)) func aSuccessorThatFailsKeepsNoDescriptor() throws {
        let donor = try TinyVM(.init(cpus: 1))
        let machine = try donor.saveMachineState()
        // Once first: whatever is opened lazily for the process's life is opened now.
        _ = try Self.failedTakeOver(.garbageState, machine: machine)
        for failure in Failure.allCases {
            let before = Self.openDescriptors()
            let outcome = try Self.failedTakeOver(failure, machine: machine)
            #expect(outcome != "took over", "\(failure)")
            // A failure after the offered routes were made releases them through
            // the VM's coalesced commit path, which may finish just after the
            // successor returns: every descriptor must be gone, within 5 s.
            _ = eventually(.seconds(5)) { Self.openDescriptors() == before }
            #expect(Self.openDescriptors() == before, "\(failure): \(outcome)")
        }
    }
}
#endif
