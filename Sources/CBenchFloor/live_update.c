// The floor of a live update in plain C; see include/CBenchFloor.h.
#ifdef __linux__
#define _GNU_SOURCE
#include "CBenchFloor.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>
#include <linux/kvm.h>

#define MSR_IA32_APICBASE 0x1b

struct bench_floor_guest {
    int vcpufd;
    struct kvm_run *run;
    size_t run_size;
    pthread_t thread;
    _Atomic uint64_t entered_ns;  // when the thread first entered KVM_RUN
    _Atomic uint64_t stopped_ns;  // when KVM_RUN returned for the stop
    _Atomic int stop;
    _Atomic int exit_reason;      // -1 while running or stopped by request
};

static void no_op(int sig) { (void)sig; }

static void *guest_main(void *arg) {
    struct bench_floor_guest *g = arg;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    pthread_sigmask(SIG_UNBLOCK, &set, NULL);
    atomic_store(&g->entered_ns, bench_floor_now_ns());
    while (!atomic_load(&g->stop)) {
        int r = ioctl(g->vcpufd, KVM_RUN, 0);
        if (r < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        // The counting guest needs no exit served: any other exit ends its run.
        atomic_store(&g->exit_reason, r < 0 ? -errno : (int)g->run->exit_reason);
        break;
    }
    atomic_store(&g->stopped_ns, bench_floor_now_ns());
    return NULL;
}

static size_t run_size(void) {
    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0) return 0;
    int size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    close(kvm);
    return size < 0 ? 0 : (size_t)size;
}

bench_floor_guest *bench_floor_guest_start(int vcpufd) {
    struct sigaction action = {0};
    action.sa_handler = no_op;
    sigemptyset(&action.sa_mask);
    if (sigaction(SIGUSR1, &action, NULL) < 0) return NULL;
    struct bench_floor_guest *g = calloc(1, sizeof *g);
    if (!g) return NULL;
    g->vcpufd = vcpufd;
    g->run_size = run_size();
    g->run = g->run_size ? mmap(NULL, g->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpufd, 0) : MAP_FAILED;
    if (g->run == MAP_FAILED) {
        free(g);
        return NULL;
    }
    atomic_store(&g->exit_reason, -1);
    g->run->immediate_exit = 0;
    int e = pthread_create(&g->thread, NULL, guest_main, g);
    if (e != 0) {
        munmap(g->run, g->run_size);
        free(g);
        errno = e;
        return NULL;
    }
    return g;
}

// Stops the thread (kvm_run.immediate_exit, then SIGUSR1 for a KVM_RUN
// already blocked in the guest) and joins it.
static void stop_thread(struct bench_floor_guest *g) {
    atomic_store(&g->stop, 1);
    __atomic_store_n(&g->run->immediate_exit, 1, __ATOMIC_SEQ_CST);
    pthread_kill(g->thread, SIGUSR1);
    pthread_join(g->thread, NULL);
}

int bench_floor_guest_stop(bench_floor_guest *g) {
    stop_thread(g);
    int reason = atomic_load(&g->exit_reason);
    munmap(g->run, g->run_size);
    free(g);
    return reason;
}

int bench_floor_live_update(bench_floor_guest **guest, int vm_old, int vm_new, int vcpu_new, const int *efds,
                            const bench_floor_msi *messages, uint32_t count, uint64_t *pause_ns, uint64_t *total_ns) {
    struct bench_floor_guest *old = *guest;
    uint64_t start = bench_floor_now_ns();
    stop_thread(old);
    if (atomic_load(&old->exit_reason) != -1) return -EIO;
    for (uint32_t i = 0; i < count; i++) {
        int r = bench_floor_irqfd(vm_old, efds[i], messages[i].gsi, 1);
        if (r < 0) return r;
    }
    struct kvm_regs regs;
    struct kvm_sregs sregs;
    struct kvm_lapic_state lapic;
    struct kvm_vcpu_events events;
    // struct kvm_msrs with room for one entry in its flexible array.
    union {
        struct kvm_msrs header;
        uint8_t bytes[sizeof(struct kvm_msrs) + sizeof(struct kvm_msr_entry)];
    } msrs;
    memset(&msrs, 0, sizeof msrs);
    msrs.header.nmsrs = 1;
    msrs.header.entries[0].index = MSR_IA32_APICBASE;
    if (ioctl(old->vcpufd, KVM_GET_REGS, &regs) < 0) return -errno;
    if (ioctl(old->vcpufd, KVM_GET_SREGS, &sregs) < 0) return -errno;
    if (ioctl(old->vcpufd, KVM_GET_LAPIC, &lapic) < 0) return -errno;
    if (ioctl(old->vcpufd, KVM_GET_VCPU_EVENTS, &events) < 0) return -errno;
    if (ioctl(old->vcpufd, KVM_GET_MSRS, &msrs) != 1) return -EIO;
    if (ioctl(vcpu_new, KVM_SET_REGS, &regs) < 0) return -errno;
    if (ioctl(vcpu_new, KVM_SET_SREGS, &sregs) < 0) return -errno;
    if (ioctl(vcpu_new, KVM_SET_MSRS, &msrs) != 1) return -EIO;
    if (ioctl(vcpu_new, KVM_SET_LAPIC, &lapic) < 0) return -errno;
    if (ioctl(vcpu_new, KVM_SET_VCPU_EVENTS, &events) < 0) return -errno;
    int r = bench_floor_push(vm_new, messages, count, NULL);
    if (r < 0) return r;
    for (uint32_t i = 0; i < count; i++) {
        r = bench_floor_irqfd(vm_new, efds[i], messages[i].gsi, 0);
        if (r < 0) return r;
    }
    struct bench_floor_guest *next = bench_floor_guest_start(vcpu_new);
    if (!next) return -errno;
    while (atomic_load(&next->entered_ns) == 0) {
    }
    uint64_t stopped = atomic_load(&old->stopped_ns);
    uint64_t entered = atomic_load(&next->entered_ns);
    if (pause_ns) *pause_ns = entered - stopped;
    if (total_ns) *total_ns = entered - start;
    munmap(old->run, old->run_size);
    free(old);
    *guest = next;
    return 0;
}
#endif
