#if os(Linux)
import Glibc
import IrqFdLinux
import TestSupport
import Testing

/// The identity every "closed after release" check relies on. A false
/// "still open" made CI fail: an eventfd closed by its owner and one opened
/// by a parallel suite just after took the same number and eventfd-id.
@Suite struct OwnedDescriptorTests {
    /// Closes an eventfd, then puts new eventfds on its number (dup2(2)),
    /// holding each, 64 times. Without the pin, one of them soon gets the
    /// freed eventfd-id (the kernel hands out the lowest free one) and looks
    /// like the closed descriptor.
    @Test func anEventFDOnTheNumberOfAClosedOneIsNotTakenForIt() throws {
        var owner: EventFD? = try EventFD()
        let fd = owner!.fileDescriptor.rawValue
        let record = OwnedDescriptor(fd)
        #expect(record.isOpen)
        owner = nil
        #expect(!record.isOpen, "closed, the number free")
        var held: [EventFD] = []
        defer { close(fd) }  // the last duplicate put on the number
        for attempt in 0..<64 {
            let next = try EventFD()
            held.append(next)
            try #require(dup2(next.fileDescriptor.rawValue, fd) == fd)
            #expect(
                !record.isOpen,
                "attempt \(attempt): another eventfd on number \(fd) (\(OwnedDescriptor.identity(of: fd) ?? "?")) taken for the closed one"
            )
        }
    }

    /// A socket is not pinned: its peer sees the close at once (a pin would
    /// keep the connection open). A new socket on its number is another file.
    @Test func aSocketIsNotKeptOpenAndANewOneOnItsNumberIsAnother() throws {
        var pair: [Int32] = [-1, -1]
        try #require(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0)
        defer { close(pair[1]) }
        let record = OwnedDescriptor(pair[0])
        #expect(record.isOpen)
        close(pair[0])
        var byte: UInt8 = 0
        #expect(read(pair[1], &byte, 1) == 0, "the peer reads end of file")
        #expect(!record.isOpen)
        let other = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        try #require(other >= 0)
        defer { close(other) }
        try #require(dup2(other, pair[0]) == pair[0])
        defer { close(pair[0]) }
        #expect(!record.isOpen, "a new socket on number \(pair[0])")
    }

    /// Anything else is pinned while the record lives and released with it:
    /// a pipe's read end sees no hang-up after its write end is closed until
    /// the record of the write end goes.
    @Test func thePinLivesAsLongAsTheRecord() throws {
        var ends: [Int32] = [-1, -1]
        try #require(pipe(&ends) == 0)
        defer { close(ends[0]) }
        var record: OwnedDescriptor? = OwnedDescriptor(ends[1])
        close(ends[1])
        #expect(record?.isOpen == false)
        var reader = pollfd(fd: ends[0], events: Int16(POLLIN), revents: 0)
        #expect(poll(&reader, 1, 0) == 0, "the pin holds the write end")
        record = nil
        #expect(poll(&reader, 1, 1000) == 1 && reader.revents & Int16(POLLHUP) != 0, "the pin went with the record")
    }

    /// A number that was not open is recorded as closed and never open.
    @Test func aNumberThatWasNotOpenIsNeverOpen() {
        let record = OwnedDescriptor(Int32.max)
        #expect(record.identity == "closed")
        #expect(!record.isOpen)
    }
}
#endif
