/* Assembler macros shared by the guest programs, here and in other targets'
 * .S files (which include this after defining G(x), their image-relative
 * address). Everything is inside __ASSEMBLER__: C and Swift see nothing. */
#ifndef GUEST_COMMON_H
#define GUEST_COMMON_H
#ifdef __ASSEMBLER__

/* Per-vCPU, per-vector interrupt counters (InterruptCounterLayout.count). */
#define COUNTS 0x8000

/* Turns on this vCPU's x2APIC (IA32_APIC_BASE |= enable bit 11 | x2APIC bit 10),
 * software-enables it with spurious vector 0xFF (SVR, MSR 0x80F), and masks
 * LINT0 (MSR 0x835): KVM points the boot vCPU's LVT0 at the PIC (ExtINT).
 * Clobbers EAX, ECX, EDX. */
.macro X2APIC_ON
	mov	$0x1b, %ecx
	rdmsr
	or	$0xc00, %eax
	wrmsr
	mov	$0x80f, %ecx
	mov	$0x1ff, %eax
	xor	%edx, %edx
	wrmsr
	mov	$0x835, %ecx
	mov	$0x10000, %eax
	xor	%edx, %edx
	wrmsr
.endm

/* IVT[v] = 0000:stub(v) for v = 0x20..0xFF (stubs from VECTOR_STUBS,
 * 8 bytes apart). Clobbers ESI, EDI. */
.macro VECTOR_IVT
	mov	$0x20, %esi
	mov	$G(stubs), %edi
1:	movw	%di, (,%esi,4)
	movw	$0, 2(,%esi,4)
	add	$8, %edi
	inc	%esi
	cmp	$0x100, %esi
	jb	1b
.endm

/* One stub per vector 0x20..0xFF, 8 bytes apart: save EAX, load the vector
 * into AL, jump to `common` (the guest's handler, which pops EAX before IRET). */
.macro VECTOR_STUBS
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
.endm

/* The counting handler for VECTOR_STUBS: count the interrupt for this vCPU
 * (EBX = vCPU index, kept by the idle loop) at the InterruptCounterLayout
 * addresses (0x600 total, 0x700 last vector, COUNTS per vector), EOI
 * (x2APIC MSR 0x80B), IRET. */
.macro COUNTING_HANDLER
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
	mov	$0x80b, %ecx
	xor	%eax, %eax
	xor	%edx, %edx
	wrmsr
	pop	%edx
	pop	%ecx
	pop	%esi
	pop	%eax
	iret
.endm

#endif /* __ASSEMBLER__ */
#endif /* GUEST_COMMON_H */
