/* The lossless-stress guest. Every vCPU runs this from 0x1000 in big real
 * mode (EBX = vCPU index): x2APIC on, IVT entries 0x20..0xFF point at
 * per-vector stubs, ready flag set, then HLT with interrupts on.
 *
 * A device vector i (0..31) may arrive as IDT vector 0x40 + i or 0x80 + i
 * (the host flips the MSI data) on either vCPU (the host flips the address);
 * the handler works on i = vector & 0x3F. The host's fence vector 0x21 is
 * i = 33. All 32-bit words:
 *   0x0500 + 4*cpu                ready
 *   0x9000 + 4*i                  sequence: the device writes n here before
 *                                 its n-th signal of vector i
 *   0x9400 + 4*i                  masked: the host sets it while vector i is
 *                                 masked (after a fence), clears it before
 *                                 unmasking
 *   0xA000 + 0x400*cpu + 4*i      the highest sequence this vCPU saw for i
 *   0xB000 + 0x400*cpu + 4*i      handler runs for i while masked was set
 *   0xC000 + 0x400*cpu + 4*i      handler runs for i
 */
#define G(x) ((x) - guest_seq_stress_start + 0x1000)
#include "guest_common.h"

	.section .rodata
	.balign 16
	.globl	guest_seq_stress_start
	.globl	guest_seq_stress_end
	.code16
guest_seq_stress_start:
	VCPU_START
	sti
idle:
	hlt
	jmp	idle

	VECTOR_STUBS

common:
	push	%esi
	push	%ecx
	push	%edx
	movzx	%al, %esi
	and	$0x3f, %esi
	/* ECX = cpu * 0x100 + i: the index of this vCPU's word for i. */
	mov	%ebx, %ecx
	shl	$8, %ecx
	add	%esi, %ecx
	incl	0xc000(,%ecx,4)
	mov	0x9400(,%esi,4), %eax
	test	%eax, %eax
	jz	1f
	incl	0xb000(,%ecx,4)
1:	mov	0x9000(,%esi,4), %eax
	cmp	0xa000(,%ecx,4), %eax
	jbe	2f
	mov	%eax, 0xa000(,%ecx,4)
2:	EOI_RETURN %edx, %ecx, %esi, %eax
guest_seq_stress_end:

	/* Not executable on the host: these bytes run only inside the guest. */
	.section .note.GNU-stack,"",@progbits
