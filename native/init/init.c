/*
 * tsibox guest init (PID 1).
 *
 * Sets up the guest (mounts, hostname, loopback), reads the workload description
 * from the kernel command line (tokens `tsibox.<key>=<value>`, see
 * docs/guest-init.md), starts the exec agent (agent.c, docs/exec-agent.md; off with
 * tsibox.agent=0), runs the workload (on a pseudo-terminal of its own with
 * tsibox.tty=COLSxROWS, relayed to the console ports by tty.c), reaps every process,
 * reports the workload's exit status to the host and ends the VM. Only the
 * workload's end ends the VM; the agent and whatever it started die with the rest in
 * finish().
 *
 * Exit statuses: the workload's own status; 128+N when it was killed by signal N;
 * 125 init could not set the guest up; 126 the program could not be executed;
 * 127 the program was not found.
 *
 * Built static: gcc -static -Os -o init init.c
 *
 * Host-side debugging: `init --parse '<cmdline>'` (not as PID 1) parses a command
 * line and prints the result, one hex-encoded item per line, without touching the
 * system.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <arpa/inet.h>
#include <net/if.h>
#include <net/route.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "agent.h"
#include "dhcp.h"
#include "init.h"
#include "root.h"
#include "tty.h"

#define CMDLINE_FILE "/.tsibox/cmdline"
#define PRIVATE_CMDLINE_FILE "/.tsibox/cmdline.private"
#define STATUS_MARKER "tsibox: exit-status="
#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

/* ---------- small helpers ---------- */

int log_fd = 2;   /* where init's own messages go (the console once /dev is up) */
int debug_on = 0;
const char *log_name = "tsibox-init";

void vmsg(const char *prefix, const char *fmt, va_list ap)
{
	char buf[1024];
	int n = snprintf(buf, sizeof buf, "%s: %s", log_name, prefix);
	if (n < 0) return;
	int m = vsnprintf(buf + n, sizeof buf - (size_t)n - 1, fmt, ap);
	if (m < 0) return;
	n += m;
	if ((size_t)n > sizeof buf - 2) n = (int)sizeof buf - 2;
	buf[n++] = '\n';
	if (write(log_fd, buf, (size_t)n) < 0) { /* nothing to do */ }
}

static void err(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vmsg("error: ", fmt, ap);
	va_end(ap);
}

static void warn(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vmsg("warning: ", fmt, ap);
	va_end(ap);
}

static void dbg(const char *fmt, ...)
{
	if (!debug_on) return;
	va_list ap;
	va_start(ap, fmt);
	vmsg("", fmt, ap);
	va_end(ap);
}

static void finish(int status) __attribute__((noreturn));

static void *xrealloc(void *p, size_t n)
{
	void *q = realloc(p, n ? n : 1);
	if (!q) {
		err("out of memory");
		/* PID 1 must not exit (the kernel panics and the status is lost): report, end the VM */
		if (getpid() == 1) finish(ST_SETUP);
		exit(ST_SETUP);
	}
	return q;
}

static char *xstrndup(const char *s, size_t n)
{
	char *d = xrealloc(NULL, n + 1);
	memcpy(d, s, n);
	d[n] = 0;
	return d;
}

int write_all(int fd, const char *p, size_t n)
{
	while (n) {
		ssize_t w = write(fd, p, n);
		if (w < 0) {
			if (errno == EINTR) continue;
			return -1;
		}
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {}
}

long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

/* mkdir -p; returns 0 or -1 with errno set. */
int mkdir_p(const char *path, mode_t mode)
{
	char tmp[PATH_MAX];
	size_t len = strlen(path);
	if (len == 0 || len >= sizeof tmp) { errno = ENAMETOOLONG; return -1; }
	memcpy(tmp, path, len + 1);
	for (char *p = tmp + 1; *p; p++) {
		if (*p != '/') continue;
		*p = 0;
		if (mkdir(tmp, mode) < 0 && errno != EEXIST) return -1;
		*p = '/';
	}
	if (mkdir(tmp, mode) < 0 && errno != EEXIST) return -1;
	return 0;
}

/* ---------- configuration from the command line ---------- */

struct strv { char **v; size_t n; };

static void strv_push(struct strv *s, char *x)
{
	s->v = xrealloc(s->v, (s->n + 2) * sizeof *s->v);
	s->v[s->n++] = x;
	s->v[s->n] = NULL;
}

struct config {
	struct strv argv;
	struct strv env;       /* KEY=VALUE, later keys replace earlier ones */
	struct strv ports;     /* port names to wait for */
	char *exec;            /* program to run; default argv[0] */
	char *workdir;
	char *hostname;
	struct rlim *rl;
	size_t nrl;
	int have_user;
	uid_t uid;
	gid_t gid;
	long port_timeout_ms;
	int poweroff;          /* 0: reboot(RB_AUTOBOOT), 1: RB_POWER_OFF, 2: RB_HALT_SYSTEM */
	int agent;             /* start the exec agent (tsibox.agent, default 1) */
	int tty;               /* tsibox.tty=COLSxROWS: the workload gets a terminal (tty.c) */
	unsigned tty_cols, tty_rows;
};

static struct config cfg = { .port_timeout_ms = 5000, .agent = 1 };

/* Percent-decoding: "%XX" (two hex digits) is that byte; every other byte is itself.
 * A malformed escape or an encoded NUL is an error. */
static int hexval(int c)
{
	if (c >= '0' && c <= '9') return c - '0';
	if (c >= 'a' && c <= 'f') return c - 'a' + 10;
	if (c >= 'A' && c <= 'F') return c - 'A' + 10;
	return -1;
}

static char *pct_decode(const char *s, size_t n, const char *key)
{
	char *d = xrealloc(NULL, n + 1);
	size_t j = 0;
	for (size_t i = 0; i < n; i++) {
		if (s[i] != '%') { d[j++] = s[i]; continue; }
		if (i + 2 >= n) {
			err("tsibox.%s: truncated %%-escape", key);
			free(d);
			return NULL;
		}
		int hi = hexval((unsigned char)s[i + 1]), lo = hexval((unsigned char)s[i + 2]);
		if (hi < 0 || lo < 0) {
			err("tsibox.%s: bad %%-escape \"%.3s\"", key, s + i);
			free(d);
			return NULL;
		}
		int c = hi * 16 + lo;
		if (c == 0) {
			err("tsibox.%s: encoded NUL byte", key);
			free(d);
			return NULL;
		}
		d[j++] = (char)c;
		i += 2;
	}
	d[j] = 0;
	return d;
}

/* Split a list value at ',' and decode each element. "" is one empty element. */
static int decode_list(const char *val, const char *key, struct strv *out)
{
	const char *p = val;
	for (;;) {
		const char *c = strchr(p, ',');
		size_t n = c ? (size_t)(c - p) : strlen(p);
		char *e = pct_decode(p, n, key);
		if (!e) return -1;
		strv_push(out, e);
		if (!c) return 0;
		p = c + 1;
	}
}

static void env_set(char *kv)
{
	size_t klen = (size_t)(strchr(kv, '=') - kv);
	for (size_t i = 0; i < cfg.env.n; i++) {
		if (strncmp(cfg.env.v[i], kv, klen + 1) == 0) {
			free(cfg.env.v[i]);
			cfg.env.v[i] = kv;
			return;
		}
	}
	strv_push(&cfg.env, kv);
}

static const char *env_get(const char *key)
{
	size_t klen = strlen(key);
	for (size_t i = 0; i < cfg.env.n; i++)
		if (strncmp(cfg.env.v[i], key, klen) == 0 && cfg.env.v[i][klen] == '=')
			return cfg.env.v[i] + klen + 1;
	return NULL;
}

static const struct { const char *name; int res; } rlimit_names[] = {
	{ "CPU", RLIMIT_CPU }, { "FSIZE", RLIMIT_FSIZE }, { "DATA", RLIMIT_DATA },
	{ "STACK", RLIMIT_STACK }, { "CORE", RLIMIT_CORE }, { "RSS", RLIMIT_RSS },
	{ "NPROC", RLIMIT_NPROC }, { "NOFILE", RLIMIT_NOFILE }, { "MEMLOCK", RLIMIT_MEMLOCK },
	{ "AS", RLIMIT_AS }, { "LOCKS", RLIMIT_LOCKS }, { "SIGPENDING", RLIMIT_SIGPENDING },
	{ "MSGQUEUE", RLIMIT_MSGQUEUE }, { "NICE", RLIMIT_NICE }, { "RTPRIO", RLIMIT_RTPRIO },
	{ "RTTIME", RLIMIT_RTTIME },
};

static int parse_rlim_value(const char *s, rlim_t *out)
{
	if (!strcmp(s, "unlimited") || !strcmp(s, "inf") || !strcmp(s, "-1")) {
		*out = RLIM_INFINITY;
		return 0;
	}
	if (!*s || !isdigit((unsigned char)*s)) return -1;
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || *end) return -1;
	*out = (rlim_t)v;
	return 0;
}

/* NAME:CUR:MAX, NAME is a name above (optionally with RLIMIT_) or a number. */
static int parse_rlimit(const char *item)
{
	char *copy = xstrndup(item, strlen(item));
	char *c1 = strchr(copy, ':');
	char *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
	int res = -1;
	if (!c1 || !c2 || strchr(c2 + 1, ':')) goto bad;
	*c1 = 0;
	*c2 = 0;
	const char *name = copy;
	if (!strncasecmp(name, "RLIMIT_", 7)) name += 7;
	for (size_t i = 0; i < sizeof rlimit_names / sizeof rlimit_names[0]; i++)
		if (!strcasecmp(name, rlimit_names[i].name)) res = rlimit_names[i].res;
	if (res < 0 && isdigit((unsigned char)*name)) {
		char *end;
		long v = strtol(name, &end, 10);
		if (!*end && v >= 0 && v < RLIM_NLIMITS) res = (int)v;
	}
	rlim_t cur, max;
	if (res < 0 || parse_rlim_value(c1 + 1, &cur) || parse_rlim_value(c2 + 1, &max)) goto bad;
	cfg.rl = xrealloc(cfg.rl, (cfg.nrl + 1) * sizeof *cfg.rl);
	cfg.rl[cfg.nrl++] = (struct rlim){ res, cur, max };
	free(copy);
	return 0;
bad:
	err("tsibox.rlimit: bad item \"%s\" (want NAME:CUR:MAX)", item);
	free(copy);
	return -1;
}

static int parse_uint(const char *s, unsigned long *out)
{
	if (!*s || !isdigit((unsigned char)*s)) return -1;
	char *end;
	errno = 0;
	*out = strtoul(s, &end, 10);
	return errno || *end ? -1 : 0;
}

/* ---------- eth0 from tsibox.net (virtio-net wired to passt by the host) ----------
 * `tsibox.net=ADDR/PREFIX,GW[,DNS...]`: the host chose the addresses and gave the same
 * ones to passt (-a/-n/-g/-D), so no DHCP client is needed. */

#define NET_MAX_DNS 3
#define NET_DHCP_TIMEOUT_MS 10000

static struct {
	int set;
	int dhcp;           /* tsibox.net=dhcp: the rest comes from dhcp_lease() */
	struct in_addr addr, gw;
	unsigned prefix;
	struct in_addr dns[NET_MAX_DNS];
	int ndns;
} netcfg;

static int net_parse(const char *val)
{
	struct strv l = { 0 };
	int rc = -1;
	if (!strcmp(val, "dhcp")) { netcfg.set = netcfg.dhcp = 1; return 0; }
	if (decode_list(val, "net", &l)) return -1;
	if (l.n < 2 || l.n > 2 + NET_MAX_DNS) {
		err("tsibox.net: want ADDR/PREFIX,GW[,DNS...] (at most %d DNS), got \"%s\"", NET_MAX_DNS, val);
		goto out;
	}
	char *slash = strchr(l.v[0], '/');
	unsigned long prefix;
	if (!slash || (*slash = 0, parse_uint(slash + 1, &prefix)) || prefix < 1 || prefix > 30
	    || inet_pton(AF_INET, l.v[0], &netcfg.addr) != 1) {
		err("tsibox.net: \"%s\" is not an IPv4 ADDR/PREFIX (prefix 1..30)", val);
		goto out;
	}
	if (inet_pton(AF_INET, l.v[1], &netcfg.gw) != 1) {
		err("tsibox.net: gateway \"%s\" is not an IPv4 address", l.v[1]);
		goto out;
	}
	uint32_t mask = htonl(~0u << (32 - prefix));
	if ((netcfg.addr.s_addr & mask) != (netcfg.gw.s_addr & mask)) {
		err("tsibox.net: gateway %s is not in %s/%lu", l.v[1], l.v[0], prefix);
		goto out;
	}
	netcfg.prefix = (unsigned)prefix;
	netcfg.ndns = 0;
	for (size_t i = 2; i < l.n; i++) {
		if (inet_pton(AF_INET, l.v[i], &netcfg.dns[netcfg.ndns]) != 1) {
			err("tsibox.net: DNS server \"%s\" is not an IPv4 address", l.v[i]);
			goto out;
		}
		netcfg.ndns++;
	}
	netcfg.set = 1;
	rc = 0;
out:
	for (size_t i = 0; i < l.n; i++) free(l.v[i]);
	free(l.v);
	return rc;
}

static void net_print(void)
{
	if (!netcfg.set) return;
	if (netcfg.dhcp) { printf("net dhcp\n"); return; }
	char a[INET_ADDRSTRLEN], g[INET_ADDRSTRLEN];
	inet_ntop(AF_INET, &netcfg.addr, a, sizeof a);
	inet_ntop(AF_INET, &netcfg.gw, g, sizeof g);
	printf("net %s/%u %s", a, netcfg.prefix, g);
	for (int i = 0; i < netcfg.ndns; i++) {
		inet_ntop(AF_INET, &netcfg.dns[i], a, sizeof a);
		printf(" %s", a);
	}
	printf("\n");
}

static void net_sin(struct sockaddr *sa, struct in_addr a)
{
	struct sockaddr_in sin;
	memset(&sin, 0, sizeof sin);
	sin.sin_family = AF_INET;
	sin.sin_addr = a;
	memcpy(sa, &sin, sizeof sin);
}

/* tsibox.net=dhcp: the static fields from a DHCP lease (native/init/dhcp.c). */
static int net_dhcp(const char *dev)
{
	struct dhcp_lease l;
	char why[160];
	if (dhcp_lease(dev, NET_DHCP_TIMEOUT_MS, &l, why, sizeof why)) {
		err("tsibox.net=dhcp: %s", why);
		return -1;
	}
	if (l.gw.s_addr == 0) { err("tsibox.net=dhcp: the lease has no router"); return -1; }
	netcfg.addr = l.addr;
	netcfg.prefix = l.prefix;
	netcfg.gw = l.gw;
	netcfg.ndns = l.ndns < NET_MAX_DNS ? l.ndns : NET_MAX_DNS;
	for (int i = 0; i < netcfg.ndns; i++) netcfg.dns[i] = l.dns[i];
	dbg("dhcp: lease from %s", inet_ntoa(l.server));
	return 0;
}

/* eth0: address, netmask, up; default route via the gateway; /etc/resolv.conf. */
static int net_setup(void)
{
	if (!netcfg.set) return 0;
	const char *dev = "eth0";
	/* virtio-net probes during boot; allow a late probe a moment. */
	for (int i = 0; i < 100 && if_nametoindex(dev) == 0; i++) sleep_ms(10);
	if (if_nametoindex(dev) == 0) { err("tsibox.net: no %s (is the virtio-net device there?)", dev); return -1; }
	if (netcfg.dhcp && net_dhcp(dev)) return -1;
	int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (s < 0) { err("socket: %s", strerror(errno)); return -1; }
	struct ifreq ifr;
	memset(&ifr, 0, sizeof ifr);
	strncpy(ifr.ifr_name, dev, IFNAMSIZ - 1);
	net_sin(&ifr.ifr_addr, netcfg.addr);
	if (ioctl(s, SIOCSIFADDR, &ifr) < 0) { err("SIOCSIFADDR %s: %s", dev, strerror(errno)); goto fail; }
	struct in_addr mask = { .s_addr = htonl(~0u << (32 - netcfg.prefix)) };
	net_sin(&ifr.ifr_netmask, mask);
	if (ioctl(s, SIOCSIFNETMASK, &ifr) < 0) { err("SIOCSIFNETMASK %s: %s", dev, strerror(errno)); goto fail; }
	if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0) { err("SIOCGIFFLAGS %s: %s", dev, strerror(errno)); goto fail; }
	ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
	if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0) { err("SIOCSIFFLAGS %s: %s", dev, strerror(errno)); goto fail; }
	struct rtentry rt;
	memset(&rt, 0, sizeof rt);
	struct in_addr any = { .s_addr = 0 };
	net_sin(&rt.rt_dst, any);
	net_sin(&rt.rt_genmask, any);
	net_sin(&rt.rt_gateway, netcfg.gw);
	rt.rt_flags = RTF_UP | RTF_GATEWAY;
	rt.rt_dev = (char *)dev;
	if (ioctl(s, SIOCADDRT, &rt) < 0 && errno != EEXIST) { err("default route via eth0: %s", strerror(errno)); goto fail; }
	close(s);
	if (netcfg.ndns > 0) {
		char buf[64 * NET_MAX_DNS];
		size_t n = 0;
		for (int i = 0; i < netcfg.ndns; i++) {
			char a[INET_ADDRSTRLEN];
			inet_ntop(AF_INET, &netcfg.dns[i], a, sizeof a);
			n += (size_t)snprintf(buf + n, sizeof buf - n, "nameserver %s\n", a);
		}
		int fd = -1;
		if (mkdir_p("/etc", 0755) < 0
		    || (fd = open("/etc/resolv.conf", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644)) < 0
		    || write_all(fd, buf, n) < 0) {
			err("write /etc/resolv.conf: %s", strerror(errno));
			if (fd >= 0) close(fd);
			return -1;
		}
		close(fd);
	}
	dbg("eth0 configured");
	return 0;
fail:
	close(s);
	return -1;
}

/* tsibox.root=TAG,ro|rw, tsibox.mount=TAG,ro|rw,PATH and tsibox.bind=/SOURCE,ro|rw,PATH (one token each; root.c). */
static int share_token(const char *k, const char *val)
{
	struct strv l = { 0 };
	int is_root = !strcmp(k, "root");
	int is_bind = !strcmp(k, "bind");
	if (decode_list(val, k, &l)) return -1;
	if (l.n != (is_root ? 2u : 3u) || !*l.v[0] || (strcmp(l.v[1], "ro") && strcmp(l.v[1], "rw"))
	    || (!is_root && l.v[2][0] != '/') || (is_bind && l.v[0][0] != '/')) {
		err(is_root ? "tsibox.root: want TAG,ro|rw, got \"%s\""
		    : is_bind ? "tsibox.bind: want /SOURCE,ro|rw,/PATH, got \"%s\""
		    : "tsibox.mount: want TAG,ro|rw,/PATH, got \"%s\"", val);
		for (size_t i = 0; i < l.n; i++) free(l.v[i]);
		free(l.v);
		return -1;
	}
	int ro = !strcmp(l.v[1], "ro");
	free(l.v[1]);
	if (is_root) {
		free(rootcfg.tag);
		rootcfg.tag = l.v[0];
		rootcfg.ro = ro;
	} else if (is_bind) {
		rootcfg.binds = xrealloc(rootcfg.binds, (rootcfg.nbinds + 1) * sizeof *rootcfg.binds);
		rootcfg.binds[rootcfg.nbinds++] = (struct share_mount){ l.v[0], l.v[2], ro };
	} else {
		rootcfg.mounts = xrealloc(rootcfg.mounts, (rootcfg.nmounts + 1) * sizeof *rootcfg.mounts);
		rootcfg.mounts[rootcfg.nmounts++] = (struct share_mount){ l.v[0], l.v[2], ro };
	}
	free(l.v);
	return 0;
}

/* tsibox.rootdisk=/dev/DEV,FSTYPE,ro|rw: the root is a block device (root.c). */
static int rootdisk_token(const char *val)
{
	struct strv l = { 0 };
	if (decode_list(val, "rootdisk", &l)) return -1;
	if (l.n != 3 || strncmp(l.v[0], "/dev/", 5) || !l.v[0][5] || !*l.v[1]
	    || (strcmp(l.v[2], "ro") && strcmp(l.v[2], "rw"))) {
		err("tsibox.rootdisk: want /dev/DEV,FSTYPE,ro|rw, got \"%s\"", val);
		for (size_t i = 0; i < l.n; i++) free(l.v[i]);
		free(l.v);
		return -1;
	}
	free(rootcfg.tag);
	free(rootcfg.fstype);
	rootcfg.tag = l.v[0];
	rootcfg.fstype = l.v[1];
	rootcfg.ro = !strcmp(l.v[2], "ro");
	free(l.v[2]);
	free(l.v);
	return 0;
}

/* One `tsibox.KEY=VALUE` token (without the "tsibox." prefix). */
static int apply_token(const char *key, size_t klen, const char *val)
{
	char k[32];
	if (klen >= sizeof k) klen = sizeof k - 1;
	memcpy(k, key, klen);
	k[klen] = 0;

	if (!strcmp(k, "argv")) return decode_list(val, k, &cfg.argv);
	if (!strcmp(k, "env")) {
		struct strv l = { 0 };
		if (decode_list(val, k, &l)) return -1;
		for (size_t i = 0; i < l.n; i++) {
			char *eq = strchr(l.v[i], '=');
			if (!eq || eq == l.v[i]) {
				err("tsibox.env: \"%s\" is not KEY=VALUE", l.v[i]);
				return -1;
			}
			env_set(l.v[i]);
		}
		free(l.v);
		return 0;
	}
	if (!strcmp(k, "ports")) return decode_list(val, k, &cfg.ports);
	if (!strcmp(k, "root") || !strcmp(k, "mount") || !strcmp(k, "bind")) return share_token(k, val);
	if (!strcmp(k, "rootdisk")) return rootdisk_token(val);
	if (!strcmp(k, "net")) return net_parse(val);
	if (!strcmp(k, "rlimit")) {
		struct strv l = { 0 };
		if (decode_list(val, k, &l)) return -1;
		for (size_t i = 0; i < l.n; i++)
			if (parse_rlimit(l.v[i])) return -1;
		return 0;
	}
	char **single = !strcmp(k, "exec") ? &cfg.exec
		: !strcmp(k, "workdir") ? &cfg.workdir
		: !strcmp(k, "hostname") ? &cfg.hostname : NULL;
	if (single) {
		char *d = pct_decode(val, strlen(val), k);
		if (!d) return -1;
		free(*single);
		*single = d;
		return 0;
	}
	if (!strcmp(k, "user")) {
		/* UID[:GID] */
		char *u = pct_decode(val, strlen(val), k);
		if (!u) return -1;
		char *colon = strchr(u, ':');
		unsigned long uid, gid;
		if (colon) *colon = 0;
		if (parse_uint(u, &uid) || (colon && parse_uint(colon + 1, &gid))) {
			err("tsibox.user: want UID[:GID], got \"%s\"", val);
			free(u);
			return -1;
		}
		cfg.have_user = 1;
		cfg.uid = (uid_t)uid;
		cfg.gid = colon ? (gid_t)gid : (gid_t)uid;
		free(u);
		return 0;
	}
	if (!strcmp(k, "port_timeout_ms")) {
		unsigned long v;
		if (parse_uint(val, &v)) { err("tsibox.port_timeout_ms: not a number"); return -1; }
		cfg.port_timeout_ms = (long)v;
		return 0;
	}
	if (!strcmp(k, "debug")) {
		debug_on = strcmp(val, "0") != 0;
		return 0;
	}
	if (!strcmp(k, "agent")) {
		/* Strict, like poweroff: a typo must not silently leave a host without exec. */
		if (!strcmp(val, "0")) cfg.agent = 0;
		else if (!strcmp(val, "1")) cfg.agent = 1;
		else { err("tsibox.agent: want 0 or 1"); return -1; }
		return 0;
	}
	if (!strcmp(k, "tty")) {
		/* COLSxROWS, each 1..65535: the workload's terminal and its window size */
		unsigned long c, r;
		char *x = strchr(val, 'x');
		char cols[16];
		size_t cl = x ? (size_t)(x - val) : 0;
		if (!x || cl == 0 || cl >= sizeof cols) goto bad_tty;
		memcpy(cols, val, cl);
		cols[cl] = 0;
		if (parse_uint(cols, &c) || parse_uint(x + 1, &r) || c < 1 || c > TTY_MAX_DIM || r < 1 || r > TTY_MAX_DIM)
			goto bad_tty;
		cfg.tty = 1;
		cfg.tty_cols = (unsigned)c;
		cfg.tty_rows = (unsigned)r;
		return 0;
bad_tty:
		err("tsibox.tty: want COLSxROWS (each 1..%d), got \"%s\"", TTY_MAX_DIM, val);
		return -1;
	}
	if (!strcmp(k, "poweroff")) {
		if (!strcmp(val, "reboot")) cfg.poweroff = 0;
		else if (!strcmp(val, "poweroff")) cfg.poweroff = 1;
		else if (!strcmp(val, "halt")) cfg.poweroff = 2;
		else { err("tsibox.poweroff: want reboot, poweroff or halt"); return -1; }
		return 0;
	}
	warn("ignoring unknown parameter tsibox.%s", k);
	return 0;
}

/* Walk a kernel-style command line: whitespace separates tokens except inside
 * double quotes; the quote characters themselves are dropped. */
static int parse_cmdline(const char *text)
{
	size_t n = strlen(text);
	char *tok = xrealloc(NULL, n + 1);
	size_t i = 0;
	while (i < n) {
		while (i < n && isspace((unsigned char)text[i])) i++;
		if (i >= n) break;
		size_t t = 0;
		int inq = 0;
		while (i < n && (inq || !isspace((unsigned char)text[i]))) {
			if (text[i] == '"') inq = !inq;
			else tok[t++] = text[i];
			i++;
		}
		tok[t] = 0;
		if (!strcmp(tok, "--")) break; /* the rest belongs to init's argv, not to us */
		if (strncmp(tok, "tsibox.", 7)) continue;
		char *eq = strchr(tok, '=');
		const char *key = tok + 7;
		size_t klen = eq ? (size_t)(eq - key) : strlen(key);
		if (apply_token(key, klen, eq ? eq + 1 : "1")) {
			free(tok);
			return -1;
		}
	}
	free(tok);
	return 0;
}

static char *read_file(const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) return NULL;
	size_t cap = 4096, len = 0;
	char *buf = xrealloc(NULL, cap);
	for (;;) {
		if (len + 1 >= cap) buf = xrealloc(buf, cap *= 2);
		ssize_t r = read(fd, buf + len, cap - len - 1);
		if (r < 0 && errno == EINTR) continue;
		if (r <= 0) break;
		len += (size_t)r;
	}
	close(fd);
	buf[len] = 0;
	return buf;
}

static void set_defaults(void)
{
	if (!env_get("PATH")) strv_push(&cfg.env, xstrndup("PATH=" DEFAULT_PATH, strlen("PATH=" DEFAULT_PATH)));
	if (!env_get("HOME")) strv_push(&cfg.env, xstrndup("HOME=/", 6));
	if (cfg.argv.n == 0) strv_push(&cfg.argv, xstrndup("/bin/sh", 7));
	if (!cfg.exec) cfg.exec = xstrndup(cfg.argv.v[0], strlen(cfg.argv.v[0]));
	if (!cfg.hostname) cfg.hostname = xstrndup("tsibox", 6);
}

/* ---------- guest setup ---------- */

static int do_mount(const char *src, const char *target, const char *type,
		    unsigned long flags, const char *data, int required)
{
	if (mkdir_p(target, 0755) < 0) {
		if (required) { err("mkdir %s: %s", target, strerror(errno)); return -1; }
		warn("mkdir %s: %s", target, strerror(errno));
		return 0;
	}
	if (mount(src, target, type, flags, data) == 0 || errno == EBUSY) return 0;
	if (required) {
		err("mount %s on %s: %s", type, target, strerror(errno));
		return -1;
	}
	dbg("mount %s on %s: %s (skipped)", type, target, strerror(errno));
	return 0;
}

static int setup_mounts(void)
{
	const unsigned long nse = MS_NOSUID | MS_NODEV | MS_NOEXEC;
	if (do_mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755", 1)) return -1;
	/* From here on /dev/console exists even if the initramfs has no /dev/console. */
	/* (Again inside a virtio-fs root, where messages go elsewhere for a while: root_setup.) */
	if (log_fd == 2) {
		int c = open("/dev/console", O_RDWR | O_NOCTTY | O_CLOEXEC);
		if (c >= 0) log_fd = c;
	}
	if (do_mount("proc", "/proc", "proc", nse, NULL, 1)) return -1;
	if (do_mount("sysfs", "/sys", "sysfs", nse, NULL, 1)) return -1;
	do_mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "gid=5,mode=0620,ptmxmode=0666", 0);
	do_mount("shm", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777", 0);
	do_mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777", 0);
	do_mount("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755", 0);
	do_mount("cgroup2", "/sys/fs/cgroup", "cgroup2", nse, NULL, 0);
	/* The usual /dev links (best effort; devtmpfs does not create them). */
	if (symlink("/proc/self/fd", "/dev/fd") < 0 && errno != EEXIST) dbg("symlink /dev/fd: %s", strerror(errno));
	if (symlink("/proc/self/fd/0", "/dev/stdin") < 0 && errno != EEXIST) dbg("symlink /dev/stdin failed");
	if (symlink("/proc/self/fd/1", "/dev/stdout") < 0 && errno != EEXIST) dbg("symlink /dev/stdout failed");
	if (symlink("/proc/self/fd/2", "/dev/stderr") < 0 && errno != EEXIST) dbg("symlink /dev/stderr failed");
	return 0;
}

static int setup_loopback(void)
{
	int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (s < 0) { err("socket: %s", strerror(errno)); return -1; }
	struct ifreq ifr;
	memset(&ifr, 0, sizeof ifr);
	strncpy(ifr.ifr_name, "lo", IFNAMSIZ - 1);
	if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0) { err("SIOCGIFFLAGS lo: %s", strerror(errno)); close(s); return -1; }
	ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
	if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0) { err("SIOCSIFFLAGS lo: %s", strerror(errno)); close(s); return -1; }
	close(s);
	return 0;
}

/* ---------- console ports ---------- */

enum { P_STDIN, P_STDOUT, P_STDERR, P_STATUS, P_COUNT };
static const char *const port_names[P_COUNT] = { "tsibox.stdin", "tsibox.stdout", "tsibox.stderr", "tsibox.status" };
static char *port_dev[P_COUNT];

/* Scan /sys/class/virtio-ports/<dev>/name; remember /dev/<dev> for our port names.
 * Returns how many of the names in `want` have been found. */
static size_t scan_ports(const struct strv *want)
{
	DIR *d = opendir("/sys/class/virtio-ports");
	if (d) {
		struct dirent *e;
		while ((e = readdir(d))) {
			if (e->d_name[0] == '.') continue;
			char path[PATH_MAX];
			snprintf(path, sizeof path, "/sys/class/virtio-ports/%s/name", e->d_name);
			char *name = read_file(path);
			if (!name) continue;
			name[strcspn(name, "\n")] = 0;
			char dev[PATH_MAX];
			snprintf(dev, sizeof dev, "/dev/%s", e->d_name);
			for (int i = 0; i < P_COUNT; i++)
				if (!strcmp(name, port_names[i]) && !port_dev[i] && access(dev, F_OK) == 0)
					port_dev[i] = xstrndup(dev, strlen(dev));
			/* other wanted names: only their presence matters */
			free(name);
		}
		closedir(d);
	}
	size_t found = 0;
	for (size_t w = 0; w < want->n; w++) {
		for (int i = 0; i < P_COUNT; i++)
			if (port_dev[i] && !strcmp(want->v[w], port_names[i])) { found++; break; }
	}
	return found;
}

static int find_ports(void)
{
	for (size_t w = 0; w < cfg.ports.n; w++) {
		int known = 0;
		for (int i = 0; i < P_COUNT; i++) known |= !strcmp(cfg.ports.v[w], port_names[i]);
		if (!known) { err("tsibox.ports: unknown port name \"%s\"", cfg.ports.v[w]); return -1; }
	}
	long deadline = now_ms() + cfg.port_timeout_ms;
	for (;;) {
		if (scan_ports(&cfg.ports) == cfg.ports.n) break;
		if (now_ms() >= deadline) {
			for (size_t w = 0; w < cfg.ports.n; w++) {
				int ok = 0;
				for (int i = 0; i < P_COUNT; i++)
					ok |= port_dev[i] && !strcmp(cfg.ports.v[w], port_names[i]);
				if (!ok) err("console port %s did not appear within %ld ms", cfg.ports.v[w], cfg.port_timeout_ms);
			}
			return -1;
		}
		sleep_ms(2);
	}
	for (int i = 0; i < P_COUNT; i++)
		dbg("port %s: %s", port_names[i], port_dev[i] ? port_dev[i] : "(console)");
	return 0;
}

/* ---------- a virtio-fs root and mounts (root.c) ---------- */

/*
 * Switch to the virtio-fs root (with /proc, /sys, /dev, /tmp, /run and resolv.conf
 * inside it) and mount the mounts. Messages go to the workload's stderr meanwhile: a
 * bad root or mount point is the user's to fix, not only the console's.
 */
static int root_setup(void)
{
	int console = log_fd, rc = -1;
	int errfd = port_dev[P_STDERR] ? open(port_dev[P_STDERR], O_WRONLY | O_NOCTTY | O_CLOEXEC) : -1;
	if (errfd >= 0) log_fd = errfd;
	if (rootcfg.tag) {
		/* What net_setup wrote on the initramfs, shown inside the new root. */
		int resolv = open("/etc/resolv.conf", O_RDONLY | O_CLOEXEC);
		if (root_enter() || setup_mounts()) {
			if (resolv >= 0) close(resolv);
			goto out;
		}
		root_resolv(resolv);
		dbg("switched to the root %s (%s, %s)", rootcfg.tag, rootcfg.fstype ? rootcfg.fstype : "virtiofs", rootcfg.ro ? "read-only" : "read-write");
	}
	rc = root_mounts();
out:
	if (errfd >= 0) close(errfd);
	log_fd = console;
	return rc;
}

/* ---------- running the workload ---------- */

void child_fail(int pipefd, int status, int e, const char *what)
{
	struct exec_failure f = { status, e, { 0 } };
	snprintf(f.what, sizeof f.what, "%s", what);
	char line[512];
	int n = snprintf(line, sizeof line, "%s: %s: %s\n", log_name, what, strerror(e));
	if (n > 0) write_all(2, line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
	write_all(pipefd, (const char *)&f, sizeof f);
	_exit(status);
}

/* execve, searching @path when the name has no '/'. */
void exec_search(int pipefd, const char *prog, char *const argv[], char *const envp[], const char *path)
{
	char what[128];
	snprintf(what, sizeof what, "exec %.100s", prog);
	if (!*prog) child_fail(pipefd, ST_NOTFOUND, ENOENT, what);
	if (strchr(prog, '/')) {
		execve(prog, argv, envp);
		int e = errno;
		child_fail(pipefd, (e == ENOENT || e == ENOTDIR) ? ST_NOTFOUND : ST_EXEC, e, what);
	}
	if (!path) path = DEFAULT_PATH;
	int saw_other = 0, other = 0;
	const char *p = path;
	for (;;) {
		const char *c = strchr(p, ':');
		size_t dl = c ? (size_t)(c - p) : strlen(p);
		char full[PATH_MAX];
		if (dl == 0) snprintf(full, sizeof full, "%s", prog);
		else snprintf(full, sizeof full, "%.*s/%s", (int)dl, p, prog);
		execve(full, argv, envp);
		if (errno != ENOENT && errno != ENOTDIR && !saw_other) { saw_other = 1; other = errno; }
		if (!c) break;
		p = c + 1;
	}
	if (saw_other) child_fail(pipefd, ST_EXEC, other, what);
	child_fail(pipefd, ST_NOTFOUND, ENOENT, what);
}

static void child_main(int pipefd, const int stdio[3])
{
	sigset_t none;
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	setsid();
	for (int i = 0; i < 3; i++) {
		if (stdio[i] != i && dup2(stdio[i], i) < 0) child_fail(pipefd, ST_SETUP, errno, "dup2 stdio");
	}
	/* A terminal on stdin becomes the session's controlling terminal: Ctrl-C, job control. */
	if (isatty(0)) {
		if (ioctl(0, TIOCSCTTY, 1) == 0) tcsetpgrp(0, getpid());
		else if (cfg.tty) child_fail(pipefd, ST_SETUP, errno, "TIOCSCTTY (the terminal)");
	}
	for (int i = 0; i < 3; i++)
		if (stdio[i] > 2) {
			int dup = 0;
			for (int j = 0; j < i; j++) dup |= stdio[j] == stdio[i];
			if (!dup) close(stdio[i]);
		}
	for (size_t i = 0; i < cfg.nrl; i++) {
		struct rlimit r = { cfg.rl[i].cur, cfg.rl[i].max };
		if (setrlimit(cfg.rl[i].resource, &r) < 0) {
			char what[64];
			snprintf(what, sizeof what, "setrlimit %d %llu:%llu", cfg.rl[i].resource,
				 (unsigned long long)r.rlim_cur, (unsigned long long)r.rlim_max);
			child_fail(pipefd, ST_SETUP, errno, what);
		}
	}
	if (cfg.workdir && *cfg.workdir && mkdir_p(cfg.workdir, 0755) < 0)
		child_fail(pipefd, ST_SETUP, errno, "create workdir");
	if (cfg.have_user) {
		if (setgroups(0, NULL) < 0) child_fail(pipefd, ST_SETUP, errno, "setgroups");
		if (setgid(cfg.gid) < 0) child_fail(pipefd, ST_SETUP, errno, "setgid");
		if (setuid(cfg.uid) < 0) child_fail(pipefd, ST_SETUP, errno, "setuid");
	}
	if (cfg.workdir && *cfg.workdir && chdir(cfg.workdir) < 0)
		child_fail(pipefd, ST_SETUP, errno, "chdir workdir");
	exec_search(pipefd, cfg.exec, cfg.argv.v, cfg.env.v, env_get("PATH"));
}

static int status_fd = -1;

/* The workload's terminal (tsibox.tty): the master, kept by init for the relay's
 * restarts and handed to the agent for WINSIZE; the ports the relay joins it to. */
static int tty_master = -1;
static int tty_in = -1, tty_out = -1;

/* ---------- the exec agent (agent.c) ---------- */

/* A crashing agent must not turn into a fork loop: a few restarts, then none. */
#define AGENT_MAX_RESTARTS 3

static pid_t agent_pid = -1;
static int agent_restarts;
static struct agent_config agent_cfg;

static void agent_start(void)
{
	agent_cfg = (struct agent_config){
		.env = cfg.env.v, .workdir = cfg.workdir, .have_user = cfg.have_user,
		.uid = cfg.uid, .gid = cfg.gid, .rl = cfg.rl, .nrl = cfg.nrl,
		.tty_fd = tty_master,
	};
	/* The agent must never hold the status port: only init writes it. */
	agent_pid = agent_spawn(&agent_cfg, status_fd);
	if (agent_pid > 0) dbg("exec agent %d on vsock port %d", (int)agent_pid, AGENT_PORT);
}

/* The agent ended (a crash, or the workload killed it, e.g. `kill -9 -1`). */
static void agent_ended(int ws)
{
	agent_pid = -1;
	if (agent_restarts >= AGENT_MAX_RESTARTS) {
		warn("exec agent ended (status %d); not restarting it again", status_of(ws));
		return;
	}
	agent_restarts++;
	warn("exec agent ended (status %d); restarting it", status_of(ws));
	agent_start();
}

/* ---------- the terminal relay (tty.c) ---------- */

/* Like the agent: a relay killed (e.g. `kill -9 -1` in the workload) is restarted,
 * a few times. What the workload wrote meanwhile waits in the terminal. */
#define TTY_MAX_RESTARTS 3

static pid_t tty_relay = -1;
static int tty_restarts;

/* @slave (or -1): init's copy of the terminal, which the relay must not hold (the
 * master reads EIO only once nobody has the terminal open). */
static void tty_relay_start(int slave)
{
	int close_fds[2] = { status_fd, slave };
	tty_relay = tty_relay_spawn(tty_master, tty_in, tty_out, close_fds, 2);
	if (tty_relay > 0) dbg("terminal relay %d", (int)tty_relay);
}

static void tty_relay_ended(int ws)
{
	tty_relay = -1;
	if (tty_restarts >= TTY_MAX_RESTARTS) {
		warn("terminal relay ended (status %d); not restarting it again", status_of(ws));
		return;
	}
	tty_restarts++;
	warn("terminal relay ended (status %d); restarting it", status_of(ws));
	tty_relay_start(-1);
}

/* The terminal as the workload's stdin, stdout and stderr; the relay started. */
static int tty_stdio(int stdio[3])
{
	const char *in = port_dev[P_STDIN] ? port_dev[P_STDIN] : "/dev/console";
	const char *out = port_dev[P_STDOUT] ? port_dev[P_STDOUT] : "/dev/console";
	tty_in = open(in, O_RDONLY | O_NOCTTY | O_CLOEXEC);
	if (tty_in < 0) { err("open %s: %s", in, strerror(errno)); return -1; }
	tty_out = open(out, O_WRONLY | O_NOCTTY | O_CLOEXEC);
	if (tty_out < 0) { err("open %s: %s", out, strerror(errno)); return -1; }
	int slave = tty_open_slave(tty_master);
	if (slave < 0) return -1;
	tty_relay_start(slave);
	if (tty_relay < 0) { close(slave); return -1; }
	stdio[0] = stdio[1] = stdio[2] = slave;
	return 0;
}

/*
 * The workload ended: the relay writes out what the terminal still holds, so its last
 * output is not lost to finish()'s SIGKILL. Bounded (TTY_DRAIN_WAIT_MS); reaps
 * whatever else ends meanwhile.
 */
static void tty_drain(void)
{
	if (tty_relay <= 0) return;
	kill(tty_relay, TTY_DRAIN_SIGNAL);
	long deadline = now_ms() + TTY_DRAIN_WAIT_MS;
	for (;;) {
		pid_t p = waitpid(-1, NULL, WNOHANG);
		if (p == tty_relay) { tty_relay = -1; return; }
		if (p > 0) continue;
		if (p < 0 && errno != EINTR) return;
		if (now_ms() >= deadline) {
			warn("the terminal's last output was not relayed within %d ms", TTY_DRAIN_WAIT_MS);
			return;
		}
		sleep_ms(2);
	}
}

/*
 * sync(2), bounded: a hung filesystem must not keep the VM from reporting and
 * ending. A child syncs; we wait for it at most @ms.
 */
static void sync_bounded(long ms)
{
	pid_t p = fork();
	if (p < 0) { sync(); return; }
	if (p == 0) {
		sync();
		/* A disk root left mounted read-write needs a journal replay to be mounted again,
		 * which a read-only disk cannot do: remount it read-only (clean) while bounded. */
		if (rootcfg.fstype && !rootcfg.ro) mount(NULL, "/", NULL, MS_REMOUNT | MS_RDONLY, NULL);
		_exit(0);
	}
	long deadline = now_ms() + ms;
	for (;;) {
		pid_t w = waitpid(p, NULL, WNOHANG);
		if (w == p || (w < 0 && errno != EINTR)) return;
		if (now_ms() >= deadline) { warn("sync did not finish in %ld ms; ending without it", ms); return; }
		sleep_ms(5);
	}
}

/* Kill and reap whatever is left (the exec agent and its processes too), report, end
 * the VM. Never returns; bounded in time. */
static void finish(int status)
{
	kill(-1, SIGKILL);
	long deadline = now_ms() + 2000;
	for (;;) {
		pid_t p = waitpid(-1, NULL, WNOHANG);
		if (p > 0) continue;
		if (p < 0 && errno == ECHILD) break;
		if (now_ms() >= deadline) { warn("some processes did not die"); break; }
		sleep_ms(1);
	}
	sync_bounded(5000);
	char buf[64];
	int n;
	if (status_fd >= 0) {
		n = snprintf(buf, sizeof buf, "%d\n", status);
		if (write_all(status_fd, buf, (size_t)n) < 0) warn("writing the status port: %s", strerror(errno));
		close(status_fd);
	}
	n = snprintf(buf, sizeof buf, STATUS_MARKER "%d\n", status);
	write_all(log_fd, buf, (size_t)n);
	dbg("ending the VM");
	int how = cfg.poweroff == 1 ? RB_POWER_OFF : cfg.poweroff == 2 ? RB_HALT_SYSTEM : RB_AUTOBOOT;
	reboot(how);
	/* Still here: nothing else can be done but wait. */
	err("reboot: %s", strerror(errno));
	for (;;) pause();
}

int status_of(int ws)
{
	if (WIFEXITED(ws)) return WEXITSTATUS(ws);
	if (WIFSIGNALED(ws)) return 128 + WTERMSIG(ws);
	return ST_SETUP;
}

static int run_workload(void)
{
	int stdio[3] = { -1, -1, -1 };
	static const int modes[3] = { O_RDONLY, O_WRONLY, O_WRONLY };
	if (cfg.tty && tty_stdio(stdio)) return ST_SETUP;
	for (int i = 0; i < 3 && !cfg.tty; i++) {
		const char *dev = port_dev[P_STDIN + i];
		stdio[i] = -1;
		if (dev) {
			stdio[i] = open(dev, modes[i] | O_NOCTTY | O_CLOEXEC);
			if (stdio[i] < 0) { err("open %s: %s", dev, strerror(errno)); return ST_SETUP; }
		} else {
			stdio[i] = open("/dev/console", O_RDWR | O_NOCTTY | O_CLOEXEC);
			if (stdio[i] < 0) { err("open /dev/console: %s", strerror(errno)); return ST_SETUP; }
		}
	}
	int pfd[2];
	if (pipe2(pfd, O_CLOEXEC) < 0) { err("pipe: %s", strerror(errno)); return ST_SETUP; }
	dbg("running %s", cfg.exec);
	pid_t pid = fork();
	if (pid < 0) { err("fork: %s", strerror(errno)); return ST_SETUP; }
	if (pid == 0) {
		close(pfd[0]);
		if (status_fd >= 0) close(status_fd);
		child_main(pfd[1], stdio);
	}
	close(pfd[1]);
	for (int i = 0; i < 3; i++)
		if (i == 0 || stdio[i] != stdio[i - 1]) close(stdio[i]);

	/* The pipe closes on a successful exec; a record arrives when setup or exec fails. */
	struct exec_failure f;
	ssize_t r;
	do r = read(pfd[0], &f, sizeof f); while (r < 0 && errno == EINTR);
	close(pfd[0]);
	int failed = r == (ssize_t)sizeof f;
	if (failed) dbg("%s failed: %s -> status %d", f.what, strerror(f.err), f.status);

	/* Reap everything; forward the usual termination signals to the workload. */
	sigset_t all;
	sigfillset(&all);
	for (;;) {
		int ws;
		pid_t p;
		while ((p = waitpid(-1, &ws, WNOHANG)) > 0) {
			if (p == pid) {
				int st = failed ? f.status : status_of(ws);
				dbg("workload exited, status %d", st);
				if (cfg.tty) tty_drain();
				return st;
			}
			if (p == agent_pid) agent_ended(ws);
			else if (p == tty_relay) tty_relay_ended(ws);
		}
		if (p < 0 && errno == ECHILD) return ST_SETUP; /* cannot happen */
		siginfo_t si;
		int sig = sigwaitinfo(&all, &si);
		if (sig < 0) continue;
		if (sig == AGENT_SIGNAL_MAIN) {
			/* the host's kill() through the agent: any signal, SIGKILL included */
			int s = si.si_value.sival_int;
			if (si.si_code == SI_QUEUE && si.si_pid == agent_pid && agent_pid > 0 && s > 0 && s < NSIG) {
				dbg("signal %d to the workload (from the host)", s);
				if (kill(-pid, s) < 0) kill(pid, s);
			}
			continue;
		}
		switch (sig) {
		case SIGCHLD:
			break;
		case SIGINT: case SIGTERM: case SIGHUP: case SIGQUIT:
		case SIGUSR1: case SIGUSR2: case SIGWINCH:
			/* to the workload's process group (it leads its session), as a terminal would */
			if (kill(-pid, sig) < 0) kill(pid, sig);
			break;
		default:
			break;
		}
	}
}

/* ---------- host-side parse mode ---------- */

static void put_hex(const char *label, const char *s)
{
	printf("%s ", label);
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) printf("%02x", *p);
	printf("\n");
}

static int parse_mode(const char *cmdline)
{
	if (parse_cmdline(cmdline)) return ST_SETUP;
	set_defaults();
	put_hex("exec", cfg.exec);
	for (size_t i = 0; i < cfg.argv.n; i++) put_hex("argv", cfg.argv.v[i]);
	for (size_t i = 0; i < cfg.env.n; i++) put_hex("env", cfg.env.v[i]);
	if (cfg.workdir) put_hex("workdir", cfg.workdir);
	put_hex("hostname", cfg.hostname);
	for (size_t i = 0; i < cfg.ports.n; i++) put_hex("port", cfg.ports.v[i]);
	for (size_t i = 0; i < cfg.nrl; i++)
		printf("rlimit %d %lld %lld\n", cfg.rl[i].resource,
		       cfg.rl[i].cur == RLIM_INFINITY ? -1LL : (long long)cfg.rl[i].cur,
		       cfg.rl[i].max == RLIM_INFINITY ? -1LL : (long long)cfg.rl[i].max);
	if (cfg.have_user) printf("user %u %u\n", (unsigned)cfg.uid, (unsigned)cfg.gid);
	net_print();
	if (!cfg.agent) printf("agent 0\n");
	if (cfg.tty) printf("tty %u %u\n", cfg.tty_cols, cfg.tty_rows);
	if (rootcfg.tag) { put_hex("root", rootcfg.tag); printf("root_ro %d\n", rootcfg.ro); }
	if (rootcfg.fstype) put_hex("root_fstype", rootcfg.fstype);
	for (size_t i = 0; i < rootcfg.nmounts; i++) {
		put_hex("mount", rootcfg.mounts[i].tag);
		put_hex("mount_path", rootcfg.mounts[i].path);
		printf("mount_ro %d\n", rootcfg.mounts[i].ro);
	}
	for (size_t i = 0; i < rootcfg.nbinds; i++) {
		put_hex("bind", rootcfg.binds[i].tag);
		put_hex("bind_path", rootcfg.binds[i].path);
		printf("bind_ro %d\n", rootcfg.binds[i].ro);
	}
	return 0;
}

int main(int argc, char **argv)
{
	if (getpid() != 1) {
		if (argc == 3 && !strcmp(argv[1], "--parse")) return parse_mode(argv[2]);
		fprintf(stderr, "tsibox-init: not PID 1 (usage outside a VM: %s --parse '<cmdline>')\n", argv[0]);
		return 2;
	}

	/* Init handles every signal itself (sigwaitinfo); the workload unblocks them. */
	sigset_t all;
	sigfillset(&all);
	sigprocmask(SIG_BLOCK, &all, NULL);
	umask(022);
	if (chdir("/") < 0) { /* ignore */ }

	if (setup_mounts()) finish(ST_SETUP);

	char *cl = read_file("/proc/cmdline");
	if (!cl) { err("read /proc/cmdline: %s", strerror(errno)); finish(ST_SETUP); }
	if (parse_cmdline(cl)) finish(ST_SETUP);
	free(cl);
	/* The extra command line, then the private one (the environment): both gone before
	 * the workload (or a guest user) can look. */
	static const char *const extra_files[] = { CMDLINE_FILE, PRIVATE_CMDLINE_FILE };
	for (size_t i = 0; i < sizeof extra_files / sizeof *extra_files; i++) {
		char *extra = read_file(extra_files[i]);
		if (!extra) continue;
		dbg("reading %s", extra_files[i]);
		unlink(extra_files[i]);
		if (parse_cmdline(extra)) finish(ST_SETUP);
		free(extra);
	}
	set_defaults();

	if (sethostname(cfg.hostname, strlen(cfg.hostname)) < 0)
		warn("sethostname: %s", strerror(errno));
	if (setup_loopback()) finish(ST_SETUP);
	if (net_setup()) finish(ST_SETUP);
	if (find_ports()) finish(ST_SETUP);
	/* After the ports (its errors go to stderr), before anything the workload sees. */
	if ((rootcfg.tag || rootcfg.nmounts || rootcfg.nbinds) && root_setup()) finish(ST_SETUP);
	/* Before the agent, which sets the terminal's window size (WINSIZE). */
	if (cfg.tty && (tty_master = tty_open_master(cfg.tty_cols, cfg.tty_rows)) < 0) finish(ST_SETUP);
	/* Before the workload: once it runs, the host can already exec beside it. */
	if (cfg.agent) agent_start();
	if (port_dev[P_STATUS]) {
		status_fd = open(port_dev[P_STATUS], O_WRONLY | O_NOCTTY | O_CLOEXEC);
		if (status_fd < 0) { err("open %s: %s", port_dev[P_STATUS], strerror(errno)); finish(ST_SETUP); }
	}
	finish(run_workload());
}
