/* virtio-blk benchmark guest (virtio 1.2 sections 3.1, 4.1, 5.2) for the
 * tiny VMM's device at 00:02.0, one vCPU, one queue of size 128. Sets up the
 * device like virtio_blk.S (capability walk, VERSION_1 only, MSI-X vector 0
 * config -> IDT 0x40, vector 1 queue 0 -> IDT 0x41, both to vCPU 0), builds
 * 32 read requests once (chain i: descriptors 3i..3i+2, sector i, 512 bytes
 * at 0x100000 + 512 i), then runs rounds the host opens.
 *
 * A round: the host writes its parameters, raises the gate word and wakes
 * the guest with any interrupt. The guest keeps `depth` requests in flight
 * until `count` have completed: every completion it harvests from the used
 * ring is resubmitted (same chain) while fewer than `count` were submitted,
 * with one notify per harvest. With `stamp` set (depth 1), it reads the TSC
 * (RDTSC: no exit) just before its notify write, and the queue vector's
 * handler (IDT 0x41 only: the host's wake-up interrupt between rounds is
 * another vector) reads it on entry; sample k = handler TSC - notify TSC, in TSC
 * ticks (low 32 bits), at 0x40000 + 4k. A stamped request ends when its used
 * entry is in AND the handler ran since the notify. The round's first and
 * last TSC readings go to 0x450 / 0x458 (throughput). It reads only guest
 * memory while requests run: no MMIO exit but the notify itself.
 *
 * Parameters (32-bit words): 0x5C0 depth (1...32), 0x5C4 count per round
 * (stamped: at most 16384), 0x5C8 stamp (0/1).
 * Results: 0x5E0 phase (1 ready for rounds), 0x5E4 requests completed,
 * 0x5E8 requests whose status byte was not 0, 0x5EC rounds completed.
 * 0x5F0: the host's gate: round r starts once it exceeds r.
 * Exit status: 2 capability walk failed, 3 VERSION_1 missing or FEATURES_OK
 * refused, 4 queue setup refused. */
#define G(x) ((x) - guest_virtio_blk_bench_start + 0x1000)
#include "guest_common.h"
#include "virtio_common.h"
#include "virtio_blk_common.h"
#define P_DEPTH 0x5c0
#define P_COUNT 0x5c4
#define P_STAMP 0x5c8
#define R_PHASE 0x5e0
#define R_DONE 0x5e4
#define R_BAD 0x5e8
#define R_ROUNDS 0x5ec
#define GATE 0x5f0
#define V_COMMON 0x400
#define V_NOTIFY 0x404
#define V_MULT 0x408
#define V_MSIXCAP 0x410
#define V_BAR1 0x414
#define V_QNOTIFY 0x420
#define V_AVAIL 0x430
#define V_USED 0x434
#define V_SUBMITTED 0x438
#define V_COMPLETED 0x43c
#define V_SEEN 0x440
#define V_T0 0x444
#define V_HTSC 0x448
#define V_K 0x44c
#define R_TSC0 0x450
#define R_TSC1 0x458
#define SAMPLES 0x40000
#define QSIZE 128
#define RING 0x20000
#define AVAIL 0x21000
#define USED 0x22000
#define HEADERS 0x23000
#define STATUS 0x23800
#define BUFFERS 0x100000
/* Interrupts taken on IDT vector 0x41 (queue 0's MSI-X vector 1). */
#define QCOUNT (COUNTS + 4 * 0x41)

	.section .rodata
	.balign 16
	.globl	guest_virtio_blk_bench_start
	.globl	guest_virtio_blk_bench_end
	.code16
guest_virtio_blk_bench_start:
	cli
	X2APIC_ON
	VECTOR_IVT
	movl	$1, 0x500
	jmp	driver

	VIRTIO_CFG_READ

fail:	EXIT_AL

driver:
	VIRTIO_PCI_WALK V_COMMON, V_NOTIFY, V_MULT, V_MSIXCAP, V_BAR1, fail

	mov	V_COMMON, %edi
	VIRTIO_NEGOTIATE_VERSION_1 fail

	/* MSI-X on; vector 0 -> IDT 0x40, vector 1 -> IDT 0x41, both APIC 0. */
	VIRTIO_MSIX_ENABLE V_MSIXCAP
	mov	V_BAR1, %esi
	VIRTIO_MSIX_TWO_ENTRIES
	movw	$0, 0x10(%edi)

	/* Queue 0: size QSIZE, vector 1. */
	movw	$0, 0x16(%edi)
	mov	$4, %al
	cmpw	$0, 0x18(%edi)
	je	fail
	VIRTIO_QUEUE0_SETUP QSIZE, RING, AVAIL, USED, fail
	movzwl	0x1e(%edi), %eax
	mull	V_MULT
	add	V_NOTIFY, %eax
	mov	%eax, V_QNOTIFY
	movl	$0, V_AVAIL
	movl	$0, V_USED
	movw	$1, 0x1c(%edi)

	/* 32 read requests: chain i = descriptors 3i (header), 3i+1 (data), 3i+2 (status). */
	xor	%esi, %esi
3:	mov	%esi, %edi
	shl	$4, %edi
	add	$HEADERS, %edi
	movl	$0, 0(%edi)		/* VIRTIO_BLK_T_IN */
	movl	$0, 4(%edi)
	mov	%esi, 8(%edi)		/* sector i */
	movl	$0, 12(%edi)
	lea	(%esi,%esi,2), %edx
	mov	%edx, %ecx		/* 3i */
	shl	$4, %edx
	add	$RING, %edx
	DESC_ADDR_LEN 0, %edi, 16
	lea	1(%ecx), %eax
	shl	$16, %eax
	or	$1, %eax		/* NEXT -> 3i+1 */
	mov	%eax, 12(%edx)
	BLK_DATA_DESC BUFFERS
	lea	2(%ecx), %eax
	shl	$16, %eax
	or	$3, %eax		/* NEXT | WRITE -> 3i+2 */
	mov	%eax, 28(%edx)
	BLK_STATUS_DESC STATUS
	inc	%esi
	cmp	$32, %esi
	jb	3b

	mov	V_COMMON, %edi
	movb	$0x0f, 0x14(%edi)	/* DRIVER_OK */
	movl	$1, R_PHASE

	/* Rounds: wait (HLT) until the gate passes the rounds done. */
round:	cli
	mov	GATE, %eax
	cmp	R_ROUNDS, %eax
	ja	4f
	sti
	hlt
	jmp	round
4:	sti
	movl	$0, V_SUBMITTED
	movl	$0, V_COMPLETED
	movl	$0, V_K
	rdtsc
	mov	%eax, R_TSC0
	mov	%edx, R_TSC0 + 4
	/* Submit min(depth, count) chains. */
	xor	%esi, %esi
5:	cmp	P_DEPTH, %esi
	jae	6f
	cmp	P_COUNT, %esi
	jae	6f
	lea	(%esi,%esi,2), %eax
	call	push_avail
	inc	%esi
	jmp	5b
6:	call	kick

wait:	cli
	mov	V_USED, %eax
	mov	$USED, %edx
	cmpw	2(%edx), %ax
	je	7f
	cmpl	$0, P_STAMP
	je	8f
	mov	QCOUNT, %eax		/* stamped: and the queue's handler ran since the notify */
	cmp	V_SEEN, %eax
	jne	8f
7:	sti
	hlt
	jmp	wait
8:	sti
	xor	%ebp, %ebp		/* resubmitted in this harvest */
harvest:
	mov	V_USED, %eax
	mov	$USED, %edx
	cmpw	2(%edx), %ax
	je	10f
	and	$(QSIZE - 1), %eax
	mov	USED + 4(,%eax,8), %ecx	/* id: the chain's head 3i */
	incl	V_USED
	incl	V_COMPLETED
	mov	%ecx, %eax
	xor	%edx, %edx
	mov	$3, %esi
	div	%esi			/* i */
	cmpb	$0, STATUS(%eax)
	je	9f
	incl	R_BAD
9:	cmpl	$0, P_STAMP
	je	11f
	mov	V_HTSC, %eax
	sub	V_T0, %eax
	mov	V_K, %edx
	mov	%eax, SAMPLES(,%edx,4)
	incl	V_K
11:	mov	V_SUBMITTED, %eax
	cmp	P_COUNT, %eax
	jae	harvest
	mov	%ecx, %eax
	call	push_avail
	inc	%ebp
	jmp	harvest
10:	mov	V_COMPLETED, %eax
	cmp	P_COUNT, %eax
	jae	12f
	test	%ebp, %ebp
	jz	wait
	call	kick
	jmp	wait
12:	rdtsc
	mov	%eax, R_TSC1
	mov	%edx, R_TSC1 + 4
	mov	V_COMPLETED, %eax
	add	%eax, R_DONE
	incl	R_ROUNDS
	jmp	round

/* Puts head %eax in the available ring (its status byte reset to 0xFF). */
push_avail:
	push	%eax
	xor	%edx, %edx
	mov	$3, %ecx
	div	%ecx
	movb	$0xff, STATUS(%eax)
	pop	%eax
	mov	V_AVAIL, %edx
	and	$(QSIZE - 1), %edx
	movw	%ax, AVAIL + 4(,%edx,2)
	incl	V_AVAIL
	incl	V_SUBMITTED
	ret

/* Publishes the available index and notifies queue 0; stamps first. */
kick:	mov	V_AVAIL, %eax
	mov	$AVAIL, %edx		/* above 64 KiB: through a 32-bit register */
	movw	%ax, 2(%edx)
	mov	QCOUNT, %eax
	mov	%eax, V_SEEN
	mov	V_QNOTIFY, %edi
	rdtsc
	mov	%eax, V_T0
	xor	%eax, %eax
	movw	%ax, (%edi)
	ret

	VECTOR_STUBS
/* The handler: on vector 0x41 the TSC first (V_HTSC), then count like COUNTING_HANDLER (vCPU 0). */
common:
	push	%edx
	push	%esi
	push	%ecx
	movzx	%al, %esi
	cmp	$0x41, %esi
	jne	1f
	rdtsc
	mov	%eax, V_HTSC
1:	mov	%esi, 0x700
	incl	0x600
	incl	COUNTS(,%esi,4)
	EOI_RETURN %ecx, %esi, %edx, %eax
guest_virtio_blk_bench_end:

	.section .note.GNU-stack,"",@progbits
