/* The device-driver guest: a tiny command interpreter through which the host
 * drives the PCI test device *from inside the guest*, so that every
 * configuration cycle and MMIO access the device sees is a real guest access.
 *
 * Every vCPU turns on its x2APIC and counts interrupts exactly like
 * irq_counter.S (same layout: 0x500 ready, 0x600 totals, 0x700 last vector,
 * 0x8000 + 0x400*cpu + 4*v per-vector counts). vCPU 0 also serves a mailbox
 * (32-bit words):
 *   0x5C0 seq     the host bumps it after filling op and args
 *   0x5C4 op      1 MMIO write32 [a0] = a1       2 MMIO read32 [a0]
 *                 3 config write (a0 -> 0xCF8; a1 -> 0xCFC + (a2 & 3), a3 bytes)
 *                 4 config read  (a0 -> 0xCF8; 0xCFC + (a2 & 3), a3 bytes)
 *                 5 program table: for v < a1, entry at a0 + 16v gets
 *                   address a2 (high 0), data a3 + (v & a4), vector control a5
 *                 6 exit with status a0
 *                 7 strided write: for i < a1, [a0 + i*a2] = a3
 *   0x5C8..0x5DC  a0..a5
 *   0x5E0 result
 *   0x5E4 done    vCPU 0 copies seq here when the command has finished
 * The host wakes vCPU 0 with any interrupt after bumping seq. Commands run
 * with interrupts off; what they raise is taken when vCPU 0 halts again.
 */
#define G(x) ((x) - guest_msix_driver_start + 0x1000)
#include "guest_common.h"
#define SEQ 0x5c0
#define OP 0x5c4
#define A0 0x5c8
#define A1 0x5cc
#define A2 0x5d0
#define A3 0x5d4
#define A4 0x5d8
#define A5 0x5dc
#define RESULT 0x5e0
#define DONE 0x5e4

/* Commands 3 and 4: CONFIG_ADDRESS (port 0xCF8) <- a0, and DX = CONFIG_DATA
 * (port 0xCFC) + (a2 & 3), the byte lane the access starts at.
 * Clobbers EAX, EDX. */
.macro CONFIG_SELECT
	mov	$0xcf8, %dx
	mov	A0, %eax
	out	%eax, %dx
	mov	A2, %edx
	and	$3, %edx
	add	$0xcfc, %edx
.endm

	.section .rodata
	.balign 16
	.globl	guest_msix_driver_start
	.globl	guest_msix_driver_end
	.code16
guest_msix_driver_start:
	VCPU_START
	IDLE_UNLESS_VCPU0 serve, other_cpu

	/* vCPU 0: sleep until seq != done, then run the command. STI's one-
	 * instruction shadow makes "sti; hlt" atomic: a wake-up that arrives
	 * after the check still ends the HLT. */
serve:
	cli
	mov	SEQ, %eax
	cmp	DONE, %eax
	jne	command
	sti
	hlt
	jmp	serve

command:
	mov	OP, %eax
	cmp	$1, %eax
	je	op_mmio_write
	cmp	$2, %eax
	je	op_mmio_read
	cmp	$3, %eax
	je	op_config_write
	cmp	$4, %eax
	je	op_config_read
	cmp	$5, %eax
	je	op_program_table
	cmp	$6, %eax
	je	op_exit
	cmp	$7, %eax
	je	op_strided_write
	jmp	finished

op_mmio_write:
	mov	A0, %edi
	mov	A1, %eax
	movl	%eax, (%edi)
	jmp	finished

op_mmio_read:
	mov	A0, %edi
	movl	(%edi), %eax
	mov	%eax, RESULT
	jmp	finished

op_config_write:
	CONFIG_SELECT
	mov	A1, %eax
	cmpl	$1, A3
	je	1f
	cmpl	$2, A3
	je	2f
	out	%eax, %dx
	jmp	finished
1:	out	%al, %dx
	jmp	finished
2:	out	%ax, %dx
	jmp	finished

op_config_read:
	CONFIG_SELECT
	xor	%eax, %eax
	cmpl	$1, A3
	je	1f
	cmpl	$2, A3
	je	2f
	in	%dx, %eax
	jmp	3f
1:	in	%dx, %al
	jmp	3f
2:	in	%dx, %ax
3:	mov	%eax, RESULT
	jmp	finished

op_program_table:
	mov	A0, %edi
	xor	%esi, %esi
1:	cmp	A1, %esi
	jae	finished
	mov	A2, %eax
	movl	%eax, (%edi)
	movl	$0, 4(%edi)
	mov	%esi, %eax
	and	A4, %eax
	add	A3, %eax
	movl	%eax, 8(%edi)
	mov	A5, %eax
	movl	%eax, 12(%edi)
	add	$16, %edi
	inc	%esi
	jmp	1b

op_exit:
	mov	A0, %eax
	mov	$0xf4, %dx
	out	%al, %dx
	jmp	finished

op_strided_write:
	mov	A0, %edi
	mov	A1, %ecx
	mov	A2, %edx
	mov	A3, %eax
	test	%ecx, %ecx
	jz	finished
1:	movl	%eax, (%edi)
	add	%edx, %edi
	dec	%ecx
	jnz	1b

finished:
	mov	SEQ, %eax
	mov	%eax, DONE
	jmp	serve

	VECTOR_STUBS
	COUNTING_HANDLER
guest_msix_driver_end:

	/* Not executable on the host: these bytes run only inside the guest. */
	.section .note.GNU-stack,"",@progbits
