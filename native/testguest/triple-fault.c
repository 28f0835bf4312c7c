#include "guest.h"

/* #UD with an empty IDT: #UD -> #GP -> #DF -> triple fault (KVM_EXIT_SHUTDOWN). */
void guest_main(u64 id, u64 count, u64 param)
{
	(void)id; (void)count; (void)param;
	for (;;) __asm__ volatile("ud2");
}
