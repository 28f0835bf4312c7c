#include "guest.h"

/* Fill [0x200000, 0x200000 + param) with u32 (addr * 2654435761) ^ 0xa5a5a5a5 at
 * every 4-byte-aligned address whose whole word lies inside the range. */
void guest_main(u64 id, u64 count, u64 param)
{
	(void)id; (void)count;
	u64 end = 0x200000UL + param;
	for (u64 a = 0x200000UL; a + 4 <= end; a += 4)
		*(volatile u32 *)a = ((u32)a * 2654435761u) ^ 0xa5a5a5a5u;
	debug_exit(0);
}
