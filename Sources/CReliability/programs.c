// Accessors for the images assembled from the .S files (GUEST_IMAGE).
#include "CReliability.h"
#include "guest_image.h"
#include <malloc.h>

#define IMAGE(name) GUEST_IMAGE(hostile_##name, name)

IMAGE(scribble)
IMAGE(smash)
IMAGE(triple)
IMAGE(halt)

GUEST_IMAGE(guest_seq_stress_image, seq_stress)

size_t reliability_heap_in_use(void) {
    struct mallinfo2 info = mallinfo2();
    return info.uordblks + info.hblkhd;
}
