#include "guest.h"

void guest_main(u64 id, u64 count, u64 param)
{
	(void)id; (void)count; (void)param;
	uart_puts("Hello from tsibox guest\n");
	i8042_reset();
}
