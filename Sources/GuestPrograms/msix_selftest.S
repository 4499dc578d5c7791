/* A self-contained guest for `irqfd run`: it finds the PCI test device's
 * MSI-X function where the tiny VMM contract puts it (TinyVM's
 * TinyVMContract article: 00:01.0, table in BAR1) and checks the interrupt story on
 * its own, so that `irqfd run --delivery irqfd|relay|userspace` can be
 * compared by exit status alone:
 *   1. enable MSI-X (Message Control, config 00:01.0 offset 0x42) and program
 *      entry 0: APIC 0, vector 0x40, unmasked;
 *   2. ring DOORBELL five times, each time waiting for the interrupt;
 *   3. mask entry 0, ring once more, wait until SIGNALED reads 6;
 *   4. read the PBA (bit 0 should be set), unmask, wait for the sixth interrupt;
 *   5. exit with status (interrupts taken) | (PBA bit 0 << 4): 0x16 = 22.
 * A mode that loses or duplicates an interrupt exits with another status,
 * or hangs and times out.
 */
#define G(x) ((x) - guest_msix_selftest_start + 0x1000)
#include "guest_common.h"
#define COUNT 0x600
#define REGS 0xfe000000
#define TABLE 0xfe010000
#define PBA 0xfe018000

	.section .rodata
	.balign 16
	.globl	guest_msix_selftest_start
	.globl	guest_msix_selftest_end
	.code16
guest_msix_selftest_start:
	cli
	X2APIC_ON
	/* IVT[0x40] = 0000:handler. */
	movw	$G(handler), 0x100
	movw	$0, 0x102
	movl	$0, COUNT

	/* 1. MSI-X on: CONFIG_ADDRESS = 00:01.0 register 0x40; Message Control is bytes 2-3. */
	mov	$0xcf8, %dx
	mov	$0x80000840, %eax
	out	%eax, %dx
	mov	$0xcfe, %dx
	mov	$0x8000, %ax
	out	%ax, %dx
	mov	$TABLE, %edi
	movl	$0xfee00000, (%edi)
	movl	$0, 4(%edi)
	movl	$0x40, 8(%edi)
	movl	$0, 12(%edi)

	/* 2. Five doorbells, one interrupt each. */
	xor	%esi, %esi
1:	inc	%esi
	mov	$REGS, %edi
	movl	$0, 8(%edi)
2:	sti
	hlt
	cli
	cmp	COUNT, %esi
	jne	2b
	cmp	$5, %esi
	jb	1b

	/* 3. Masked: the sixth signal must wait. */
	mov	$TABLE, %edi
	movl	$1, 12(%edi)
	mov	$REGS, %edi
	movl	$0, 8(%edi)
3:	movl	0x10(%edi), %eax
	cmp	$6, %eax
	jne	3b

	/* 4. The PBA shows it; unmasking delivers it. */
	mov	$PBA, %edi
	movl	(%edi), %ecx
	and	$1, %ecx
	shl	$4, %ecx
	mov	$TABLE, %edi
	movl	$0, 12(%edi)
4:	sti
	hlt
	cli
	cmpl	$6, COUNT
	jb	4b

	/* 5. Exit with what we saw. */
	mov	COUNT, %eax
	or	%ecx, %eax
	mov	$0xf4, %dx
	out	%al, %dx
5:	hlt
	jmp	5b

handler:
	push	%eax
	push	%ecx
	push	%edx
	incl	COUNT
	mov	$0x80b, %ecx
	xor	%eax, %eax
	xor	%edx, %edx
	wrmsr
	pop	%edx
	pop	%ecx
	pop	%eax
	iret
guest_msix_selftest_end:

	/* Not executable on the host: these bytes run only inside the guest. */
	.section .note.GNU-stack,"",@progbits
