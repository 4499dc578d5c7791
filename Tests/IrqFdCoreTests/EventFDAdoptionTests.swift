#if os(Linux)
import Foundation
import Glibc
import IrqFdCore
import IrqFdLinux
import SystemPackage
import Testing

/// `EventFD.adopting(checking:)`: a descriptor from a peer that is not trusted
/// is taken only if it is an eventfd, and then made non-blocking.
@Suite struct EventFDAdoptionTests {
    /// Two connected stream sockets (socketpair(2)), close-on-exec.
    static func socketPair() throws -> (FileDescriptor, FileDescriptor) {
        var ends: [Int32] = [-1, -1]
        let type = Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
        _ = try retryingInterrupts("socketpair") { socketpair(AF_UNIX, type, 0, &ends) }
        return (FileDescriptor(rawValue: ends[0]), FileDescriptor(rawValue: ends[1]))
    }

    /// A blocking eventfd (a copy of one whose O_NONBLOCK was cleared) is
    /// adopted, made non-blocking, and names the same counter.
    @Test func anEventfdIsAdoptedAndMadeNonBlocking() throws {
        let original = try EventFD()
        let copy = try original.fileDescriptor.duplicateCloseOnExec()
        let flags = fcntl(copy.rawValue, F_GETFL)
        #expect(fcntl(copy.rawValue, F_SETFL, flags & ~O_NONBLOCK) == 0)
        let adopted = try EventFD.adopting(checking: copy)
        #expect(fcntl(adopted.fileDescriptor.rawValue, F_GETFL) & O_NONBLOCK != 0)
        // Non-blocking: an empty counter reads 0 at once instead of blocking.
        #expect(adopted.consume() == 0)
        adopted.signal()
        #expect(original.consume() == 1)
    }

    /// A socket is refused, saying what it is, and closed: its peer sees the end of the stream.
    @Test func aSocketIsRefusedAndClosed() throws {
        let (mine, peer) = try Self.socketPair()
        defer { try? peer.close() }
        #expect {
            _ = try EventFD.adopting(checking: mine)
        } throws: { error in
            guard case .notAnEventfd(let what)? = error as? EventFD.AdoptionFailure else { return false }
            return what.hasPrefix("socket:[")
        }
        #expect(try Readiness.readable.wait(on: peer, until: .now + .seconds(5)) != nil)
        var byte: UInt8 = 0
        #expect(recv(peer.rawValue, &byte, 1, Int32(MSG_DONTWAIT)) == 0, "end of stream: the adopted end was closed")
    }

    /// A pipe, a regular file and another anonymous inode (an epoll instance) are refused.
    @Test func aPipeAFileAndAnotherAnonymousInodeAreRefused() throws {
        var ends: [Int32] = [-1, -1]
        #expect(pipe(&ends) == 0)
        defer { close(ends[1]) }
        let file = try FileDescriptor.open("/proc/self/status", .readOnly, options: .closeOnExec)
        let epoll = try Epoll()
        let epollCopy = try epoll.fileDescriptor.duplicateCloseOnExec()
        let cases: [(FileDescriptor, String)] = [
            (FileDescriptor(rawValue: ends[0]), "pipe:["), (file, "/proc/"), (epollCopy, "anon_inode:[eventpoll]"),
        ]
        for (descriptor, what) in cases {
            #expect {
                _ = try EventFD.adopting(checking: descriptor)
            } throws: { error in
                guard case .notAnEventfd(let link)? = error as? EventFD.AdoptionFailure else { return false }
                return link.hasPrefix(what)
            }
        }
    }
}

/// `Readiness.wait(on:timeout:)`: one poll(2) over several descriptors.
@Suite struct ReadinessOverSeveralTests {
    /// Each entry gets its own report, in order; the ones not ready report nothing.
    @Test func eachEntryIsReportedInOrder() throws {
        let quiet = try EventFD()
        let signalled = try EventFD()
        signalled.signal()
        let ready = try Readiness.wait(
            on: [(quiet.fileDescriptor, .readable), (signalled.fileDescriptor, .readable)], timeout: .seconds(5))
        #expect(ready == [[], .readable])
    }

    /// Nothing ready: every report is empty once the time passes, and a zero timeout only looks.
    @Test func nothingReadyReportsEmptyAfterTheTimeout() throws {
        let quiet = try EventFD()
        let start = ContinuousClock.now
        #expect(try Readiness.wait(on: [(quiet.fileDescriptor, .readable)], timeout: .milliseconds(30)) == [[]])
        #expect(ContinuousClock.now - start >= .milliseconds(25))
        #expect(try Readiness.wait(on: [(quiet.fileDescriptor, .readable)], timeout: .zero) == [[]])
    }

    /// A stream whose peer closed reports a hang-up, asked for or not.
    @Test func aClosedPeerIsReportedAsAHangUp() throws {
        let (mine, peer) = try EventFDAdoptionTests.socketPair()
        defer { try? mine.close() }
        try peer.close()
        let ready = try Readiness.wait(on: [(mine, .readable)], timeout: .seconds(5))
        #expect(ready.count == 1 && ready[0].contains(.hangUp))
    }
}
#endif
