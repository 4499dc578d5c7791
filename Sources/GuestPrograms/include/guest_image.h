// The accessor of an image assembled from a .S file, here and in other
// targets: Swift cannot import an extern array of unknown size, so
// `accessor` returns the bytes from guest_<name>_start to guest_<name>_end
// and their count. A C macro only: Swift sees nothing.
#ifndef GUEST_IMAGE_H
#define GUEST_IMAGE_H
#include <stddef.h>

#define GUEST_IMAGE(accessor, name)                                              \
    extern const unsigned char guest_##name##_start[], guest_##name##_end[];     \
    const unsigned char *accessor(size_t *length) {                              \
        *length = (size_t)(guest_##name##_end - guest_##name##_start);           \
        return guest_##name##_start;                                             \
    }

#endif
