#if os(Linux)
import CLinuxKVM
import Foundation
public import IrqFdCore
public import IrqFdKVM
public import IrqFdLinux
public import KVM
public import PCI
import Synchronization

/// Why a TinyVM could not be built or started.
public enum TinyVMError: Error, CustomStringConvertible, Equatable {
    /// A KVM call failed.
    case kvm(SystemCallError)
    /// The irqfd partition could not be made.
    case irqfd(IrqFdError)
    /// The guest image cannot be loaded, and why.
    case image(String)
    /// The configuration is out of range, and why.
    case configuration(String)

    public var description: String {
        switch self {
        case .kvm(let e): "KVM: \(e)"
        case .irqfd(let e): "irqfd: \(e)"
        case .image(let why): "guest image: \(why)"
        case .configuration(let why): "configuration: \(why)"
        }
    }
}

/// How a guest run ended.
public enum Outcome: Equatable, Sendable, CustomStringConvertible {
    /// The guest wrote `code` to the exit port (0xF4).
    case exited(code: UInt8)
    /// The guest faulted (triple fault, unhandled exception, emulation failure), and how.
    case fault(String)
    /// The run outlived its timeout.
    case timedOut(Duration)
    /// The host stopped the VM.
    case stopped

    /// The process exit status `irqfd run` uses: the guest's code, or 124
    /// for a timeout (as timeout(1)), 125 for a fault, 130 when stopped.
    public var exitStatus: Int32 {
        switch self {
        case .exited(let code): Int32(code)
        case .fault: 125
        case .timedOut: 124
        case .stopped: 130
        }
    }

    public var description: String {
        switch self {
        case .exited(let code): "guest exited with status \(code)"
        case .fault(let why): "guest fault: \(why)"
        case .timedOut(let limit): "guest timed out after \(limit)"
        case .stopped: "stopped by the host"
        }
    }
}

/// A small VMM on KVM for tests, the demo and the benchmark; the contract is
/// in <doc:TinyVMContract>. Guests start in big real mode at 0x1000:
/// under this machine's paravirtualised KVM every privileged guest
/// instruction is emulated, and the emulator's IRET handles real mode only.
public final class TinyVM: Sendable {
    /// What to build.
    public struct Configuration: Sendable {
        /// vCPUs, each starting at the entry point (1...8).
        public var cpus: Int
        /// Guest RAM at guest-physical 0.
        public var memorySize: Int
        /// Copy console output to standard output as it arrives.
        public var echoConsole: Bool
        /// Whether the VM's partition coalesces deferred commits: a
        /// guest unmasking vectors one write at a time then costs O(N) kernel
        /// work, with the relay serving each vector until its entry is pushed
        /// (see <doc:TinyVMContract>). `setMsi` stays synchronous either way
        /// (rule 10); false makes `setMsiDeferred` and drops synchronous too.
        public var coalescesCommits: Bool

        /// The defaults of `irqfd run`: one vCPU, 16 MiB, console captured only, coalescing.
        public init(cpus: Int = 1, memorySize: Int = 16 << 20, echoConsole: Bool = false, coalescesCommits: Bool = true)
        {
            self.cpus = cpus
            self.memorySize = memorySize
            self.echoConsole = echoConsole
            self.coalescesCommits = coalescesCommits
        }
    }

    /// Where images are loaded and vCPUs start.
    public static let loadAddress: UInt64 = 0x1000
    /// OUT v here ends the run with status v & 0xFF.
    public static let exitPort: UInt16 = 0xF4
    /// The default IVT stubs report an unhandled vector here.
    public static let unexpectedVectorPort: UInt16 = 0xF5
    /// Console data (byte writes go to the console).
    public static let consolePort: UInt16 = 0x3F8
    /// Console line status: reads 0x60 (transmitter ready).
    public static let consoleStatusPort: UInt16 = 0x3FD
    /// Where the default IVT stubs live (0x800..<0xD08).
    public static let defaultStubBase: UInt64 = 0x800
    /// The VMM writes the number of vCPUs here (a 32-bit word) before the guest starts.
    public static let cpuCountAddress: UInt64 = 0x4F0
    /// The most vCPUs: their stacks (0x7000 - 0x800 * index) must stay above the image.
    public static let maxCPUs = 8

    /// The configuration this VM was built with.
    public let configuration: Configuration
    /// The KVM VM.
    public let vm: VirtualMachine
    /// Guest RAM.
    public let memory: GuestMemory
    /// The VM's irqfd partition (KVM backend): its PCI devices' MSI-X
    /// emulators program it, coalescing deferred commits unless
    /// `Configuration.coalescesCommits` is false.
    public let irqfd: KVMIrqFd
    /// Where the partition's failed coalesced commits are reported (to the
    /// devices' emulators and, rate-limited, the log).
    public let commitErrors = CommitErrorReporter()
    /// Commits once the guest's MMIO goes quiet (see `QuietCommitTimer`).
    let commitTimer = QuietCommitTimer()
    /// The vCPUs, by index.
    public let vcpus: [VCPU]
    /// PCI bus 0 on ports 0xCF8/0xCFC (configuration mechanism #1); plug functions in
    /// (`plug(_:device:)`) before `start()`.
    public let pci = PCIBus()

    private let ports = Mutex<[(range: ClosedRange<UInt16>, device: any PortDevice)]>([])
    private let mmio = Mutex<[(range: Range<UInt64>, device: any MMIODevice)]>([])
    private let console = Mutex<[UInt8]>([])
    private let outcome = Mutex<Outcome?>(nil)
    private let threads = Mutex<[Int: pthread_t]>([:])
    private let joinable = Mutex<[pthread_t]>([])
    private let running = Atomic<Int>(0)
    private let stopping = Atomic<Bool>(false)
    private let started = Atomic<Bool>(false)
    private let finished: EventFD
    private let unhandledAccesses = Atomic<Int>(0)
    private let mmioExitCount = Atomic<Int>(0)
    /// Set by `pause(timeout:)`: every vCPU thread completes its last exit and parks.
    private let pauseRequested = Atomic<Bool>(false)
    /// vCPU threads parked by a pause.
    private let parkedCount = Atomic<Int>(0)
    /// CLOCK_MONOTONIC nanoseconds when the last vCPU parked, in the last pause.
    private let lastParkedAt = Atomic<UInt64>(0)
    /// CLOCK_MONOTONIC nanoseconds when the first vCPU thread was about to
    /// enter KVM_RUN for the first time (0 before `start()`).
    private let firstRunAt = Atomic<UInt64>(0)
    /// Signalled (never consumed) by `start()` or `stop()`: vCPU threads made
    /// by `prepareThreads()` wait for it before their first KVM_RUN.
    private let gate: EventFD
    /// Set with the gate's signal: the threads may run the guest.
    private let gateOpen = Atomic<Bool>(false)
    /// Set by the first `prepareThreads()`.
    private let threadsMade = Atomic<Bool>(false)
    /// vCPU threads that reached the gate.
    private let threadsAtGate = Atomic<Int>(0)
    /// CLOCK_MONOTONIC nanoseconds when every vCPU thread waited at the gate (0 before).
    private let threadsReadyAt = Atomic<UInt64>(0)

    /// Builds the VM: RAM, in-kernel irqchip, vCPUs in the entry state, and the
    /// default IVT (every vector reports itself through port 0xF5).
    ///
    /// With `incoming`, the VM runs over that RAM instead (a guest that ran
    /// in another VM, whose memfd came over): nothing is written into it, and
    /// the vCPUs wait for the state `restoreVCPUStates(_:)` writes.
    public init(_ configuration: Configuration = Configuration(), incoming: GuestMemory? = nil) throws(TinyVMError) {
        guard (1...Self.maxCPUs).contains(configuration.cpus) else {
            throw .configuration("--cpus must be 1...\(Self.maxCPUs), not \(configuration.cpus)")
        }
        guard configuration.memorySize >= 1 << 20, configuration.memorySize <= 1 << 30 else {
            throw .configuration("memory must be 1 MiB...1 GiB")
        }
        self.configuration = configuration
        do {
            let kvm = try KVMSystem()
            vm = try kvm.createVM()
            // VMX needs three pages for real mode's TSS outside RAM and MMIO.
            try vm.setTSSAddress(0xFFFB_D000)
            try vm.createIrqchip()
            if let incoming {
                guard incoming.size == configuration.memorySize else {
                    throw TinyVMError.configuration(
                        "the incoming RAM is \(incoming.size) bytes, not \(configuration.memorySize)")
                }
                memory = incoming
            } else {
                memory = try GuestMemory(size: configuration.memorySize)
            }
            try vm.setUserMemoryRegion(
                slot: 0, guestPhysical: 0, size: UInt64(configuration.memorySize), host: memory.base)
            let cpuid = try kvm.supportedCPUID()
            var vcpus: [VCPU] = []
            for index in 0..<configuration.cpus {
                let vcpu = try vm.createVCPU(id: UInt32(index))
                try vcpu.setCPUID(Self.cpuid(cpuid, apicID: UInt32(index)))
                try Self.enterBigRealMode(vcpu, index: index)
                vcpus.append(vcpu)
            }
            self.vcpus = vcpus
            finished = try EventFD()
            gate = try EventFD()
        } catch let error as SystemCallError {
            throw .kvm(error)
        } catch let error as IrqFdError {
            throw .irqfd(error)
        } catch let error as TinyVMError {
            throw error
        } catch {
            throw .configuration("\(error)")
        }
        do {
            let kernel = try KVMRoutingKernel(vm: vm)
            irqfd = KVMIrqFd(
                kernel: kernel,
                coalescing: configuration.coalescesCommits
                    ? Self.coalescing(vm: vm, timer: commitTimer, reporter: commitErrors) : nil)
        } catch { throw .irqfd(error) }
        commitTimer.watch(self)
        attach(ports: PCIBus.ports, pci)
        if incoming == nil {
            installDefaultVectorTable()
            memory.write32(UInt32(configuration.cpus), at: Self.cpuCountAddress)
        }
    }

    /// CPUID for vCPU `apicID`: what KVM supports, with x2APIC offered and the
    /// initial APIC ID set (leaf 1 EBX[31:24], leaves 0xB/0x1F EDX).
    static func cpuid(_ supported: [CPUIDEntry], apicID: UInt32) -> [CPUIDEntry] {
        supported.map { entry in
            var e = entry
            switch e.function {
            case 1:
                e.ecx |= 1 << 21
                e.ebx = (e.ebx & 0x00FF_FFFF) | apicID << 24
            case 0xB, 0x1F:
                e.edx = apicID
            default: break
            }
            return e
        }
    }

    /// Big real mode at `loadAddress`, each vCPU with a 2 KiB stack of its
    /// own below 0x7000 and its index in RBX.
    static func enterBigRealMode(_ vcpu: VCPU, index: Int) throws(SystemCallError) {
        try vcpu.enterBigRealMode(ip: loadAddress, stack: 0x7000 - 0x800 * UInt64(index), rbx: UInt64(index))
        // Under an in-kernel irqchip, application processors wait for INIT/SIPI.
        if index > 0 { try vcpu.setMPState(IRQFD_KVM_MP_STATE_RUNNABLE) }
    }

    /// Every IVT entry points at a stub `mov $v, %al; jmp report`; `report` is
    /// `out %al, $0xF5; cli; hlt`. Guests overwrite the entries they handle.
    private func installDefaultVectorTable() {
        let report = Self.defaultStubBase + 5 * 256
        var stubs: [UInt8] = []
        var table: [UInt8] = []
        for vector in 0..<256 {
            let stub = Self.defaultStubBase + UInt64(5 * vector)
            let relative = UInt16(truncatingIfNeeded: Int(report) - Int(stub + 5))
            stubs += [0xB0, UInt8(vector), 0xE9, UInt8(relative & 0xFF), UInt8(relative >> 8)]
            table += [UInt8(stub & 0xFF), UInt8(stub >> 8), 0, 0]
        }
        stubs += [0xE6, UInt8(Self.unexpectedVectorPort), 0xFA, 0xF4, 0xEB, 0xFC]
        memory.load(table, at: 0)
        memory.load(stubs, at: Self.defaultStubBase)
    }

    deinit {
        // Stopped but never waited for: let the exited threads' resources go.
        for thread in joinable.withLock({ $0 }) { pthread_detach(thread) }
    }

    /// Loads a flat image at 0x1000.
    public func load(_ image: [UInt8]) throws(TinyVMError) {
        guard !image.isEmpty else { throw .image("the image is empty") }
        let room = configuration.memorySize - Int(Self.loadAddress)
        guard image.count <= room else {
            throw .image("\(image.count) bytes do not fit in RAM above 0x1000 (\(room) bytes)")
        }
        memory.load(image, at: Self.loadAddress)
    }

    /// Puts `device` behind `ports`. Call before `start()`.
    public func attach(ports range: ClosedRange<UInt16>, _ device: any PortDevice) {
        ports.withLock { $0.append((range, device)) }
    }

    /// Puts `device` behind guest-physical `range`. Call before `start()`.
    public func attach(mmio range: Range<UInt64>, _ device: any MMIODevice) {
        mmio.withLock { $0.append((range, device)) }
    }

    /// Everything the guest wrote to the console so far.
    public var consoleOutput: String { String(decoding: console.withLock { $0 }, as: UTF8.self) }

    /// Port and MMIO accesses no device claimed (reads returned all ones).
    public var unhandledAccessCount: Int { unhandledAccesses.load(ordering: .relaxed) }

    /// MMIO exits the vCPUs have taken (KVM_EXIT_MMIO), reads and writes:
    /// an access an ioeventfd serves in the kernel does not count here.
    public var mmioExits: Int { mmioExitCount.load(ordering: .relaxed) }

    /// Lets the vCPU threads run the guest, making them first unless
    /// `prepareThreads()` did. The run ends at the exit port, a fault,
    /// `stop()`, or `wait(timeout:)`'s timeout.
    public func start() {
        precondition(!started.exchange(true, ordering: .acquiringAndReleasing), "a TinyVM runs once")
        prepareThreads()
        gateOpen.store(true, ordering: .releasing)
        gate.signal()
    }

    /// Makes one thread per vCPU and returns once each waits before its
    /// first KVM_RUN; `start()` then only wakes them. A live update's
    /// successor calls this before the old VMM pauses the guest, so the pause
    /// holds no clone(2), stack or signal setup. `stop()` ends the waiting
    /// threads (then `wait()` joins them). Calls after the first do nothing.
    public func prepareThreads() {
        guard !threadsMade.exchange(true, ordering: .acquiringAndReleasing) else { return }
        Self.installKickHandler
        running.store(vcpus.count, ordering: .releasing)
        for index in vcpus.indices {
            let thread = startJoinableThread { [self] in
                _ = irqfd_unblock_signal(SIGUSR1)
                threads.withLock { $0[index] = pthread_self() }
                if waitAtGate() { runLoop(vcpus[index]) }
                threads.withLock { $0[index] = nil }
                if running.subtract(1, ordering: .acquiringAndReleasing).newValue == 0 { finished.signal() }
            }
            joinable.withLock { $0.append(thread) }
        }
        while threadsAtGate.load(ordering: .acquiring) < vcpus.count { usleep(20) }
        threadsReadyAt.store(Self.monotonicNanoseconds(), ordering: .releasing)
    }

    /// CLOCK_MONOTONIC nanoseconds when every vCPU thread had been made and
    /// waited to run (0 before `prepareThreads()` or `start()`).
    public var threadsReadyNanoseconds: UInt64 { threadsReadyAt.load(ordering: .acquiring) }

    /// Holds the calling vCPU thread until `start()` (true) or `stop()` (false).
    private func waitAtGate() -> Bool {
        threadsAtGate.add(1, ordering: .acquiringAndReleasing)
        while !gateOpen.load(ordering: .acquiring), !stopping.load(ordering: .acquiring) {
            // The gate is never consumed: once signalled, every poll returns at once.
            _ = try? Readiness.wait(on: [(gate.fileDescriptor, .readable)], timeout: nil)
        }
        return !stopping.load(ordering: .acquiring)
    }

    /// Waits for the run to end, stopping it with `.timedOut` after `timeout`.
    @discardableResult
    public func wait(timeout: Duration? = nil) -> Outcome {
        if !finished.wait(timeout: timeout ?? .seconds(365 * 86_400)) {
            finish(.timedOut(timeout ?? .zero))
            _ = finished.wait(timeout: .seconds(365 * 86_400))
        }
        finished.signal()  // later waits return at once
        // Joined, the vCPU threads have released everything they held (the VM,
        // its descriptors): nothing of the run outlives this call.
        for thread in joinable.withLock({ running in
            defer { running = [] }
            return running
        }) {
            pthread_join(thread, nil)
        }
        return outcome.withLock { $0 } ?? .stopped
    }

    /// Loads nothing, starts, waits: the whole run of an already-loaded guest.
    public func run(timeout: Duration? = nil) -> Outcome {
        start()
        return wait(timeout: timeout)
    }

    /// Ends the run as `.stopped` (unless it already ended) and kicks every vCPU out of KVM_RUN.
    public func stop() { finish(.stopped) }

    /// Polls `condition` until it holds or `timeout` passes (guest memory is
    /// written by vCPU threads; reads go through `memory`'s atomic accessors).
    public func waitUntil(timeout: Duration = .seconds(10), _ condition: () -> Bool) -> Bool {
        let deadline = ContinuousClock.now + timeout
        var spins = 0
        while !condition() {
            if ContinuousClock.now > deadline { return false }
            if outcome.withLock({ $0 }) != nil { return condition() }
            spins += 1
            if spins > 1000 { usleep(50) }
        }
        return true
    }

    /// Whether the run has ended.
    public var hasEnded: Bool { outcome.withLock { $0 } != nil }

    /// Stops every vCPU outside KVM_RUN without ending the run: each thread
    /// completes the MMIO or port I/O exit it was serving, then parks until `resume()`
    /// or `stop()`. Returns false, with the vCPUs resumed, if they did not all
    /// park within `timeout` or the run has ended. While paused no vCPU
    /// thread touches a device or KVM: the vCPUs' state can be read.
    public func pause(timeout: Duration = .seconds(2)) -> Bool {
        guard started.load(ordering: .acquiring), !hasEnded else { return false }
        pauseRequested.store(true, ordering: .releasing)
        for vcpu in vcpus { vcpu.requestExit() }
        threads.withLock { running in
            for thread in running.values { _ = irqfd_pthread_kick(thread, SIGUSR1) }
        }
        let deadline = ContinuousClock.now + timeout
        while parkedCount.load(ordering: .acquiring) < vcpus.count {
            if hasEnded || ContinuousClock.now > deadline {
                resume()
                return false
            }
            sched_yield()
        }
        return true
    }

    /// Lets paused vCPUs run on.
    public func resume() { pauseRequested.store(false, ordering: .releasing) }

    /// CLOCK_MONOTONIC nanoseconds when the last vCPU parked in the last
    /// `pause(timeout:)`: where a live update's pause starts.
    public var pausedAtNanoseconds: UInt64 { lastParkedAt.load(ordering: .acquiring) }

    /// CLOCK_MONOTONIC nanoseconds when the first vCPU thread was about to
    /// enter KVM_RUN for the first time (0 before `start()`): where a
    /// successor's pause ends.
    public var firstRunNanoseconds: UInt64 { firstRunAt.load(ordering: .acquiring) }

    /// CLOCK_MONOTONIC, in nanoseconds.
    static func monotonicNanoseconds() -> UInt64 {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
    }

    /// Parks the calling vCPU thread for `pause(timeout:)`.
    private func park(_ vcpu: VCPU) {
        if parkedCount.add(1, ordering: .acquiringAndReleasing).newValue == vcpus.count {
            lastParkedAt.store(Self.monotonicNanoseconds(), ordering: .releasing)
        }
        while pauseRequested.load(ordering: .acquiring), !stopping.load(ordering: .acquiring) { usleep(20) }
        parkedCount.subtract(1, ordering: .acquiringAndReleasing)
        vcpu.clearExitRequest()
    }

    private func finish(_ result: Outcome) {
        outcome.withLock { if $0 == nil { $0 = result } }
        stopping.store(true, ordering: .releasing)
        gate.signal()
        for vcpu in vcpus { vcpu.requestExit() }
        // Under the lock a vCPU thread deregisters with before it exits, so no
        // signal goes to a thread id that may already belong to another thread.
        threads.withLock { running in
            for thread in running.values { _ = irqfd_pthread_kick(thread, SIGUSR1) }
        }
    }

    /// A joinable thread (pthread_create(3), 1 MiB stack) running `body`;
    /// Foundation's `Thread` cannot be joined, and `wait()` must know the
    /// vCPU threads are gone, not just done.
    private func startJoinableThread(_ body: @escaping @Sendable () -> Void) -> pthread_t {
        final class Box {
            let body: @Sendable () -> Void
            init(_ body: @escaping @Sendable () -> Void) { self.body = body }
        }
        var attributes = pthread_attr_t()
        pthread_attr_init(&attributes)
        defer { pthread_attr_destroy(&attributes) }
        pthread_attr_setstacksize(&attributes, 1 << 20)
        var thread = pthread_t()
        let context = Unmanaged.passRetained(Box(body)).toOpaque()
        let result = pthread_create(
            &thread, &attributes,
            { context in
                Unmanaged<Box>.fromOpaque(context!).takeRetainedValue().body()
                return nil
            }, context)
        precondition(result == 0, "pthread_create failed: \(result)")
        return thread
    }

    private static let installKickHandler: Void = { _ = irqfd_install_kick_handler(SIGUSR1) }()

    private func runLoop(_ vcpu: VCPU) {
        var exitPending = false
        _ = firstRunAt.compareExchange(
            expected: 0, desired: Self.monotonicNanoseconds(), ordering: .acquiringAndReleasing)
        while !stopping.load(ordering: .acquiring) {
            // An MMIO or port I/O exit is complete (a read's value in its
            // register, a string instruction's count advanced) only once
            // KVM_RUN is entered again; until then the vCPU's state must not
            // be read (Documentation/virt/kvm/api.rst, KVM_RUN). With
            // `immediate_exit` set by `pause`, that entry finishes the
            // instruction and returns EINTR (or the next exit of a string
            // instruction, served as usual) without running the guest on.
            if pauseRequested.load(ordering: .acquiring), !exitPending {
                park(vcpu)
                continue
            }
            let exit: VCPU.Exit
            do { exit = try vcpu.run() } catch {
                finish(.fault("vCPU \(vcpu.id): \(error)"))
                return
            }
            switch exit {
            case .io, .mmio: exitPending = true
            default: exitPending = false
            }
            switch exit {
            case .io(let port, let isWrite, let size, let count, let data):
                for i in 0..<count {
                    let slot = data + i * size
                    if isWrite {
                        portWrite(vcpu, port: port, size: size, value: VCPU.Exit.load(slot, size: size))
                    } else {
                        VCPU.Exit.store(UInt64(portRead(port: port, size: size)), slot, size: size)
                    }
                }
            case .mmio(let address, let length, let isWrite, let data):
                mmioExitCount.add(1, ordering: .relaxed)
                if isWrite {
                    mmioWrite(address: address, size: length, value: VCPU.Exit.load(data, size: length))
                } else {
                    VCPU.Exit.store(mmioRead(address: address, size: length), data, size: length)
                }
            case .interrupted:
                continue
            case .shutdown:
                finish(.fault("vCPU \(vcpu.id): triple fault (KVM_EXIT_SHUTDOWN) at \(Self.location(vcpu))"))
            case .failEntry(let reason):
                finish(.fault("vCPU \(vcpu.id): VM entry failed (hardware reason 0x\(String(reason, radix: 16)))"))
            case .internalError(let suberror):
                finish(
                    .fault(
                        "vCPU \(vcpu.id): KVM could not emulate the instruction at \(Self.location(vcpu)) (internal error, suberror \(suberror))"
                    ))
            case .halt:
                finish(.fault("vCPU \(vcpu.id): HLT reached userspace at \(Self.location(vcpu))"))
            case .systemEvent(let type):
                finish(.fault("vCPU \(vcpu.id): system event \(type)"))
            case .exception(let vector):
                finish(.fault("vCPU \(vcpu.id): exception \(vector) at \(Self.location(vcpu))"))
            case .other(let reason):
                finish(.fault("vCPU \(vcpu.id): unexpected exit reason \(reason) at \(Self.location(vcpu))"))
            }
        }
    }

    private static func location(_ vcpu: VCPU) -> String {
        guard let regs = try? vcpu.registers(), let sregs = try? vcpu.specialRegisters() else {
            return "an unknown address"
        }
        return String(format: "%04x:%04x", sregs.cs.selector, regs.rip)
    }

    private func portWrite(_ vcpu: VCPU, port: UInt16, size: Int, value: UInt64) {
        switch port {
        case Self.consolePort:
            let byte = UInt8(truncatingIfNeeded: value)
            console.withLock { $0.append(byte) }
            if configuration.echoConsole { FileHandle.standardOutput.write(Data([byte])) }
        case Self.exitPort:
            finish(.exited(code: UInt8(truncatingIfNeeded: value)))
        case Self.unexpectedVectorPort:
            let vector = UInt8(truncatingIfNeeded: value)
            finish(
                .fault(
                    "vCPU \(vcpu.id): unhandled \(vector < 32 ? "exception" : "interrupt") vector \(vector) (0x\(String(vector, radix: 16))) — the IVT entry still points at the VMM's default stub"
                ))
        default:
            if let device = ports.withLock({ $0.first { $0.range.contains(port) }?.device }) {
                device.write(port: port, size: size, value: UInt32(truncatingIfNeeded: value))
            } else {
                unhandledAccesses.add(1, ordering: .relaxed)
            }
        }
    }

    private func portRead(port: UInt16, size: Int) -> UInt32 {
        switch port {
        case Self.consoleStatusPort: return 0x60
        case 0x3F9...0x3FF: return 0
        default:
            if let device = ports.withLock({ $0.first { $0.range.contains(port) }?.device }) {
                return device.read(port: port, size: size)
            }
            unhandledAccesses.add(1, ordering: .relaxed)
            return size >= 4 ? .max : (1 << (8 * size)) - 1
        }
    }

    private func mmioWrite(address: UInt64, size: Int, value: UInt64) {
        if let device = mmio.withLock({ $0.first { $0.range.contains(address) }?.device }) {
            device.write(address: address, size: size, value: value)
        } else {
            unhandledAccesses.add(1, ordering: .relaxed)
        }
    }

    private func mmioRead(address: UInt64, size: Int) -> UInt64 {
        if let device = mmio.withLock({ $0.first { $0.range.contains(address) }?.device }) {
            return device.read(address: address, size: size)
        }
        unhandledAccesses.add(1, ordering: .relaxed)
        return size >= 8 ? .max : (1 << (8 * UInt64(size))) - 1
    }
}
#endif
