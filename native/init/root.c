/*
 * The virtio-fs root and mounts (root.h). Mount points inside the new root are
 * resolved after the chroot, so the root's own symlinks point into the root.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdarg.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include "init.h"
#include "root.h"

#define NEWROOT "/newroot"

struct root_config rootcfg;

static void rerr(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vmsg("error: ", fmt, ap);
	va_end(ap);
}

static void rwarn(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vmsg("warning: ", fmt, ap);
	va_end(ap);
}

int root_enter(void)
{
	if (mkdir(NEWROOT, 0755) < 0 && errno != EEXIST) {
		rerr("mkdir %s: %s", NEWROOT, strerror(errno));
		return -1;
	}
	unsigned long flags = rootcfg.ro ? MS_RDONLY : 0;
	const char *type = rootcfg.fstype ? rootcfg.fstype : "virtiofs";
	/* A disk's node is there once virtio-blk probed it (at boot, built in): a short grace. */
	for (int i = 0; rootcfg.fstype && access(rootcfg.tag, F_OK) < 0 && i < 50; i++)
		usleep(20000);
	if (mount(rootcfg.tag, NEWROOT, type, flags, NULL) < 0) {
		if (rootcfg.fstype)
			rerr("mount the root disk %s (%s) as the root: %s", rootcfg.tag, type, strerror(errno));
		else
			rerr("mount virtio-fs tag %s as the root: %s", rootcfg.tag, strerror(errno));
		return -1;
	}
	/* switch_root: the new root replaces / (MS_MOVE; rootfs cannot be pivoted away). */
	if (chdir(NEWROOT) < 0 || mount(".", "/", NULL, MS_MOVE, NULL) < 0 || chroot(".") < 0 || chdir("/") < 0) {
		rerr("switching to the new root: %s", strerror(errno));
		return -1;
	}
	return 0;
}

/* The mount point of a bind: a directory for a directory, an empty file for a file. */
static int bind_target(const char *path, int dir)
{
	struct stat st;
	if (stat(path, &st) == 0) return 0;
	if (dir) return mkdir_p(path, 0755);
	char *parent = strdup(path);
	if (!parent) return -1;
	char *slash = strrchr(parent, '/');
	int rc = 0;
	if (slash && slash != parent) {
		*slash = 0;
		rc = mkdir_p(parent, 0755);
	}
	free(parent);
	if (rc < 0) return -1;
	int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
	if (fd < 0) return -1;
	close(fd);
	return 0;
}

static int bind_one(const struct share_mount *b)
{
	struct stat st;
	if (stat(b->tag, &st) < 0) {
		rerr("bind %s: the source %s: %s", b->path, b->tag, strerror(errno));
		return -1;
	}
	if (bind_target(b->path, S_ISDIR(st.st_mode)) < 0) {
		if (errno == EROFS)
			rerr("bind %s: the mount point does not exist and the root is read-only", b->path);
		else
			rerr("bind %s: cannot create the mount point: %s", b->path, strerror(errno));
		return -1;
	}
	if (mount(b->tag, b->path, NULL, MS_BIND, NULL) < 0
	    || (b->ro && mount(NULL, b->path, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY, NULL) < 0)) {
		rerr("bind %s on %s: %s", b->tag, b->path, strerror(errno));
		return -1;
	}
	return 0;
}

int root_mounts(void)
{
	for (size_t i = 0; i < rootcfg.nmounts; i++) {
		struct share_mount *m = &rootcfg.mounts[i];
		if (mkdir_p(m->path, 0755) < 0) {
			if (errno == EROFS)
				rerr("mount %s: the mount point does not exist and the root is read-only", m->path);
			else
				rerr("mount %s: cannot create the mount point: %s", m->path, strerror(errno));
			return -1;
		}
		if (mount(m->tag, m->path, "virtiofs", m->ro ? MS_RDONLY : 0, NULL) < 0) {
			rerr("mount virtio-fs tag %s on %s: %s", m->tag, m->path, strerror(errno));
			return -1;
		}
	}
	for (size_t i = 0; i < rootcfg.nbinds; i++)
		if (bind_one(&rootcfg.binds[i]) < 0) return -1;
	return 0;
}

void root_resolv(int fd)
{
	if (fd < 0) return;
	struct stat st;
	if (stat("/etc/resolv.conf", &st) == 0) {
		char src[64];
		snprintf(src, sizeof src, "/proc/self/fd/%d", fd);
		if (mount(src, "/etc/resolv.conf", NULL, MS_BIND, NULL) < 0)
			rwarn("bind /etc/resolv.conf: %s (DNS servers not set)", strerror(errno));
		close(fd);
		return;
	}
	if (rootcfg.ro) {
		rwarn("the read-only root has no /etc/resolv.conf: DNS servers not set");
		close(fd);
		return;
	}
	char buf[512];
	ssize_t n = pread(fd, buf, sizeof buf, 0);
	int out = -1;
	if (n < 0 || mkdir_p("/etc", 0755) < 0
	    || (out = open("/etc/resolv.conf", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644)) < 0
	    || write_all(out, buf, (size_t)n) < 0)
		rwarn("write /etc/resolv.conf: %s (DNS servers not set)", strerror(errno));
	if (out >= 0) close(out);
	close(fd);
}
