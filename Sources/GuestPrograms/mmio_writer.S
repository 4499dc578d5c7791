/* MMIO writer: the host fills three words before start, the guest makes
 * `count` 16-bit writes of `value` to `address`, then exits with status 0.
 *   0x5C8 address (32-bit guest-physical)   0x5CC value (low 16 bits)
 *   0x5D0 count
 * Used to show that a write an ioeventfd serves makes no exit. */
#define G(x) ((x) - guest_mmio_writer_start + 0x1000)
	.section .rodata
	.balign 16
	.globl	guest_mmio_writer_start
	.globl	guest_mmio_writer_end
	.code16
guest_mmio_writer_start:
	cli
	mov	0x5c8, %edi
	mov	0x5cc, %eax
	mov	0x5d0, %ecx
	test	%ecx, %ecx
	jz	2f
1:	movw	%ax, (%edi)
	dec	%ecx
	jnz	1b
2:	xor	%al, %al
	out	%al, $0xf4
	hlt
guest_mmio_writer_end:

	/* Not executable on the host: these bytes run only inside the guest. */
	.section .note.GNU-stack,"",@progbits
