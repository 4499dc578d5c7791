// C helpers for the reliability tests.
//
// Hostile guest programs: 16-bit x86 assembly (big real mode) in the .S files
// beside this header, each a flat image that the tiny VMM loads at
// guest-physical 0x1000. Each attacks the VMM differently; the tests check
// that every one ends with a clear message and the right exit status.
#ifndef CRELIABILITY_H
#define CRELIABILITY_H
#include <stddef.h>

/// Writes every size at odd alignments over MMIO, past RAM, I/O ports and
/// PCI configuration space, then exits with status 7 (scribble.S).
const unsigned char *hostile_scribble(size_t *length);
/// Smashes its IVT, stack and own code, then runs wild forever (smash.S).
const unsigned char *hostile_smash(size_t *length);
/// An empty IDT and INT 3: a triple fault (triple.S).
const unsigned char *hostile_triple(size_t *length);
/// CLI; HLT: asleep forever (halt.S).
const unsigned char *hostile_halt(size_t *length);
/// The lossless-stress guest: per device vector, the highest sequence number
/// seen and handler runs while the host said masked (seq_stress.S).
const unsigned char *guest_seq_stress_image(size_t *length);

/// Bytes malloc has handed out and not had back, over every arena and
/// mmapped block (glibc mallinfo2: uordblks + hblkhd). Swift's Glibc module
/// does not import <malloc.h>.
size_t reliability_heap_in_use(void);
#endif
