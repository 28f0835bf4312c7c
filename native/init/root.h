/*
 * A virtio-fs root and virtio-fs mounts (tsibox.root, tsibox.mount; the host runs one
 * virtiofsd per tag, docs/directory-root.md). init, still on the initramfs, mounts the
 * root tag, moves it over / and chroots into it (switch_root), then mounts the rest.
 */
#ifndef TSIBOX_ROOT_H
#define TSIBOX_ROOT_H

#include <stddef.h>

struct share_mount {
	char *tag;
	char *path;   /* absolute, in the (new) root */
	int ro;
};

struct root_config {
	char *tag;    /* NULL: stay on the initramfs */
	int ro;
	char *fstype; /* NULL: tag is a virtio-fs tag; else tag is a block device (tsibox.rootdisk) */
	struct share_mount *mounts;
	size_t nmounts;
	/* tsibox.bind: guest path (tag) bound onto another (path) after the mounts. */
	struct share_mount *binds;
	size_t nbinds;
};

extern struct root_config rootcfg;

/* Mount the root tag (or the root disk, waiting up to 1 s for its node) at /newroot (read-only when asked) and switch into it:
 * afterwards "/" is the virtio-fs root. 0, or -1 with the reason logged. */
int root_enter(void);

/* Mount every tsibox.mount tag at its path, then bind every tsibox.bind source (a file
 * or directory, typically inside a mount) onto its path; a missing mount point is
 * created (a file for a file) unless that fails (a read-only root): then -1 with the
 * reason logged. */
int root_mounts(void);

/* /etc/resolv.conf of the new root shows the DNS servers init wrote on the initramfs
 * (@fd, open on that file; -1: none): a bind mount over the root's own file, so the
 * host directory is not written; a writable root without one gets the file written. */
void root_resolv(int fd);

#endif
