/* virtio-net driver guest (virtio 1.2 sections 3.1, 4.1, 5.1) for the tiny
 * VMM's device at 00:02.0, against a backend that sends every frame back on
 * the pair it came from (dpdk-testpmd, io forwarding, looped port). Walks
 * the PCI capability list, negotiates VIRTIO_F_VERSION_1 and
 * VIRTIO_NET_F_MAC (with 2 pairs also VIRTIO_NET_F_CTRL_VQ and
 * VIRTIO_NET_F_MQ), reads the MAC, programs MSI-X (vector 0 config, vector
 * q + 1 for queue q, IDT vector 0x40 + v; pair k's two vectors to the APIC
 * ID in P_DEST + 4k, the control queue's to vCPU 0), sets up the queues,
 * posts 64 receive buffers per pair, and with 2 pairs enables both through
 * the control queue (VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET 2, answered in its
 * interrupt). Then it sends frames: frame i on pair p is 60 + (i * 1454 / 99)
 * % 1455 bytes (60 to 1514 for i < 100), byte j = i * 7 + p * 101 + j * 13,
 * after a 12-byte zero struct virtio_net_hdr. Receive completions are taken
 * in the interrupt handler, on the vCPU the pair's receive vector targets:
 * it checks each frame's length and every byte against the one expected
 * next on that pair, counts it, and posts the buffer again. Interrupts are
 * counted like irq_counter.S (0x600 totals per vCPU, 0x8000 + 0x400*cpu +
 * 4*v per vector). vCPU 1 idles with interrupts on. At most 2 vCPUs.
 *
 * Parameters (32-bit words the host writes before start):
 *   0x5C0 frames F per pair     0x5C4 pairs used (1 or 2)
 *   0x5C8 / 0x5CC APIC ID pair 0's / pair 1's vectors target
 *   0x5D0 gated: if nonzero, a batch starting at frame i is sent only once the word at 0x5F0 > i
 *   0x5D4 batch B (0 or 1: one frame per pair at a time; up to 32 in flight)
 *   0x5D8 stamp: if nonzero, pair 0's frame i leaves at 0x400000 + 4i (i < 16384)
 *         the TSC ticks from its transmit notify to the receive handler's entry
 *   0x5DC length: if nonzero, every frame has this length (60...1514)
 * Results: 0x5B0 the MAC (6 bytes), 0x5E0 phase (1 DRIVER_OK, 2 done),
 * 0x5E4 frames sent, 0x5E8 / 0x5EC frames received intact on pair 0 / 1,
 * 0x5F4 frames received damaged (length or content), 0x5F8 the control
 * request's ack, 0x5A0 / 0x5A8 the TSC before the first frame and after the
 * last came back (64-bit). Rings of queue q (size 64) at 0x20000 + 0x10000*q:
 * descriptors +0, driver area +0x1000, device area +0x2000. Receive buffer d
 * of pair p at 0x100000 + 0x100000*p + 0x800*d, transmit slot s at
 * 0x180000 + 0x100000*p + 0x800*s.
 * Exit status: 0 every frame back intact, 1 some frame damaged, 2 capability
 * walk failed, 3 a feature missing or FEATURES_OK refused, 4 queue setup
 * refused, 5 the device broke a used ring (idx ahead of the buffers posted,
 * or an id not below the queue size), 6 the control request was not
 * answered VIRTIO_NET_OK. */
#define G(x) ((x) - guest_virtio_net_start + 0x1000)
#include "guest_common.h"
#include "virtio_common.h"
#define P_FRAMES 0x5c0
#define P_PAIRS 0x5c4
#define P_DEST 0x5c8
#define P_GATED 0x5d0
#define P_BATCH 0x5d4
#define P_STAMP 0x5d8
#define P_LENGTH 0x5dc
#define R_TSC0 0x5a0
#define R_TSC1 0x5a8
#define SAMPLES 0x400000
#define MAX_SAMPLES 16384
#define R_MAC 0x5b0
#define R_PHASE 0x5e0
#define R_SENT 0x5e4
#define R_GOOD 0x5e8
#define GATE 0x5f0
#define R_BAD 0x5f4
#define R_ACK 0x5f8
#define V_COMMON 0x400
#define V_NOTIFY 0x404
#define V_MULT 0x408
#define V_MSIXCAP 0x410
#define V_BAR1 0x414
#define V_BAR4 0x418
#define V_QNOTIFY 0x420
#define V_NQ 0x440
#define V_I 0x444
#define V_TXAVAIL 0x448
#define V_RXSEEN 0x450
#define V_RXCOUNT 0x458
#define V_RXAVAIL 0x460
#define V_BROKEN 0x468
#define V_P 0x46c
#define V_BATCHN 0x470
#define V_K 0x474
#define V_STSC 0x478		/* TSC (low word) at pair 0's last transmit notify */
#define V_HTSC 0x480		/* TSC (low word) at handler entry, per vCPU */
#define QSIZE 64
#define CTRL_REQ 0x90000
#define CTRL_ACK 0x90010
#define CTRL_COUNT 0x8114	/* interrupts of IDT vector 0x45 (the control queue's) on vCPU 0 */

/* Makes descriptor `head` available on pair ECX's queue whose rings are at
 * `rings` (virtio 1.2 section 2.7.13): ring[count % QSIZE] = head, then
 * idx = ++count, where count is the pair's word in the array `avail`
 * (V_TXAVAIL or V_RXAVAIL). Clobbers EAX. */
.macro PUBLISH_AVAILABLE avail, head, rings
	mov	\avail\()(,%ecx,4), %eax
	and	$(QSIZE - 1), %eax
	movw	\head, 0x1004(\rings,%eax,2)
	incl	\avail\()(,%ecx,4)
	mov	\avail\()(,%ecx,4), %eax
	movw	%ax, 0x1002(\rings)
.endm

	.section .rodata
	.balign 16
	.globl	guest_virtio_net_start
	.globl	guest_virtio_net_end
	.code16
guest_virtio_net_start:
	/* Every vCPU starts, all but vCPU 0 idle; vCPU 0 finds BAR1, BAR4 and the
	 * capabilities (MSI-X, common, notify). `fail` exits with status AL. */
	VIRTIO_GUEST_ENTRY V_COMMON, V_NOTIFY, V_MULT, V_MSIXCAP, V_BAR1
	mov	%ebp, V_BAR4

	/* Features: MAC (5); with 2 pairs CTRL_VQ (17) and MQ (22). */
	mov	V_COMMON, %edi
	mov	$0x20, %ecx
	movl	$2, V_NQ
	cmpl	$2, P_PAIRS
	jne	1f
	or	$0x420000, %ecx
	movl	$5, V_NQ		/* 2 pairs and the control queue */
1:	VIRTIO_NEGOTIATE_FEATURES fail

	/* The MAC (device configuration at BAR4 + 0x2000). */
	mov	V_BAR4, %esi
	mov	0x2000(%esi), %eax
	mov	%eax, R_MAC
	movzwl	0x2004(%esi), %eax
	mov	%eax, R_MAC + 4

	/* MSI-X on (Message Control bit 15). */
	VIRTIO_MSIX_ENABLE V_MSIXCAP
	/* Entry 0: config changes, to vCPU 0; entry q + 1: queue q, to its
	 * pair's vCPU (the control queue, q = 4, to vCPU 0). */
	mov	V_BAR1, %esi
	VIRTIO_MSIX_ENTRY 0, 0x40
	xor	%ecx, %ecx
2:	add	$16, %esi
	xor	%eax, %eax
	cmp	$4, %ecx
	jae	3f
	mov	%ecx, %eax
	shr	$1, %eax
	mov	P_DEST(,%eax,4), %eax
3:	VIRTIO_MSIX_QUEUE_ENTRY
	inc	%ecx
	cmp	V_NQ, %ecx
	jb	2b
	movw	$0, 0x10(%edi)		/* msix_config = 0 */

	/* Queues: size 64, vector q + 1, rings at 0x20000 + 0x10000 q. */
	VIRTIO_QUEUES_SETUP V_NQ, QSIZE, V_NOTIFY, V_MULT, V_QNOTIFY, fail

	/* Receive buffers: all 64 descriptors of each receive queue, posted. */
	xor	%ecx, %ecx		/* pair */
5:	mov	%ecx, %ebp
	shl	$17, %ebp
	add	$0x20000, %ebp		/* queue 2p's rings */
	xor	%esi, %esi
6:	mov	%esi, %eax
	shl	$11, %eax
	add	$0x100000, %eax
	mov	%ecx, %edx
	shl	$20, %edx
	add	%edx, %eax
	mov	%esi, %edx
	shl	$4, %edx
	mov	%eax, 0(%ebp,%edx)
	movl	$0, 4(%ebp,%edx)
	movl	$0x800, 8(%ebp,%edx)
	movl	$2, 12(%ebp,%edx)	/* WRITE, no next */
	movw	%si, 0x1004(%ebp,%esi,2)
	inc	%esi
	cmp	$QSIZE, %esi
	jb	6b
	movw	$QSIZE, 0x1002(%ebp)
	movl	$QSIZE, V_RXAVAIL(,%ecx,4)
	movl	$0, V_RXSEEN(,%ecx,4)
	movl	$0, V_RXCOUNT(,%ecx,4)
	movl	$0, V_TXAVAIL(,%ecx,4)
	inc	%ecx
	cmp	P_PAIRS, %ecx
	jb	5b

	movb	$0x0f, 0x14(%edi)	/* DRIVER_OK */
	movl	$1, R_PHASE
	sti

	/* Two pairs: VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET 2 on the control queue
	 * (queue 4, rings at 0x60000): class 4, command 0, le16 2, then the ack. */
	cmpl	$2, P_PAIRS
	jne	frames
	mov	$CTRL_REQ, %edx		/* (addresses above 64 KiB through registers) */
	movl	$0x00020004, (%edx)
	movb	$0xff, CTRL_ACK - CTRL_REQ(%edx)
	mov	$0x60000, %esi
	movl	$CTRL_REQ, 0(%esi)
	movl	$0, 4(%esi)
	movl	$4, 8(%esi)
	movl	$0x00010001, 12(%esi)	/* NEXT, next 1 */
	movl	$CTRL_ACK, 16(%esi)
	movl	$0, 20(%esi)
	movl	$1, 24(%esi)
	movl	$2, 28(%esi)		/* WRITE */
	movw	$0, 0x1004(%esi)
	movw	$1, 0x1002(%esi)
	mov	V_QNOTIFY + 16, %edi
	movw	$4, (%edi)
7:	cli
	cmpw	$1, 0x2002(%esi)
	jne	8f
	cmpl	$0, CTRL_COUNT
	jne	9f
8:	sti
	hlt
	jmp	7b
9:	sti
	movzbl	CTRL_ACK - CTRL_REQ(%edx), %eax
	mov	%eax, R_ACK
	test	%eax, %eax
	mov	$6, %al
	jnz	fail

	/* Frames, a batch at a time: frames i..<i+B on every pair, then wait
	 * until each came back. */
frames:	movl	$0, V_I
	mov	P_BATCH, %eax
	cmp	$1, %eax
	jae	1f
	mov	$1, %eax
1:	cmp	$32, %eax
	jbe	2f
	mov	$32, %eax
2:	mov	%eax, V_BATCHN
	rdtsc
	mov	%eax, R_TSC0
	mov	%edx, R_TSC0 + 4
10:	mov	V_I, %eax
	cmp	P_FRAMES, %eax
	jae	done
	cmpl	$0, P_GATED
	je	12f
11:	mov	GATE, %edx
	cmp	%edx, V_I
	jb	12f
	pause
	jmp	11b
12:	movl	$0, V_K
3:	movl	$0, V_P
13:	call	send
	incl	V_P
	mov	V_P, %ecx
	cmp	P_PAIRS, %ecx
	jb	13b
	incl	V_I
	incl	V_K
	mov	V_I, %eax
	cmp	P_FRAMES, %eax
	jae	4f
	mov	V_K, %eax
	cmp	V_BATCHN, %eax
	jb	3b
	/* Wait for the batch on each pair: HLT for a pair aimed at vCPU 0, PAUSE
	 * for one aimed at vCPU 1 (whose interrupts cannot end vCPU 0's HLT). */
4:	xor	%ecx, %ecx
14:	cli
	cmpl	$0, V_BROKEN
	jne	broken
	mov	V_RXCOUNT(,%ecx,4), %eax
	cmp	V_I, %eax
	jae	16f
	testl	$1, P_DEST(,%ecx,4)
	jz	15f
	sti
	pause
	jmp	14b
15:	sti			/* STI's shadow makes "sti; hlt" atomic */
	hlt
	jmp	14b
16:	sti
	inc	%ecx
	cmp	P_PAIRS, %ecx
	jb	14b
	jmp	10b

broken:	mov	$5, %al
	jmp	fail

done:	rdtsc
	mov	%eax, R_TSC1
	mov	%edx, R_TSC1 + 4
	movl	$2, R_PHASE
	xor	%al, %al
	cmpl	$0, R_BAD
	je	17f
	mov	$1, %al
17:	mov	$0xf4, %dx
	out	%al, %dx
	hlt

/* EAX = the length of frame EAX (P_LENGTH if set, else 60 + (i * 1454 / 99)
 * % 1455). Clobbers EDX. */
framelen:
	cmpl	$0, P_LENGTH
	je	1f
	mov	P_LENGTH, %eax
	ret
1:	push	%ecx
	mov	$1454, %ecx
	mul	%ecx
	mov	$99, %ecx
	div	%ecx
	xor	%edx, %edx
	mov	$1455, %ecx
	div	%ecx
	lea	60(%edx), %eax
	pop	%ecx
	ret

/* Sends frame V_I on pair V_P: header and frame in transmit slot i % 64,
 * one descriptor, published and notified. */
send:	cli				/* EBX stays the vCPU index: 0 */
	mov	V_P, %ecx
	mov	V_I, %eax
	and	$(QSIZE - 1), %eax
	mov	%eax, %ebp		/* slot */
	shl	$11, %eax
	add	$0x180000, %eax
	mov	%ecx, %edx
	shl	$20, %edx
	add	%edx, %eax
	mov	%eax, %edi		/* the slot's buffer */
	movl	$0, 0(%edi)		/* struct virtio_net_hdr: 12 zero bytes */
	movl	$0, 4(%edi)
	movl	$0, 8(%edi)
	mov	V_I, %eax
	call	framelen
	mov	%eax, %esi		/* length */
	imul	$7, V_I, %eax		/* byte 0 = i * 7 + p * 101 */
	imul	$101, %ecx, %edx
	add	%edx, %eax
	xor	%edx, %edx
18:	mov	%al, 12(%edi,%edx)
	add	$13, %al
	inc	%edx
	cmp	%esi, %edx
	jb	18b
	/* Descriptor `slot` of queue 2p + 1: the buffer, 12 + length bytes. */
	mov	%ecx, %edx
	shl	$17, %edx
	add	$0x30000, %edx		/* queue 2p + 1's rings */
	mov	%ebp, %eax
	shl	$4, %eax
	mov	%edi, 0(%edx,%eax)
	movl	$0, 4(%edx,%eax)
	lea	12(%esi), %esi
	mov	%esi, 8(%edx,%eax)
	movl	$0, 12(%edx,%eax)
	PUBLISH_AVAILABLE V_TXAVAIL, %bp, %edx
	incl	R_SENT
	lea	1(%ecx,%ecx), %eax	/* notify queue 2p + 1 */
	mov	V_QNOTIFY(,%eax,4), %edi
	test	%ecx, %ecx		/* pair 0: the TSC just before its notify */
	jnz	19f
	push	%eax
	rdtsc
	mov	%eax, V_STSC
	pop	%eax
19:	movw	%ax, (%edi)
	sti
	ret

	VECTOR_STUBS

/* The handler: count the interrupt (as COUNTING_HANDLER does), take pair
 * p's receive completions for IDT vector 0x41 + 2p, EOI, IRET. EBX is the
 * vCPU index. */
common:
	pushal
	movzx	%al, %esi
	rdtsc
	mov	%eax, V_HTSC(,%ebx,4)
	mov	%esi, 0x700(,%ebx,4)
	incl	0x600(,%ebx,4)
	mov	%ebx, %eax
	shl	$8, %eax
	add	%esi, %eax
	incl	0x8000(,%eax,4)
	xor	%ecx, %ecx
	cmp	$0x41, %esi
	je	19f
	inc	%ecx
	cmp	$0x43, %esi
	jne	eoi
19:	call	receive
eoi:	mov	$0x80b, %ecx
	xor	%eax, %eax
	xor	%edx, %edx
	wrmsr
	popal
	pop	%eax
	iret

/* Takes every used element of pair ECX's receive queue (queue 2p). */
receive:
	mov	%ecx, %ebp
	shl	$17, %ebp
	add	$0x20000, %ebp		/* queue 2p's rings */
	xor	%edi, %edi		/* buffers posted again */
20:	movzwl	0x2002(%ebp), %eax
	mov	V_RXSEEN(,%ecx,4), %edx
	sub	%edx, %eax
	and	$0xffff, %eax
	jz	24f
	cmp	$QSIZE, %eax		/* more used than posted: a broken ring */
	ja	25f
	and	$(QSIZE - 1), %edx
	mov	0x2004(%ebp,%edx,8), %esi	/* id */
	cmp	$QSIZE, %esi
	jae	25f
	push	%edi
	push	%esi
	/* Expected: frame V_RXCOUNT[p], 12 + its length bytes. */
	mov	0x2008(%ebp,%edx,8), %edi	/* len written */
	mov	V_RXCOUNT(,%ecx,4), %eax
	call	framelen
	lea	12(%eax), %edx
	cmp	%edx, %edi
	jne	23f
	mov	%eax, %edi		/* frame length */
	shl	$11, %esi		/* the buffer: 0x100000 + 0x100000 p + 0x800 id */
	add	$0x100000, %esi
	mov	%ecx, %edx
	shl	$20, %edx
	add	%edx, %esi
	imul	$7, V_RXCOUNT(,%ecx,4), %eax
	imul	$101, %ecx, %edx
	add	%edx, %eax
	xor	%edx, %edx
21:	cmp	%al, 12(%esi,%edx)
	jne	23f
	add	$13, %al
	inc	%edx
	cmp	%edi, %edx
	jb	21b
	incl	R_GOOD(,%ecx,4)
	/* Stamped: pair 0's sample i = handler entry - transmit notify. */
	cmpl	$0, P_STAMP
	je	22f
	test	%ecx, %ecx
	jnz	22f
	mov	V_RXCOUNT, %eax
	cmp	$MAX_SAMPLES, %eax
	jae	22f
	mov	V_HTSC(,%ebx,4), %edx
	sub	V_STSC, %edx
	mov	%edx, SAMPLES(,%eax,4)
	jmp	22f
23:	incl	R_BAD
22:	incl	V_RXCOUNT(,%ecx,4)
	pop	%esi
	/* Post descriptor `id` again. */
	PUBLISH_AVAILABLE V_RXAVAIL, %si, %ebp
	incl	V_RXSEEN(,%ecx,4)
	pop	%edi
	inc	%edi
	jmp	20b
24:	test	%edi, %edi
	jz	26f
	lea	(%ecx,%ecx), %eax	/* notify queue 2p: buffers are back */
	mov	V_QNOTIFY(,%eax,4), %edi
	movw	%ax, (%edi)
26:	ret
25:	movl	$1, V_BROKEN
	ret
guest_virtio_net_end:

	/* Not executable on the host: these bytes run only inside the guest. */
	.section .note.GNU-stack,"",@progbits
