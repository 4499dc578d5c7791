#if os(Linux)
import Glibc
import IrqFdCore
public import IrqFdKVM
public import IrqFdRouting

/// A guest handed from one TinyVM to another in the same process: what the
/// live update between processes does, without the socket.
public struct InProcessHandOff {
    /// The successor's routes, one per route handed over, in order.
    public var routes: [KVMIrqFdRoute]
    /// From the last vCPU parked in the old VM to the first vCPU about to
    /// run in the new one, nanoseconds.
    public var pauseNanoseconds: UInt64
    /// From the pause request to the first vCPU about to run in the new VM.
    public var totalNanoseconds: UInt64
}

extension TinyVM {
    /// Hands this running guest to `successor`, a VM made beforehand over
    /// the same RAM (`TinyVM(_:incoming:)`) and not started: the vCPUs park
    /// (completing an in-flight exit), every unmasked route of `routes` is
    /// disarmed (signals latch in its event), the vCPU state is written into
    /// the successor, which adopts every route's event in one batch (one
    /// table push, then the arms: what latched is injected), and starts.
    /// This VM then stops. If any step fails before the successor starts,
    /// the routes are re-armed and this VM runs on as before.
    public func handOff(
        to successor: TinyVM, routes: [KVMIrqFdRoute], pauseTimeout: Duration = .seconds(2)
    ) throws(TinyVMError) -> InProcessHandOff {
        let requested = Self.monotonicNanoseconds()
        let states = routes.map(\.handOffState)
        guard pause(timeout: pauseTimeout) else {
            throw .configuration("the vCPUs did not stop within \(pauseTimeout)")
        }
        var disarmed: [KVMIrqFdRoute] = []
        func rollBack() {
            for route in disarmed { try? route.unmask() }
            resume()
        }
        let adopted: [KVMIrqFdRoute]
        do {
            for route in routes where !route.isMasked {
                try route.mask()
                disarmed.append(route)
            }
            let machine = try saveMachineState()
            try successor.restoreMachineState(machine)
            adopted = try successor.irqfd.adoptRoutes(states)
        } catch let error as TinyVMError {
            rollBack()
            throw error
        } catch let error as IrqFdError {
            rollBack()
            throw .irqfd(error)
        } catch {
            rollBack()
            throw .configuration("\(error)")
        }
        let pausedAt = pausedAtNanoseconds
        successor.start()
        stop()
        while successor.firstRunNanoseconds == 0 { sched_yield() }
        let running = successor.firstRunNanoseconds
        return InProcessHandOff(
            routes: adopted, pauseNanoseconds: running &- pausedAt, totalNanoseconds: running &- requested)
    }
}
#endif
