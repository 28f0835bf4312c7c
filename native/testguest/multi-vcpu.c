#include "guest.h"

/* Every vCPU reports its index once on port 0x514, then parks. */
void guest_main(u64 id, u64 count, u64 param)
{
	(void)count; (void)param;
	outl(PORT_VCPU_ID, (u32)id);
	park();
}
