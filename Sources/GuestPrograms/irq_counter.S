/* The interrupt-counting guest.
 *
 * Every vCPU runs this from 0x1000 in big real mode (EBX = vCPU index):
 * it turns on its x2APIC, points IVT entries 0x20..0xFF at per-vector stubs,
 * marks itself ready and halts with interrupts on. Each interrupt bumps
 * counters the host reads (all 32-bit words):
 *   0x0500 + 4*cpu             ready (1 once the APIC and IVT are set up)
 *   0x0580                     command: the host writes v != 0, then wakes the
 *                              guest with any interrupt; it exits with status v
 *   0x0600 + 4*cpu             interrupts taken by that vCPU
 *   0x0700 + 4*cpu             the last vector that vCPU took
 *   0x8000 + 0x400*cpu + 4*v   interrupts of vector v taken by that vCPU
 * Image addresses are written (label - start + 0x1000): no relocations.
 */
#define G(x) ((x) - guest_irq_counter_start + 0x1000)
#define COUNTS 0x8000

	.section .rodata
	.balign 16
	.globl	guest_irq_counter_start
	.globl	guest_irq_counter_end
	.code16
guest_irq_counter_start:
	cli
	/* x2APIC on: IA32_APIC_BASE |= enable (bit 11) | x2APIC (bit 10). */
	mov	$0x1b, %ecx
	rdmsr
	or	$0xc00, %eax
	wrmsr
	/* SVR: software-enable the APIC, spurious vector 0xFF. */
	mov	$0x80f, %ecx
	mov	$0x1ff, %eax
	xor	%edx, %edx
	wrmsr
	/* Mask LINT0: KVM points the boot vCPU's LVT0 at the PIC (ExtINT). */
	mov	$0x835, %ecx
	mov	$0x10000, %eax
	xor	%edx, %edx
	wrmsr
	/* IVT[v] = 0000:stub(v) for v = 0x20..0xFF; stubs are 8 bytes apart. */
	mov	$0x20, %esi
	mov	$G(stubs), %edi
1:	movw	%di, (,%esi,4)
	movw	$0, 2(,%esi,4)
	add	$8, %edi
	inc	%esi
	cmp	$0x100, %esi
	jb	1b
	movl	$1, 0x500(,%ebx,4)
	sti
idle:
	hlt
	mov	0x580, %eax
	test	%eax, %eax
	jz	idle
	mov	$0xf4, %dx
	out	%al, %dx
	jmp	idle

	/* One stub per vector: save EAX, load the vector, join the common path. */
	.balign	8
stubs:
	.set	vec, 0x20
	.rept	0xe0
	.balign	8
	push	%eax
	mov	$vec, %al
	jmp	common
	.set	vec, vec + 1
	.endr

common:
	push	%esi
	movzx	%al, %esi
	mov	%esi, 0x700(,%ebx,4)
	incl	0x600(,%ebx,4)
	mov	%ebx, %eax
	shl	$8, %eax
	add	%eax, %esi
	incl	COUNTS(,%esi,4)
	push	%ecx
	push	%edx
	/* EOI: x2APIC EOI register (MSR 0x80B) <- 0. */
	mov	$0x80b, %ecx
	xor	%eax, %eax
	xor	%edx, %edx
	wrmsr
	pop	%edx
	pop	%ecx
	pop	%esi
	pop	%eax
	iret
guest_irq_counter_end:

	/* Not executable on the host: these bytes run only inside the guest. */
	.section .note.GNU-stack,"",@progbits
