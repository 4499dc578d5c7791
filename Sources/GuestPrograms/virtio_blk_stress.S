/* The virtio-blk lossless-under-load guest (virtio 1.2 sections 2.7, 4.1,
 * 5.2) for the tiny VMM's device at 00:02.0, at the contract's fixed
 * addresses. vCPU 0 resets the device, accepts VIRTIO_F_VERSION_1 only,
 * enables MSI-X (entry 0 config, entry 1 queue 0, both to APIC ID 0, IDT
 * vectors 0x40 + v), sets up queue 0 (size 256, vector 1, rings at 0x20000),
 * sets DRIVER_OK, puts K reads in flight, notifies, and from then on does
 * nothing but HLT: every completion is taken in queue 0's interrupt
 * handler, which drains the used ring and refills each freed slot with the
 * next request until N have been submitted. A completion whose interrupt
 * never arrives therefore stalls the guest for good (nothing polls). vCPU 1
 * idles in HLT; the host may aim the vector at it, so the handler runs on
 * either vCPU and takes a spinlock (XCHG) around the ring.
 *
 * Request n (0 <= n < N) reads sector n & M into slot s's 512-byte buffer at
 * 0x100000 + 512 s (descriptors 3s header, 3s+1 data, 3s+2 status, built
 * once). The host fills the image so that sector k's dword j is 128 k + j;
 * the guest poisons dwords 0 and 127 before each submit and checks both on
 * completion. Per completion it checks: the used id names a slot with a
 * request in flight, the request's bit in the bitmap at 0x200000 was clear
 * (then sets it), status byte 0, data words.
 *
 * Every vCPU counts handler runs per i = IDT vector & 0x3F (device vector v
 * arrives as 0x40 + v or, when the host flips the MSI data, 0x80 + v; the
 * host's fence is 0x21, i = 33), and the runs for i taken while the host's
 * masked word for i was nonzero. 32-bit words:
 *   params   0x5C0 N requests   0x5C4 K in flight (1...85)   0x5C8 sector mask M
 *   results  0x5E0 phase (1 running, 2 all N completed)   0x5E4 completed
 *            0x5E8 bad status   0x5EC bad data   0x5F0 bad ids   0x5F4 duplicates
 *            0x5F8 submitted    0x5FC interrupts that found no new used entry
 *   0x400 used entries consumed   0x404 avail idx   0x40C lock
 *   0x7000 + 4i                masked: set by the host while i is held masked
 *   0x7400 + 0x100 cpu + 4i    handler runs    0x7800 + 0x100 cpu + 4i  runs while masked
 *   0x24000 + 4s request in slot s    0x24400 + 4s slot s in flight
 * Exit status (port 0xF4, only on a failed setup): 3 VERSION_1 missing or
 * FEATURES_OK refused, 4 queue setup refused. */
#define G(x) ((x) - guest_virtio_blk_stress_start + 0x1000)
#include "guest_common.h"
#include "virtio_common.h"
#include "virtio_blk_common.h"
#define P_TOTAL 0x5c0
#define P_INFLIGHT 0x5c4
#define P_SECMASK 0x5c8
#define R_PHASE 0x5e0
#define R_DONE 0x5e4
#define R_BADSTATUS 0x5e8
#define R_BADDATA 0x5ec
#define R_BADID 0x5f0
#define R_DUP 0x5f4
#define R_SUBMITTED 0x5f8
#define R_EMPTY 0x5fc
#define V_LAST 0x400
#define V_AVAIL 0x404
#define V_LOCK 0x40c
#define MASKED 0x7000
#define RUNS 0x7400
#define VIOL 0x7800
#define REQ 0x24000
#define INFL 0x24400
#define BITMAP 0x200000
#define DESC 0x20000
#define AVAIL_RING 0x21000
#define USED_RING 0x22000
#define HEADERS 0x23000
#define STATUS 0x23800
#define BUFFERS 0x100000
#define QSIZE 256
#define COMMON 0xfe200000
#define NOTIFY 0xfe203000
#define MSIX_TABLE 0xfe110000

	.section .rodata
	.balign 16
	.globl	guest_virtio_blk_stress_start
	.globl	guest_virtio_blk_stress_end
	.code16
guest_virtio_blk_stress_start:
	VCPU_START
	IDLE_UNLESS_VCPU0 driver, idle

fail:	EXIT_AL

driver:
	mov	$COMMON, %edi
	/* Reset, ACKNOWLEDGE, DRIVER; VERSION_1 only; FEATURES_OK (section 3.1.1). */
	VIRTIO_NEGOTIATE_VERSION_1 fail
	/* MSI-X on: Message Control (config 0x9A) bit 15, through 0xCF8/0xCFC. */
	mov	$0x80001098, %eax
	mov	$0xcf8, %dx
	out	%eax, %dx
	mov	$0xcfc, %dx
	in	%dx, %eax
	or	$0x80000000, %eax
	mov	%eax, %ecx
	mov	$0x80001098, %eax
	mov	$0xcf8, %dx
	out	%eax, %dx
	mov	%ecx, %eax
	mov	$0xcfc, %dx
	out	%eax, %dx
	mov	$MSIX_TABLE, %esi
	VIRTIO_MSIX_TWO_ENTRIES
	movw	$0, 0x10(%edi)		/* msix_config = 0 */
	/* Queue 0: size 256, vector 1, rings. */
	movw	$0, 0x16(%edi)
	VIRTIO_QUEUE0_SETUP QSIZE, DESC, AVAIL_RING, USED_RING, fail
	movw	$1, 0x1c(%edi)
	/* Descriptors of slot s: 3s header (16, NEXT), 3s+1 buffer (512, NEXT|WRITE),
	 * 3s+2 status (1, WRITE). Headers are zero (type IN) but for the sector. */
	xor	%esi, %esi
1:	lea	(%esi,%esi,2), %edx
	shl	$4, %edx
	add	$DESC, %edx
	mov	%esi, %eax
	shl	$4, %eax
	add	$HEADERS, %eax
	DESC_ADDR_LEN 0, %eax, 16
	lea	(%esi,%esi,2), %eax
	inc	%eax
	shl	$16, %eax
	or	$1, %eax
	mov	%eax, 12(%edx)
	BLK_DATA_DESC BUFFERS
	lea	(%esi,%esi,2), %eax
	add	$2, %eax
	shl	$16, %eax
	or	$3, %eax
	mov	%eax, 28(%edx)
	BLK_STATUS_DESC STATUS
	inc	%esi
	cmp	P_INFLIGHT, %esi
	jb	1b
	movb	$0x0f, 0x14(%edi)	/* DRIVER_OK */
	/* K requests in flight, under the lock (vCPU 1 may already take interrupts). */
	call	take_lock
	xor	%esi, %esi
2:	call	submit
	inc	%esi
	cmp	P_INFLIGHT, %esi
	jb	2b
	call	publish
	movl	$0, V_LOCK
	movl	$1, R_PHASE
	jmp	idle

/* Takes the ring lock. Clobbers EAX. */
take_lock:
	mov	$1, %eax
	xchg	%eax, V_LOCK
	test	%eax, %eax
	jz	3f
	pause
	jmp	take_lock
3:	ret

/* Publishes the avail index (entries first: x86 keeps store order) and
 * notifies queue 0 (a 16-bit write of its index: KVM_IOEVENTFD).
 * Clobbers EAX, ECX. */
publish:
	mov	V_AVAIL, %eax
	mov	$AVAIL_RING, %ecx
	movw	%ax, 2(%ecx)
	mov	$NOTIFY, %eax
	movw	$0, (%eax)
	ret

/* Puts the next request, if any is left, in slot ESI; EAX = 1 if it did.
 * Clobbers EAX, ECX, EDI. */
submit:	mov	R_SUBMITTED, %eax
	cmp	P_TOTAL, %eax
	jb	4f
	xor	%eax, %eax
	ret
4:	incl	R_SUBMITTED
	mov	%eax, REQ(,%esi,4)
	movl	$1, INFL(,%esi,4)
	and	P_SECMASK, %eax
	mov	%esi, %edi
	shl	$4, %edi
	mov	%eax, HEADERS + 8(%edi)
	movb	$0xff, STATUS(%esi)
	mov	%esi, %edi
	shl	$9, %edi
	movl	$0xdeadbeef, BUFFERS(%edi)
	movl	$0xdeadbeef, BUFFERS + 0x1fc(%edi)
	mov	V_AVAIL, %eax
	and	$(QSIZE - 1), %eax
	lea	(%esi,%esi,2), %ecx
	movw	%cx, AVAIL_RING + 4(,%eax,2)
	incl	V_AVAIL
	mov	$1, %eax
	ret

	VECTOR_STUBS

/* Every vector: count, check the host's masked word, queue 0's vector
 * drains the ring, EOI, IRET. EBX is the vCPU index throughout. */
common:
	pushal
	movzx	%al, %esi
	and	$0x3f, %esi
	mov	%ebx, %ecx
	shl	$6, %ecx
	add	%esi, %ecx
	incl	RUNS(,%ecx,4)
	cmpl	$0, MASKED(,%esi,4)
	je	5f
	incl	VIOL(,%ecx,4)
5:	cmp	$1, %esi
	jne	6f
	call	drain
6:	X2APIC_EOI
	popal
	pop	%eax
	iret

/* Consumes every new used entry, refills, publishes once. Clobbers all but EBX. */
drain:	call	take_lock
	xor	%ebp, %ebp		/* slots refilled */
	mov	R_DONE, %eax
	push	%eax
7:	mov	$USED_RING, %eax
	movzwl	2(%eax), %eax
	mov	V_LAST, %edx
	cmp	%dx, %ax
	je	12f
	and	$(QSIZE - 1), %edx
	mov	USED_RING + 4(,%edx,8), %eax	/* id: the chain's head, 3s */
	incl	V_LAST
	xor	%edx, %edx
	mov	$3, %ecx
	div	%ecx
	test	%edx, %edx
	jnz	8f
	cmp	P_INFLIGHT, %eax
	jae	8f
	mov	%eax, %esi
	cmpl	$0, INFL(,%esi,4)
	je	8f
	movl	$0, INFL(,%esi,4)
	/* Bitmap: bit n of BITMAP; set twice is a duplicate. */
	mov	REQ(,%esi,4), %eax
	mov	%eax, %edx
	shr	$5, %edx
	mov	%eax, %ecx
	and	$31, %ecx
	mov	$1, %edi
	shl	%cl, %edi
	test	%edi, BITMAP(,%edx,4)
	jz	9f
	incl	R_DUP
9:	or	%edi, BITMAP(,%edx,4)
	cmpb	$0, STATUS(%esi)
	je	10f
	incl	R_BADSTATUS
10:	and	P_SECMASK, %eax
	shl	$7, %eax
	mov	%esi, %edi
	shl	$9, %edi
	cmp	%eax, BUFFERS(%edi)
	jne	11f
	add	$127, %eax
	cmp	%eax, BUFFERS + 0x1fc(%edi)
	je	13f
11:	incl	R_BADDATA
13:	incl	R_DONE
	call	submit
	or	%eax, %ebp
	jmp	7b
8:	incl	R_BADID
	jmp	7b
12:	test	%ebp, %ebp
	jz	14f
	call	publish
14:	pop	%eax
	cmp	R_DONE, %eax
	jne	15f
	incl	R_EMPTY
15:	mov	R_DONE, %eax
	cmp	P_TOTAL, %eax
	jne	16f
	movl	$2, R_PHASE
16:	movl	$0, V_LOCK
	ret
guest_virtio_blk_stress_end:

	/* Not executable on the host: these bytes run only inside the guest. */
	.section .note.GNU-stack,"",@progbits
