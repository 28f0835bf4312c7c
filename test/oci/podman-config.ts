// A config.json of the shape podman 4.3.1 hands its OCI runtime (`podman run` through
// conmon): overlay merged root, the kernel file systems, bind mounts of single files
// (resolv.conf, hosts, hostname, .containerenv) and of /dev/shm, a cgroup mount, a
// network namespace path, cgroups, seccomp, masked and read-only paths, annotations.
// Paths are parameters so that a test can point them at real files.

export interface PodmanPaths {
  /** The overlay merged dir (root.path). */
  rootfs: string;
  /** podman's userdata dir: resolv.conf, hosts, hostname, .containerenv, shm. */
  userdata: string;
  /** A host directory given with -v HOST:/data (optional). */
  volume?: string;
  netns?: string;
}

export const CONTAINER_ID = '6b1e1a0d3c2f4e5a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a';

export function podmanConfig(p: PodmanPaths, over: { terminal?: boolean; annotations?: Record<string, string> } = {}): Record<string, unknown> {
  return {
    ociVersion: '1.0.2-dev',
    process: {
      terminal: over.terminal ?? false,
      user: { uid: 0, gid: 0, umask: 18, additionalGids: [0, 1, 2, 3, 4, 6, 10, 11, 20, 26, 27] },
      args: ['sh', '-c', 'echo hello; sleep 1000'],
      env: [
        'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
        'TERM=xterm',
        'container=podman',
        'HOME=/root',
        'HOSTNAME=6b1e1a0d3c2f',
      ],
      cwd: '/',
      capabilities: {
        bounding: ['CAP_CHOWN', 'CAP_DAC_OVERRIDE', 'CAP_FOWNER', 'CAP_FSETID', 'CAP_KILL', 'CAP_NET_BIND_SERVICE', 'CAP_SETFCAP', 'CAP_SETGID', 'CAP_SETPCAP', 'CAP_SETUID', 'CAP_SYS_CHROOT'],
        effective: ['CAP_CHOWN', 'CAP_DAC_OVERRIDE', 'CAP_FOWNER', 'CAP_FSETID', 'CAP_KILL', 'CAP_NET_BIND_SERVICE', 'CAP_SETFCAP', 'CAP_SETGID', 'CAP_SETPCAP', 'CAP_SETUID', 'CAP_SYS_CHROOT'],
        permitted: ['CAP_CHOWN', 'CAP_DAC_OVERRIDE', 'CAP_FOWNER', 'CAP_FSETID', 'CAP_KILL', 'CAP_NET_BIND_SERVICE', 'CAP_SETFCAP', 'CAP_SETGID', 'CAP_SETPCAP', 'CAP_SETUID', 'CAP_SYS_CHROOT'],
      },
      rlimits: [
        { type: 'RLIMIT_NOFILE', hard: 1048576, soft: 1048576 },
        { type: 'RLIMIT_NPROC', hard: 4194304, soft: 4194304 },
      ],
      oomScoreAdj: 0,
    },
    root: { path: p.rootfs },
    hostname: '6b1e1a0d3c2f',
    mounts: [
      { destination: '/proc', type: 'proc', source: 'proc', options: ['nosuid', 'noexec', 'nodev'] },
      { destination: '/dev', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'strictatime', 'mode=755', 'size=65536k'] },
      { destination: '/sys', type: 'sysfs', source: 'sysfs', options: ['nosuid', 'noexec', 'nodev', 'ro'] },
      { destination: '/dev/pts', type: 'devpts', source: 'devpts', options: ['nosuid', 'noexec', 'newinstance', 'ptmxmode=0666', 'mode=0620', 'gid=5'] },
      { destination: '/dev/mqueue', type: 'mqueue', source: 'mqueue', options: ['nosuid', 'noexec', 'nodev'] },
      { destination: '/etc/resolv.conf', type: 'bind', source: `${p.userdata}/resolv.conf`, options: ['bind', 'rprivate'] },
      { destination: '/etc/hosts', type: 'bind', source: `${p.userdata}/hosts`, options: ['bind', 'rprivate'] },
      { destination: '/dev/shm', type: 'bind', source: `${p.userdata}/shm`, options: ['bind', 'rprivate'] },
      { destination: '/etc/hostname', type: 'bind', source: `${p.userdata}/hostname`, options: ['bind', 'rprivate'] },
      { destination: '/run/.containerenv', type: 'bind', source: `${p.userdata}/.containerenv`, options: ['bind', 'rprivate'] },
      ...(p.volume !== undefined ? [{ destination: '/data', type: 'bind', source: p.volume, options: ['rbind', 'ro', 'rprivate'] }] : []),
      { destination: '/sys/fs/cgroup', type: 'cgroup', source: 'cgroup', options: ['rprivate', 'nosuid', 'noexec', 'nodev', 'relatime', 'rw'] },
    ],
    annotations: {
      'io.container.manager': 'libpod',
      'io.kubernetes.cri-o.Created': '2024-05-01T10:00:00.000000000Z',
      'io.kubernetes.cri-o.TTY': 'false',
      'io.podman.annotations.autoremove': 'FALSE',
      'io.podman.annotations.init': 'FALSE',
      'io.podman.annotations.privileged': 'FALSE',
      'io.podman.annotations.publish-all': 'FALSE',
      'org.opencontainers.image.stopSignal': '15',
      ...over.annotations,
    },
    linux: {
      sysctl: { 'net.ipv4.ping_group_range': '0 0' },
      resources: {
        devices: [{ allow: false, access: 'rwm' }],
        pids: { limit: 2048 },
      },
      cgroupsPath: `machine.slice:libpod:${CONTAINER_ID}`,
      namespaces: [
        { type: 'pid' },
        { type: 'network', path: p.netns ?? '/run/netns/netns-5f0c9c1e-8a5e-2b2d-1d7e-3f1a2b3c4d5e' },
        { type: 'ipc' },
        { type: 'uts' },
        { type: 'mount' },
        { type: 'cgroup' },
      ],
      seccomp: {
        defaultAction: 'SCMP_ACT_ERRNO',
        defaultErrnoRet: 38,
        architectures: ['SCMP_ARCH_X86_64', 'SCMP_ARCH_X86', 'SCMP_ARCH_X32'],
        syscalls: [
          { names: ['bdflush', 'io_pgetevents', 'kexec_file_load', 'kexec_load'], action: 'SCMP_ACT_ERRNO', errnoRet: 1 },
          { names: ['accept', 'accept4', 'access', 'read', 'write', 'exit_group'], action: 'SCMP_ACT_ALLOW' },
        ],
      },
      maskedPaths: ['/proc/acpi', '/proc/kcore', '/proc/keys', '/proc/latency_stats', '/proc/timer_list', '/proc/timer_stats', '/proc/sched_debug', '/proc/scsi', '/sys/firmware', '/sys/fs/selinux', '/sys/dev/block'],
      readonlyPaths: ['/proc/asound', '/proc/bus', '/proc/fs', '/proc/irq', '/proc/sys', '/proc/sysrq-trigger'],
    },
  };
}
