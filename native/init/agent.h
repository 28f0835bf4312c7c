/*
 * The guest exec agent (agent.c, docs/exec-agent.md): a child of init serving host
 * connections on guest vsock port AGENT_PORT, one process per connection.
 */
#ifndef TSIBOX_AGENT_H
#define TSIBOX_AGENT_H

#include <stddef.h>
#include <signal.h>
#include <sys/types.h>

#include "init.h"

/*
 * Guest vsock port of the agent. Below 1024, so only a privileged guest process can
 * bind it (a workload running as a user cannot squat it), and outside 512..1023,
 * which the TSI kernel patch takes for its own reserved sockets.
 */
#define AGENT_PORT 52

/*
 * The real-time signal the agent queues to init (sigqueue, the value is the signal
 * number) to signal the main workload, which is init's child: SIGRTMIN + 1.
 */
#define AGENT_SIGNAL_MAIN (SIGRTMIN + 1)

/* What every exec inherits from the workload's description unless EXEC overrides it. */
struct agent_config {
	char *const *env;       /* the workload's environment, NULL-terminated */
	const char *workdir;    /* the workload's working directory; NULL or "": "/" */
	int have_user;
	uid_t uid;
	gid_t gid;
	const struct rlim *rl;  /* the workload's rlimits */
	size_t nrl;
	int tty_fd;             /* the workload's terminal master (tsibox.tty), else -1: WINSIZE */
};

/*
 * Listen on AGENT_PORT and fork the agent. Returns its pid, or -1 when there is no
 * agent (no vsock device, the port taken; said in debug mode only: the workload runs
 * regardless). @close_fd (>= 0) is closed in the agent (init's status port).
 */
pid_t agent_spawn(const struct agent_config *cfg, int close_fd);

#endif
