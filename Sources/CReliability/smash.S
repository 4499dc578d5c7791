/* A hostile guest that wrecks itself: it fills the whole interrupt vector
 * table with FFFF:FFFF, fills its stack area (0x6000..0x7000) with garbage,
 * points SP into the middle of nowhere, then overwrites the code it is
 * about to run with 0xFF bytes (FF FF is an invalid opcode). The #UD that
 * follows vectors through the smashed IVT into zeroed RAM, where the guest
 * runs on forever: only the VMM's timeout ends it.
 */
#define G(x) ((x) - guest_smash_start + 0x1000)
	.section .rodata
	.balign 16
	.globl	guest_smash_start
	.globl	guest_smash_end
	.code16
guest_smash_start:
	cli
	/* The IVT: 256 vectors of FFFF:FFFF. */
	xor	%edi, %edi
1:	movl	$0xffffffff, (%edi)
	add	$4, %edi
	cmp	$0x400, %edi
	jb	1b
	/* The stack area. */
	mov	$0x6000, %edi
2:	movl	$0xcccccccc, (%edi)
	add	$4, %edi
	cmp	$0x7000, %edi
	jb	2b
	mov	$0x1, %sp
	/* The code ahead: four 0xFF bytes where the next instructions were. */
	mov	$G(ahead), %edi
	movl	$0xffffffff, (%edi)
ahead:
	nop
	nop
	nop
	nop
	/* Not reached: the bytes above are FF FF FF FF by now. */
	mov	$0, %al
	out	%al, $0xf4
guest_smash_end:

	/* Not executable on the host: these bytes run only inside the guest. */
	.section .note.GNU-stack,"",@progbits
