#define _GNU_SOURCE
#include "blk_backend.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

// A memfd (or any shared file) mapped MAP_SHARED and then truncated by its
// owner raises SIGBUS at the first access past the new end (mmap(2),
// "SIGBUS"). The handler below puts a private anonymous page over the
// faulting page (MAP_FIXED) and returns: the access is retried and reads
// zeros, or writes to a page nobody else sees. The server sees the counter
// move and drops the front-end whose memory shrank. A fault outside every
// guarded range is not ours: the default action is restored and it recurs.

#define BLK_GUARD_SLOTS 64

static _Atomic uintptr_t guard_start[BLK_GUARD_SLOTS];
static _Atomic uintptr_t guard_end[BLK_GUARD_SLOTS];
static _Atomic uint64_t guard_faults;
static atomic_int guard_installed;
static uintptr_t guard_page_size;  // set before the handler is installed (sysconf is not async-signal-safe)

static void blk_guard_handler(int sig, siginfo_t *info, void *context) {
    (void)context;
    uintptr_t address = (uintptr_t)info->si_addr;
    for (int i = 0; i < BLK_GUARD_SLOTS; i++) {
        uintptr_t start = atomic_load(&guard_start[i]);
        if (start != 0 && address >= start && address < atomic_load(&guard_end[i])) {
            uintptr_t page = address & ~(guard_page_size - 1);
            void *fixed = mmap((void *)page, (size_t)guard_page_size, PROT_READ | PROT_WRITE,
                               MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
            if (fixed != MAP_FAILED) {
                atomic_fetch_add(&guard_faults, 1);
                return;
            }
        }
    }
    signal(sig, SIG_DFL);
}

int blk_guard_install(void) {
    if (atomic_exchange(&guard_installed, 1)) return 0;
    guard_page_size = (uintptr_t)sysconf(_SC_PAGESIZE);
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_sigaction = blk_guard_handler;
    action.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&action.sa_mask);
    if (sigaction(SIGBUS, &action, NULL) != 0) {
        atomic_store(&guard_installed, 0);
        return -1;
    }
    return 0;
}

int blk_guard_add(void *start, size_t length) {
    for (int i = 0; i < BLK_GUARD_SLOTS; i++) {
        if (atomic_load(&guard_start[i]) == 0) {
            atomic_store(&guard_end[i], (uintptr_t)start + length);
            atomic_store(&guard_start[i], (uintptr_t)start);
            return 0;
        }
    }
    errno = ENOSPC;
    return -1;
}

void blk_guard_remove(void *start) {
    for (int i = 0; i < BLK_GUARD_SLOTS; i++) {
        if (atomic_load(&guard_start[i]) == (uintptr_t)start) atomic_store(&guard_start[i], 0);
    }
}

uint64_t blk_guard_faults(void) { return atomic_load(&guard_faults); }

int blk_is_eventfd(int fd) {
    char path[64], target[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    ssize_t length = readlink(path, target, sizeof target - 1);
    if (length < 0) return 0;
    target[length] = 0;
    return strcmp(target, "anon_inode:[eventfd]") == 0;
}
