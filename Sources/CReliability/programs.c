// Accessors for the images assembled from the .S files: Swift cannot import
// an extern array of unknown size, so each image is returned with its length.
#include "CReliability.h"
#include <malloc.h>

#define IMAGE(name)                                                              \
    extern const unsigned char guest_##name##_start[], guest_##name##_end[];     \
    const unsigned char *hostile_##name(size_t *length) {                        \
        *length = (size_t)(guest_##name##_end - guest_##name##_start);           \
        return guest_##name##_start;                                             \
    }

IMAGE(scribble)
IMAGE(smash)
IMAGE(triple)
IMAGE(halt)

extern const unsigned char guest_seq_stress_start[], guest_seq_stress_end[];
const unsigned char *guest_seq_stress_image(size_t *length) {
    *length = (size_t)(guest_seq_stress_end - guest_seq_stress_start);
    return guest_seq_stress_start;
}

size_t reliability_heap_in_use(void) {
    struct mallinfo2 info = mallinfo2();
    return info.uordblks + info.hblkhd;
}
