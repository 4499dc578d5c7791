/* Halts with interrupts off: nothing can wake it, and with an in-kernel
 * irqchip HLT never reaches the VMM. Only the timeout ends it. */
	.section .rodata
	.balign 16
	.globl	guest_halt_start
	.globl	guest_halt_end
	.code16
guest_halt_start:
	cli
1:	hlt
	jmp	1b
guest_halt_end:

	/* Not executable on the host: these bytes run only inside the guest. */
	.section .note.GNU-stack,"",@progbits
