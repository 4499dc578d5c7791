/* Prints "hello from vCPU n" on the console (port 0x3F8), then the boot
 * vCPU exits with status 42 (port 0xF4). Other vCPUs halt with interrupts
 * off after printing. Checks the console-ready bit (port 0x3FD, bit 5). */
#define G(x) ((x) - guest_hello_start + 0x1000)
	.section .rodata
	.balign 16
	.globl	guest_hello_start
	.globl	guest_hello_end
	.code16
guest_hello_start:
	/* vCPU n > 0 waits until vCPU n-1 has printed (word at 0x500). */
1:	mov	0x500, %eax
	cmp	%ebx, %eax
	jne	1b
	mov	$G(message), %si
2:	mov	$0x3fd, %dx
	in	%dx, %al
	test	$0x20, %al
	jz	2b
	mov	(%si), %al
	test	%al, %al
	jz	3f
	mov	$0x3f8, %dx
	out	%al, %dx
	inc	%si
	jmp	2b
3:	mov	$0x3f8, %dx
	mov	%bl, %al
	add	$'0', %al
	out	%al, %dx
	mov	$'\n', %al
	out	%al, %dx
	incl	0x500
	test	%ebx, %ebx
	jnz	4f
	/* The boot vCPU waits for the others (the VMM writes the count at 0x4F0). */
5:	mov	0x500, %eax
	cmp	0x4f0, %eax
	jb	5b
	mov	$42, %al
	mov	$0xf4, %dx
	out	%al, %dx
4:	cli
	hlt
	jmp	4b
message:
	.asciz	"hello from vCPU "
guest_hello_end:

	/* Not executable on the host: these bytes run only inside the guest. */
	.section .note.GNU-stack,"",@progbits
