/* More assembler macros for the virtio-blk guests (virtio_blk.S,
 * virtio_blk_bench.S, virtio_blk_stress.S), next to include/virtio_common.h:
 * these are private to this target's .S files, so they sit beside them. They
 * assemble to exactly the instructions each guest had inline. Everything is
 * inside __ASSEMBLER__: C and Swift see nothing. */
#ifndef VIRTIO_BLK_COMMON_H
#define VIRTIO_BLK_COMMON_H
#ifdef __ASSEMBLER__

/* The address (below 4 GiB: its high half 0) and length of the split
 * virtqueue descriptor at `off`(%edx) (virtio 1.2 section 2.7.5): `addr` is a
 * register, `len` a number. Its flags and next are written apart. */
.macro DESC_ADDR_LEN off, addr, len
	mov	\addr, \off(%edx)
	movl	$0, \off + 4(%edx)
	movl	$\len, \off + 8(%edx)
.endm

/* The data descriptor of request i = ESI, the second of its chain at
 * 16(%edx): 512 bytes at `buffers` + 512 i. Clobbers EAX. */
.macro BLK_DATA_DESC buffers
	mov	%esi, %eax
	shl	$9, %eax
	add	$\buffers, %eax
	DESC_ADDR_LEN 16, %eax, 512
.endm

/* The status descriptor of request i = ESI, the last of its chain at
 * 32(%edx): the byte at `status` + i, device-writable (flags WRITE), no
 * next (virtio 1.2 section 5.2.6). Clobbers EAX. */
.macro BLK_STATUS_DESC status
	lea	\status(%esi), %eax
	DESC_ADDR_LEN 32, %eax, 1
	movl	$2, 44(%edx)
.endm

#endif /* __ASSEMBLER__ */
#endif /* VIRTIO_BLK_COMMON_H */
