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
#include "guest_common.h"

	.section .rodata
	.balign 16
	.globl	guest_irq_counter_start
	.globl	guest_irq_counter_end
	.code16
guest_irq_counter_start:
	VCPU_START
	sti
idle:
	hlt
	mov	0x580, %eax
	test	%eax, %eax
	jz	idle
	mov	$0xf4, %dx
	out	%al, %dx
	jmp	idle

	VECTOR_STUBS
	COUNTING_HANDLER
guest_irq_counter_end:

	/* Not executable on the host: these bytes run only inside the guest. */
	.section .note.GNU-stack,"",@progbits
