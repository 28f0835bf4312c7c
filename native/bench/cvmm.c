/* cvmm: a minimal C VMM that builds the synthetic-guest machine of
 * docs/synthetic-guests.md and runs one guest on one vCPU. It is the baseline the
 * TypeScript KVM engine is measured against, and a way to try guests by hand.
 *
 *   cvmm [--cpl 0|3] [--mem MiB] [--param N] <guest.bin> <run|exits|ioeventfd|loop>
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ---- machine layout (docs/synthetic-guests.md) ---- */
#define GDT_ADDR      0x0500
#define TSS_ADDR      0x1000
#define IDT_ADDR      0x2000
#define MAILBOX_ADDR  0x3000
#define PML4_ADDR     0x9000
#define PDPT_ADDR     0xa000
#define PD_ADDR       0xb000
#define STACK_TOP     0x80000
#define IMAGE_ADDR    0x100000
#define KVM_TSS_ADDR  0xfffbd000

/* TSS: 104-byte 64-bit TSS, then an I/O permission bitmap at offset 104 granting
 * ports 0x000-0xfff (512 zero bytes) and the required 0xff terminator byte.
 * IOPL=3 alone is not enough on nested PVM: it ignores IOPL for ring-3 in/out and
 * only honours the TSS bitmap (see native/testguest/README.md). */
#define TSS_IOMAP_BASE 104
#define IOMAP_PORTS    0x1000
#define TSS_LIMIT      (TSS_IOMAP_BASE + IOMAP_PORTS / 8) /* inclusive: covers the terminator */

#define PORT_COM1       0x3f8
#define PORT_I8042_CMD  0x64
#define PORT_DEBUG_EXIT 0x500
#define PORT_PARK       0x504
#define PORT_NULL       0x508
#define PORT_ECHO       0x510
#define PORT_VCPU_ID    0x514
#define MMIO_ECHO       0xd0000000ULL
#define MMIO_IOEVENTFD  0xd0001000ULL

#define PTE_P  0x1ULL
#define PTE_W  0x2ULL
#define PTE_U  0x4ULL
#define PTE_PS 0x80ULL

enum mode { MODE_RUN, MODE_EXITS, MODE_IOEVENTFD, MODE_LOOP };

struct vm {
	int kvm, vm, vcpu;
	uint8_t *mem;
	size_t mem_size;
	struct kvm_run *run;
	size_t run_size;
	int cpl;
};

/* Outcome of running the vCPU until the machine stops. */
struct outcome {
	const char *reason; /* reset, exit, halted, shutdown, error */
	uint64_t code;
	char detail[256];
	uint64_t run_ns;    /* time spent inside KVM_RUN */
	uint64_t wall_ns;   /* first KVM_RUN to the final exit */
};

static void die(const char *what)
{
	perror(what);
	exit(1);
}

static void fail(const char *fmt, const char *arg)
{
	fprintf(stderr, "cvmm: ");
	fprintf(stderr, fmt, arg);
	fputc('\n', stderr);
	exit(2);
}

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static void usage(void)
{
	fprintf(stderr,
		"usage: cvmm [--cpl 0|3] [--mem MiB] [--param N] <guest.bin> <run|exits|ioeventfd|loop>\n");
	exit(2);
}

/* ---- building the machine ---- */

static void put64(struct vm *vm, uint64_t gpa, uint64_t v) { memcpy(vm->mem + gpa, &v, 8); }
static void put16(struct vm *vm, uint64_t gpa, uint16_t v) { memcpy(vm->mem + gpa, &v, 2); }

static void setup_tables(struct vm *vm)
{
	/* GDT: null, code64 DPL0, data DPL0, code64 DPL3, data DPL3, 64-bit TSS (2 slots). */
	put64(vm, GDT_ADDR + 0x00, 0);
	put64(vm, GDT_ADDR + 0x08, 0x00af9b000000ffffULL);
	put64(vm, GDT_ADDR + 0x10, 0x00cf93000000ffffULL);
	put64(vm, GDT_ADDR + 0x18, 0x00affb000000ffffULL);
	put64(vm, GDT_ADDR + 0x20, 0x00cff3000000ffffULL);
	uint64_t base = TSS_ADDR, limit = TSS_LIMIT;
	uint64_t tss_lo = (limit & 0xffff) | ((base & 0xffffff) << 16) | (0x8bULL << 40) |
			  (((limit >> 16) & 0xf) << 48) | (((base >> 24) & 0xff) << 56);
	put64(vm, GDT_ADDR + 0x28, tss_lo);
	put64(vm, GDT_ADDR + 0x30, base >> 32);

	/* TSS: rsp0 = 0x8000, I/O map base = 104, bitmap allows ports 0-0xfff. */
	memset(vm->mem + TSS_ADDR, 0, TSS_LIMIT + 1);
	put64(vm, TSS_ADDR + 4, 0x8000);
	put16(vm, TSS_ADDR + 102, TSS_IOMAP_BASE);
	vm->mem[TSS_ADDR + TSS_LIMIT] = 0xff;

	/* IDT: 256 empty gates (mapping is fresh anonymous memory, but be explicit). */
	memset(vm->mem + IDT_ADDR, 0, 256 * 16);
	memset(vm->mem + MAILBOX_ADDR, 0, 0x1000);

	/* Page tables: identity map 0-4 GiB with 2 MiB pages, user-accessible. */
	put64(vm, PML4_ADDR, PDPT_ADDR | PTE_P | PTE_W | PTE_U);
	for (uint64_t i = 0; i < 4; i++) {
		uint64_t pd = PD_ADDR + i * 0x1000;
		put64(vm, PDPT_ADDR + i * 8, pd | PTE_P | PTE_W | PTE_U);
		for (uint64_t j = 0; j < 512; j++)
			put64(vm, pd + j * 8,
			      ((i * 512 + j) << 21) | PTE_P | PTE_W | PTE_U | PTE_PS);
	}
}

static void load_image(struct vm *vm, const char *path)
{
	int fd = open(path, O_RDONLY);
	if (fd < 0)
		die(path);
	struct stat st;
	if (fstat(fd, &st) < 0)
		die("fstat");
	if ((uint64_t)st.st_size > vm->mem_size - IMAGE_ADDR)
		fail("%s does not fit in guest memory", path);
	size_t off = 0;
	while (off < (size_t)st.st_size) {
		ssize_t n = read(fd, vm->mem + IMAGE_ADDR + off, (size_t)st.st_size - off);
		if (n < 0)
			die("read image");
		if (n == 0)
			break;
		off += (size_t)n;
	}
	close(fd);
}

static void set_cpuid(struct vm *vm)
{
	int nent = 64;
	for (;;) {
		struct kvm_cpuid2 *c = calloc(1, sizeof(*c) + nent * sizeof(struct kvm_cpuid_entry2));
		if (!c)
			die("calloc");
		c->nent = nent;
		if (ioctl(vm->kvm, KVM_GET_SUPPORTED_CPUID, c) == 0) {
			if (ioctl(vm->vcpu, KVM_SET_CPUID2, c) < 0)
				die("KVM_SET_CPUID2");
			free(c);
			return;
		}
		free(c);
		if (errno != E2BIG || nent >= 4096)
			die("KVM_GET_SUPPORTED_CPUID");
		nent *= 2;
	}
}

static void seg(struct kvm_segment *s, uint16_t sel, bool code, int dpl)
{
	memset(s, 0, sizeof(*s));
	s->base = 0;
	s->limit = 0xffffffff;
	s->selector = sel;
	s->type = code ? 0xb : 0x3; /* execute/read accessed : read/write accessed */
	s->present = 1;
	s->dpl = dpl;
	s->db = code ? 0 : 1;
	s->s = 1;
	s->l = code ? 1 : 0;
	s->g = 1;
}

static void setup_vcpu(struct vm *vm, uint64_t index, uint64_t count, uint64_t param)
{
	struct kvm_sregs sr;
	if (ioctl(vm->vcpu, KVM_GET_SREGS, &sr) < 0)
		die("KVM_GET_SREGS");
	int dpl = vm->cpl;
	uint16_t cs_sel = dpl ? 0x1b : 0x08, ds_sel = dpl ? 0x23 : 0x10;
	seg(&sr.cs, cs_sel, true, dpl);
	seg(&sr.ds, ds_sel, false, dpl);
	sr.es = sr.fs = sr.gs = sr.ss = sr.ds;

	memset(&sr.tr, 0, sizeof(sr.tr));
	sr.tr.base = TSS_ADDR;
	sr.tr.limit = TSS_LIMIT;
	sr.tr.selector = 0x28;
	sr.tr.type = 0xb; /* busy 64-bit TSS */
	sr.tr.present = 1;

	memset(&sr.ldt, 0, sizeof(sr.ldt));
	sr.ldt.type = 0x2;
	sr.ldt.unusable = 1;

	sr.gdt.base = GDT_ADDR;
	sr.gdt.limit = 0x37;
	sr.idt.base = IDT_ADDR;
	sr.idt.limit = 0xfff;
	sr.cr0 = 0x80050033;
	sr.cr3 = PML4_ADDR;
	sr.cr4 = 0x620;
	sr.efer = 0x500;
	if (ioctl(vm->vcpu, KVM_SET_SREGS, &sr) < 0)
		die("KVM_SET_SREGS");

	struct kvm_regs r;
	memset(&r, 0, sizeof(r));
	r.rip = IMAGE_ADDR;
	r.rsp = STACK_TOP - index * 0x4000;
	r.rdi = index;
	r.rsi = count;
	r.rdx = param;
	r.rflags = 0x3002;
	if (ioctl(vm->vcpu, KVM_SET_REGS, &r) < 0)
		die("KVM_SET_REGS");
}

static void create_vm(struct vm *vm, size_t mem_mib)
{
	vm->kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (vm->kvm < 0)
		die("/dev/kvm");
	int api = ioctl(vm->kvm, KVM_GET_API_VERSION, 0);
	if (api != KVM_API_VERSION) {
		fprintf(stderr, "cvmm: KVM API version %d, expected %d\n", api, KVM_API_VERSION);
		exit(1);
	}
	vm->vm = ioctl(vm->kvm, KVM_CREATE_VM, 0);
	if (vm->vm < 0)
		die("KVM_CREATE_VM");
	if (ioctl(vm->vm, KVM_SET_TSS_ADDR, (unsigned long)KVM_TSS_ADDR) < 0)
		die("KVM_SET_TSS_ADDR");
	if (ioctl(vm->vm, KVM_CREATE_IRQCHIP, 0) < 0)
		die("KVM_CREATE_IRQCHIP");

	vm->mem_size = mem_mib << 20;
	vm->mem = mmap(NULL, vm->mem_size, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (vm->mem == MAP_FAILED)
		die("mmap guest memory");
	struct kvm_userspace_memory_region region = {
		.slot = 0,
		.flags = 0,
		.guest_phys_addr = 0,
		.memory_size = vm->mem_size,
		.userspace_addr = (uintptr_t)vm->mem,
	};
	if (ioctl(vm->vm, KVM_SET_USER_MEMORY_REGION, &region) < 0)
		die("KVM_SET_USER_MEMORY_REGION");

	vm->vcpu = ioctl(vm->vm, KVM_CREATE_VCPU, 0);
	if (vm->vcpu < 0)
		die("KVM_CREATE_VCPU");
	int sz = ioctl(vm->kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	if (sz < 0)
		die("KVM_GET_VCPU_MMAP_SIZE");
	vm->run_size = (size_t)sz;
	vm->run = mmap(NULL, vm->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vm->vcpu, 0);
	if (vm->run == MAP_FAILED)
		die("mmap kvm_run");
	set_cpuid(vm);
}

/* ---- running ---- */

/* Test devices available in "run" mode so every guest can be tried by hand. */
static uint32_t echo_port, echo_mmio;

static uint64_t io_value(const uint8_t *p, int size)
{
	uint64_t v = 0;
	memcpy(&v, p, (size_t)size);
	return v;
}

/* Handle one PIO access. Returns true when the machine stops (filled in *o). */
static bool handle_io(struct vm *vm, enum mode mode, struct outcome *o)
{
	struct kvm_run *run = vm->run;
	uint16_t port = run->io.port;
	int size = run->io.size;
	bool out = run->io.direction == KVM_EXIT_IO_OUT;
	uint8_t *data = (uint8_t *)run + run->io.data_offset;

	for (uint32_t i = 0; i < run->io.count; i++, data += size) {
		if (out) {
			uint64_t v = io_value(data, size);
			if (port == PORT_COM1 && size == 1) {
				if (mode == MODE_RUN) {
					fputc((int)v, stdout);
					fflush(stdout);
				}
			} else if (port > PORT_COM1 && port <= PORT_COM1 + 7) {
				/* other UART registers: ignored */
			} else if (port == PORT_I8042_CMD) {
				if ((v & 0xff) == 0xfe) {
					o->reason = "reset";
					return true;
				}
			} else if (port == PORT_DEBUG_EXIT) {
				o->reason = "exit";
				o->code = v;
				return true;
			} else if (port == PORT_PARK) {
				o->reason = "halted"; /* the only vCPU is parked */
				return true;
			} else if (port == PORT_NULL) {
				/* null port */
			} else if (mode == MODE_RUN && port == PORT_ECHO && size == 4) {
				echo_port = (uint32_t)v;
			} else if (mode == MODE_RUN && port == PORT_VCPU_ID && size == 4) {
				fprintf(stderr, "cvmm: port 0x514 <- %" PRIu64 "\n", v);
			} else {
				o->reason = "error";
				snprintf(o->detail, sizeof(o->detail),
					 "unhandled port write 0x%x size %d value 0x%" PRIx64, port, size, v);
				return true;
			}
		} else {
			uint64_t v = 0;
			if (port == PORT_COM1 + 5) {
				v = 0x60; /* LSR: THR empty, transmitter empty */
			} else if (port >= PORT_COM1 && port <= PORT_COM1 + 7) {
				v = 0;
			} else if (port == PORT_I8042_CMD || port == PORT_NULL) {
				v = 0;
			} else if (mode == MODE_RUN && port == PORT_ECHO && size == 4) {
				v = echo_port;
			} else {
				o->reason = "error";
				snprintf(o->detail, sizeof(o->detail),
					 "unhandled port read 0x%x size %d", port, size);
				return true;
			}
			memcpy(data, &v, (size_t)size);
		}
	}
	return false;
}

static bool handle_mmio(struct vm *vm, enum mode mode, struct outcome *o)
{
	struct kvm_run *run = vm->run;
	uint64_t addr = run->mmio.phys_addr;
	uint32_t len = run->mmio.len;
	if (mode == MODE_RUN && addr == MMIO_ECHO && len == 4) {
		if (run->mmio.is_write)
			memcpy(&echo_mmio, run->mmio.data, 4);
		else
			memcpy(run->mmio.data, &echo_mmio, 4);
		return false;
	}
	o->reason = "error";
	snprintf(o->detail, sizeof(o->detail), "unhandled MMIO %s 0x%" PRIx64 " len %u",
		 run->mmio.is_write ? "write" : "read", addr, len);
	return true;
}

static void run_vcpu(struct vm *vm, enum mode mode, struct outcome *o)
{
	struct kvm_run *run = vm->run;
	uint64_t start = now_ns(), in_run = 0;
	memset(o, 0, sizeof(*o));
	for (;;) {
		uint64_t t0 = now_ns();
		int rc = ioctl(vm->vcpu, KVM_RUN, 0);
		in_run += now_ns() - t0;
		if (rc < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			die("KVM_RUN");
		}
		bool stop = false;
		switch (run->exit_reason) {
		case KVM_EXIT_IO:
			stop = handle_io(vm, mode, o);
			break;
		case KVM_EXIT_MMIO:
			stop = handle_mmio(vm, mode, o);
			break;
		case KVM_EXIT_HLT:
			o->reason = "halted";
			stop = true;
			break;
		case KVM_EXIT_SHUTDOWN:
			o->reason = "shutdown";
			stop = true;
			break;
		case KVM_EXIT_INTERNAL_ERROR: {
			int n = snprintf(o->detail, sizeof(o->detail), "internal error suberror=%u",
					 run->internal.suberror);
			for (uint32_t i = 0; i < run->internal.ndata && i < 16 && n < (int)sizeof(o->detail); i++)
				n += snprintf(o->detail + n, sizeof(o->detail) - (size_t)n, " data[%u]=0x%llx",
					      i, (unsigned long long)run->internal.data[i]);
			o->reason = "error";
			stop = true;
			break;
		}
		case KVM_EXIT_FAIL_ENTRY:
			snprintf(o->detail, sizeof(o->detail),
				 "entry failed: hardware_entry_failure_reason=0x%llx cpu=%u",
				 (unsigned long long)run->fail_entry.hardware_entry_failure_reason,
				 run->fail_entry.cpu);
			o->reason = "error";
			stop = true;
			break;
		case KVM_EXIT_SYSTEM_EVENT:
			o->reason = run->system_event.type == KVM_SYSTEM_EVENT_RESET ? "reset" : "shutdown";
			stop = true;
			break;
		default:
			snprintf(o->detail, sizeof(o->detail), "unexpected exit reason %u",
				 run->exit_reason);
			o->reason = "error";
			stop = true;
			break;
		}
		if (stop)
			break;
	}
	o->wall_ns = now_ns() - start;
	o->run_ns = in_run;
}

static void print_regs(struct vm *vm)
{
	struct kvm_regs r;
	struct kvm_sregs sr;
	if (ioctl(vm->vcpu, KVM_GET_REGS, &r) < 0 || ioctl(vm->vcpu, KVM_GET_SREGS, &sr) < 0)
		return;
	fprintf(stderr, "cvmm: rip=0x%llx rsp=0x%llx rflags=0x%llx cs=0x%x cr0=0x%llx cr4=0x%llx efer=0x%llx\n",
		(unsigned long long)r.rip, (unsigned long long)r.rsp, (unsigned long long)r.rflags,
		sr.cs.selector, (unsigned long long)sr.cr0, (unsigned long long)sr.cr4,
		(unsigned long long)sr.efer);
}

/* Checks a benchmark ended with exit code 0; otherwise explains and fails. */
static void expect_exit0(struct vm *vm, const struct outcome *o)
{
	if (strcmp(o->reason, "exit") == 0 && o->code == 0)
		return;
	fprintf(stderr, "cvmm: guest ended with reason=%s code=%" PRIu64 "%s%s\n", o->reason,
		o->code, o->detail[0] ? " " : "", o->detail);
	print_regs(vm);
	exit(1);
}

/* ---- ioeventfd ping-pong ---- */

struct pingpong {
	struct vm *vm;
	struct outcome o;
};

static void *vcpu_thread(void *arg)
{
	struct pingpong *pp = arg;
	run_vcpu(pp->vm, MODE_IOEVENTFD, &pp->o);
	return NULL;
}

static void bench_ioeventfd(struct vm *vm, uint64_t n)
{
	int efd = eventfd(0, EFD_CLOEXEC);
	if (efd < 0)
		die("eventfd");
	struct kvm_ioeventfd ioev = {
		.datamatch = 0,
		.addr = MMIO_IOEVENTFD,
		.len = 4,
		.fd = efd,
		.flags = 0,
	};
	if (ioctl(vm->vm, KVM_IOEVENTFD, &ioev) < 0)
		die("KVM_IOEVENTFD");

	uint64_t *mailbox = (uint64_t *)(vm->mem + MAILBOX_ADDR);
	struct pingpong pp = { .vm = vm };
	pthread_t t;
	int err = pthread_create(&t, NULL, vcpu_thread, &pp);
	if (err) {
		errno = err;
		die("pthread_create");
	}
	uint64_t done = 0;
	while (done < n) {
		uint64_t cnt;
		ssize_t r = read(efd, &cnt, sizeof(cnt));
		if (r < 0) {
			if (errno == EINTR)
				continue;
			die("read eventfd");
		}
		if (r != sizeof(cnt))
			fail("%s", "short eventfd read");
		done += cnt;
		__atomic_store_n(mailbox, done, __ATOMIC_RELEASE);
	}
	pthread_join(t, NULL);
	expect_exit0(vm, &pp.o);
	printf("{\"mode\":\"ioeventfd\",\"iterations\":%" PRIu64 ",\"ns_per_roundtrip\":%.1f}\n",
	       n, n ? (double)pp.o.wall_ns / (double)n : 0.0);
	close(efd);
}

/* ---- main ---- */

static uint64_t parse_u64(const char *s, const char *what)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 0);
	if (errno || *s == '\0' || *end != '\0' || *s == '-')
		fail("bad value for %s", what);
	return (uint64_t)v;
}

int main(int argc, char **argv)
{
	int cpl = 3;
	uint64_t mem_mib = 64, param = 0;
	bool have_param = false;
	int i = 1;
	for (; i < argc && strncmp(argv[i], "--", 2) == 0; i++) {
		if (strcmp(argv[i], "--") == 0) {
			i++;
			break;
		}
		if (i + 1 >= argc)
			usage();
		if (strcmp(argv[i], "--cpl") == 0) {
			uint64_t c = parse_u64(argv[++i], "--cpl");
			if (c != 0 && c != 3)
				fail("%s", "--cpl must be 0 or 3");
			cpl = (int)c;
		} else if (strcmp(argv[i], "--mem") == 0) {
			mem_mib = parse_u64(argv[++i], "--mem");
			if (mem_mib < 2 || mem_mib > 3072)
				fail("%s", "--mem must be 2..3072 MiB");
		} else if (strcmp(argv[i], "--param") == 0) {
			param = parse_u64(argv[++i], "--param");
			have_param = true;
		} else {
			usage();
		}
	}
	if (argc - i != 2)
		usage();
	const char *image = argv[i], *mode_name = argv[i + 1];
	enum mode mode;
	if (strcmp(mode_name, "run") == 0)
		mode = MODE_RUN;
	else if (strcmp(mode_name, "exits") == 0)
		mode = MODE_EXITS;
	else if (strcmp(mode_name, "ioeventfd") == 0)
		mode = MODE_IOEVENTFD;
	else if (strcmp(mode_name, "loop") == 0)
		mode = MODE_LOOP;
	else
		usage();
	if (!have_param && mode != MODE_RUN)
		param = mode == MODE_EXITS ? 200000 : mode == MODE_IOEVENTFD ? 20000 : 1000000;

	struct vm vm = { .cpl = cpl };
	create_vm(&vm, (size_t)mem_mib);
	setup_tables(&vm);
	load_image(&vm, image);
	setup_vcpu(&vm, 0, 1, param);

	struct outcome o;
	switch (mode) {
	case MODE_RUN:
		run_vcpu(&vm, mode, &o);
		fflush(stdout);
		if (o.detail[0])
			fprintf(stderr, "cvmm: %s\n", o.detail);
		if (strcmp(o.reason, "error") == 0 || strcmp(o.reason, "shutdown") == 0)
			print_regs(&vm);
		printf("exit reason=%s code=%" PRIu64 "\n", o.reason, o.code);
		return strcmp(o.reason, "error") == 0 ? 1 : 0;
	case MODE_EXITS:
		run_vcpu(&vm, mode, &o);
		expect_exit0(&vm, &o);
		printf("{\"mode\":\"exits\",\"iterations\":%" PRIu64 ",\"ns_per_exit\":%.1f}\n",
		       param, param ? (double)o.wall_ns / (double)param : 0.0);
		return 0;
	case MODE_IOEVENTFD:
		bench_ioeventfd(&vm, param);
		return 0;
	case MODE_LOOP:
		run_vcpu(&vm, mode, &o);
		expect_exit0(&vm, &o);
		printf("{\"mode\":\"loop\",\"cpl\":%d,\"iterations\":%" PRIu64 ",\"ns\":%" PRIu64 "}\n",
		       cpl, param, o.run_ns);
		return 0;
	}
	return 1;
}
