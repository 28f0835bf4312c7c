#include "virtio.h"

/* `tsibox bench virtqueue` through KVM: request/response round trips to the
 * virtio-rng device at index 2 (MMIO 0xd0002000, GSI 7). Each round posts one
 * 64-byte writable buffer, kicks (QueueNotify = ioeventfd, no exit) and waits for
 * the used buffer.
 * param bits 0-31: rounds; bit 32: irq mode (wait for the irqfd interrupt; not on
 * nested PVM), else poll the used ring; bit 33: suppress interrupts
 * (VRING_AVAIL_F_NO_INTERRUPT: the device does not signal its irqfd).
 * Mailbox: u64 0x3000 interrupts taken, 0x3010 rounds done.
 * Exit code 0 on success, else a FAIL_* code from virtio.h. */

#define DEVICE_INDEX 2
#define QSIZE        16
#define RING         0x200000UL
#define BUF          0x300000UL
#define BUF_SIZE     64

void guest_main(u64 id, u64 count, u64 param)
{
	(void)id; (void)count;
	u64 mmio = VIRTIO_MMIO_BASE(DEVICE_INDEX);
	u32 rounds = (u32)param;
	int irq = (param & PARAM_IRQ_MODE) != 0;
	int quiet = (param >> 33) & 1;
	struct vq q;

	interrupts_init(VIRTIO_GSI(DEVICE_INDEX), irq && !quiet);
	virtio_negotiate(mmio, 4, 0);
	vq_setup(&q, mmio, 0, QSIZE, RING);
	if (quiet)
		q.avail[0] = VRING_AVAIL_F_NO_INTERRUPT;
	virtio_driver_ok(mmio);

	for (u32 r = 0; r < rounds; r++) {
		vq_post(&q, 0, BUF, BUF_SIZE, VRING_DESC_F_WRITE);
		vq_kick(&q);
		vq_wait(&q, 1, irq && !quiet);
		u32 slot, len;
		if (!vq_pop_used(&q, &slot, &len) || slot != 0 || len != BUF_SIZE)
			debug_exit(FAIL_LENGTH);
		*(volatile u64 *)(MAILBOX + 0x10) = r + 1;
	}
	debug_exit(0);
}
