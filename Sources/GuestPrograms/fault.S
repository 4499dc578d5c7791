/* Executes UD2 (invalid opcode, vector 6) with no handler installed: the
 * tiny VMM's default IVT stub reports the vector and the run fails. */
	.section .rodata
	.balign 16
	.globl	guest_fault_start
	.globl	guest_fault_end
	.code16
guest_fault_start:
	ud2
guest_fault_end:

	/* Not executable on the host: these bytes run only inside the guest. */
	.section .note.GNU-stack,"",@progbits
