#if os(Linux)
import Foundation
import IrqFdCore
import IrqFdLinux
import Testing

@Suite struct EventFDTests {
    @Test func signalsLatchUntilConsumedOnce() throws {
        let e = try EventFD()
        #expect(!e.tryWait())
        e.signal()
        e.signal()
        e.signal()
        #expect(e.consume() == 3)
        #expect(!e.tryWait())
        e.signal()
        #expect(e.tryWait())
        #expect(!e.tryWait())
    }

    @Test func isNonBlockingAndCloseOnExec() throws {
        let e = try EventFD()
        let fd = e.fileDescriptor.rawValue
        #expect(fcntl(fd, F_GETFL) & O_NONBLOCK != 0)
        #expect(fcntl(fd, F_GETFD) & FD_CLOEXEC != 0)
    }

    @Test func waitTimesOutThenSeesASignalFromAnotherThread() throws {
        let e = try EventFD()
        let start = ContinuousClock.now
        #expect(!e.wait(timeout: .milliseconds(30)))
        #expect(ContinuousClock.now - start >= .milliseconds(25))
        let t = Thread {
            usleep(20_000)
            e.signal()
        }
        t.start()
        #expect(e.wait(timeout: .seconds(5)))
    }

    @Test func releasingTheEventClosesItsDescriptor() throws {
        var e: EventFD? = try EventFD()
        let fd = e!.fileDescriptor.rawValue
        #expect(fcntl(fd, F_GETFD) >= 0)
        e = nil
        #expect(fcntl(fd, F_GETFD) == -1 && errno == EBADF)
    }
}
#endif
