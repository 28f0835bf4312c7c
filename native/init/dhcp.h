/* A minimal DHCPv4 client for init (RFC 2131): DISCOVER, OFFER, REQUEST, ACK on one
 * interface, bounded in time. Used by `tsibox.net=dhcp` (gvproxy answers). */
#ifndef TSIBOX_DHCP_H
#define TSIBOX_DHCP_H

#include <netinet/in.h>

#define DHCP_MAX_DNS 3

struct dhcp_lease {
	struct in_addr addr;      /* yiaddr */
	unsigned prefix;          /* from option 1 (subnet mask); 24 when absent */
	struct in_addr gw;        /* option 3 (first router); 0 when absent */
	struct in_addr dns[DHCP_MAX_DNS]; /* option 6 */
	int ndns;
	struct in_addr server;    /* option 54 */
};

/*
 * Brings `ifname` up (no address yet) and obtains a lease for the MAC it has, retrying
 * every second, for at most `timeout_ms`. Returns 0 with *lease filled, or -1 with a
 * one-line reason in `why` (e.g. "no DHCPOFFER within 10000 ms").
 */
int dhcp_lease(const char *ifname, long timeout_ms, struct dhcp_lease *lease, char *why, size_t whylen);

#endif
