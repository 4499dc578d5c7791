// The benchmark's floor in plain C; see include/CBenchFloor.h.
#ifdef __linux__
#define _GNU_SOURCE
#include "CBenchFloor.h"

#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>
#include <linux/kvm.h>

#define IRQCHIP_ROUTES 40

uint64_t bench_floor_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

uint64_t bench_floor_heap_in_use(void) {
    struct mallinfo2 info = mallinfo2();
    return (uint64_t)info.uordblks + (uint64_t)info.hblkhd;
}

void bench_floor_trim(void) { malloc_trim(0); }

int bench_floor_eventfd(void) {
    int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

void bench_floor_signal(int efd) {
    uint64_t one = 1;
    while (write(efd, &one, sizeof one) < 0 && errno == EINTR) {
    }
}

void bench_floor_close(int fd) { close(fd); }

static struct kvm_irq_routing *alloc_table(uint32_t msi_count) {
    size_t bytes = sizeof(struct kvm_irq_routing) + (IRQCHIP_ROUTES + (size_t)msi_count) * sizeof(struct kvm_irq_routing_entry);
    struct kvm_irq_routing *table = malloc(bytes);
    if (table) memset(table, 0, bytes);
    return table;
}

// KVM_CREATE_IRQCHIP's routes (the kernel's default routing): GSIs 0..15 to a
// PIC pin and the IOAPIC pin of the same number, 16..23 to the IOAPIC.
static uint32_t fill_irqchip(struct kvm_irq_routing_entry *e) {
    uint32_t n = 0;
    for (uint32_t gsi = 0; gsi < 24; gsi++) {
        if (gsi < 16) {
            e[n] = (struct kvm_irq_routing_entry){.gsi = gsi, .type = KVM_IRQ_ROUTING_IRQCHIP};
            e[n].u.irqchip.irqchip = gsi < 8 ? KVM_IRQCHIP_PIC_MASTER : KVM_IRQCHIP_PIC_SLAVE;
            e[n].u.irqchip.pin = gsi % 8;
            n++;
        }
        e[n] = (struct kvm_irq_routing_entry){.gsi = gsi, .type = KVM_IRQ_ROUTING_IRQCHIP};
        e[n].u.irqchip.irqchip = KVM_IRQCHIP_IOAPIC;
        e[n].u.irqchip.pin = gsi;
        n++;
    }
    return n;
}

static void fill_msi(struct kvm_irq_routing_entry *e, uint32_t gsi, uint64_t address, uint32_t data) {
    *e = (struct kvm_irq_routing_entry){.gsi = gsi, .type = KVM_IRQ_ROUTING_MSI};
    e->u.msi.address_lo = (uint32_t)address;
    e->u.msi.address_hi = (uint32_t)(address >> 32);
    e->u.msi.data = data;
}

static int set_routing(int vmfd, struct kvm_irq_routing *table) {
    return ioctl(vmfd, KVM_SET_GSI_ROUTING, table) < 0 ? -errno : 0;
}

/// Pushes the irqchip routes and `count` MSI routes (GSIs first_gsi...,
/// all with `address` and `data`) with one KVM_SET_GSI_ROUTING.
static int push_msis(int vmfd, struct kvm_irq_routing *table, uint32_t first_gsi, uint32_t count, uint64_t address,
                     uint32_t data) {
    uint32_t n = fill_irqchip(table->entries);
    for (uint32_t i = 0; i < count; i++) fill_msi(&table->entries[n++], first_gsi + i, address, data);
    table->nr = n;
    return set_routing(vmfd, table);
}

/// Makes eventfds until `*made` reaches `count`; 0 or -errno of the one that failed.
static int make_eventfds(int *fds, uint32_t count, uint32_t *made) {
    for (; *made < count; (*made)++) {
        fds[*made] = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (fds[*made] < 0) return -errno;
    }
    return 0;
}

int bench_floor_push(int vmfd, const bench_floor_msi *entries, uint32_t count, uint64_t *elapsed_ns) {
    struct kvm_irq_routing *table = alloc_table(count);
    if (!table) return -ENOMEM;
    uint64_t start = bench_floor_now_ns();
    uint32_t n = fill_irqchip(table->entries);
    for (uint32_t i = 0; i < count; i++) fill_msi(&table->entries[n++], entries[i].gsi, entries[i].address, entries[i].data);
    table->nr = n;
    int result = set_routing(vmfd, table);
    if (elapsed_ns) *elapsed_ns = bench_floor_now_ns() - start;
    free(table);
    return result;
}

int bench_floor_push_n(int vmfd, uint32_t first_gsi, uint32_t count, uint64_t address, uint32_t data,
                       uint64_t *elapsed_ns) {
    struct kvm_irq_routing *table = alloc_table(count);
    if (!table) return -ENOMEM;
    uint64_t start = bench_floor_now_ns();
    int result = push_msis(vmfd, table, first_gsi, count, address, data);
    if (elapsed_ns) *elapsed_ns = bench_floor_now_ns() - start;
    free(table);
    return result;
}

int bench_floor_irqfd(int vmfd, int efd, uint32_t gsi, int deassign) {
    struct kvm_irqfd request = {.fd = (uint32_t)efd, .gsi = gsi, .flags = deassign ? KVM_IRQFD_FLAG_DEASSIGN : 0};
    return ioctl(vmfd, KVM_IRQFD, &request) < 0 ? -errno : 0;
}

int bench_floor_mask_cycles(int vmfd, int efd, uint32_t gsi, uint32_t cycles, uint64_t *elapsed_ns) {
    struct kvm_irqfd off = {.fd = (uint32_t)efd, .gsi = gsi, .flags = KVM_IRQFD_FLAG_DEASSIGN};
    struct kvm_irqfd on = {.fd = (uint32_t)efd, .gsi = gsi, .flags = 0};
    uint64_t start = bench_floor_now_ns();
    for (uint32_t i = 0; i < cycles; i++) {
        if (ioctl(vmfd, KVM_IRQFD, &off) < 0) return -errno;
        if (ioctl(vmfd, KVM_IRQFD, &on) < 0) return -errno;
    }
    if (elapsed_ns) *elapsed_ns = bench_floor_now_ns() - start;
    return 0;
}

static int program(int vmfd, uint32_t first_gsi, uint32_t count, uint64_t address, uint32_t data,
                   uint64_t *elapsed_ns, int time_eventfds, int serve);

/// Undoes what program() and bench_floor_drop() made, untimed: deassigns the
/// `armed` first eventfds, closes the `made` first, pushes the irqchip routes
/// alone, and frees `fds` and `table`.
static void release_routes(int vmfd, uint32_t first_gsi, int *fds, uint32_t armed, uint32_t made,
                           struct kvm_irq_routing *table) {
    for (uint32_t i = 0; i < armed; i++) bench_floor_irqfd(vmfd, fds[i], first_gsi + i, 1);
    for (uint32_t i = 0; i < made; i++) close(fds[i]);
    table->nr = fill_irqchip(table->entries);
    set_routing(vmfd, table);
    free(fds);
    free(table);
}

int bench_floor_program(int vmfd, uint32_t first_gsi, uint32_t count, uint64_t address, uint32_t data,
                        uint64_t *elapsed_ns) {
    return program(vmfd, first_gsi, count, address, data, elapsed_ns, 1, 0);
}

int bench_floor_arm(int vmfd, uint32_t first_gsi, uint32_t count, uint64_t address, uint32_t data,
                    uint64_t *elapsed_ns) {
    return program(vmfd, first_gsi, count, address, data, elapsed_ns, 0, 0);
}

int bench_floor_arm_served(int vmfd, uint32_t first_gsi, uint32_t count, uint64_t address, uint32_t data,
                           uint64_t *elapsed_ns) {
    return program(vmfd, first_gsi, count, address, data, elapsed_ns, 0, 1);
}

static int program(int vmfd, uint32_t first_gsi, uint32_t count, uint64_t address, uint32_t data,
                   uint64_t *elapsed_ns, int time_eventfds, int serve) {
    int *fds = malloc(sizeof(int) * (count ? count : 1));
    struct kvm_irq_routing *table = alloc_table(count);
    int epoll = serve ? epoll_create1(EPOLL_CLOEXEC) : -1;
    if (!fds || !table || (serve && epoll < 0)) {
        free(fds);
        free(table);
        if (epoll >= 0) close(epoll);
        return -ENOMEM;
    }
    int result = 0;
    uint32_t made = 0, armed = 0, watched = 0;
    uint64_t start = bench_floor_now_ns();
    if ((result = make_eventfds(fds, count, &made)) != 0) goto undo;
    if (!time_eventfds) start = bench_floor_now_ns();
    // Served: each event is watched (the interim relay's epoll_ctl ADD) while
    // its entry waits, and unwatched just before its irqfd is armed.
    for (; serve && watched < count; watched++) {
        struct epoll_event event = {.events = EPOLLIN, .data.u64 = watched};
        if (epoll_ctl(epoll, EPOLL_CTL_ADD, fds[watched], &event) != 0) {
            result = -errno;
            goto undo;
        }
    }
    if ((result = push_msis(vmfd, table, first_gsi, count, address, data)) != 0) goto undo;
    for (; armed < count; armed++) {
        if (serve && epoll_ctl(epoll, EPOLL_CTL_DEL, fds[armed], NULL) != 0) {
            result = -errno;
            goto undo;
        }
        if ((result = bench_floor_irqfd(vmfd, fds[armed], first_gsi + armed, 0)) != 0) goto undo;
    }
    if (elapsed_ns) *elapsed_ns = bench_floor_now_ns() - start;
undo:
    if (epoll >= 0) close(epoll);
    release_routes(vmfd, first_gsi, fds, armed, made, table);
    return result;
}

int bench_floor_drop(int vmfd, uint32_t first_gsi, uint32_t count, uint64_t address, uint32_t data,
                     uint64_t *elapsed_ns) {
    int *fds = malloc(sizeof(int) * (count ? count : 1));
    struct kvm_irq_routing *table = alloc_table(count);
    if (!fds || !table) {
        free(fds);
        free(table);
        return -ENOMEM;
    }
    int result = 0;
    uint32_t made = 0, armed = 0;
    if ((result = make_eventfds(fds, count, &made)) != 0) goto undo;
    if ((result = push_msis(vmfd, table, first_gsi, count, address, data)) != 0) goto undo;
    for (; armed < count; armed++) {
        if ((result = bench_floor_irqfd(vmfd, fds[armed], first_gsi + armed, 0)) != 0) goto undo;
    }
    // Settle as the bench does before the library's drop (5 ms asleep, then
    // 200 us spinning): the routes were not made a moment ago there either,
    // and the deferred work of arming them must not land in the timed part.
    usleep(5000);
    for (uint64_t until = bench_floor_now_ns() + 200000; bench_floor_now_ns() < until;) {
    }
    uint64_t start = bench_floor_now_ns();
    for (uint32_t i = 0; i < armed; i++) {
        if ((result = bench_floor_irqfd(vmfd, fds[i], first_gsi + i, 1)) != 0) break;
    }
    armed = 0;
    for (uint32_t i = 0; i < made; i++) close(fds[i]);
    made = 0;
    table->nr = fill_irqchip(table->entries);
    int pushed = set_routing(vmfd, table);
    if (result == 0) result = pushed;
    if (elapsed_ns) *elapsed_ns = bench_floor_now_ns() - start;
undo:
    release_routes(vmfd, first_gsi, fds, armed, made, table);
    return result;
}

int bench_floor_lifecycle(int vmfd, uint32_t gsi, uint32_t count, uint64_t address, uint32_t data,
                          uint64_t *elapsed_ns) {
    struct kvm_irq_routing *table = alloc_table(1);
    if (!table) return -ENOMEM;
    int result = 0;
    uint64_t start = bench_floor_now_ns();
    for (uint32_t i = 0; i < count && result == 0; i++) {
        int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (fd < 0) {
            result = -errno;
            break;
        }
        uint32_t n = fill_irqchip(table->entries);
        fill_msi(&table->entries[n++], gsi, address, data);
        table->nr = n;
        if ((result = set_routing(vmfd, table)) == 0 && (result = bench_floor_irqfd(vmfd, fd, gsi, 0)) == 0) {
            result = bench_floor_irqfd(vmfd, fd, gsi, 1);
        }
        table->nr = fill_irqchip(table->entries);
        if (result == 0) result = set_routing(vmfd, table);
        close(fd);
    }
    if (elapsed_ns) *elapsed_ns = bench_floor_now_ns() - start;
    free(table);
    return result;
}

int bench_floor_signal_msi(int vmfd, uint64_t address, uint32_t data) {
    struct kvm_msi msi = {.address_lo = (uint32_t)address, .address_hi = (uint32_t)(address >> 32), .data = data};
    int r = ioctl(vmfd, KVM_SIGNAL_MSI, &msi);
    return r < 0 ? -errno : r;
}

#define RELAY_MAX 8

struct bench_floor_relay {
    int vmfd;
    int epfd;
    int stopfd;
    uint32_t count;
    int efds[RELAY_MAX];
    bench_floor_msi messages[RELAY_MAX];
    _Atomic uint64_t injected;
    pthread_t thread;
};

static void *relay_main(void *arg) {
    struct bench_floor_relay *r = arg;
    struct epoll_event ready[RELAY_MAX + 1];
    for (;;) {
        int n = epoll_wait(r->epfd, ready, RELAY_MAX + 1, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            return NULL;
        }
        for (int i = 0; i < n; i++) {
            uint32_t index = ready[i].data.u32;
            if (index == RELAY_MAX) return NULL;
            uint64_t value;
            if (read(r->efds[index], &value, sizeof value) == sizeof value) {
                bench_floor_signal_msi(r->vmfd, r->messages[index].address, r->messages[index].data);
                atomic_fetch_add_explicit(&r->injected, 1, memory_order_relaxed);
            }
        }
    }
}

bench_floor_relay *bench_floor_relay_start(int vmfd, const int *efds, const bench_floor_msi *messages, uint32_t count) {
    if (count > RELAY_MAX) {
        errno = EINVAL;
        return NULL;
    }
    struct bench_floor_relay *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->vmfd = vmfd;
    r->count = count;
    r->epfd = epoll_create1(EPOLL_CLOEXEC);
    r->stopfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (r->epfd < 0 || r->stopfd < 0) goto fail;
    for (uint32_t i = 0; i <= count; i++) {
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = i == count ? RELAY_MAX : i};
        int fd = i == count ? r->stopfd : efds[i];
        if (i < count) {
            r->efds[i] = efds[i];
            r->messages[i] = messages[i];
        }
        if (epoll_ctl(r->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) goto fail;
    }
    int e = pthread_create(&r->thread, NULL, relay_main, r);
    if (e != 0) {
        errno = e;
        goto fail;
    }
    return r;
fail:;
    int saved = errno;
    if (r->epfd >= 0) close(r->epfd);
    if (r->stopfd >= 0) close(r->stopfd);
    free(r);
    errno = saved;
    return NULL;
}

void bench_floor_relay_stop(bench_floor_relay *r) {
    if (!r) return;
    bench_floor_signal(r->stopfd);
    pthread_join(r->thread, NULL);
    close(r->epfd);
    close(r->stopfd);
    free(r);
}

uint64_t bench_floor_relay_injected(const bench_floor_relay *r) {
    return atomic_load_explicit(&((struct bench_floor_relay *)r)->injected, memory_order_relaxed);
}
#endif
