#include "guest.h"

/* Read an MMIO address nobody registered: the host ends the VM with "error". */
void guest_main(u64 id, u64 count, u64 param)
{
	(void)id; (void)count; (void)param;
	(void)mmio_read32(MMIO_UNMAPPED);
	park();
}
