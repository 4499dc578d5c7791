/* Assembler macros shared by the virtio guest programs (virtio_blk.S,
 * virtio_blk_bench.S, virtio_blk_stress.S, virtio_net.S, virtio_fs.S) for the tiny
 * VMM's virtio-pci device at 00:02.0 (virtio 1.2 sections 3.1.1, 4.1.4). They assemble to
 * exactly the instructions each guest had inline. Everything is inside
 * __ASSEMBLER__: C and Swift see nothing. */
#ifndef VIRTIO_COMMON_H
#define VIRTIO_COMMON_H
#ifdef __ASSEMBLER__

/* The routine `cfg_read`: configuration read (mechanism #1, ports 0xCF8 /
 * 0xCFC) of the DWORD at offset %eax of 00:02.0 into %eax. A routine, not
 * inline code, because the guests call it from several places.
 * Clobbers EAX, EDX. */
.macro VIRTIO_CFG_READ
cfg_read:
	and	$0xfc, %eax
	or	$0x80001000, %eax
	mov	$0xcf8, %dx
	out	%eax, %dx
	mov	$0xcfc, %dx
	in	%dx, %eax
	ret
.endm

/* Records BAR1 (the MSI-X table) at `bar1`, keeps BAR4 (the virtio
 * structures) in EBP, then walks the PCI capability list from 0x34 (calling
 * cfg_read): the MSI-X capability (ID 0x11) goes to `msixcap` as its config
 * offset; the virtio vendor capabilities (ID 0x09, virtio 1.2 section 4.1.4)
 * of cfg_type 1 (common) and 2 (notify) go to `common` / `notify` as
 * addresses (BAR4 + offset), and the notify capability's
 * notify_off_multiplier to `mult`. `common`, `notify` and `msixcap` are
 * zeroed first; when the list ends, one left 0 means that capability is
 * missing: jumps to `fail` with AL = 2 (the guests' exit status for a failed
 * walk).
 * Clobbers EAX, ECX, EDX, ESI, EDI, EBP (BAR4). */
.macro VIRTIO_PCI_WALK common, notify, mult, msixcap, bar1, fail
	/* BAR1 (MSI-X) and BAR4 (virtio structures). */
	mov	$0x14, %eax
	call	cfg_read
	and	$0xfffffff0, %eax
	mov	%eax, \bar1
	mov	$0x20, %eax
	call	cfg_read
	and	$0xfffffff0, %eax
	mov	%eax, %ebp
	movl	$0, \common
	movl	$0, \notify
	movl	$0, \msixcap
	/* Walk the capability list from 0x34. */
	mov	$0x34, %eax
	call	cfg_read
	movzx	%al, %esi
.Lvirtio_walk\@:
	test	%esi, %esi
	jz	.Lvirtio_walked\@
	mov	%esi, %eax
	call	cfg_read
	mov	%eax, %edi			/* id, next, len, cfg_type */
	cmp	$0x11, %al
	jne	1f
	mov	%esi, \msixcap
	jmp	.Lvirtio_next\@
1:	cmp	$0x09, %al
	jne	.Lvirtio_next\@
	lea	8(%esi), %eax		/* offset within the BAR */
	call	cfg_read
	add	%ebp, %eax
	mov	%edi, %ecx
	shr	$24, %ecx
	cmp	$1, %cl
	jne	2f
	mov	%eax, \common
	jmp	.Lvirtio_next\@
2:	cmp	$2, %cl
	jne	.Lvirtio_next\@
	mov	%eax, \notify
	lea	16(%esi), %eax
	call	cfg_read
	mov	%eax, \mult
.Lvirtio_next\@:
	mov	%edi, %eax
	movzx	%ah, %esi
	jmp	.Lvirtio_walk\@
.Lvirtio_walked\@:
	mov	$2, %al
	cmpl	$0, \common
	je	\fail
	cmpl	$0, \notify
	je	\fail
	cmpl	$0, \msixcap
	je	\fail
.endm

/* The start of a virtio driver guest, at its image's first byte: every vCPU
 * starts (guest_common.h's VCPU_START) and all but vCPU 0 idle at `idle`;
 * then the routine cfg_read (VIRTIO_CFG_READ), the label `fail` (exit with
 * status AL), and at `driver` vCPU 0's VIRTIO_PCI_WALK into `common`,
 * `notify`, `mult`, `msixcap` and `bar1` (BAR4 left in EBP). vCPU 0's driver
 * code follows it. */
.macro VIRTIO_GUEST_ENTRY common, notify, mult, msixcap, bar1
	VCPU_START
	IDLE_UNLESS_VCPU0 driver, idle
	VIRTIO_CFG_READ
fail:	EXIT_AL
driver:
	VIRTIO_PCI_WALK \common, \notify, \mult, \msixcap, \bar1, fail
.endm

/* With EDI = the common configuration structure and queue 0 selected: queue
 * size `size`, MSI-X vector 1 (jumps to `fail` with AL = 4 if the device does
 * not keep it), and the descriptor table, driver area and device area at
 * `desc`, `avail`, `used` (below 4 GiB). Clobbers EAX. */
.macro VIRTIO_QUEUE0_SETUP size, desc, avail, used, fail
	movw	$\size, 0x18(%edi)
	movw	$1, 0x1a(%edi)
	cmpw	$1, 0x1a(%edi)
	mov	$4, %al
	jne	\fail
	movl	$\desc, 0x20(%edi)
	movl	$0, 0x24(%edi)
	movl	$\avail, 0x28(%edi)
	movl	$0, 0x2c(%edi)
	movl	$\used, 0x30(%edi)
	movl	$0, 0x34(%edi)
.endm

/* MSI-X on (Message Control bit 15) for the virtio device at 00:02.0, whose
 * MSI-X capability sits at config offset `msixcap` (a word in memory):
 * read-modify-write of the capability's first DWORD through cfg_read and
 * CONFIG_ADDRESS / CONFIG_DATA (ports 0xCF8 / 0xCFC).
 * Clobbers EAX, ECX, EDX. */
.macro VIRTIO_MSIX_ENABLE msixcap
	mov	\msixcap, %eax
	call	cfg_read
	or	$0x80000000, %eax
	mov	%eax, %ecx
	mov	\msixcap, %eax
	or	$0x80001000, %eax
	mov	$0xcf8, %dx
	out	%eax, %dx
	mov	%ecx, %eax
	mov	$0xcfc, %dx
	out	%eax, %dx
.endm

/* With EDI = the common configuration structure and ECX = q: selects queue
 * q (jumps to `fail` with AL = 4 if the device has no such queue, or does not
 * keep MSI-X vector q + 1), sets its size `size` and vector q + 1, and places
 * its descriptor table, driver area and device area at 0x20000 + 0x10000 q,
 * + 0x1000, + 0x2000 (the driver and device areas' idx zeroed first: fresh
 * rings). Leaves EAX = the queue's notify address: `notify` + queue_notify_off
 * * `mult` (virtio 1.2 section 4.1.4.4). The caller stores it and sets
 * queue_enable. Clobbers EAX, EDX. */
.macro VIRTIO_QUEUE_SETUP_AT_ECX size, notify, mult, fail
	movw	%cx, 0x16(%edi)
	mov	$4, %al
	cmpw	$0, 0x18(%edi)
	je	\fail
	movw	$\size, 0x18(%edi)
	lea	1(%ecx), %eax
	movw	%ax, 0x1a(%edi)
	cmpw	%ax, 0x1a(%edi)
	mov	$4, %al
	jne	\fail
	mov	%ecx, %eax
	shl	$16, %eax
	add	$0x20000, %eax
	movl	$0, 0x1000(%eax)	/* fresh rings: avail and used idx 0 */
	movl	$0, 0x2000(%eax)
	mov	%eax, 0x20(%edi)
	movl	$0, 0x24(%edi)
	add	$0x1000, %eax
	mov	%eax, 0x28(%edi)
	movl	$0, 0x2c(%edi)
	add	$0x1000, %eax
	mov	%eax, 0x30(%edi)
	movl	$0, 0x34(%edi)
	movzwl	0x1e(%edi), %eax	/* queue_notify_off * multiplier */
	mull	\mult
	add	\notify, %eax
.endm

/* With EDI = the common configuration structure: queues 0 to `count` - 1
 * set up (VIRTIO_QUEUE_SETUP_AT_ECX) and enabled, queue q's notify address
 * kept at `qnotify` + 4q and, when `avail` is given, the dword at `avail` +
 * 4q zeroed (the driver's avail index of queue q). Clobbers EAX, ECX, EDX. */
.macro VIRTIO_QUEUES_SETUP count, size, notify, mult, qnotify, fail, avail
	xor	%ecx, %ecx
.Lqueue\@:
	VIRTIO_QUEUE_SETUP_AT_ECX \size, \notify, \mult, \fail
	mov	%eax, \qnotify(,%ecx,4)
.ifnb \avail
	movl	$0, \avail(,%ecx,4)
.endif
	movw	$1, 0x1c(%edi)
	inc	%ecx
	cmp	\count, %ecx
	jb	.Lqueue\@
.endm

/* With EDI = the common configuration structure: reset (waiting until
 * device_status reads 0, virtio 1.2 section 4.1.4.3.1), ACKNOWLEDGE, DRIVER,
 * and check that VIRTIO_F_VERSION_1 (feature bit 32) is offered, leaving
 * device_feature_select = 0. Jumps to `fail` with AL = 3 if it is not.
 * Clobbers EAX. */
.macro VIRTIO_RESET_EXPECT_VERSION_1 fail
	movb	$0, 0x14(%edi)
.Lreset_wait\@:
	cmpb	$0, 0x14(%edi)
	jne	.Lreset_wait\@
	movb	$1, 0x14(%edi)
	movb	$3, 0x14(%edi)
	movl	$1, 0x00(%edi)
	mov	0x04(%edi), %eax
	test	$1, %al
	mov	$3, %al
	jz	\fail
.endm

/* With EDI = the common configuration structure and driver features 0..31
 * written: accepts VIRTIO_F_VERSION_1 (bit 32) of features 32..63, sets
 * FEATURES_OK and checks the device kept it (virtio 1.2 section 3.1.1).
 * Jumps to `fail` with AL = 3 if it did not. Clobbers EAX. */
.macro VIRTIO_VERSION_1_FEATURES_OK fail
	movl	$1, 0x08(%edi)
	movl	$1, 0x0c(%edi)
	movb	$0x0b, 0x14(%edi)
	mov	0x14(%edi), %al
	test	$8, %al
	mov	$3, %al
	jz	\fail
.endm

/* With EDI = the common configuration structure: reset, ACKNOWLEDGE, DRIVER;
 * accept VIRTIO_F_VERSION_1 (feature bit 32) only, FEATURES_OK, and check the
 * device kept FEATURES_OK (virtio 1.2 section 3.1.1). Jumps to `fail` with
 * AL = 3 if VERSION_1 is not offered or FEATURES_OK is refused.
 * Clobbers EAX. */
.macro VIRTIO_NEGOTIATE_VERSION_1 fail
	VIRTIO_RESET_EXPECT_VERSION_1 \fail
	movl	$0, 0x08(%edi)
	movl	$0, 0x0c(%edi)
	VIRTIO_VERSION_1_FEATURES_OK \fail
.endm

/* With EDI = the common configuration structure and ECX = the feature
 * bits 0..31 to accept: reset, ACKNOWLEDGE, DRIVER; check that VIRTIO_F_VERSION_1
 * (bit 32) and every bit of ECX are offered, accept exactly those,
 * FEATURES_OK, and check the device kept it (virtio 1.2 section 3.1.1). Jumps
 * to `fail` with AL = 3 if a bit is not offered or FEATURES_OK is refused.
 * Clobbers EAX. */
.macro VIRTIO_NEGOTIATE_FEATURES fail
	VIRTIO_RESET_EXPECT_VERSION_1 \fail
	movl	$0, 0x00(%edi)
	mov	0x04(%edi), %eax
	and	%ecx, %eax
	cmp	%ecx, %eax
	mov	$3, %al
	jne	\fail
	movl	$0, 0x08(%edi)
	movl	%ecx, 0x0c(%edi)
	VIRTIO_VERSION_1_FEATURES_OK \fail
.endm

/* The MSI-X table entry at `off`(%esi) (PCI Local Bus 3.0 section 6.8.2):
 * IDT vector `vector` on APIC ID 0 (message address 0xFEE00000, high half 0),
 * fixed delivery, unmasked. Clobbers nothing. */
.macro VIRTIO_MSIX_ENTRY off, vector
	movl	$0xfee00000, \off(%esi)
	movl	$0, \off + 4(%esi)
	movl	$\vector, \off + 8(%esi)
	movl	$0, \off + 12(%esi)
.endm

/* The MSI-X table entry at ESI for queue q = ECX: IDT vector 0x41 + q
 * (MSI-X vector q + 1) on the APIC ID in EAX, fixed delivery, unmasked.
 * Clobbers EAX. */
.macro VIRTIO_MSIX_QUEUE_ENTRY
	shl	$12, %eax
	or	$0xfee00000, %eax
	mov	%eax, 0(%esi)
	movl	$0, 4(%esi)
	lea	0x41(%ecx), %eax
	mov	%eax, 8(%esi)
	movl	$0, 12(%esi)
.endm

/* With ESI = the MSI-X table: entry 0 (config changes) -> IDT vector 0x40,
 * entry 1 (queue 0) -> IDT vector 0x41, both to APIC ID 0, unmasked.
 * Clobbers nothing. */
.macro VIRTIO_MSIX_TWO_ENTRIES
	VIRTIO_MSIX_ENTRY 0, 0x40
	VIRTIO_MSIX_ENTRY 16, 0x41
.endm

#endif /* __ASSEMBLER__ */
#endif /* VIRTIO_COMMON_H */
