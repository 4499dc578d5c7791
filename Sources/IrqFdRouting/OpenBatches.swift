/// The batches open on this thread (or task), one per partition.
///
/// A task-local: bound by `withBatch` around its body, so membership follows
/// the caller and never another thread. Outside any task Swift keeps it in
/// thread-local storage, which is what device threads use.
///
/// The first `Stack.inlineCapacity` keys live inline in a trivial value, so
/// reading them (once per `setMsi` in a batch) copies a few words and makes
/// no retain or release; keys beyond those (batches open on more partitions
/// at once) go to `overflow`, an array read only when the stack is that deep.
enum OpenBatches {
    /// A partition and the id of the batch this caller holds open on it.
    struct Key: Sendable {
        var partition: ObjectIdentifier
        var id: UInt32
    }

    /// The innermost keys, inline (trivial: copying it is a few words, no ARC).
    struct Stack: Sendable {
        static let inlineCapacity = 4
        /// Keys in all, inline and in `overflow`.
        var count = 0
        var k0: Key?, k1: Key?, k2: Key?, k3: Key?

        /// Inline key `i` (0..<inlineCapacity).
        subscript(i: Int) -> Key? {
            get {
                switch i {
                case 0: k0
                case 1: k1
                case 2: k2
                default: k3
                }
            }
            set {
                switch i {
                case 0: k0 = newValue
                case 1: k1 = newValue
                case 2: k2 = newValue
                default: k3 = newValue
                }
            }
        }
    }
    @TaskLocal static var stack = Stack()
    /// Keys past the inline ones, outermost first.
    @TaskLocal static var overflow: [Key] = []

    /// The caller's open batch on `partition` (0: none).
    static func current(_ partition: ObjectIdentifier) -> UInt32 {
        let stack = Self.stack
        if stack.count == 0 { return 0 }
        if stack.count > Stack.inlineCapacity, let key = Self.overflow.last(where: { $0.partition == partition }) {
            return key.id
        }
        var i = min(stack.count, Stack.inlineCapacity) - 1
        while i >= 0 {
            if let key = stack[i], key.partition == partition { return key.id }
            i -= 1
        }
        return 0
    }

    /// Runs `body` with `key` pushed on the caller's open batches.
    static func with(_ key: Key, _ body: () -> Void) {
        var stack = Self.stack
        if stack.count < Stack.inlineCapacity {
            stack[stack.count] = key
            stack.count += 1
            Self.$stack.withValue(stack, operation: body)
        } else {
            stack.count += 1
            Self.$stack.withValue(stack) {
                Self.$overflow.withValue(Self.overflow + [key], operation: body)
            }
        }
    }
}
