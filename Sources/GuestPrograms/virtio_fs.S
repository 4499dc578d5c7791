/* virtio-fs driver guest (virtio 1.2 sections 3.1, 4.1, 5.11) for the tiny
 * VMM's device at 00:02.0, speaking FUSE (the Linux kernel's
 * include/uapi/linux/fuse.h, protocol 7.31) to the backend. Walks the PCI
 * capability list, negotiates VIRTIO_F_VERSION_1 only, programs MSI-X
 * (vector 0 config, 1 hiprio, 2 request queue 1; IDT vector 0x40 + v, all to
 * vCPU 0), sets up hiprio (queue 0) and request queue 1 (size 16, rings at
 * 0x20000 + 0x10000 q: descriptors +0, driver area +0x1000, device area
 * +0x2000), copies the device configuration (tag, num_request_queues) to
 * 0x9020, then sends, one at a time on request queue 1:
 *   FUSE_INIT (7.31); FUSE_LOOKUP of the name at 0x9100 in the root;
 *   FUSE_OPEN of it read-only; FUSE_READ of its first P_READSIZE bytes,
 *   compared with the bytes at 0x50000; FUSE_CREATE of the name at 0x9180
 *   (O_RDWR, 0644); FUSE_WRITE of P_WRITESIZE bytes from 0x60000 at offset 0;
 *   FUSE_RELEASE of the new file; then P_ROUNDS more READs of the first file
 *   (round r starts once the host's gate word > r), each compared again;
 *   FUSE_RELEASE of the first file. With no name at 0x9100 (a run that sets
 *   no parameters) FUSE_INIT is the only request.
 * A request is one device-readable descriptor (in header and arguments, at
 * 0x40000) and one device-writable one (8 KiB at 0x48000, for the out header
 * and the reply). It is complete when the used ring has its element and
 * vCPU 0 took an interrupt on vector 2 since the notify: the guest waits in
 * HLT and reads only guest memory (no MMIO exit), so a masked vector holds
 * it there until unmask. Interrupts are counted like irq_counter.S (0x600
 * totals, 0x8000 + 4v per vector on vCPU 0). Other vCPUs idle.
 *
 * Parameters (the host writes them before start):
 *   0x9100 name of the file to read (NUL-terminated, at most 63 bytes)
 *   0x9140 P_READSIZE bytes to read (1...4096)
 *   0x9144 P_WRITESIZE bytes to write (1...4000)
 *   0x9148 P_ROUNDS gated READ rounds after the first (0: none)
 *   0x914C the host's gate word
 *   0x9180 name of the file to create (NUL-terminated, at most 63 bytes)
 * Results: 0x9000 phase (1 DRIVER_OK, 2 done), 0x9004 the last opcode sent,
 * 0x9008 the error of a failed reply, 0x900C bytes the last READ returned,
 * 0x9010 bytes FUSE_WRITE wrote, 0x9014 rounds done, 0x9018 first mismatched
 * byte + 1 (0: none), 0x901C requests completed, 0x9020 the 40-byte device
 * configuration, 0x9050 / 0x9054 the backend's FUSE major / minor.
 * Recovery (0x9150 nonzero; virtio 1.2 sections 2.1 and 4.1.4.5): while it
 * waits (at the gate or for a reply), a config interrupt (MSI-X vector 0)
 * makes the guest read device_status into 0x905C; with DEVICE_NEEDS_RESET
 * (0x40) it counts the recovery at 0x9058, resets and re-initialises the
 * device (fresh rings, FUSE_INIT, LOOKUP, OPEN; the file it created is not
 * created again) and goes on with the round it was in. A reset the device
 * could not bring back fails the next DRIVER_OK the same way, so the guest
 * retries until the backend is back.
 * Benchmark (0x9154 nonzero): the guest waits at the gate in HLT (the host
 * sends any interrupt once it has opened it) rather than spinning; READs are
 * not compared (their length is), and every request is stamped with RDTSC,
 * from just before the notify write to the moment the guest has seen both
 * the used element and the interrupt:
 * request k's TSC ticks (low 32 bits) at 0x70000 + 4 (k % 16384), k counted
 * at 0x9060.
 * Exit status: 0 all OK, 2 capability walk failed, 3 VERSION_1 missing or
 * FEATURES_OK refused, 4 queue setup refused (or fewer than 2 queues),
 * 5 the device broke the used ring, 6 a FUSE reply with an error or the
 * wrong unique, 7 READ returned other bytes than expected. */
#define G(x) ((x) - guest_virtio_fs_start + 0x1000)
#include "guest_common.h"
#include "virtio_common.h"
#define V_COMMON 0x400
#define V_NOTIFY 0x404
#define V_MULT 0x408
#define V_MSIXCAP 0x410
#define V_BAR1 0x414
#define V_BAR4 0x418
#define V_QNOTIFY 0x420
#define V_AVAIL 0x430
#define V_UNIQUE 0x434
#define V_SEEN 0x438
#define V_ROUND 0x43c
#define V_FH 0x440
#define V_NEWFH 0x448
#define V_NODE 0x450
#define V_NEWNODE 0x458
#define V_CFGSEEN 0x460
#define V_CREATED 0x464
#define V_TSC0 0x468
#define R_PHASE 0x9000
#define R_STEP 0x9004
#define R_ERROR 0x9008
#define R_READLEN 0x900c
#define R_WRITTEN 0x9010
#define R_ROUNDS 0x9014
#define R_MISMATCH 0x9018
#define R_REQUESTS 0x901c
#define R_CONFIG 0x9020
#define R_MAJOR 0x9050
#define R_MINOR 0x9054
#define R_RECOVERIES 0x9058
#define R_STATUS 0x905c
#define R_SAMPLES 0x9060
#define P_READNAME 0x9100
#define P_READSIZE 0x9140
#define P_WRITESIZE 0x9144
#define P_ROUNDS 0x9148
#define GATE 0x914c
#define P_RECOVER 0x9150
#define P_BENCH 0x9154
#define SAMPLES 0x70000
#define MAXSAMPLES 16384
#define P_CREATENAME 0x9180
#define CFG_COUNT 0x8100	/* vCPU 0's interrupts on IDT vector 0x40 (MSI-X vector 0) */
#define REQ_COUNT 0x8108	/* vCPU 0's interrupts on IDT vector 0x42 (MSI-X vector 2) */
#define Q1 0x30000
#define IN 0x40000
#define OUT 0x48000
#define OUTLEN 0x2000
#define EXPECT 0x50000
#define WDATA 0x60000
#define QSIZE 16
#define FUSE_LOOKUP 1
#define FUSE_OPEN 14
#define FUSE_READ 15
#define FUSE_WRITE 16
#define FUSE_RELEASE 18
#define FUSE_INIT 26
#define FUSE_CREATE 35

/* IN + 16 (the in header's nodeid) = the u64 at `from`. Clobbers EAX, EDI. */
.macro NODEID from
	mov	$IN, %edi
	mov	\from, %eax
	mov	%eax, 16(%edi)
	mov	\from + 4, %eax
	mov	%eax, 20(%edi)
.endm

/* fuse_call for a request of `length` bytes at IN with `opcode`. */
.macro FUSE_CALL opcode, length
	mov	$\opcode, %eax
	mov	$\length, %ecx
	call	fuse_call
.endm

/* The u64 at OUT + `at` (a field of the reply) into `to`. Leaves ESI = OUT.
 * Clobbers EAX. */
.macro OUT_U64 at, to
	mov	$OUT, %esi
	mov	\at(%esi), %eax
	mov	%eax, \to
	mov	\at + 4(%esi), %eax
	mov	%eax, \to + 4
.endm

/* The fuse_read_in / fuse_write_in at IN + 40 (include/uapi/linux/fuse.h)
 * for the node and file handle at `node` and `fh` (u64s): offset 0, size the
 * word at `size`, and the last 20 bytes (read_flags or write_flags,
 * lock_owner, flags, padding) zeroed by zero_tail. Leaves EDI = IN.
 * Clobbers EAX. */
.macro FUSE_RW_IN node, fh, size
	NODEID	\node
	mov	\fh, %eax
	mov	%eax, 40(%edi)
	mov	\fh + 4, %eax
	mov	%eax, 44(%edi)
	movl	$0, 48(%edi)
	movl	$0, 52(%edi)
	mov	\size, %eax
	mov	%eax, 56(%edi)
	call	zero_tail
.endm

	.section .rodata
	.balign 16
	.globl	guest_virtio_fs_start
	.globl	guest_virtio_fs_end
	.code16
guest_virtio_fs_start:
	/* Every vCPU starts, all but vCPU 0 idle; vCPU 0 finds BAR1, BAR4 and the
	 * capabilities (MSI-X, common, notify). `fail` exits with status AL. */
	VIRTIO_GUEST_ENTRY V_COMMON, V_NOTIFY, V_MULT, V_MSIXCAP, V_BAR1
	mov	%ebp, V_BAR4
	movl	$0, V_UNIQUE
	movl	$0, V_ROUND
	movl	$0, V_CREATED
	/* Config interrupts from here on (a failed DRIVER_OK raises one) are
	 * looked at while waiting. */
reinit:	mov	CFG_COUNT, %eax
	mov	%eax, V_CFGSEEN
	mov	V_COMMON, %edi
	VIRTIO_NEGOTIATE_VERSION_1 fail
	mov	$4, %al
	cmpw	$2, 0x12(%edi)		/* num_queues: hiprio and a request queue at least */
	jb	fail

	/* MSI-X on (Message Control bit 15). */
	VIRTIO_MSIX_ENABLE V_MSIXCAP
	/* Entries 0, 1, 2 -> IDT vectors 0x40, 0x41, 0x42 on APIC ID 0, unmasked. */
	mov	V_BAR1, %esi
	xor	%ecx, %ecx
1:	movl	$0xfee00000, 0(%esi)
	movl	$0, 4(%esi)
	lea	0x40(%ecx), %eax
	mov	%eax, 8(%esi)
	movl	$0, 12(%esi)
	add	$16, %esi
	inc	%ecx
	cmp	$3, %ecx
	jb	1b
	movw	$0, 0x10(%edi)		/* msix_config = 0 */

	/* Queues 0 (hiprio) and 1 (request): size 16, vector q + 1. */
	xor	%ecx, %ecx
2:	VIRTIO_QUEUE_SETUP_AT_ECX QSIZE, V_NOTIFY, V_MULT, fail
	mov	%eax, V_QNOTIFY		/* left as request queue 1's */
	movw	$1, 0x1c(%edi)
	inc	%ecx
	cmp	$2, %ecx
	jb	2b
	movl	$0, V_AVAIL
	movb	$0x0f, 0x14(%edi)	/* DRIVER_OK */
	movl	$1, R_PHASE

	/* The device configuration: tag[36], num_request_queues. */
	mov	V_BAR4, %esi
	add	$0x2000, %esi
	mov	$R_CONFIG, %edi
	xor	%ecx, %ecx
3:	mov	(%esi,%ecx), %eax
	mov	%eax, (%edi,%ecx)
	add	$4, %ecx
	cmp	$40, %ecx
	jb	3b
	sti

	/* FUSE_INIT: major 7, minor 31, max_readahead 0, flags 0. */
	mov	$IN, %edi
	movl	$0, 16(%edi)
	movl	$0, 20(%edi)
	movl	$7, 40(%edi)
	movl	$31, 44(%edi)
	movl	$0, 48(%edi)
	movl	$0, 52(%edi)
	FUSE_CALL FUSE_INIT, 56
	mov	$OUT, %esi
	mov	16(%esi), %eax
	mov	%eax, R_MAJOR
	mov	20(%esi), %eax
	mov	%eax, R_MINOR
	cmpb	$0, P_READNAME		/* no file named: FUSE_INIT was all */
	je	17f

	/* FUSE_LOOKUP of the file to read, in the root (nodeid 1). */
	mov	$IN, %edi
	movl	$1, 16(%edi)
	movl	$0, 20(%edi)
	mov	$P_READNAME, %esi
	add	$40, %edi
	call	copyname
	add	$40, %ecx
	mov	$FUSE_LOOKUP, %eax
	call	fuse_call
	OUT_U64	16, V_NODE		/* fuse_entry_out.nodeid */

	/* FUSE_OPEN read-only. */
	NODEID	V_NODE
	movl	$0, 40(%edi)		/* flags O_RDONLY */
	movl	$0, 44(%edi)
	FUSE_CALL FUSE_OPEN, 48
	OUT_U64	16, V_FH		/* fuse_open_out.fh */

	/* FUSE_READ and compare. */
	call	read_file

	cmpl	$0, V_CREATED		/* a re-initialisation does not create it again */
	jne	rounds

	/* FUSE_CREATE in the root: O_RDWR | O_CREAT, S_IFREG | 0644. */
	mov	$IN, %edi
	movl	$1, 16(%edi)
	movl	$0, 20(%edi)
	movl	$0x42, 40(%edi)
	movl	$0x81a4, 44(%edi)
	movl	$0, 48(%edi)		/* umask */
	movl	$0, 52(%edi)
	mov	$P_CREATENAME, %esi
	add	$56, %edi
	call	copyname
	add	$56, %ecx
	mov	$FUSE_CREATE, %eax
	call	fuse_call
	OUT_U64	16, V_NEWNODE	/* fuse_entry_out.nodeid, then fuse_open_out.fh */
	mov	144(%esi), %eax
	mov	%eax, V_NEWFH
	mov	148(%esi), %eax
	mov	%eax, V_NEWFH + 4

	/* FUSE_WRITE of the data at WDATA, offset 0. */
	FUSE_RW_IN V_NEWNODE, V_NEWFH, P_WRITESIZE
	mov	$WDATA, %esi
	xor	%ecx, %ecx
4:	cmp	P_WRITESIZE, %ecx
	jae	5f
	mov	(%esi,%ecx), %al
	mov	%al, 80(%edi,%ecx)
	inc	%ecx
	jmp	4b
5:	add	$80, %ecx
	mov	$FUSE_WRITE, %eax
	call	fuse_call
	mov	$OUT, %esi
	mov	16(%esi), %eax		/* fuse_write_out.size */
	mov	%eax, R_WRITTEN

	/* FUSE_RELEASE of the new file. */
	NODEID	V_NEWNODE
	mov	$V_NEWFH, %esi
	call	release

	movl	$1, V_CREATED

	/* Gated rounds: READ again once the gate opens. */
rounds:	cli
	mov	V_ROUND, %eax
	cmp	P_ROUNDS, %eax
	jae	6f
	mov	GATE, %edx
	cmp	%edx, %eax
	jb	7f
	call	check_config
	jnz	recover
	cmpl	$0, P_BENCH		/* the benchmark's host wakes the guest with an */
	je	21f			/* interrupt after opening the gate: sleep */
	sti			/* STI's shadow makes "sti; hlt" atomic */
	hlt
	jmp	rounds
21:	sti
	pause
	jmp	rounds
7:	sti
	call	read_file
	incl	V_ROUND
	incl	R_ROUNDS
	jmp	rounds

6:	NODEID	V_NODE
	mov	$V_FH, %esi
	call	release
17:	movl	$2, R_PHASE
	xor	%al, %al
	jmp	fail

/* FUSE_RELEASE of the handle at (%esi) (nodeid already at IN + 16).
 * Clobbers EAX, ECX, EDX, ESI, EDI. */
release:
	mov	$IN, %edi
	mov	0(%esi), %eax
	mov	%eax, 40(%edi)
	mov	4(%esi), %eax
	mov	%eax, 44(%edi)
	movl	$0, 48(%edi)		/* flags, release_flags, lock_owner */
	movl	$0, 52(%edi)
	movl	$0, 56(%edi)
	movl	$0, 60(%edi)
	FUSE_CALL FUSE_RELEASE, 64
	ret

/* FUSE_READ of P_READSIZE bytes at offset 0 of the open file; exits 7 unless
 * the reply holds exactly those bytes of EXPECT. Clobbers EAX, ECX, EDX, ESI, EDI. */
read_file:
	FUSE_RW_IN V_NODE, V_FH, P_READSIZE
	FUSE_CALL FUSE_READ, 80
	mov	$OUT, %esi
	mov	0(%esi), %eax
	sub	$16, %eax
	mov	%eax, R_READLEN
	mov	$-1, %ecx		/* a short or long reply: no mismatch offset */
	cmp	P_READSIZE, %eax
	jne	9f
	cmpl	$0, P_BENCH		/* the benchmark times requests, not the compare */
	jne	10f
	add	$16, %esi
	mov	$EXPECT, %edi
	xor	%ecx, %ecx
8:	cmp	P_READSIZE, %ecx
	jae	10f
	mov	(%esi,%ecx), %al
	cmp	(%edi,%ecx), %al
	jne	9f
	inc	%ecx
	jmp	8b
9:	inc	%ecx
	mov	%ecx, R_MISMATCH
	mov	$7, %al
	jmp	fail
10:	ret

/* Zeroes IN + 60 ... IN + 79 (the last 20 bytes of fuse_read_in / fuse_write_in).
 * EDI = IN. Clobbers nothing else. */
zero_tail:
	movl	$0, 60(%edi)
	movl	$0, 64(%edi)
	movl	$0, 68(%edi)
	movl	$0, 72(%edi)
	movl	$0, 76(%edi)
	ret

/* Copies the NUL-terminated name at ESI (at most 64 bytes with the NUL) to
 * EDI; ECX = bytes copied, NUL included. Clobbers EAX. */
copyname:
	xor	%ecx, %ecx
11:	mov	(%esi,%ecx), %al
	mov	%al, (%edi,%ecx)
	inc	%ecx
	test	%al, %al
	jz	12f
	cmp	$64, %ecx
	jb	11b
	movb	$0, -1(%edi,%ecx)
12:	ret

/* Sends the request at IN (EAX = opcode, ECX = its length; the nodeid is
 * already at IN + 16) on request queue 1 and waits for the reply at OUT: the
 * used element, and an interrupt on MSI-X vector 2 since the notify. Exits 5
 * on a broken used ring (idx ahead of the one request in flight, or an id
 * that is not its head 0), 6 on a reply with an error or another unique.
 * Clobbers EAX, ECX, EDX, ESI, EDI. */
fuse_call:
	mov	%eax, R_STEP
	mov	$IN, %edi
	mov	%ecx, 0(%edi)		/* len */
	mov	%eax, 4(%edi)		/* opcode */
	incl	V_UNIQUE
	mov	V_UNIQUE, %eax
	mov	%eax, 8(%edi)		/* unique */
	movl	$0, 12(%edi)
	movl	$0, 24(%edi)		/* uid, gid, pid, padding */
	movl	$0, 28(%edi)
	movl	$0, 32(%edi)
	movl	$0, 36(%edi)
	mov	$OUT, %esi		/* no stale reply header */
	movl	$0, 0(%esi)
	movl	$0, 4(%esi)
	movl	$0, 8(%esi)
	movl	$0, 12(%esi)
	mov	$Q1, %esi
	movl	$IN, 0(%esi)		/* descriptor 0: the request, NEXT -> 1 */
	movl	$0, 4(%esi)
	mov	%ecx, 8(%esi)
	movl	$0x00010001, 12(%esi)
	movl	$OUT, 16(%esi)		/* descriptor 1: the reply, WRITE */
	movl	$0, 20(%esi)
	movl	$OUTLEN, 24(%esi)
	movl	$2, 28(%esi)
	mov	V_AVAIL, %eax
	and	$(QSIZE - 1), %eax
	movw	$0, 0x1004(%esi,%eax,2)
	incl	V_AVAIL
	mov	REQ_COUNT, %eax
	mov	%eax, V_SEEN
	mov	V_AVAIL, %eax
	movw	%ax, 0x1002(%esi)	/* publish avail idx, then notify queue 1 */
	mov	V_QNOTIFY, %edi
	cmpl	$0, P_BENCH
	je	19f
	rdtsc
	mov	%eax, V_TSC0
19:	movw	$1, (%edi)
13:	cli
	movzwl	0x2002(%esi), %eax	/* used idx - (avail - 1): 0 waiting, 1 done */
	mov	V_AVAIL, %edx
	dec	%edx
	sub	%edx, %eax
	and	$0xffff, %eax
	cmp	$1, %eax
	ja	broken
	jb	14f
	mov	REQ_COUNT, %eax
	cmp	V_SEEN, %eax
	jne	15f
14:	call	check_config
	jnz	recover
	sti			/* STI's shadow makes "sti; hlt" atomic */
	hlt
	jmp	13b
15:	sti
	cmpl	$0, P_BENCH		/* stamp: notify -> woken with the reply */
	je	20f
	rdtsc
	sub	V_TSC0, %eax
	mov	R_SAMPLES, %edx
	and	$(MAXSAMPLES - 1), %edx
	mov	$SAMPLES, %edi
	mov	%eax, (%edi,%edx,4)
	incl	R_SAMPLES
20:	mov	V_AVAIL, %eax		/* the used element's id: head 0 */
	dec	%eax
	and	$(QSIZE - 1), %eax
	cmpl	$0, 0x2004(%esi,%eax,8)
	jne	broken
	mov	$OUT, %edi
	mov	4(%edi), %eax
	mov	%eax, R_ERROR
	mov	8(%edi), %eax
	cmp	V_UNIQUE, %eax
	jne	16f
	cmpl	$0, 4(%edi)
	jne	16f
	incl	R_REQUESTS
	ret
16:	mov	$6, %al
	jmp	fail

broken:	mov	$5, %al
	jmp	fail

/* The device asked for a reset: do it, with a fresh stack, and start again
 * from FUSE_INIT (a request in flight is sent again). */
recover:
	cli
	incl	R_RECOVERIES
	mov	$0x7000, %esp
	jmp	reinit

/* ZF clear when recovery is on, a config interrupt came since V_CFGSEEN and
 * device_status (kept at R_STATUS) has DEVICE_NEEDS_RESET. Clobbers EAX, EDI. */
check_config:
	cmpl	$0, P_RECOVER
	je	18f
	mov	CFG_COUNT, %eax
	cmp	V_CFGSEEN, %eax
	je	18f
	mov	%eax, V_CFGSEEN
	mov	V_COMMON, %edi
	movzbl	0x14(%edi), %eax
	mov	%eax, R_STATUS
	test	$0x40, %al
18:	ret

	VECTOR_STUBS
	COUNTING_HANDLER
guest_virtio_fs_end:

	/* Not executable on the host: these bytes run only inside the guest. */
	.section .note.GNU-stack,"",@progbits
