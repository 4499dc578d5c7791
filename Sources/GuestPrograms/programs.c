// Accessors for the images assembled from the .S files (GUEST_IMAGE).
#include "GuestPrograms.h"

#define IMAGE(name) GUEST_IMAGE(guest_##name, name)

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
