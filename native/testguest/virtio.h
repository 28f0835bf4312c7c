/* A minimal virtio-mmio (version 2) split-ring driver and interrupt set-up for
 * synthetic guests (docs/synthetic-guests.md, "Interrupts and virtio").
 *
 * Interrupts at CPL3: the guest fills IDT entries (64-bit interrupt gates to the
 * ring-0 code selector 0x08) for VIRTIO_IRQ_VECTOR and the spurious vector, enables
 * the local APIC, routes one in-kernel IOAPIC pin to the vector and masks the legacy
 * PIC. In "irq" mode it then executes `sti` (IOPL is 3) and waits for interrupts;
 * the handler runs at CPL0 on the TSS rsp0 stack (0x8000) and is six instructions:
 * count, EOI, iretq.
 *
 * Nested PVM (kvm_pvm) cannot do this: `sti` at CPL3 raises #GP (triple fault), and
 * PVM ignores the IDT (events go to MSR_PVM_EVENT_ENTRY, which the host cannot set
 * here). So by default the guest waits by polling the used ring with IF = 0: the
 * device still raises its irqfd, the IOAPIC still routes it, and the vector stays
 * pending in the LAPIC IRR, where the host checks it (KVM_GET_LAPIC).
 * Include this header from exactly one translation unit. */
#ifndef TSIBOX_VIRTIO_H
#define TSIBOX_VIRTIO_H

#include "guest.h"

/* Where the host's attachVirtioMmio() puts device `index`: window and GSI. */
#define VIRTIO_MMIO_BASE(index) (0xd0000000UL + (u64)(index) * 0x1000)
#define VIRTIO_GSI(index)       (5 + (index))

#define VIRTIO_IRQ_VECTOR  0x30
#define SPURIOUS_VECTOR    0xff

#define IDT_BASE      0x2000UL
#define LAPIC_BASE    0xfee00000UL
#define LAPIC_TPR     (LAPIC_BASE + 0x80)
#define LAPIC_EOI     (LAPIC_BASE + 0xb0)
#define LAPIC_SVR     (LAPIC_BASE + 0xf0)
#define IOAPIC_SEL    0xfec00000UL
#define IOAPIC_WIN    0xfec00010UL

/* virtio-mmio registers */
#define VM_MAGIC          0x000
#define VM_VERSION        0x004
#define VM_DEVICE_ID      0x008
#define VM_DEV_FEATURES   0x010
#define VM_DEV_FEAT_SEL   0x014
#define VM_DRV_FEATURES   0x020
#define VM_DRV_FEAT_SEL   0x024
#define VM_QUEUE_SEL      0x030
#define VM_QUEUE_NUM_MAX  0x034
#define VM_QUEUE_NUM      0x038
#define VM_QUEUE_READY    0x044
#define VM_QUEUE_NOTIFY   0x050
#define VM_INT_STATUS     0x060
#define VM_INT_ACK        0x064
#define VM_STATUS         0x070
#define VM_DESC_LO        0x080
#define VM_DESC_HI        0x084
#define VM_AVAIL_LO       0x090
#define VM_AVAIL_HI       0x094
#define VM_USED_LO        0x0a0
#define VM_USED_HI        0x0a4

#define ST_ACK         1
#define ST_DRIVER      2
#define ST_DRIVER_OK   4
#define ST_FEATURES_OK 8
#define ST_NEEDS_RESET 0x40

#define VRING_DESC_F_NEXT  1
#define VRING_DESC_F_WRITE 2
#define VRING_AVAIL_F_NO_INTERRUPT 1

/* Failure codes (debug exit port); 0 is success. */
#define FAIL_DEVICE       0x10 /* magic, version or device id wrong */
#define FAIL_FEATURES     0x11 /* FEATURES_OK refused, or VERSION_1 not offered */
#define FAIL_QUEUE        0x12 /* QueueNumMax too small, or the queue is already live */
#define FAIL_NEEDS_RESET  0x13 /* the device set DEVICE_NEEDS_RESET */
#define FAIL_TIMEOUT      0x20 /* (+ which wait) nothing arrived in time */
#define FAIL_DATA         0x30 /* received bytes differ from the expected pattern */
#define FAIL_LENGTH       0x31 /* the device reported an unexpected used length */
#define FAIL_ISR          0x32 /* InterruptStatus lacked the used-buffer bit */

struct vring_desc { u64 addr; u32 len; u16 flags; u16 next; };
struct vring_used_elem { u32 id; u32 len; };

struct vq {
	u64 mmio;
	u16 index, size;
	volatile struct vring_desc *desc;
	volatile u16 *avail;  /* flags, idx, ring[size] */
	volatile u16 *used;   /* flags, idx, then elems */
	u16 avail_idx, last_used;
};

/* Counted by the interrupt handlers (ring 0) in the mailbox page, so the host can
 * read them after the run: u64 at 0x3000 = virtio interrupts, 0x3008 = spurious. */
#define MBOX_IRQ_COUNT      0x3000UL
#define MBOX_SPURIOUS_COUNT 0x3008UL
#define irq_count (*(volatile u64 *)MBOX_IRQ_COUNT)

/* The handlers. Ring 0 is emulated (~1 us per instruction): keep them tiny.
 * The LAPIC address does not fit a sign-extended disp32, hence movabs. */
__asm__(
	"	.text\n"
	"	.globl virtio_irq_entry\n"
	"virtio_irq_entry:\n"
	"	incq 0x3000\n"
	"	pushq %rax\n"
	"	movabsq $0xfee000b0, %rax\n"
	"	movl $0, (%rax)\n"
	"	popq %rax\n"
	"	iretq\n"
	"	.globl spurious_irq_entry\n"
	"spurious_irq_entry:\n"
	"	incq 0x3008\n"
	"	iretq\n");
void virtio_irq_entry(void);
void spurious_irq_entry(void);

static inline void barrier(void) { __asm__ volatile("" : : : "memory"); }

static inline void idt_set(u8 vector, void (*handler)(void))
{
	u64 off = (u64)handler;
	volatile u32 *e = (volatile u32 *)(IDT_BASE + 16UL * vector);
	e[0] = (u32)(off & 0xffff) | (0x08u << 16);          /* offset 15:0, selector 0x08 */
	e[1] = (u32)(off & 0xffff0000) | 0x8e00;              /* P, DPL 0, 64-bit interrupt gate */
	e[2] = (u32)(off >> 32);
	e[3] = 0;
}

static inline void ioapic_write(u32 reg, u32 value)
{
	mmio_write32(IOAPIC_SEL, reg);
	mmio_write32(IOAPIC_WIN, value);
}

/* IDT gates, LAPIC on, IOAPIC `pin` → VIRTIO_IRQ_VECTOR (fixed, physical, edge,
 * active high, APIC id 0), legacy PIC masked, then sti at CPL3 (IOPL 3). */
static inline void interrupts_init(u32 pin, int irq_mode)
{
	idt_set(VIRTIO_IRQ_VECTOR, virtio_irq_entry);
	idt_set(SPURIOUS_VECTOR, spurious_irq_entry);
	outb(0x21, 0xff);
	outb(0xa1, 0xff);
	mmio_write32(LAPIC_TPR, 0);
	mmio_write32(LAPIC_SVR, (mmio_read32(LAPIC_SVR) & ~0xffu) | 0x100 | SPURIOUS_VECTOR);
	ioapic_write(0x11 + 2 * pin, 0);                 /* destination APIC id 0 */
	ioapic_write(0x10 + 2 * pin, VIRTIO_IRQ_VECTOR); /* unmasked, edge, fixed */
	if (irq_mode)
		__asm__ volatile("sti" : : : "memory");
}

static inline u32 vreg(u64 mmio, u32 off) { return mmio_read32(mmio + off); }
static inline void vset(u64 mmio, u32 off, u32 v) { mmio_write32(mmio + off, v); }

/* Reset, ACKNOWLEDGE, DRIVER, accept VERSION_1 plus `low_features` (bits 0-31),
 * FEATURES_OK. Exits the VM on failure. */
static inline void virtio_negotiate(u64 mmio, u32 device_id, u32 low_features)
{
	if (vreg(mmio, VM_MAGIC) != 0x74726976 || vreg(mmio, VM_VERSION) != 2 ||
	    vreg(mmio, VM_DEVICE_ID) != device_id)
		debug_exit(FAIL_DEVICE);
	vset(mmio, VM_STATUS, 0);
	vset(mmio, VM_STATUS, ST_ACK);
	vset(mmio, VM_STATUS, ST_ACK | ST_DRIVER);
	vset(mmio, VM_DEV_FEAT_SEL, 1);
	if (!(vreg(mmio, VM_DEV_FEATURES) & 1))
		debug_exit(FAIL_FEATURES);
	vset(mmio, VM_DEV_FEAT_SEL, 0);
	low_features &= vreg(mmio, VM_DEV_FEATURES);
	vset(mmio, VM_DRV_FEAT_SEL, 0);
	vset(mmio, VM_DRV_FEATURES, low_features);
	vset(mmio, VM_DRV_FEAT_SEL, 1);
	vset(mmio, VM_DRV_FEATURES, 1); /* VERSION_1 */
	vset(mmio, VM_STATUS, ST_ACK | ST_DRIVER | ST_FEATURES_OK);
	if (!(vreg(mmio, VM_STATUS) & ST_FEATURES_OK))
		debug_exit(FAIL_FEATURES);
}

/* Lays queue `index` out at `ring` (three 4 KiB pages: desc, avail, used). */
static inline void vq_setup(struct vq *q, u64 mmio, u16 index, u16 size, u64 ring)
{
	q->mmio = mmio;
	q->index = index;
	q->size = size;
	q->desc = (volatile struct vring_desc *)ring;
	q->avail = (volatile u16 *)(ring + 0x1000);
	q->used = (volatile u16 *)(ring + 0x2000);
	q->avail_idx = 0;
	q->last_used = 0;
	for (u64 *p = (u64 *)ring; p < (u64 *)(ring + 0x3000); p++)
		*(volatile u64 *)p = 0;
	vset(mmio, VM_QUEUE_SEL, index);
	if (vreg(mmio, VM_QUEUE_READY) != 0 || vreg(mmio, VM_QUEUE_NUM_MAX) < size)
		debug_exit(FAIL_QUEUE);
	vset(mmio, VM_QUEUE_NUM, size);
	vset(mmio, VM_DESC_LO, (u32)ring);
	vset(mmio, VM_DESC_HI, (u32)(ring >> 32));
	vset(mmio, VM_AVAIL_LO, (u32)(ring + 0x1000));
	vset(mmio, VM_AVAIL_HI, (u32)((ring + 0x1000) >> 32));
	vset(mmio, VM_USED_LO, (u32)(ring + 0x2000));
	vset(mmio, VM_USED_HI, (u32)((ring + 0x2000) >> 32));
	vset(mmio, VM_QUEUE_READY, 1);
	if (vreg(mmio, VM_QUEUE_READY) != 1)
		debug_exit(FAIL_QUEUE);
}

static inline void virtio_driver_ok(u64 mmio)
{
	vset(mmio, VM_STATUS, ST_ACK | ST_DRIVER | ST_FEATURES_OK | ST_DRIVER_OK);
	if (vreg(mmio, VM_STATUS) & ST_NEEDS_RESET)
		debug_exit(FAIL_NEEDS_RESET);
}

/* Posts a one-descriptor chain using descriptor `slot`. */
static inline void vq_post(struct vq *q, u16 slot, u64 addr, u32 len, u16 flags)
{
	q->desc[slot].addr = addr;
	q->desc[slot].len = len;
	q->desc[slot].flags = flags;
	q->desc[slot].next = 0;
	q->avail[2 + (q->avail_idx & (q->size - 1))] = slot;
	barrier();
	q->avail_idx++;
	q->avail[1] = q->avail_idx;
}

/* QueueNotify: the host makes it an ioeventfd (datamatch = queue index): no exit. */
static inline void vq_kick(struct vq *q)
{
	barrier();
	mmio_write32(q->mmio + VM_QUEUE_NOTIFY, q->index);
}

static inline u16 vq_used_idx(struct vq *q) { return q->used[1]; }

/* Takes the next used element; returns 0 when there is none. */
static inline int vq_pop_used(struct vq *q, u32 *id, u32 *len)
{
	if (vq_used_idx(q) == q->last_used)
		return 0;
	barrier();
	volatile struct vring_used_elem *e =
		(volatile struct vring_used_elem *)(q->used + 2) + (q->last_used & (q->size - 1));
	*id = e->id;
	*len = e->len;
	q->last_used++;
	return 1;
}

#define WAIT_SPINS 400000000UL

/* Waits for an interrupt until `q` has a used element; never polls the ring in a
 * loop, so a lost interrupt ends in FAIL_TIMEOUT + `which`. */
static inline void vq_wait_irq(struct vq *q, u32 which)
{
	for (;;) {
		u64 seen = irq_count;
		barrier();
		if (vq_used_idx(q) != q->last_used)
			return;
		u64 spins = 0;
		while (irq_count == seen) {
			cpu_relax();
			if (++spins == WAIT_SPINS)
				debug_exit(FAIL_TIMEOUT + which);
		}
	}
}

/* Polls the used ring of `q` (interrupts off or suppressed). */
static inline void vq_wait_poll(struct vq *q, u32 which)
{
	u64 spins = 0;
	while (vq_used_idx(q) == q->last_used) {
		cpu_relax();
		if (++spins == WAIT_SPINS)
			debug_exit(FAIL_TIMEOUT + which);
	}
}

static inline void vq_wait(struct vq *q, u32 which, int irq_mode)
{
	if (irq_mode)
		vq_wait_irq(q, which);
	else
		vq_wait_poll(q, which);
}

/* param bit 32: irq mode (sti, wait for interrupts); not possible on nested PVM. */
#define PARAM_IRQ_MODE   (1UL << 32)

#endif
