/* A triple fault: an empty real-mode IDT (limit 0), then INT 3. The vector
 * is beyond the limit (#GP), and so are #GP's and #DF's own vectors: the CPU
 * shuts down. Standard KVM reports KVM_EXIT_SHUTDOWN (a fault); a KVM that
 * resumes a shut-down vCPU instead leaves only the VMM's timeout to end it.
 */
#define G(x) ((x) - guest_triple_start + 0x1000)
	.section .rodata
	.balign 16
	.globl	guest_triple_start
	.globl	guest_triple_end
	.code16
guest_triple_start:
	cli
	lidt	G(empty)
	int	$3
1:	jmp	1b
	.balign	8
empty:
	.word	0
	.long	0
guest_triple_end:

	/* Not executable on the host: these bytes run only inside the guest. */
	.section .note.GNU-stack,"",@progbits
