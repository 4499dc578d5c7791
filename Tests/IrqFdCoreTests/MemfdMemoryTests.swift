#if os(Linux)
import Glibc
import IrqFdCore
import IrqFdLinux
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

    /// F_GET_SEALS on a file that is not a memfd names the call and EINVAL.
    @Test func sealsOfAnEventfdThrowEINVAL() throws {
        let event = try EventFD()
        #expect(throws: SystemCallError(call: "fcntl(F_GET_SEALS)", errno: .invalidArgument)) {
            _ = try MemfdSeals.of(event.fileDescriptor)
        }
    }
}
#endif
