// Makes Swift's `Synchronization.Mutex` visible to ThreadSanitizer on Linux.
//
// Why: `Mutex.withLock` inlines the lock's uncontended fast path (an atomic
// compare-exchange that ThreadSanitizer sees) but calls `_lockSlow` and
// `_unlockSlow` in libswiftSynchronization.so, which is not instrumented.
// Whenever a lock is taken or released through the slow path (any
// contention), ThreadSanitizer misses the hand-over and reports every access
// the lock protects as a race. Ten lines of Swift that only increment a
// Mutex-guarded counter from two threads are reported as racing with the
// Swift 6.3.1 toolchain.
//
// What: this library, preloaded (LD_PRELOAD) into the test process, wraps
// the two slow-path functions: after `_lockSlow` returns it tells
// ThreadSanitizer that the lock word was acquired (__tsan_acquire), and
// before `_unlockSlow` it says it was released (__tsan_release). The fast
// path's own atomics on the same word then pair with these. Real races on
// memory that no lock protects are still reported (checked with the same
// probe plus an unguarded counter). Without ThreadSanitizer in the process
// the wrappers only forward.
//
// Both functions are Swift methods of the borrowed, address-only
// `_MutexHandle`: `self` (the lock word's address) arrives in the Swift
// context register, which clang's swiftcall convention names swift_context.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdint.h>

#define LOCK_SLOW "$s15Synchronization12_MutexHandleV9_lockSlowyys6UInt32VF"
#define UNLOCK_SLOW "$s15Synchronization12_MutexHandleV11_unlockSlowyyF"

typedef void (*lock_slow_fn)(uint32_t, void *__attribute__((swift_context))) __attribute__((swiftcall));
typedef void (*unlock_slow_fn)(void *__attribute__((swift_context))) __attribute__((swiftcall));
typedef void (*tsan_fn)(void *);

static tsan_fn tsan(const char *name) { return (tsan_fn)dlsym(RTLD_DEFAULT, name); }

__attribute__((swiftcall)) void wrapped_lock_slow(uint32_t owner, void *self __attribute__((swift_context))) __asm__(LOCK_SLOW);
__attribute__((swiftcall)) void wrapped_lock_slow(uint32_t owner, void *self __attribute__((swift_context))) {
    static lock_slow_fn real;
    static tsan_fn acquire;
    if (!real) {
        acquire = tsan("__tsan_acquire");
        real = (lock_slow_fn)dlsym(RTLD_NEXT, LOCK_SLOW);
    }
    real(owner, self);
    if (acquire) acquire(self);
}

__attribute__((swiftcall)) void wrapped_unlock_slow(void *self __attribute__((swift_context))) __asm__(UNLOCK_SLOW);
__attribute__((swiftcall)) void wrapped_unlock_slow(void *self __attribute__((swift_context))) {
    static unlock_slow_fn real;
    static tsan_fn release;
    if (!real) {
        release = tsan("__tsan_release");
        real = (unlock_slow_fn)dlsym(RTLD_NEXT, UNLOCK_SLOW);
    }
    if (release) release(self);
    real(self);
}
