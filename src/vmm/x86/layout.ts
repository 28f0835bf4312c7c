// Fixed guest-physical addresses of the x86 system tables we build (see
// docs/synthetic-guests.md; the Linux loader uses the same page-table area).
export const LAYOUT = {
  GDT: 0x500,
  TSS: 0x1000,
  IDT: 0x2000,
  MAILBOX: 0x3000,
  PML4: 0x9000,
  PDPT: 0xa000,
  /** Four page directories follow, 0xb000..0xefff, mapping 0..4 GiB. */
  PD: 0xb000,
  KERNEL_STACK: 0x8000,
  STACK_TOP: 0x80000,
  STACK_STRIDE: 0x4000,
  IMAGE: 0x100000,
  /** KVM needs these two pages on Intel hosts for real-mode emulation; keep them out of RAM's way. */
  KVM_TSS: 0xfffb_d000,
  KVM_IDENTITY_MAP: 0xfffb_c000,
} as const;

export const MAX_VCPUS = 16;

export const SELECTOR = {
  CODE0: 0x08,
  DATA0: 0x10,
  CODE3: 0x1b,
  DATA3: 0x23,
  TSS: 0x28,
} as const;
