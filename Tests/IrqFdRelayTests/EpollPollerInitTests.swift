#if os(Linux)
import Glibc
import IrqFdCore
import IrqFdLinux
@testable import IrqFdRelay
import Synchronization
import Testing

/// A failed EpollPoller init never runs `stop()` on the half-made poller (which would
/// close its epoll descriptor a second time): the epoll instance closes it once.
@Suite struct EpollPollerInitTests {
    @Test func aFailedWakeRegistrationClosesTheEpollDescriptorOnceAndNeverStopsTheHalfMadePoller() throws {
        // The registration step records the descriptors and fails; the wake
        // eventfd is duplicated so the test can see whether `stop()` (the
        // deinit's path, which closes the epoll descriptor a second time)
        // ran: it signals the wake eventfd before closing.
        let seen = Mutex<(epoll: Int32, wakeCopy: Int32)>((-1, -1))
        #expect(throws: IrqFdError.call("epoll_ctl(EPOLL_CTL_ADD)", .noSpace)) {
            _ = try EpollPoller { (epoll, wake) throws(IrqFdError) in
                seen.withLock { $0 = (epoll.fileDescriptor.rawValue, dup(wake.fileDescriptor.rawValue)) }
                throw .call("epoll_ctl(EPOLL_CTL_ADD)", .noSpace)
            }
        }
        let (epoll, wakeCopy) = seen.withLock { $0 }
        #expect(epoll >= 0 && wakeCopy >= 0)
        defer { close(wakeCopy) }
        var count: UInt64 = 0
        let fl = fcntl(wakeCopy, F_GETFL)
        _ = fcntl(wakeCopy, F_SETFL, fl | O_NONBLOCK)
        let got = read(wakeCopy, &count, 8)
        #expect(
            got == -1 && errno == EAGAIN,
            "stop() ran on the failed poller (signalled its wake, closed the epoll descriptor again): read \(got), count \(count)"
        )
    }
}
#endif
