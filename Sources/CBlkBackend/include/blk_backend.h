#ifndef IRQFD_BLK_BACKEND_H
#define IRQFD_BLK_BACKEND_H

#include <stddef.h>
#include <stdint.h>

/// Installs the SIGBUS handler that contains faults inside guarded ranges
/// (sigaction(2)). Idempotent. Returns 0, or -1 with errno.
int blk_guard_install(void);

/// Guards `length` bytes at `start` (a guest memory mapping): a SIGBUS there
/// (the file under the mapping was truncated) is contained. Returns 0, or -1
/// when the table of guarded ranges is full.
int blk_guard_add(void *start, size_t length);

/// Stops guarding the range that starts at `start` (before munmap(2)).
void blk_guard_remove(void *start);

/// SIGBUS faults contained so far (a counter that only grows).
uint64_t blk_guard_faults(void);

/// Whether `fd` is an eventfd: its /proc/self/fd link reads "anon_inode:[eventfd]".
int blk_is_eventfd(int fd);

#endif
