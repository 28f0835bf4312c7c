/* Shared helpers for tsibox synthetic guests (freestanding, no libc).
 * Machine contract: docs/synthetic-guests.md. Guests run at CPL3 with IOPL=3,
 * so in/out work but hlt/cli do not; "park" (port 0x504) replaces hlt. */
#ifndef TSIBOX_GUEST_H
#define TSIBOX_GUEST_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long u64;

#define PORT_UART_THR   0x3f8
#define PORT_I8042_CMD  0x64
#define PORT_DEBUG_EXIT 0x500
#define PORT_PARK       0x504
#define PORT_NULL       0x508
#define PORT_ECHO       0x510
#define PORT_VCPU_ID    0x514

#define MMIO_ECHO       0xd0000000UL
#define MMIO_IOEVENTFD  0xd0001000UL
#define MMIO_UNMAPPED   0xd0f00000UL
#define MAILBOX         0x3000UL

static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port) : "memory"); }
static inline void outw(u16 port, u16 v) { __asm__ volatile("outw %0, %1" : : "a"(v), "Nd"(port) : "memory"); }
static inline void outl(u16 port, u32 v) { __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port) : "memory"); }
static inline u8 inb(u16 port) { u8 v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port) : "memory"); return v; }
static inline u16 inw(u16 port) { u16 v; __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port) : "memory"); return v; }
static inline u32 inl(u16 port) { u32 v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port) : "memory"); return v; }

static inline u32 mmio_read32(u64 addr) { return *(volatile u32 *)addr; }
static inline void mmio_write32(u64 addr, u32 v) { *(volatile u32 *)addr = v; }
static inline u64 mmio_read64(u64 addr) { return *(volatile u64 *)addr; }
static inline void mmio_write64(u64 addr, u64 v) { *(volatile u64 *)addr = v; }

static inline void cpu_relax(void) { __asm__ volatile("pause" : : : "memory"); }

/* THR writes only: no LSR polling (every poll would be a VM exit, and the
 * engine's UART transmits immediately). */
static inline void uart_putc(char c) { outb(PORT_UART_THR, (u8)c); }
static inline void uart_puts(const char *s) { while (*s) uart_putc(*s++); }

/* Stop the writing vCPU. If a host ever resumes it, park again. */
static inline __attribute__((noreturn)) void park(void)
{
	for (;;) outl(PORT_PARK, 0);
}

/* End the VM with reason "exit" and the given code. */
static inline __attribute__((noreturn)) void debug_exit(u32 code)
{
	outl(PORT_DEBUG_EXIT, code);
	park();
}

/* Reset the machine through the i8042 command port. */
static inline __attribute__((noreturn)) void i8042_reset(void)
{
	outb(PORT_I8042_CMD, 0xfe);
	park();
}

/* Every guest implements this; _start (start.S) calls it with the SysV ABI. */
void guest_main(u64 id, u64 count, u64 param);

#endif
