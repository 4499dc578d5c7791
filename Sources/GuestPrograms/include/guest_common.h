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

/* A vCPU's start (EBX = vCPU index): interrupts off, its x2APIC on
 * (X2APIC_ON), IVT 0x20..0xFF at VECTOR_STUBS (VECTOR_IVT), then its ready
 * flag at 0x500 + 4*cpu. Interrupts stay off. Clobbers EAX, ECX, EDX, ESI, EDI. */
.macro VCPU_START
	cli
	X2APIC_ON
	VECTOR_IVT
	movl	$1, 0x500(,%ebx,4)
.endm

/* After VCPU_START: vCPU 0 (EBX = 0) jumps to `vcpu0`; every other vCPU
 * idles at `idle` with interrupts on, for good. */
.macro IDLE_UNLESS_VCPU0 vcpu0, idle
	test	%ebx, %ebx
	jz	\vcpu0
\idle:	sti
	hlt
	jmp	\idle
.endm

/* Selects the PCI test device's Message Control (00:01.0, config offset
 * 0x42: the high half of the DWORD at 0x40) through CONFIG_ADDRESS (port
 * 0xCF8) and leaves DX = 0xCFE (CONFIG_DATA + 2: the lane of those bytes).
 * Clobbers EAX, EDX. */
.macro TEST_DEVICE_MSIX_CONTROL
	mov	$0xcf8, %dx
	mov	$0x80000840, %eax
	out	%eax, %dx
	mov	$0xcfe, %dx
.endm

/* MSI-X on for the PCI test device: Message Control <- 0x8000 (MSI-X
 * Enable, PCI Local Bus 3.0 section 6.8.2.3). Clobbers EAX, EDX. */
.macro TEST_DEVICE_MSIX_ON
	TEST_DEVICE_MSIX_CONTROL
	mov	$0x8000, %ax
	out	%ax, %dx
.endm

/* Exits the guest with status AL through the tiny VMM's exit port (0xF4),
 * then halts should the VMM run it on. Clobbers DX. */
.macro EXIT_AL
	mov	$0xf4, %dx
	out	%al, %dx
	hlt
.endm

/* End of interrupt: the x2APIC EOI register (MSR 0x80B) <- 0.
 * Clobbers EAX, ECX, EDX. */
.macro X2APIC_EOI
	mov	$0x80b, %ecx
	xor	%eax, %eax
	xor	%edx, %edx
	wrmsr
.endm

/* A handler's way out: X2APIC_EOI, then pop each of `regs` (the registers
 * the handler and its stub pushed, last pushed first) and IRET. */
.macro EOI_RETURN regs:vararg
	X2APIC_EOI
	.irp	reg, \regs
	pop	\reg
	.endr
	iret
.endm

/* IVT[vector] = 0000:handler (a real-mode interrupt vector). */
.macro IVT_ENTRY vector, handler
	movw	$G(\handler), 4 * \vector
	movw	$0, 4 * \vector + 2
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
	EOI_RETURN %edx, %ecx, %esi, %eax
.endm

#endif /* __ASSEMBLER__ */
#endif /* GUEST_COMMON_H */
