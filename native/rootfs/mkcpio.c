/*
 * mkcpio: write a "newc" cpio archive (the initramfs format) from a spec on stdin,
 * to stdout. Needs no privileges (device nodes are described, not created) and is
 * reproducible: every entry is owned by 0:0 with mtime 0, in spec order.
 *
 * Spec lines (fields separated by single spaces; '#' starts a comment line):
 *   dir   PATH MODE
 *   file  PATH MODE SOURCE
 *   slink PATH TARGET
 *   nod   PATH MODE c|b MAJOR MINOR
 * PATH is the path inside the archive ("/init", "/bin"); MODE is octal permissions.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static unsigned long ino = 1000;
static unsigned long long total;

static void die(const char *what, const char *arg)
{
	fprintf(stderr, "mkcpio: %s%s%s\n", what, arg ? ": " : "", arg ? arg : "");
	exit(1);
}

static void out(const void *p, size_t n)
{
	if (n && fwrite(p, 1, n, stdout) != n) die("write failed", strerror(errno));
	total += n;
}

static void pad4(void)
{
	static const char zeros[4];
	if (total % 4) out(zeros, 4 - total % 4);
}

static void entry(const char *path, unsigned mode, unsigned nlink, const void *data,
		  size_t size, unsigned rmaj, unsigned rmin)
{
	while (*path == '/') path++;
	if (!*path) path = ".";
	char hdr[160];
	size_t namesize = strlen(path) + 1;
	if (size > 0xffffffffUL) die("file too large for newc", path);
	snprintf(hdr, sizeof hdr, "070701%08lX%08X%08X%08X%08X%08X%08lX%08X%08X%08X%08X%08lX%08X",
		 (ino++) & 0xffffffffUL, mode, 0u, 0u, nlink, 0u, (unsigned long)size, 0u, 0u,
		 rmaj, rmin, (unsigned long)namesize, 0u);
	out(hdr, 6 + 13 * 8);
	out(path, namesize);
	pad4();
	out(data, size);
	pad4();
}

static unsigned parse_mode(const char *s)
{
	char *end;
	unsigned long m = strtoul(s, &end, 8);
	if (!*s || *end || m > 07777) die("bad mode", s);
	return (unsigned)m;
}

static void *slurp(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	if (!f) die("cannot open", path);
	size_t cap = 1 << 16, n = 0;
	char *buf = malloc(cap);
	for (;;) {
		if (!buf) die("out of memory", NULL);
		n += fread(buf + n, 1, cap - n, f);
		if (n < cap) break;
		buf = realloc(buf, cap *= 2);
	}
	if (ferror(f)) die("read failed", path);
	fclose(f);
	*len = n;
	return buf;
}

int main(void)
{
	char line[8192];
	while (fgets(line, sizeof line, stdin)) {
		line[strcspn(line, "\n")] = 0;
		if (!line[0] || line[0] == '#') continue;
		char *f[7] = { 0 };
		int nf = 0;
		for (char *tok = strtok(line, " "); tok && nf < 7; tok = strtok(NULL, " ")) f[nf++] = tok;
		if (!strcmp(f[0], "dir") && nf == 3) {
			entry(f[1], S_IFDIR | parse_mode(f[2]), 2, NULL, 0, 0, 0);
		} else if (!strcmp(f[0], "file") && nf == 4) {
			size_t len;
			void *data = slurp(f[3], &len);
			entry(f[1], S_IFREG | parse_mode(f[2]), 1, data, len, 0, 0);
			free(data);
		} else if (!strcmp(f[0], "slink") && nf == 3) {
			entry(f[1], S_IFLNK | 0777, 1, f[2], strlen(f[2]), 0, 0);
		} else if (!strcmp(f[0], "nod") && nf == 6) {
			unsigned type = !strcmp(f[3], "c") ? S_IFCHR : !strcmp(f[3], "b") ? S_IFBLK : 0;
			if (!type) die("nod type must be c or b", f[3]);
			entry(f[1], type | parse_mode(f[2]), 1, NULL, 0,
			      (unsigned)strtoul(f[4], NULL, 10), (unsigned)strtoul(f[5], NULL, 10));
		} else {
			die("bad spec line", f[0]);
		}
	}
	entry("TRAILER!!!", 0, 1, NULL, 0, 0, 0);
	/* Pad the archive to a 512-byte multiple like cpio(1) does. */
	static const char zeros[512];
	if (total % 512) out(zeros, 512 - total % 512);
	if (fflush(stdout)) die("write failed", strerror(errno));
	return 0;
}
