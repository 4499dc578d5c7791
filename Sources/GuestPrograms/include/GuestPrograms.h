// Guest programs for the tiny VMM: 16-bit x86 assembly (big real mode) in the
// .S files beside this header, assembled by the toolchain into the binary.
// Each program is a flat image that TinyVM loads at guest-physical 0x1000.
#ifndef GUESTPROGRAMS_H
#define GUESTPROGRAMS_H
#include <stddef.h>
// Assembler macros only (empty outside .S files); included so the module covers it.
#include "guest_common.h"
#include "virtio_common.h"
// A C macro only (the image accessors' definition); included so the module covers it.
#include "guest_image.h"

/// The interrupt-counting guest (irq_counter.S): counts every vector per vCPU.
const unsigned char *guest_irq_counter(size_t *length);
/// Prints a greeting per vCPU and exits with status 42 (hello.S).
const unsigned char *guest_hello(size_t *length);
/// Executes UD2: an exception with no handler (fault.S).
const unsigned char *guest_fault(size_t *length);
/// Spins forever with interrupts off (spin.S).
const unsigned char *guest_spin(size_t *length);
/// Counts interrupts like irq_counter and serves a host mailbox that drives
/// the PCI test device from inside the guest (msix_driver.S).
const unsigned char *guest_msix_driver(size_t *length);
/// Drives the PCI test device on its own and exits with 22 if MSI-X delivery,
/// masking and the PBA behaved (msix_selftest.S).
const unsigned char *guest_msix_selftest(size_t *length);
/// Makes N 16-bit MMIO writes the host describes in memory (mmio_writer.S).
const unsigned char *guest_mmio_writer(size_t *length);
/// A virtio-blk driver for the device at 00:02.0 (virtio_blk.S).
const unsigned char *guest_virtio_blk(size_t *length);
/// The vhost-user benchmark's virtio-blk driver (virtio_blk_bench.S).
const unsigned char *guest_virtio_blk_bench(size_t *length);
/// The MSI-X benchmark guest: brings vectors live in Linux's order or under
/// the function mask, or times each vector's first interrupt (msix_bench.S).
const unsigned char *guest_msix_bench(size_t *length);
/// The virtio-blk lossless-under-load driver: many reads in flight, every
/// completion taken in the interrupt handler and checked (virtio_blk_stress.S).
const unsigned char *guest_virtio_blk_stress(size_t *length);
/// A virtio-net driver: frames sent and checked as they come back, each
/// taken in the interrupt handler; two pairs through the control queue (virtio_net.S).
const unsigned char *guest_virtio_net(size_t *length);
/// A virtio-fs driver for the device at 00:02.0 speaking FUSE to the
/// backend: init, lookup, open, read, create, write (virtio_fs.S).
const unsigned char *guest_virtio_fs(size_t *length);
#endif
