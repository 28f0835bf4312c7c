/* Entry point: the first byte of every guest image (placed first by link.ld).
 * The host enters here with rdi = vCPU index, rsi = vCPU count, rdx = param and a
 * 16-byte-aligned rsp, so a plain call gives guest_main a SysV-conforming frame. */
	.section .text.start, "ax"
	.globl _start
	.type _start, @function
_start:
	call guest_main
	/* guest_main returned: park this vCPU (port 0x504), forever. */
1:	movw $0x504, %dx
	xorl %eax, %eax
	outl %eax, %dx
	jmp 1b
	.size _start, . - _start
	.section .note.GNU-stack, "", @progbits
