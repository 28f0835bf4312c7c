/* DHCPv4 client for init (see dhcp.h). One UDP socket bound to 0.0.0.0:68 on the
 * interface (SO_BINDTODEVICE), broadcasts with the BROADCAST flag set so the server
 * answers to 255.255.255.255 (the interface has no address yet). Replies are matched on
 * xid and our MAC; anything else is ignored. No renewal: a sandbox lives shorter than a
 * lease. */
#define _GNU_SOURCE
#include "dhcp.h"

#include <arpa/inet.h>
#include <errno.h>
#include <net/if.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define DHCP_SERVER_PORT 67
#define DHCP_CLIENT_PORT 68
#define DHCP_MAGIC 0x63825363u
#define DHCP_FIXED 236          /* op .. file */
#define DHCP_PKT_MAX 1500

enum { DISCOVER = 1, OFFER = 2, REQUEST = 3, DECLINE = 4, ACK = 5, NAK = 6 };
enum { OPT_PAD = 0, OPT_MASK = 1, OPT_ROUTER = 3, OPT_DNS = 6, OPT_REQ_IP = 50, OPT_TYPE = 53,
       OPT_SERVER = 54, OPT_PARAMS = 55, OPT_END = 255 };

static long mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

/* The request: fixed header, magic cookie, options. Returns its length. */
static size_t build(uint8_t *p, int type, uint32_t xid, const uint8_t mac[6], const struct dhcp_lease *offer)
{
	memset(p, 0, DHCP_PKT_MAX);
	p[0] = 1;  /* BOOTREQUEST */
	p[1] = 1;  /* Ethernet */
	p[2] = 6;
	memcpy(p + 4, &xid, 4);
	p[10] = 0x80; /* flags: BROADCAST */
	memcpy(p + 28, mac, 6);
	uint32_t magic = htonl(DHCP_MAGIC);
	memcpy(p + DHCP_FIXED, &magic, 4);
	size_t n = DHCP_FIXED + 4;
	p[n++] = OPT_TYPE; p[n++] = 1; p[n++] = (uint8_t)type;
	if (type == REQUEST) {
		p[n++] = OPT_REQ_IP; p[n++] = 4; memcpy(p + n, &offer->addr, 4); n += 4;
		p[n++] = OPT_SERVER; p[n++] = 4; memcpy(p + n, &offer->server, 4); n += 4;
	}
	p[n++] = OPT_PARAMS; p[n++] = 3; p[n++] = OPT_MASK; p[n++] = OPT_ROUTER; p[n++] = OPT_DNS;
	p[n++] = OPT_END;
	return n < 300 ? 300 : n; /* BOOTP minimum */
}

/* Parses a reply for us; returns its message type (0: not ours / malformed). */
static int parse(const uint8_t *p, size_t len, uint32_t xid, const uint8_t mac[6], struct dhcp_lease *out)
{
	if (len < DHCP_FIXED + 4 || p[0] != 2 || memcmp(p + 4, &xid, 4) || memcmp(p + 28, mac, 6)) return 0;
	uint32_t magic;
	memcpy(&magic, p + DHCP_FIXED, 4);
	if (ntohl(magic) != DHCP_MAGIC) return 0;
	int type = 0;
	memset(out, 0, sizeof *out);
	memcpy(&out->addr, p + 16, 4);
	out->prefix = 24;
	for (size_t i = DHCP_FIXED + 4; i < len;) {
		uint8_t code = p[i++];
		if (code == OPT_PAD) continue;
		if (code == OPT_END || i >= len) break;
		uint8_t olen = p[i++];
		if (i + olen > len) return 0;
		const uint8_t *v = p + i;
		switch (code) {
		case OPT_TYPE: if (olen == 1) type = v[0]; break;
		case OPT_MASK:
			if (olen == 4) {
				uint32_t m;
				memcpy(&m, v, 4);
				m = ntohl(m);
				unsigned bits = 0;
				while (bits < 32 && (m & (0x80000000u >> bits))) bits++;
				if (bits >= 1 && bits <= 30) out->prefix = bits;
			}
			break;
		case OPT_ROUTER: if (olen >= 4) memcpy(&out->gw, v, 4); break;
		case OPT_DNS:
			for (int k = 0; k + 4 <= olen && out->ndns < DHCP_MAX_DNS; k += 4) memcpy(&out->dns[out->ndns++], v + k, 4);
			break;
		case OPT_SERVER: if (olen == 4) memcpy(&out->server, v, 4); break;
		}
		i += olen;
	}
	return type;
}

int dhcp_lease(const char *ifname, long timeout_ms, struct dhcp_lease *lease, char *why, size_t whylen)
{
	int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (s < 0) { snprintf(why, whylen, "socket: %s", strerror(errno)); return -1; }
	int rc = -1, one = 1;
	struct ifreq ifr;
	memset(&ifr, 0, sizeof ifr);
	strncpy(ifr.ifr_name, ifname, IFNAMSIZ - 1);
	if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0) { snprintf(why, whylen, "SIOCGIFFLAGS %s: %s", ifname, strerror(errno)); goto out; }
	ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
	if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0) { snprintf(why, whylen, "SIOCSIFFLAGS %s: %s", ifname, strerror(errno)); goto out; }
	if (ioctl(s, SIOCGIFHWADDR, &ifr) < 0) { snprintf(why, whylen, "SIOCGIFHWADDR %s: %s", ifname, strerror(errno)); goto out; }
	uint8_t mac[6];
	memcpy(mac, ifr.ifr_hwaddr.sa_data, 6);
	if (setsockopt(s, SOL_SOCKET, SO_BROADCAST, &one, sizeof one) < 0
	    || setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0
	    || setsockopt(s, SOL_SOCKET, SO_BINDTODEVICE, ifname, (socklen_t)strlen(ifname) + 1) < 0) {
		snprintf(why, whylen, "setsockopt: %s", strerror(errno));
		goto out;
	}
	struct sockaddr_in me = { .sin_family = AF_INET, .sin_port = htons(DHCP_CLIENT_PORT) };
	if (bind(s, (struct sockaddr *)&me, sizeof me) < 0) { snprintf(why, whylen, "bind :68: %s", strerror(errno)); goto out; }
	struct sockaddr_in bc = { .sin_family = AF_INET, .sin_port = htons(DHCP_SERVER_PORT), .sin_addr.s_addr = htonl(INADDR_BROADCAST) };

	uint32_t xid;
	if (getrandom(&xid, sizeof xid, 0) != sizeof xid) xid = (uint32_t)mono_ms() ^ 0x7473ab0cu;
	static uint8_t pkt[DHCP_PKT_MAX], in[DHCP_PKT_MAX];
	struct dhcp_lease offer = { 0 };
	int state = DISCOVER;
	long end = mono_ms() + timeout_ms, next = 0;
	while (mono_ms() < end) {
		long now = mono_ms();
		if (now >= next) {
			size_t n = build(pkt, state, xid, mac, &offer);
			if (sendto(s, pkt, n, 0, (struct sockaddr *)&bc, sizeof bc) < 0 && errno != ENETUNREACH && errno != ENETDOWN) {
				snprintf(why, whylen, "sendto 255.255.255.255:67: %s", strerror(errno));
				goto out;
			}
			next = now + 1000;
		}
		long wait = (next < end ? next : end) - mono_ms();
		struct pollfd pf = { .fd = s, .events = POLLIN };
		int pr = poll(&pf, 1, wait > 0 ? (int)wait : 0);
		if (pr < 0 && errno != EINTR) { snprintf(why, whylen, "poll: %s", strerror(errno)); goto out; }
		if (pr <= 0) continue;
		ssize_t got = recv(s, in, sizeof in, 0);
		if (got <= 0) continue;
		struct dhcp_lease l;
		int type = parse(in, (size_t)got, xid, mac, &l);
		if (state == DISCOVER && type == OFFER && l.addr.s_addr != 0) {
			offer = l;
			state = REQUEST;
			next = 0; /* send the REQUEST now */
		} else if (state == REQUEST && type == ACK && l.addr.s_addr == offer.addr.s_addr) {
			if (l.server.s_addr == 0) l.server = offer.server;
			*lease = l;
			rc = 0;
			goto out;
		} else if (state == REQUEST && type == NAK) {
			state = DISCOVER;
			next = 0;
		}
	}
	snprintf(why, whylen, "no DHCP%s from a server on %s within %ld ms", state == DISCOVER ? "OFFER" : "ACK", ifname, timeout_ms);
out:
	close(s);
	return rc;
}
