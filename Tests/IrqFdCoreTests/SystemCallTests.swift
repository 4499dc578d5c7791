#if os(Linux)
import CLinuxKVM
import Foundation
import IrqFdCore
import IrqFdLinux
import Synchronization
import SystemPackage
import Testing

@Suite struct SystemCallTests {
    /// A failure is an error naming the call and its errno.
    @Test func aFailureNamesTheCallAndItsErrno() {
        #expect(throws: SystemCallError(call: "close(-1)", errno: .badFileDescriptor)) {
            _ = try retryingInterrupts("close(-1)") { close(-1) }
        }
    }

    /// A close-on-exec copy names the same eventfd and outlives the original.
    @Test func aCloseOnExecDuplicateNamesTheSameFile() throws {
        var event: EventFD? = try EventFD()
        let copy = try event!.fileDescriptor.duplicateCloseOnExec()
        defer { try? copy.close() }
        #expect(copy != event!.fileDescriptor)
        #expect(fcntl(copy.rawValue, F_GETFD) & FD_CLOEXEC != 0)
        event!.signal()
        event = nil
        #expect(EventFD(adopting: try copy.duplicateCloseOnExec()).consume() == 1)
    }

    /// EAGAIN on a non-blocking descriptor is "not now", not an error.
    @Test func wouldBlockIsNilNotAnError() throws {
        let event = try EventFD()
        var value: UInt64 = 0
        let got = try retryingInterruptsUnlessWouldBlock("read(eventfd)") {
            read(event.fileDescriptor.rawValue, &value, 8)
        }
        #expect(got == nil)
    }

    /// A signal that interrupts a wait (a handler installed without
    /// SA_RESTART, as the vCPU kick is) does not end it: poll(2) is called
    /// again, and the wait returns when the descriptor becomes ready.
    @Test func aSignalDuringAWaitIsRetriedNotThrown() throws {
        _ = irqfd_install_kick_handler(SIGUSR1)
        var ends: [Int32] = [0, 0]
        #expect(pipe(&ends) == 0)
        let reader = FileDescriptor(rawValue: ends[0])
        let writer = FileDescriptor(rawValue: ends[1])
        defer {
            try? reader.close()
            try? writer.close()
        }
        let waiter = Mutex<pthread_t?>(nil)
        let outcome = Mutex<Result<Readiness?, SystemCallError>?>(nil)
        let thread = Thread {
            _ = irqfd_unblock_signal(SIGUSR1)
            waiter.withLock { $0 = pthread_self() }
            let result: Result<Readiness?, SystemCallError>
            do throws(SystemCallError) {
                result = .success(try Readiness.readable.wait(on: reader, until: .now + .seconds(10)))
            } catch {
                result = .failure(error)
            }
            outcome.withLock { $0 = result }
        }
        thread.start()
        var id: pthread_t?
        while id == nil {
            usleep(1000)
            id = waiter.withLock { $0 }
        }
        for _ in 0..<5 {
            usleep(20_000)
            #expect(pthread_kill(id!, SIGUSR1) == 0)
        }
        #expect(outcome.withLock { $0 } == nil, "still waiting after five signals")
        #expect(try writer.writeAll([1]) == 1)
        let deadline = ContinuousClock.now + .seconds(10)
        while outcome.withLock({ $0 }) == nil, ContinuousClock.now < deadline { usleep(1000) }
        let result = try #require(outcome.withLock { $0 })
        #expect(try result.get()?.contains(.readable) == true)
    }
}
#endif
