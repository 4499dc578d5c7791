public import IrqFdCore
public import IrqFdRouting

/// The relay as the routing core's interim delivery: while a route's entry
/// waits for a coalesced commit, a relay route over the same event watches it
/// and injects the message (KVM_SIGNAL_MSI on KVM). Its `clearMsi` takes the
/// slot lock the relay thread holds while it reads and injects, so once it
/// returns no injection is in flight.
extension RelayIrqFd: InterimDelivery {
    /// A relay route adopting `event`; it starts with no MSI and unwatched.
    public func serve(_ event: any Event) throws(IrqFdError) -> any IrqFdRoute { newRoute(adopting: event) }
}

#if os(Linux)
import Glibc
import IrqFdLinux

/// A commit timer on a thread of its own (pthread_create, then nanosleep):
/// at most one runs per scheduled commit, and it never waits for a shared
/// pool that blocking callers may have filled.
public struct ThreadCommitTimer: CommitTimer {
    /// The timer.
    public init() {}

    /// Starts a detached thread that sleeps `delay`, then runs `work`. If no
    /// thread can be made, `work` runs at once on the caller's thread.
    public func after(_ delay: Duration, _ work: @escaping @Sendable () -> Void) {
        let job = Unmanaged.passRetained(Job(delay: delay, work: work))
        var attributes = pthread_attr_t()
        pthread_attr_init(&attributes)
        pthread_attr_setdetachstate(&attributes, Int32(PTHREAD_CREATE_DETACHED))
        defer { pthread_attr_destroy(&attributes) }
        var id = pthread_t()
        let result = pthread_create(
            &id, &attributes,
            { raw in
                let job = Unmanaged<Job>.fromOpaque(raw!).takeRetainedValue()
                let (seconds, attoseconds) = job.delay.components
                var request = timespec(tv_sec: Int(seconds), tv_nsec: Int(attoseconds / 1_000_000_000))
                var remaining = timespec()
                // A signal ends nanosleep(2) early with the time left in `remaining`; the retry sleeps that.
                do throws(SystemCallError) {
                    _ = try retryingInterrupts("nanosleep") {
                        defer { request = remaining }
                        return nanosleep(&request, &remaining)
                    }
                } catch {
                    preconditionFailure("\(error)")  // EINVAL or EFAULT: the timespec is this function's own
                }
                job.work()
                return nil
            }, job.toOpaque())
        if result != 0 {
            job.release()
            work()
        }
    }

    private final class Job: Sendable {
        let delay: Duration
        let work: @Sendable () -> Void
        init(delay: Duration, work: @escaping @Sendable () -> Void) {
            self.delay = delay
            self.work = work
        }
    }
}
#endif
