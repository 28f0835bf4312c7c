#include "guest.h"

/* param x "out 0x508" (null port: one PIO exit each), then exit 0. */
void guest_main(u64 id, u64 count, u64 param)
{
	(void)id; (void)count;
	for (u64 i = 0; i < param; i++)
		outb(PORT_NULL, 0);
	debug_exit(0);
}
