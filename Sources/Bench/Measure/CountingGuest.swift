#if os(Linux)
import TinyVM

/// Starts a one-vCPU interrupt-counting guest (irq_counter.S, counters at
/// `InterruptCounterLayout`) and waits up to 20 s for vCPU 0 to report ready,
/// so a section signals only once the guest's handlers are installed. The
/// caller owns the running guest and stops it (`stop()`, `wait()`); if the
/// guest does not come up, it is stopped here and `.setup` names why (the
/// run's outcome if it ended, else the timeout).
func startInterruptCountingGuest() throws(BenchError) -> TinyVM {
    let guest: TinyVM
    do {
        guest = try TinyVM(.init(cpus: 1))
        try guest.load(GuestProgram.interruptCounter.image)
    } catch { throw .setup("TinyVM: \(error)") }
    guest.start()
    guard guest.waitUntil(timeout: .seconds(20), { guest.memory.read32(at: InterruptCounterLayout.ready(cpu: 0)) == 1 })
    else {
        let why = guest.hasEnded ? "\(guest.wait())" : "timed out"
        guest.stop()
        guest.wait()
        throw .setup("the interrupt-counting guest did not come up: \(why)")
    }
    return guest
}
#endif
