#if os(Linux)
import Glibc
import IrqFdCore
import IrqFdLinux
import SystemPackage
import Testing

@Suite struct MemfdSealTests {
    /// The default seals fix the size and leave the contents writable.
    @Test func fixedSizeSealsRefuseResizingAndLeaveTheContentsWritable() throws {
        let memory = try MemfdMemory(size: 1 << 16)
        #expect(try memory.seals() == MemfdSeals.fixedSize)
        #expect(ftruncate(memory.fileDescriptor.rawValue, 0) == -1 && errno == EPERM)
        #expect(ftruncate(memory.fileDescriptor.rawValue, 1 << 17) == -1 && errno == EPERM)
        memory.write32(0xA5A5_5A5A, at: 0xFFFC)
        #expect(memory.read32(at: 0xFFFC) == 0xA5A5_5A5A, "the seals leave the contents writable")
    }

    /// Without seals a holder of the descriptor can shrink the file: what the
    /// seals above prevent.
    @Test func anUnsealedMemfdCanBeTruncated() throws {
        let memory = try MemfdMemory(size: 1 << 16, seals: [])
        #expect(try memory.seals().isEmpty)
        #expect(ftruncate(memory.fileDescriptor.rawValue, 0) == 0)
    }

    /// A second mapping of the same memfd (as a backend maps the descriptor it
    /// received) sees the first one's stores, and reads the same seals.
    @Test func aSecondMappingOfTheDescriptorSharesThePagesAndTheSeals() throws {
        let memory = try MemfdMemory(size: 1 << 16)
        let copy = try FileDescriptor(rawValue: memory.fileDescriptor.rawValue).duplicate()
        let peer = try MemfdMemory(mapping: copy, size: 1 << 16)
        #expect(peer.base != memory.base)
        memory.write64(0x0123_4567_89AB_CDEF, at: 0x100)
        #expect(peer.read64(at: 0x100) == 0x0123_4567_89AB_CDEF)
        peer.load([1, 2, 3], at: 0xFFFD)
        #expect(memory.bytes(at: 0xFFFD, count: 3) == [1, 2, 3])
        #expect(try peer.seals() == .fixedSize)
    }

    /// F_GET_SEALS on a file that is not a memfd names the call and EINVAL.
    @Test func sealsOfAnEventfdThrowEINVAL() throws {
        let event = try EventFD()
        #expect(throws: SystemCallError(call: "fcntl(F_GET_SEALS)", errno: .invalidArgument)) {
            _ = try MemfdSeals.of(event.fileDescriptor)
        }
    }
}
#endif
