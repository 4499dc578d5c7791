/* A hostile guest that ends well: it writes and reads, in every size (1, 2
 * and 4 bytes) and at odd alignments, where no guest should:
 *   - the MMIO window 0xFE000000..0xFE020000 (the test device's BARs when it
 *     is plugged in, unclaimed addresses otherwise), stepping 0x1003 bytes;
 *   - guest-physical addresses past the end of RAM (16 MiB..16 MiB+64 KiB);
 *   - every I/O port below 0x400 except the exit, fault-report and console
 *     ports;
 *   - PCI configuration space through 0xCF8/0xCFC, with addresses covering
 *     bus 0 devices 0 and 1 (all functions and registers), the enable bit
 *     cleared, and garbage buses.
 * Interrupts stay off, so whatever it programs cannot interrupt it. Then it
 * prints "scribbled" and exits with status 7: the VMM must survive all of it.
 */
#define G(x) ((x) - guest_scribble_start + 0x1000)
	.section .rodata
	.balign 16
	.globl	guest_scribble_start
	.globl	guest_scribble_end
	.code16
guest_scribble_start:
	cli
	/* The MMIO window, then past RAM: byte, word and dword at odd offsets. */
	mov	$0xfe000000, %esi
	mov	$0xfe020000, %edi
	call	scribble
	mov	$0x01000000, %esi
	mov	$0x01010000, %edi
	call	scribble

	/* Every port below 0x400, all three sizes, out then in. */
	xor	%edx, %edx
1:	cmp	$0xf4, %dx
	je	2f
	cmp	$0xf5, %dx
	je	2f
	cmp	$0x3f8, %dx
	je	2f
	mov	$0x5a5a5a5a, %eax
	outb	%al, %dx
	outw	%ax, %dx
	outl	%eax, %dx
	inb	%dx, %al
	inw	%dx, %ax
	inl	%dx, %eax
2:	inc	%edx
	cmp	$0x400, %edx
	jb	1b

	/* PCI configuration space: 0x80000000 | i << 2 for i < 0x400 covers
	 * devices 0 and 1, every function and register; then the same with
	 * the enable bit clear and a garbage bus. */
	xor	%ecx, %ecx
3:	mov	%ecx, %eax
	shl	$2, %eax
	or	$0x80000000, %eax
	call	config
	mov	%ecx, %eax
	shl	$2, %eax
	or	$0x00ff0000, %eax
	call	config
	inc	%ecx
	cmp	$0x400, %ecx
	jb	3b

	/* Still alive: say so and exit with status 7. */
	mov	$G(message), %esi
	mov	$0x3f8, %dx
4:	mov	(%esi), %al
	test	%al, %al
	jz	5f
	out	%al, %dx
	inc	%esi
	jmp	4b
5:	mov	$7, %al
	out	%al, $0xf4
6:	jmp	6b

	/* Writes then reads byte, word and dword at esi, esi+1 and esi+3, for
	 * esi from %esi below %edi in steps of 0x1003. */
scribble:
	movb	$0xa5, (%esi)
	movw	$0xa5a5, 1(%esi)
	movl	$0xdeadbeef, 3(%esi)
	movl	$0xffffffff, 8(%esi)
	movb	(%esi), %al
	movw	1(%esi), %ax
	movl	3(%esi), %eax
	add	$0x1003, %esi
	cmp	%edi, %esi
	jb	scribble
	ret

	/* One configuration address in %eax: select it, then write and read
	 * every size at every byte of the data window. */
config:
	push	%eax
	mov	$0xcf8, %dx
	outl	%eax, %dx
	mov	$0xcfc, %dx
	mov	$0xffffffff, %eax
	outl	%eax, %dx
	outw	%ax, %dx
	inc	%dx
	outb	%al, %dx
	inc	%dx
	outw	%ax, %dx
	inc	%dx
	outb	%al, %dx
	mov	$0xcfc, %dx
	inl	%dx, %eax
	inc	%dx
	inb	%dx, %al
	inc	%dx
	inw	%dx, %ax
	/* A partial write of the address register itself. */
	mov	$0xcf9, %dx
	outb	%al, %dx
	pop	%eax
	ret

message:
	.asciz	"scribbled\n"
guest_scribble_end:

	/* Not executable on the host: these bytes run only inside the guest. */
	.section .note.GNU-stack,"",@progbits
