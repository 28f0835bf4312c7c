#include "virtio.h"

/* A virtio-console driver without MULTIPORT (only port 0: receiveq 0, transmitq 1)
 * for the device at index 2 (MMIO 0xd0002000, GSI 7), driven by interrupts.
 *  1. sends GREETING on the transmitq;
 *  2. receives `param` bytes on the receiveq (8 buffers of 64 bytes, reposted),
 *     checks byte i == (u8)(i * 31 + 7), and sends each received buffer back;
 *  3. waits for every transmit to complete, checks InterruptStatus once.
 * param bits 0-31: bytes to receive; bit 32: irq mode (every wait is for an
 * interrupt, see vq_wait_irq), else the guest polls the used rings (nested PVM).
 * Kicks are ioeventfds.
 * Mailbox: u64 0x3000 interrupts, 0x3008 spurious interrupts, 0x3010 bytes received.
 * Exit code 0 on success, else a FAIL_* code from virtio.h. */

#define DEVICE_INDEX 2
#define QSIZE        16
#define RX_RING      0x200000UL
#define TX_RING      0x210000UL
#define RX_BUFS      0x300000UL
#define TX_BUFS      0x310000UL
#define RX_COUNT     8
#define BUF_SIZE     64

static const char greeting[] = "hello from the virtio-console guest\n";

static void tx_send(struct vq *tx, u64 addr, u32 len, int irq)
{
	/* The transmitq is full: reclaim (waiting for its interrupt if needed). */
	while ((u16)(tx->avail_idx - tx->last_used) == QSIZE) {
		u32 id, l;
		if (!vq_pop_used(tx, &id, &l))
			vq_wait(tx, 3, irq);
	}
	vq_post(tx, tx->avail_idx & (QSIZE - 1), addr, len, 0);
}

void guest_main(u64 id, u64 count, u64 param)
{
	(void)id; (void)count;
	u64 mmio = VIRTIO_MMIO_BASE(DEVICE_INDEX);
	u64 want = (u32)param;
	int irq = (param & PARAM_IRQ_MODE) != 0;
	struct vq rx, tx;

	interrupts_init(VIRTIO_GSI(DEVICE_INDEX), irq);
	virtio_negotiate(mmio, 3, 0); /* no MULTIPORT, no SIZE */
	vq_setup(&rx, mmio, 0, QSIZE, RX_RING);
	vq_setup(&tx, mmio, 1, QSIZE, TX_RING);
	virtio_driver_ok(mmio);

	for (u16 i = 0; i < RX_COUNT; i++)
		vq_post(&rx, i, RX_BUFS + i * BUF_SIZE, BUF_SIZE, VRING_DESC_F_WRITE);
	vq_kick(&rx);

	tx_send(&tx, (u64)greeting, sizeof(greeting) - 1, irq);
	vq_kick(&tx);
	vq_wait(&tx, 1, irq);

	u64 got = 0;
	while (got < want) {
		vq_wait(&rx, 2, irq);
		u32 slot, len;
		while (vq_pop_used(&rx, &slot, &len)) {
			if (slot >= RX_COUNT || len > BUF_SIZE)
				debug_exit(FAIL_LENGTH);
			volatile u8 *src = (volatile u8 *)(RX_BUFS + slot * BUF_SIZE);
			u64 at = TX_BUFS + (u64)(tx.avail_idx & (QSIZE - 1)) * BUF_SIZE;
			for (u32 i = 0; i < len; i++, got++) {
				if (src[i] != (u8)(got * 31 + 7))
					debug_exit(FAIL_DATA);
				((volatile u8 *)at)[i] = src[i];
			}
			if (got > want)
				debug_exit(FAIL_DATA);
			if (len > 0)
				tx_send(&tx, at, len, irq);
			vq_post(&rx, (u16)slot, RX_BUFS + slot * BUF_SIZE, BUF_SIZE, VRING_DESC_F_WRITE);
		}
		*(volatile u64 *)(MAILBOX + 0x10) = got;
		vq_kick(&rx);
		vq_kick(&tx);
	}

	while (tx.last_used != tx.avail_idx) {
		u32 i, l;
		if (!vq_pop_used(&tx, &i, &l))
			vq_wait(&tx, 4, irq);
	}

	u32 isr = vreg(mmio, VM_INT_STATUS);
	if (!(isr & 1))
		debug_exit(FAIL_ISR);
	vset(mmio, VM_INT_ACK, isr);
	debug_exit(0);
}
