// The benchmark's floor: the operations `irqfd bench` measures, done with
// plain ioctls on <linux/kvm.h> and no library code, so that the library's
// numbers can be read as ratios to what the kernel itself costs.
//
// Every function returns 0 or a negative errno; timed functions write the
// elapsed CLOCK_MONOTONIC nanoseconds of the timed part to *elapsed_ns.
#ifndef CBENCHFLOOR_H
#define CBENCHFLOOR_H

#ifdef __linux__
#include <stdint.h>

/// One MSI routing entry as the floor pushes it.
typedef struct {
    uint32_t gsi;
    uint32_t data;
    uint64_t address;
} bench_floor_msi;

/// CLOCK_MONOTONIC now, in nanoseconds (clock_gettime(2), a vDSO call).
uint64_t bench_floor_now_ns(void);

/// Bytes malloc has handed out and not taken back (mallinfo2(3): uordblks + hblkhd).
uint64_t bench_floor_heap_in_use(void);

/// malloc_trim(3): gives free heap pages back to the kernel, so a later
/// resident-set delta counts only memory in use.
void bench_floor_trim(void);

/// eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC); returns the descriptor or -errno.
int bench_floor_eventfd(void);

/// Adds 1 to an eventfd (write(2) of 8 bytes).
void bench_floor_signal(int efd);

/// close(2).
void bench_floor_close(int fd);

/// One KVM_SET_GSI_ROUTING holding KVM's default irqchip routes (GSIs 0..23
/// to the PICs and IOAPIC, as KVM_CREATE_IRQCHIP installs them) followed by
/// `count` MSI entries. Times building the table and the ioctl.
int bench_floor_push(int vmfd, const bench_floor_msi *entries, uint32_t count, uint64_t *elapsed_ns);

/// One KVM_SET_GSI_ROUTING of the irqchip routes and `count` MSI entries on
/// GSIs first_gsi, first_gsi+1, ..., all with `address`/`data`. Timed like bench_floor_push.
int bench_floor_push_n(int vmfd, uint32_t first_gsi, uint32_t count, uint64_t address, uint32_t data,
                       uint64_t *elapsed_ns);

/// KVM_IRQFD: assigns (deassign = 0) or deassigns `efd` on `gsi`.
int bench_floor_irqfd(int vmfd, int efd, uint32_t gsi, int deassign);

/// `cycles` times KVM_IRQFD deassign then assign of `efd` on `gsi` (the
/// floor of mask + unmask). The eventfd must be assigned on entry; it is on return.
int bench_floor_mask_cycles(int vmfd, int efd, uint32_t gsi, uint32_t cycles, uint64_t *elapsed_ns);

/// The drop floor: `count` routes made and armed as by
/// bench_floor_program (not timed; then 5 ms asleep and 200 µs spinning, as
/// the bench settles before the library's drop), then timed: `count` KVM_IRQFD deassigns,
/// `count` close(2)s and one KVM_SET_GSI_ROUTING of the irqchip routes alone.
/// Returns 0 or -errno.
int bench_floor_drop(int vmfd, uint32_t first_gsi, uint32_t count, uint64_t address, uint32_t data,
                     uint64_t *elapsed_ns);

/// Programs `count` routes the way a C VMM would: `count` eventfds, one
/// KVM_SET_GSI_ROUTING with their entries (GSIs first_gsi...), then one
/// KVM_IRQFD assign each. Timed. Then undone, untimed: deassign, close, and a
/// push of the irqchip routes alone.
int bench_floor_program(int vmfd, uint32_t first_gsi, uint32_t count, uint64_t address, uint32_t data,
                        uint64_t *elapsed_ns);

/// The floor of bringing `count` routes live whose eventfds exist (what N
/// deferred `setMsi` calls must at least do): `count` eventfds made
/// untimed, then timed: one KVM_SET_GSI_ROUTING with their entries and one
/// KVM_IRQFD assign each. Undone as bench_floor_program does, untimed.
int bench_floor_arm(int vmfd, uint32_t first_gsi, uint32_t count, uint64_t address, uint32_t data,
                    uint64_t *elapsed_ns);

/// The floor of the deferred path as the routing core serves it:
/// as bench_floor_arm, but each event is first watched by an epoll
/// (EPOLL_CTL_ADD, the interim relay's watch while its entry waits), and
/// unwatched (EPOLL_CTL_DEL) just before its KVM_IRQFD assign, as the
/// relay stops before the irqfd arms. Undone untimed.
int bench_floor_arm_served(int vmfd, uint32_t first_gsi, uint32_t count, uint64_t address, uint32_t data,
                           uint64_t *elapsed_ns);

/// `count` route lifecycles: eventfd, push with its entry, assign, deassign,
/// push without it, close. Timed.
int bench_floor_lifecycle(int vmfd, uint32_t gsi, uint32_t count, uint64_t address, uint32_t data,
                          uint64_t *elapsed_ns);

/// KVM_SIGNAL_MSI: returns the ioctl's result (> 0 delivered, 0 blocked) or -errno.
int bench_floor_signal_msi(int vmfd, uint64_t address, uint32_t data);

/// A C relay: one thread in epoll_wait(2) on up to 8 eventfds; a readable one
/// is read(2) (consuming its counter) and its MSI injected with KVM_SIGNAL_MSI.
typedef struct bench_floor_relay bench_floor_relay;

/// Starts a relay for `count` (<= 8) eventfds and messages; NULL on failure (errno set).
bench_floor_relay *bench_floor_relay_start(int vmfd, const int *efds, const bench_floor_msi *messages, uint32_t count);

/// Stops and joins the thread, frees the relay (the eventfds stay open: the caller owns them).
void bench_floor_relay_stop(bench_floor_relay *relay);

/// MSIs the relay has injected so far.
uint64_t bench_floor_relay_injected(const bench_floor_relay *relay);

/// A one-vCPU guest run by a C thread (KVM_RUN until stopped, serving no
/// exit: the interrupt-counting guest needs none), for the live-update floor.
typedef struct bench_floor_guest bench_floor_guest;

/// Maps `vcpufd`'s kvm_run and starts a thread running it from the state it
/// is in. Installs a no-op SIGUSR1 handler (the stop's kick). NULL on failure (errno set).
bench_floor_guest *bench_floor_guest_start(int vcpufd);

/// Stops (immediate_exit and SIGUSR1) and joins the thread, unmaps, frees.
/// Returns -1 if the guest ran until stopped, else the exit reason that ended it.
int bench_floor_guest_stop(bench_floor_guest *guest);

/// The floor of a live update: the KVM part alone, for the guest `*guest`
/// runs on `vm_old` with `count` MSI routes armed (events `efds`, entries
/// `messages`): stop the vCPU, disarm every route (KVM_IRQFD deassign),
/// read KVM_GET_REGS, SREGS, LAPIC, VCPU_EVENTS and the APIC base MSR,
/// write them into `vcpu_new` of `vm_new` (made beforehand), push the
/// routes in one KVM_SET_GSI_ROUTING, arm the same eventfds on `vm_new`,
/// and start a thread running `vcpu_new`. `*pause_ns`: from the old vCPU's
/// last KVM_RUN return to the new thread entering KVM_RUN; `*total_ns`:
/// from the stop request to then. On success `*guest` is the new guest.
int bench_floor_live_update(bench_floor_guest **guest, int vm_old, int vm_new, int vcpu_new, const int *efds,
                            const bench_floor_msi *messages, uint32_t count, uint64_t *pause_ns, uint64_t *total_ns);

#endif // __linux__
#endif // CBENCHFLOOR_H
