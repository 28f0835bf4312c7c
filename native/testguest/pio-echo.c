#include "guest.h"

/* Write 64 distinct values to the echo port 0x510, read each back. */
void guest_main(u64 id, u64 count, u64 param)
{
	(void)id; (void)count; (void)param;
	for (u32 i = 0; i < 64; i++) {
		u32 v = 0x5a000000u ^ (i * 0x9e3779b9u) ^ i;
		outl(PORT_ECHO, v);
		if (inl(PORT_ECHO) != v)
			debug_exit(0x100 + i);
	}
	debug_exit(0);
}
