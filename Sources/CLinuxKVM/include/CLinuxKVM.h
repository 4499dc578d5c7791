// The C side of swift-irqfd's Linux backends.
//
// Swift cannot call variadic ioctl(2) and does not import the _IO/_IOW request
// macros, so this header exports every request number the package uses as a
// constant and wraps ioctl(2) in non-variadic functions. Everything else
// (structure layouts, EINTR handling, errors) is done in Swift.
#ifndef CLINUXKVM_H
#define CLINUXKVM_H

#ifdef __linux__
#include <errno.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/eventfd.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <linux/kvm.h>
#include <linux/memfd.h>
#include <sys/syscall.h>
#include <pthread.h>
#include <unistd.h>

// MARK: ioctl(2) without varargs

/// ioctl(2) with a pointer argument.
static inline int irqfd_ioctl_ptr(int fd, unsigned long request, void *arg) {
    return ioctl(fd, request, arg);
}

/// ioctl(2) with an integer argument (0 for argument-less requests such as KVM_RUN).
static inline int irqfd_ioctl_val(int fd, unsigned long request, unsigned long arg) {
    return ioctl(fd, request, arg);
}

/// memfd_create(2) with `flags` (MFD_CLOEXEC, MFD_ALLOW_SEALING): glibc
/// declares it only under _GNU_SOURCE, which Swift's Glibc module does not
/// see, so it is made by syscall(2) with the kernel's own constants.
static inline int irqfd_memfd_create(const char *name, unsigned int flags) {
    return (int)syscall(SYS_memfd_create, name, flags);
}

/// The calling thread's errno.
static inline int irqfd_errno(void) { return errno; }

// MARK: /dev/kvm requests

static const unsigned long IRQFD_KVM_GET_API_VERSION = KVM_GET_API_VERSION;
static const unsigned long IRQFD_KVM_CREATE_VM = KVM_CREATE_VM;
static const unsigned long IRQFD_KVM_CHECK_EXTENSION = KVM_CHECK_EXTENSION;
static const unsigned long IRQFD_KVM_GET_VCPU_MMAP_SIZE = KVM_GET_VCPU_MMAP_SIZE;
static const unsigned long IRQFD_KVM_GET_SUPPORTED_CPUID = KVM_GET_SUPPORTED_CPUID;

// MARK: VM requests

static const unsigned long IRQFD_KVM_CREATE_VCPU = KVM_CREATE_VCPU;
static const unsigned long IRQFD_KVM_CREATE_IRQCHIP = KVM_CREATE_IRQCHIP;
static const unsigned long IRQFD_KVM_SET_TSS_ADDR = KVM_SET_TSS_ADDR;
static const unsigned long IRQFD_KVM_SET_IDENTITY_MAP_ADDR = KVM_SET_IDENTITY_MAP_ADDR;
static const unsigned long IRQFD_KVM_SET_USER_MEMORY_REGION = KVM_SET_USER_MEMORY_REGION;
static const unsigned long IRQFD_KVM_SET_GSI_ROUTING = KVM_SET_GSI_ROUTING;
static const unsigned long IRQFD_KVM_IRQFD = KVM_IRQFD;
static const unsigned long IRQFD_KVM_SIGNAL_MSI = KVM_SIGNAL_MSI;
static const unsigned long IRQFD_KVM_IOEVENTFD = KVM_IOEVENTFD;
static const unsigned int IRQFD_KVM_IOEVENTFD_FLAG_DATAMATCH = KVM_IOEVENTFD_FLAG_DATAMATCH;
static const unsigned int IRQFD_KVM_IOEVENTFD_FLAG_PIO = KVM_IOEVENTFD_FLAG_PIO;
static const unsigned int IRQFD_KVM_IOEVENTFD_FLAG_DEASSIGN = KVM_IOEVENTFD_FLAG_DEASSIGN;
static const unsigned long IRQFD_KVM_ENABLE_CAP = KVM_ENABLE_CAP;

// MARK: vCPU requests

static const unsigned long IRQFD_KVM_RUN = KVM_RUN;
static const unsigned long IRQFD_KVM_GET_REGS = KVM_GET_REGS;
static const unsigned long IRQFD_KVM_SET_REGS = KVM_SET_REGS;
static const unsigned long IRQFD_KVM_GET_SREGS = KVM_GET_SREGS;
static const unsigned long IRQFD_KVM_SET_SREGS = KVM_SET_SREGS;
static const unsigned long IRQFD_KVM_SET_CPUID2 = KVM_SET_CPUID2;
static const unsigned long IRQFD_KVM_GET_LAPIC = KVM_GET_LAPIC;
static const unsigned long IRQFD_KVM_SET_LAPIC = KVM_SET_LAPIC;
static const unsigned long IRQFD_KVM_GET_MSRS = KVM_GET_MSRS;
static const unsigned long IRQFD_KVM_SET_MSRS = KVM_SET_MSRS;
static const unsigned long IRQFD_KVM_GET_MP_STATE = KVM_GET_MP_STATE;
static const unsigned long IRQFD_KVM_SET_MP_STATE = KVM_SET_MP_STATE;
static const unsigned long IRQFD_KVM_GET_VCPU_EVENTS = KVM_GET_VCPU_EVENTS;
static const unsigned long IRQFD_KVM_SET_VCPU_EVENTS = KVM_SET_VCPU_EVENTS;
static const unsigned long IRQFD_KVM_GET_FPU = KVM_GET_FPU;
static const unsigned long IRQFD_KVM_SET_FPU = KVM_SET_FPU;

// MARK: State a VM hands to its successor (vCPU state above, the clock here)

static const unsigned long IRQFD_KVM_GET_CLOCK = KVM_GET_CLOCK;
static const unsigned long IRQFD_KVM_SET_CLOCK = KVM_SET_CLOCK;
static const unsigned long IRQFD_KVM_GET_MSR_INDEX_LIST = KVM_GET_MSR_INDEX_LIST;

// MARK: Flags, capabilities, exit reasons

static const unsigned int IRQFD_KVM_IRQFD_FLAG_DEASSIGN = KVM_IRQFD_FLAG_DEASSIGN;
static const unsigned int IRQFD_KVM_IRQ_ROUTING_IRQCHIP = KVM_IRQ_ROUTING_IRQCHIP;
static const unsigned int IRQFD_KVM_IRQ_ROUTING_MSI = KVM_IRQ_ROUTING_MSI;
static const unsigned int IRQFD_KVM_IRQCHIP_PIC_MASTER = KVM_IRQCHIP_PIC_MASTER;
static const unsigned int IRQFD_KVM_IRQCHIP_PIC_SLAVE = KVM_IRQCHIP_PIC_SLAVE;
static const unsigned int IRQFD_KVM_IRQCHIP_IOAPIC = KVM_IRQCHIP_IOAPIC;
static const unsigned int IRQFD_KVM_MP_STATE_RUNNABLE = KVM_MP_STATE_RUNNABLE;

static const int IRQFD_KVM_CAP_IRQCHIP = KVM_CAP_IRQCHIP;
static const int IRQFD_KVM_CAP_IRQFD = KVM_CAP_IRQFD;
static const int IRQFD_KVM_CAP_IRQ_ROUTING = KVM_CAP_IRQ_ROUTING;
static const int IRQFD_KVM_CAP_SIGNAL_MSI = KVM_CAP_SIGNAL_MSI;
static const int IRQFD_KVM_CAP_SPLIT_IRQCHIP = KVM_CAP_SPLIT_IRQCHIP;
static const int IRQFD_KVM_CAP_X2APIC_API = KVM_CAP_X2APIC_API;
static const int IRQFD_KVM_CAP_NR_VCPUS = KVM_CAP_NR_VCPUS;
static const int IRQFD_KVM_CAP_MAX_VCPUS = KVM_CAP_MAX_VCPUS;
static const int IRQFD_KVM_CAP_IMMEDIATE_EXIT = KVM_CAP_IMMEDIATE_EXIT;
static const int IRQFD_KVM_CAP_MSI_DEVID = KVM_CAP_MSI_DEVID;

static const unsigned int IRQFD_KVM_EXIT_UNKNOWN = KVM_EXIT_UNKNOWN;
static const unsigned int IRQFD_KVM_EXIT_EXCEPTION = KVM_EXIT_EXCEPTION;
static const unsigned int IRQFD_KVM_EXIT_IO = KVM_EXIT_IO;
static const unsigned int IRQFD_KVM_EXIT_HLT = KVM_EXIT_HLT;
static const unsigned int IRQFD_KVM_EXIT_MMIO = KVM_EXIT_MMIO;
static const unsigned int IRQFD_KVM_EXIT_SHUTDOWN = KVM_EXIT_SHUTDOWN;
static const unsigned int IRQFD_KVM_EXIT_FAIL_ENTRY = KVM_EXIT_FAIL_ENTRY;
static const unsigned int IRQFD_KVM_EXIT_INTR = KVM_EXIT_INTR;
static const unsigned int IRQFD_KVM_EXIT_INTERNAL_ERROR = KVM_EXIT_INTERNAL_ERROR;
static const unsigned int IRQFD_KVM_EXIT_SYSTEM_EVENT = KVM_EXIT_SYSTEM_EVENT;
static const unsigned int IRQFD_KVM_EXIT_IO_OUT = KVM_EXIT_IO_OUT;

// MARK: Layouts the Swift side builds by hand (flexible arrays do not import)

static const size_t IRQFD_SIZEOF_KVM_IRQ_ROUTING = sizeof(struct kvm_irq_routing);
static const size_t IRQFD_SIZEOF_KVM_IRQ_ROUTING_ENTRY = sizeof(struct kvm_irq_routing_entry);
static const size_t IRQFD_OFFSETOF_ROUTING_ENTRY_MSI = offsetof(struct kvm_irq_routing_entry, u.msi);
static const size_t IRQFD_SIZEOF_KVM_CPUID2 = sizeof(struct kvm_cpuid2);
static const size_t IRQFD_SIZEOF_KVM_CPUID_ENTRY2 = sizeof(struct kvm_cpuid_entry2);
static const size_t IRQFD_SIZEOF_KVM_MSRS = sizeof(struct kvm_msrs);
static const size_t IRQFD_SIZEOF_KVM_MSR_ENTRY = sizeof(struct kvm_msr_entry);
static const size_t IRQFD_SIZEOF_KVM_IRQFD = sizeof(struct kvm_irqfd);
static const size_t IRQFD_SIZEOF_KVM_MSI = sizeof(struct kvm_msi);

// MARK: struct kvm_run accessors (its anonymous unions import poorly)

static inline uint32_t irqfd_run_exit_reason(const struct kvm_run *run) { return run->exit_reason; }
static inline void irqfd_run_set_immediate_exit(struct kvm_run *run, uint8_t value) {
    __atomic_store_n(&run->immediate_exit, value, __ATOMIC_SEQ_CST);
}
static inline uint8_t irqfd_run_io_direction(const struct kvm_run *run) { return run->io.direction; }
static inline uint8_t irqfd_run_io_size(const struct kvm_run *run) { return run->io.size; }
static inline uint16_t irqfd_run_io_port(const struct kvm_run *run) { return run->io.port; }
static inline uint32_t irqfd_run_io_count(const struct kvm_run *run) { return run->io.count; }
static inline uint64_t irqfd_run_io_data_offset(const struct kvm_run *run) { return run->io.data_offset; }
static inline uint64_t irqfd_run_mmio_phys_addr(const struct kvm_run *run) { return run->mmio.phys_addr; }
static inline uint8_t *irqfd_run_mmio_data(struct kvm_run *run) { return run->mmio.data; }
static inline uint32_t irqfd_run_mmio_len(const struct kvm_run *run) { return run->mmio.len; }
static inline uint8_t irqfd_run_mmio_is_write(const struct kvm_run *run) { return run->mmio.is_write; }
static inline uint64_t irqfd_run_fail_entry_reason(const struct kvm_run *run) {
    return run->fail_entry.hardware_entry_failure_reason;
}
static inline uint32_t irqfd_run_internal_suberror(const struct kvm_run *run) { return run->internal.suberror; }
static inline uint32_t irqfd_run_exception(const struct kvm_run *run) { return run->ex.exception; }
static inline uint32_t irqfd_run_system_event_type(const struct kvm_run *run) { return run->system_event.type; }

// MARK: Signals

static void irqfd_kick_handler(int sig) { (void)sig; }

/// Installs a handler that does nothing for `sig`, without SA_RESTART, so that
/// pthread_kill(3) on a thread blocked in KVM_RUN makes that ioctl return EINTR.
static inline int irqfd_install_kick_handler(int sig) {
    struct sigaction action = {0};
    action.sa_handler = irqfd_kick_handler;
    sigemptyset(&action.sa_mask);
    action.sa_flags = 0;
    return sigaction(sig, &action, NULL);
}

/// Unblocks `sig` in the calling thread (pthread_sigmask(3)). Threads inherit
/// their creator's mask, and libdispatch's worker threads block signals, so a
/// vCPU thread started from one would never see the kick.
static inline int irqfd_unblock_signal(int sig) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, sig);
    return pthread_sigmask(SIG_UNBLOCK, &set, NULL);
}

/// pthread_kill(3) on a thread identified by pthread_self(3).
static inline int irqfd_pthread_kick(pthread_t thread, int sig) { return pthread_kill(thread, sig); }

// MARK: Guest memory shared with running vCPUs

/// Atomic (acquire) load of a 32-bit guest word: the compiler may not cache it
/// across a polling loop, and the read is never torn.
static inline uint32_t irqfd_load32(const void *p) { return __atomic_load_n((const uint32_t *)p, __ATOMIC_ACQUIRE); }
/// Atomic (release) store of a 32-bit guest word.
static inline void irqfd_store32(void *p, uint32_t v) { __atomic_store_n((uint32_t *)p, v, __ATOMIC_RELEASE); }
/// Atomic (acquire) load of a 64-bit guest word.
static inline uint64_t irqfd_load64(const void *p) { return __atomic_load_n((const uint64_t *)p, __ATOMIC_ACQUIRE); }
/// Atomic (release) store of a 64-bit guest word.
static inline void irqfd_store64(void *p, uint64_t v) { __atomic_store_n((uint64_t *)p, v, __ATOMIC_RELEASE); }

// MARK: Passing descriptors to another process (SCM_RIGHTS)

#include <string.h>
#include <sys/un.h>

/// Fills `address` for the Unix socket at `path`; returns its length, or -1
/// with errno ENAMETOOLONG if the path does not fit in sun_path.
static inline int irqfd_unix_address(const char *path, struct sockaddr_un *address) {
    size_t length = strlen(path);
    if (length >= sizeof address->sun_path) { errno = ENAMETOOLONG; return -1; }
    memset(address, 0, sizeof *address);
    address->sun_family = AF_UNIX;
    memcpy(address->sun_path, path, length + 1);
    return (int)(offsetof(struct sockaddr_un, sun_path) + length + 1);
}
/// bind(2) a Unix socket to `path`.
static inline int irqfd_unix_bind(int sock, const char *path) {
    struct sockaddr_un address;
    int length = irqfd_unix_address(path, &address);
    return length < 0 ? -1 : bind(sock, (const struct sockaddr *)&address, (socklen_t)length);
}
/// connect(2) a Unix socket to `path`.
static inline int irqfd_unix_connect(int sock, const char *path) {
    struct sockaddr_un address;
    int length = irqfd_unix_address(path, &address);
    return length < 0 ? -1 : connect(sock, (const struct sockaddr *)&address, (socklen_t)length);
}
/// Most descriptors one SCM_RIGHTS message carries here (the vhost-user
/// protocol's maximum, VHOST_MEMORY_BASELINE_NREGIONS, is 8).
#define IRQFD_MAX_PASSED_FDS 8

/// sendmsg(2) of `len` bytes with `nfds` descriptors (0...IRQFD_MAX_PASSED_FDS)
/// as one SCM_RIGHTS message; `flags` are sendmsg's (MSG_NOSIGNAL is always
/// added). CMSG_* are macros Swift cannot import, hence this wrapper.
ssize_t irqfd_sendmsg_fds(int sock, const void *buf, size_t len, const int *fds, int nfds, int flags);

/// recvmsg(2) of up to `len` bytes with MSG_CMSG_CLOEXEC | `flags`. Every
/// descriptor of every SCM_RIGHTS message is collected: the first `maxfds`
/// into `fds`, the rest closed; `*nfds` is the total count received (so a
/// caller sees "too many"); `*truncated` is set when the kernel dropped
/// descriptors that did not fit the control buffer (MSG_CTRUNC).
ssize_t irqfd_recvmsg_fds(int sock, void *buf, size_t len, int *fds, int maxfds, int *nfds, int *truncated, int flags);

/// accept4(2) with SOCK_CLOEXEC (glibc declares accept4 only under _GNU_SOURCE).
int irqfd_accept_cloexec(int sock);

// MARK: Memfd seals (fcntl(2) F_ADD_SEALS, F_GET_SEALS; glibc declares them only under _GNU_SOURCE)

/// fcntl(fd, F_ADD_SEALS, seals).
int irqfd_add_seals(int fd, unsigned int seals);
/// fcntl(fd, F_GET_SEALS): the seals set, or -1 (EINVAL for a file that is not a memfd).
int irqfd_get_seals(int fd);

#endif // __linux__
#endif // CLINUXKVM_H
