/// One CPUID leaf as KVM stores it (`struct kvm_cpuid_entry2`, 40 bytes).
public struct CPUIDEntry: Hashable, Sendable {
    /// EAX input.
    public var function: UInt32
    /// ECX input, for leaves with sub-leaves.
    public var index: UInt32
    /// KVM_CPUID_FLAG_* bits.
    public var flags: UInt32
    /// Output registers.
    public var eax: UInt32, ebx: UInt32, ecx: UInt32, edx: UInt32

    /// Makes an entry.
    public init(
        function: UInt32, index: UInt32 = 0, flags: UInt32 = 0, eax: UInt32, ebx: UInt32, ecx: UInt32, edx: UInt32
    ) {
        self.function = function
        self.index = index
        self.flags = flags
        self.eax = eax
        self.ebx = ebx
        self.ecx = ecx
        self.edx = edx
    }
}

/// `struct kvm_cpuid2` built by hand: its flexible array does not import.
/// Layout: u32 nent, u32 padding, then nent 40-byte entries.
struct CPUIDBuffer {
    static let headerSize = 8
    static let entrySize = 40
    var bytes: [UInt8]

    init(capacity: Int) {
        bytes = [UInt8](repeating: 0, count: Self.headerSize + capacity * Self.entrySize)
        bytes.withUnsafeMutableBytes { $0.storeBytes(of: UInt32(capacity), as: UInt32.self) }
    }

    init(entries: [CPUIDEntry]) {
        self.init(capacity: entries.count)
        bytes.withUnsafeMutableBytes { raw in
            for (i, e) in entries.enumerated() {
                let base = Self.headerSize + i * Self.entrySize
                for (k, word) in [e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx].enumerated() {
                    raw.storeBytes(of: word, toByteOffset: base + 4 * k, as: UInt32.self)
                }
            }
        }
    }

    var entries: [CPUIDEntry] {
        bytes.withUnsafeBytes { raw in
            let count = Int(raw.load(as: UInt32.self))
            return (0..<count).map { i in
                let base = Self.headerSize + i * Self.entrySize
                func word(_ k: Int) -> UInt32 { raw.loadUnaligned(fromByteOffset: base + 4 * k, as: UInt32.self) }
                return CPUIDEntry(
                    function: word(0), index: word(1), flags: word(2), eax: word(3), ebx: word(4), ecx: word(5),
                    edx: word(6))
            }
        }
    }

    mutating func withUnsafeMutableBytes<R>(_ body: (UnsafeMutableRawPointer) -> R) -> R {
        bytes.withUnsafeMutableBytes { body($0.baseAddress!) }
    }
}
