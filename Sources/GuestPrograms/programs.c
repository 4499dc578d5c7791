// Accessors for the images assembled from the .S files: Swift cannot import
// an extern array of unknown size, so each image is returned with its length.
#include "GuestPrograms.h"

#define IMAGE(name)                                                              \
    extern const unsigned char guest_##name##_start[], guest_##name##_end[];     \
    const unsigned char *guest_##name(size_t *length) {                          \
        *length = (size_t)(guest_##name##_end - guest_##name##_start);           \
        return guest_##name##_start;                                             \
    }

IMAGE(irq_counter)
IMAGE(hello)
IMAGE(fault)
IMAGE(spin)
IMAGE(msix_driver)
IMAGE(msix_selftest)
IMAGE(mmio_writer)
IMAGE(virtio_blk)
IMAGE(virtio_blk_bench)
IMAGE(msix_bench)
IMAGE(virtio_blk_stress)
IMAGE(virtio_net)
IMAGE(virtio_fs)
