#include "guest.h"

/* Loop forever without exiting (for timeouts, kill and pause tests). */
void guest_main(u64 id, u64 count, u64 param)
{
	(void)id; (void)count; (void)param;
	__asm__ volatile("1: jmp 1b");
	__builtin_unreachable();
}
