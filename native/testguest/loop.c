#include "guest.h"

/* Exactly "dec rcx; jnz" for param iterations (ring-0 vs ring-3 speed probe). */
void guest_main(u64 id, u64 count, u64 param)
{
	(void)id; (void)count;
	if (param) {
		u64 n = param;
		__asm__ volatile(
			".p2align 4\n"
			"1:\tdec %0\n\t"
			"jnz 1b"
			: "+c"(n) : : "cc");
	}
	debug_exit(0);
}
