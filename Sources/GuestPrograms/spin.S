/* Spins forever with interrupts off: only a timeout ends it. */
	.section .rodata
	.balign 16
	.globl	guest_spin_start
	.globl	guest_spin_end
	.code16
guest_spin_start:
	cli
1:	jmp	1b
guest_spin_end:

	/* Not executable on the host: these bytes run only inside the guest. */
	.section .note.GNU-stack,"",@progbits
