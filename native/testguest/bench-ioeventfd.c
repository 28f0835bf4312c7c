#include "guest.h"

/* Ping-pong: for seq 1..param write seq to the ioeventfd address, then spin until
 * the host has stored seq into the mailbox u64 at 0x3000. */
void guest_main(u64 id, u64 count, u64 param)
{
	(void)id; (void)count;
	volatile u64 *mbox = (volatile u64 *)MAILBOX;
	for (u64 seq = 1; seq <= param; seq++) {
		mmio_write32(MMIO_IOEVENTFD, (u32)seq);
		while (__atomic_load_n(mbox, __ATOMIC_ACQUIRE) != seq)
			cpu_relax();
	}
	debug_exit(0);
}
