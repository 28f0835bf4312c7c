/*
 * What init.c shares with the other files linked into init (agent.c): its message
 * helpers, time and file helpers, and the exec path with its failure record, so the
 * agent starts processes with exactly the workload's rules (PATH search, 125/126/127).
 */
#ifndef TSIBOX_INIT_H
#define TSIBOX_INIT_H

#include <stdarg.h>
#include <stddef.h>
#include <sys/resource.h>
#include <sys/types.h>

#define ST_SETUP 125
#define ST_EXEC 126
#define ST_NOTFOUND 127

/* Where init's (and the agent's) own messages go: the console once /dev is up. */
extern int log_fd;
extern int debug_on;
/* The prefix of every message ("tsibox-init"; the agent sets "tsibox-agent"). */
extern const char *log_name;

/* One message line "<log_name>: <prefix><text>\n" on log_fd. */
void vmsg(const char *prefix, const char *fmt, va_list ap);

int write_all(int fd, const char *p, size_t n);
void sleep_ms(long ms);
long now_ms(void);
/* mkdir -p; returns 0 or -1 with errno set. */
int mkdir_p(const char *path, mode_t mode);

/* The workload's status for a wait status: exit code, or 128+N for signal N. */
int status_of(int ws);

struct rlim { int resource; rlim_t cur, max; };

/*
 * Written by a child whose setup or exec failed to its close-on-exec pipe: the
 * parent then knows the status came from setup, not from the program. The pipe
 * closes without a record when execve succeeds.
 */
struct exec_failure { int status; int err; char what[96]; };

/* Report a setup/exec failure (stderr message + record on @pipefd), then _exit(@status). */
void child_fail(int pipefd, int status, int e, const char *what) __attribute__((noreturn));

/*
 * execve @prog with @argv/@envp, searching @path (a PATH value; NULL: the default)
 * when @prog has no '/'. Only returns through child_fail: 127 not found, 126 not
 * executable.
 */
void exec_search(int pipefd, const char *prog, char *const argv[], char *const envp[],
		 const char *path) __attribute__((noreturn));

#endif
