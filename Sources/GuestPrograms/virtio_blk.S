/* virtio-blk driver guest (virtio 1.2 sections 3.1, 4.1, 5.2) for the tiny
 * VMM's device at 00:02.0. Walks the PCI capability list, negotiates
 * VIRTIO_F_VERSION_1 only, programs MSI-X (vector 0 config, vector q+1 for
 * queue q, IDT vector 0x40 + v), sets up queue 0 (and 1), then runs batches
 * of requests with several in flight, waiting for the used ring with
 * interrupts on (a spurious interrupt is harmless: only the used index
 * counts). Interrupts are counted like irq_counter.S (0x600 totals per vCPU,
 * 0x8000 + 0x400*cpu + 4*v per vector). Other vCPUs idle with interrupts on.
 * At most 2 vCPUs (the stacks of vCPUs 2+ would meet the state at 0x400).
 *
 * Parameters (32-bit words the host writes before start):
 *   0x5C0 batches B            0x5C4 requests per batch K (1...8)
 *   0x5C8 first sector         0x5CC type: 0 read (VIRTIO_BLK_T_IN), 1 write (T_OUT)
 *   0x5D0 queues used (1 or 2) 0x5D4 / 0x5D8 APIC ID the vector of queue 0 / 1 targets
 *   0x5DC gated: if nonzero, batch b starts only once the word at 0x5F0 > b
 * Request j (0 <= j < B*K) on queue q: sector first + j + 0x800*q, 512 bytes
 * at 0x100000 + 0x100000*q + 512*j. Rings of queue q (size 32) at
 * 0x20000 + 0x10000*q: descriptors +0, driver area +0x1000, device area +0x2000.
 * Results: 0x5E0 phase (1 DRIVER_OK, 2 done), 0x5E4 requests completed,
 * 0x5E8 requests whose status byte was not 0, 0x5EC batches completed.
 * Recovery (0x5F4 nonzero; virtio 1.2 sections 2.1 and 4.1.4.5): while it
 * waits (at the gate or for the used ring), a config interrupt (MSI-X vector
 * 0) makes the guest read device_status into 0x5FC; if DEVICE_NEEDS_RESET
 * (0x40) is set it counts the recovery at 0x5F8, resets and re-initialises
 * the device (fresh rings) and runs the interrupted batch again. A reset the
 * device could not bring back fails the next DRIVER_OK the same way, so the
 * guest simply retries until the backend is back.
 * Exit status: 0 all OK, 1 some request failed, 2 capability walk failed,
 * 3 VERSION_1 missing or FEATURES_OK refused, 4 queue setup refused,
 * 5 the device broke a used ring (virtio 1.2 section 2.7.8): its idx ran
 * ahead of the requests in flight, or an element's id is not below the
 * queue size. The guest refuses either rather than wait on or follow it.
 * A batch ends when, for each queue, its used entries are in and the vCPU
 * its vector targets took an interrupt since it was submitted (so every batch
 * takes at least one per queue). It waits in HLT for a queue aimed at vCPU 0,
 * and polls with PAUSE for one aimed at vCPU 1 (whose interrupts cannot wake
 * vCPU 0); the host may change the destination words between batches when it
 * retargets a vector. It reads only guest
 * memory (no MMIO exits while requests run): a masked vector holds the guest
 * there until unmask. */
#define G(x) ((x) - guest_virtio_blk_start + 0x1000)
#include "guest_common.h"
#include "virtio_common.h"
#include "virtio_blk_common.h"
#define P_BATCHES 0x5c0
#define P_PER 0x5c4
#define P_FIRST 0x5c8
#define P_TYPE 0x5cc
#define P_QUEUES 0x5d0
#define P_DEST0 0x5d4
#define P_GATED 0x5dc
#define R_PHASE 0x5e0
#define R_DONE 0x5e4
#define R_BAD 0x5e8
#define R_BATCHES 0x5ec
#define GATE 0x5f0
#define P_RECOVER 0x5f4
#define R_RECOVERIES 0x5f8
#define R_STATUS 0x5fc
#define CFG_COUNT 0x8100	/* interrupts of IDT vector 0x40 (MSI-X vector 0) on vCPU 0 */
#define V_COMMON 0x400
#define V_NOTIFY 0x404
#define V_MULT 0x408
#define V_MSIXCAP 0x410
#define V_BAR1 0x414
#define V_QNOTIFY 0x420
#define V_AVAIL 0x430
#define V_BATCH 0x440
#define V_Q 0x444
#define V_SEEN 0x448
#define V_CFGSEEN 0x450
#define QSIZE 32

	.section .rodata
	.balign 16
	.globl	guest_virtio_blk_start
	.globl	guest_virtio_blk_end
	.code16
guest_virtio_blk_start:
	/* Every vCPU starts, all but vCPU 0 idle; vCPU 0 finds BAR1, BAR4 and the
	 * capabilities (MSI-X, common, notify). `fail` exits with status AL. */
	VIRTIO_GUEST_ENTRY V_COMMON, V_NOTIFY, V_MULT, V_MSIXCAP, V_BAR1

	/* Reset, ACKNOWLEDGE, DRIVER (section 3.1.1). Config interrupts from
	 * here on (a failed DRIVER_OK raises one) are looked at while waiting. */
	movl	$0, V_BATCH		/* a recovery keeps the batch it was in */
reinit:	mov	CFG_COUNT, %eax
	mov	%eax, V_CFGSEEN
	mov	V_COMMON, %edi
	VIRTIO_NEGOTIATE_VERSION_1 fail

	/* MSI-X on (Message Control bit 15) with every table entry programmed. */
	VIRTIO_MSIX_ENABLE V_MSIXCAP
	mov	V_BAR1, %esi
	/* vector 0: config changes, to vCPU 0 */
	VIRTIO_MSIX_ENTRY 0, 0x40
	/* vector q + 1: queue q, to the APIC ID in P_DEST0 + 4q */
	xor	%ecx, %ecx
3:	add	$16, %esi
	mov	P_DEST0(,%ecx,4), %eax
	VIRTIO_MSIX_QUEUE_ENTRY
	inc	%ecx
	cmp	P_QUEUES, %ecx
	jb	3b
	movw	$0, 0x10(%edi)		/* msix_config = 0 */

	/* Queues: size 32, vector q + 1, rings at 0x20000 + 0x10000 q. */
	VIRTIO_QUEUES_SETUP P_QUEUES, QSIZE, V_NOTIFY, V_MULT, V_QNOTIFY, fail, V_AVAIL
	movb	$0x0f, 0x14(%edi)	/* DRIVER_OK */
	movl	$1, R_PHASE
	sti

	/* Batches. */
batch:	mov	V_BATCH, %eax
	cmp	P_BATCHES, %eax
	jae	done
	cmpl	$0, P_GATED
	je	5f
6:	call	check_config
	jnz	recover
	mov	GATE, %edx
	cmp	%edx, V_BATCH
	jb	5f
	pause
	jmp	6b
5:	mov	0x600, %eax		/* interrupts taken so far by vCPU 0 and vCPU 1 */
	mov	%eax, V_SEEN
	mov	0x604, %eax
	mov	%eax, V_SEEN + 4
	movl	$0, V_Q
submitq:
	mov	V_Q, %ecx
	call	submit
	incl	V_Q
	mov	V_Q, %ecx
	cmp	P_QUEUES, %ecx
	jb	submitq
	/* Wait for every queue's used index to reach its avail index. */
	xor	%ecx, %ecx
waitq:	mov	%ecx, %esi
	shl	$16, %esi
	add	$0x22002, %esi
7:	call	check_config
	jnz	recover
	cli
	movzwl	(%esi), %eax		/* used - (avail - K): what has been used */
	mov	V_AVAIL(,%ecx,4), %edx	/* of this batch, which may not exceed K */
	sub	P_PER, %edx
	sub	%edx, %eax
	and	$0xffff, %eax
	cmp	P_PER, %eax
	ja	broken
	movzwl	(%esi), %eax
	cmpw	V_AVAIL(,%ecx,4), %ax
	jne	8f
	mov	P_DEST0(,%ecx,4), %edx	/* and an interrupt since the submission */
	and	$1, %edx		/* on the vCPU the queue's vector targets */
	mov	0x600(,%edx,4), %eax
	cmp	V_SEEN(,%edx,4), %eax
	jne	9f
8:	mov	P_DEST0(,%ecx,4), %edx	/* an interrupt aimed at vCPU 1 cannot end */
	test	$1, %edx		/* vCPU 0's HLT: then poll guest memory */
	jz	15f			/* (still no MMIO exit) */
	sti
	pause
	jmp	7b
15:	sti			/* STI's shadow makes "sti; hlt" atomic: a completion */
	hlt			/* after the check still ends the HLT */
	jmp	7b
9:	sti
	inc	%ecx
	cmp	P_QUEUES, %ecx
	jb	waitq
	/* Check the status bytes of the batch. */
	xor	%ecx, %ecx
10:	mov	%ecx, %esi
	shl	$16, %esi
	add	$0x23800, %esi
	xor	%edx, %edx
11:	mov	V_AVAIL(,%ecx,4), %eax	/* used element (avail - K + i) % QSIZE: its id */
	sub	P_PER, %eax		/* must name a descriptor of the ring */
	add	%edx, %eax
	and	$(QSIZE - 1), %eax
	lea	-0x17fc(%esi,%eax,8), %edi	/* ring + 0x2004 + 8 * slot */
	cmpl	$QSIZE, (%edi)
	jae	broken
	movb	(%esi,%edx), %al
	test	%al, %al
	jz	12f
	incl	R_BAD
12:	incl	R_DONE
	inc	%edx
	cmp	P_PER, %edx
	jb	11b
	inc	%ecx
	cmp	P_QUEUES, %ecx
	jb	10b
	incl	V_BATCH
	incl	R_BATCHES
	jmp	batch

broken:	mov	$5, %al
	jmp	fail

/* The device asked for a reset: do it and start the batch again. */
recover:
	cli
	incl	R_RECOVERIES
	jmp	reinit

/* ZF clear when recovery is on, a config interrupt came since V_CFGSEEN and
 * device_status (kept at R_STATUS) has DEVICE_NEEDS_RESET. Clobbers EAX, EDI. */
check_config:
	cmpl	$0, P_RECOVER
	je	1f
	mov	CFG_COUNT, %eax
	cmp	V_CFGSEEN, %eax
	je	1f
	mov	%eax, V_CFGSEEN
	mov	V_COMMON, %edi
	movzbl	0x14(%edi), %eax
	mov	%eax, R_STATUS
	test	$0x40, %al
1:	ret

done:	movl	$2, R_PHASE
	xor	%al, %al
	cmpl	$0, R_BAD
	je	13f
	mov	$1, %al
13:	EXIT_AL

/* Submits K requests of batch V_BATCH on queue %ecx and notifies. */
submit:
	cli				/* EBX is not the vCPU index in here */
	mov	%ecx, %ebp
	shl	$16, %ebp
	add	$0x20000, %ebp		/* ring base */
	xor	%esi, %esi		/* i */
14:	/* j = batch * K + i */
	mov	V_BATCH, %eax
	mull	P_PER
	add	%esi, %eax
	mov	%eax, %ebx		/* j (EBX is restored: vCPU 0) */
	/* header at ring + 0x3000 + 16 i */
	mov	%esi, %edi
	shl	$4, %edi
	lea	0x3000(%ebp,%edi), %edi
	mov	P_TYPE, %eax
	mov	%eax, 0(%edi)
	movl	$0, 4(%edi)
	mov	%ecx, %eax
	shl	$11, %eax
	add	%ebx, %eax
	add	P_FIRST, %eax
	mov	%eax, 8(%edi)
	movl	$0, 12(%edi)
	/* descriptors 3i, 3i+1, 3i+2 at ring + 16 d */
	lea	(%esi,%esi,2), %edx
	push	%edx
	shl	$4, %edx
	add	%ebp, %edx
	DESC_ADDR_LEN 0, %edi, 16
	pop	%eax
	push	%eax
	inc	%eax
	shl	$16, %eax
	or	$1, %eax			/* flags NEXT, next 3i+1 */
	mov	%eax, 12(%edx)
	/* data buffer 0x100000 + 0x100000 q + 512 j */
	mov	%ebx, %eax
	shl	$9, %eax
	add	$0x100000, %eax
	mov	%ecx, %edi
	shl	$20, %edi
	add	%edi, %eax
	DESC_ADDR_LEN 16, %eax, 512
	pop	%eax
	push	%eax
	add	$2, %eax
	shl	$16, %eax
	or	$1, %eax			/* NEXT */
	cmpl	$0, P_TYPE
	jne	15f
	or	$2, %eax			/* a read: the device writes the buffer */
15:	mov	%eax, 28(%edx)
	/* status byte at ring + 0x3800 + i, 0xFF until the device writes it */
	lea	0x3800(%ebp,%esi), %eax
	movb	$0xff, (%eax)
	DESC_ADDR_LEN 32, %eax, 1
	movl	$2, 44(%edx)		/* WRITE, no next */
	pop	%edx
	/* avail ring[avail_idx % 32] = 3i */
	mov	V_AVAIL(,%ecx,4), %eax
	and	$(QSIZE - 1), %eax
	lea	0x1004(%ebp,%eax,2), %edi
	movw	%dx, (%edi)
	incl	V_AVAIL(,%ecx,4)
	inc	%esi
	cmp	P_PER, %esi
	jb	14b
	/* publish avail idx, then notify with the queue index */
	mov	V_AVAIL(,%ecx,4), %eax
	lea	0x1002(%ebp), %edi
	movw	%ax, (%edi)
	mov	V_QNOTIFY(,%ecx,4), %edi
	movw	%cx, (%edi)
	xor	%ebx, %ebx
	sti
	ret

	VECTOR_STUBS
	COUNTING_HANDLER
guest_virtio_blk_end:

	/* Not executable on the host: these bytes run only inside the guest. */
	.section .note.GNU-stack,"",@progbits
