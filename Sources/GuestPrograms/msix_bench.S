/* The MSI-X benchmark guest (`irqfd bench`, sections msix_bring_up and
 * first_interrupt): it drives the PCI test device at 00:01.0 itself, so the
 * emulator sees real guest configuration cycles and MMIO writes, one exit
 * each. The host programs every entry (masked) before the run and writes:
 *   0x5C0 mode     1 linux_order: enable MSI-X, then clear each entry's
 *                    mask one write at a time, as Linux's request_irq does
 *                  2 function_mask_batch: enable with the function masked,
 *                    clear every entry's mask, clear the function mask
 *                  3 first interrupt: for each vector in turn, ring it while
 *                    masked, wait for its PBA bit, unmask it and wait for
 *                    the handler (IVT 0x40: every entry's data is 0x40)
 *   0x5C4 vectors  how many (1...2048)
 * Port 0xE0 marks for the host's clock: 1 before the first write, 2 after
 * the last, 3 first thing in the handler. 0x5C8 counts interrupts taken.
 * Exits with status 0 when done. Loops are kept tight: this machine's KVM
 * emulates guest code at about a million instructions a second.
 */
#define G(x) ((x) - guest_msix_bench_start + 0x1000)
#include "guest_common.h"
#define MODE 0x5c0
#define VECTORS 0x5c4
#define COUNT 0x5c8
#define MARK 0xe0
#define REGS 0xfe000000
#define TABLE 0xfe010000
#define PBA 0xfe018000

	.section .rodata
	.balign 16
	.globl	guest_msix_bench_start
	.globl	guest_msix_bench_end
	.code16
guest_msix_bench_start:
	cli
	cmpl	$3, MODE
	je	first_interrupt

	/* Bring-up. CONFIG_ADDRESS = 00:01.0 register 0x40; Message Control is bytes 2-3. */
	mov	$MARK, %dx
	mov	$1, %al
	out	%al, %dx
	TEST_DEVICE_MSIX_CONTROL
	mov	$0x8000, %ax
	cmpl	$2, MODE
	jne	1f
	or	$0x4000, %ax		/* function mask on */
1:	out	%ax, %dx
	mov	$(TABLE + 12), %edi
	mov	VECTORS, %ecx
2:	movl	$0, (%edi)
	add	$16, %edi
	dec	%ecx
	jnz	2b
	cmpl	$2, MODE
	jne	3f
	mov	$0x8000, %ax		/* function mask off: every vector at once */
	out	%ax, %dx
3:	mov	$MARK, %dx
	mov	$2, %al
	out	%al, %dx
	jmp	exit

first_interrupt:
	X2APIC_ON
	IVT_ENTRY 0x40, handler
	movl	$0, COUNT
	TEST_DEVICE_MSIX_ON
	xor	%esi, %esi		/* v */
4:	cmp	VECTORS, %esi
	jae	exit
	mov	$REGS, %edi
	movl	%esi, 8(%edi)		/* DOORBELL v, masked: it becomes pending */
	mov	%esi, %ebx
	shr	$5, %ebx
	shl	$2, %ebx
	add	$PBA, %ebx
	mov	%esi, %ecx
	and	$31, %ecx
5:	movl	(%ebx), %eax		/* wait for the PBA bit */
	bt	%ecx, %eax
	jnc	5b
	mov	%esi, %edi
	shl	$4, %edi
	add	$(TABLE + 12), %edi
	lea	1(%esi), %ebp
	movl	$0, (%edi)		/* unmask: the pending interrupt is delivered */
6:	sti
	hlt
	cli
	cmp	COUNT, %ebp
	ja	6b
	inc	%esi
	jmp	4b

exit:
	xor	%al, %al
	out	%al, $0xf4
7:	hlt
	jmp	7b

handler:
	push	%eax
	push	%ecx
	push	%edx
	mov	$MARK, %dx
	mov	$3, %al
	out	%al, %dx
	incl	COUNT
	EOI_RETURN %edx, %ecx, %eax
guest_msix_bench_end:

	/* Not executable on the host: these bytes run only inside the guest. */
	.section .note.GNU-stack,"",@progbits
