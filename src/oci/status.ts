// A container's status (runtime-spec runtime.md "State") and the one table of the moves
// between them. Every change of a stored status goes through `transition`.
import { TsiboxError } from '../errors.js';

export const ContainerStatus = {
  /** `create` is preparing the VM; no pid the caller may wait on yet. */
  Creating: 'creating',
  /** The VMM process (the pid in the pid file) waits for `start`; the workload has not run. */
  Created: 'created',
  /** `start` let the workload run; it has not exited. */
  Running: 'running',
  /** The workload (and with it the VMM process) has exited. */
  Stopped: 'stopped',
} as const;
export type ContainerStatus = (typeof ContainerStatus)[keyof typeof ContainerStatus];

const ALL: ReadonlySet<string> = new Set(Object.values(ContainerStatus));

export function isContainerStatus(v: unknown): v is ContainerStatus {
  return typeof v === 'string' && ALL.has(v);
}

/** Which status may follow which. stopped is final; `delete` removes the record. */
const NEXT: Readonly<Record<ContainerStatus, readonly ContainerStatus[]>> = {
  creating: ['created', 'stopped'],
  created: ['running', 'stopped'],
  running: ['stopped'],
  stopped: [],
};

export function canTransition(from: ContainerStatus, to: ContainerStatus): boolean {
  return NEXT[from].includes(to);
}

/** `to` when `from` may move there, else INVALID_STATE naming the container. */
export function transition(id: string, from: ContainerStatus, to: ContainerStatus): ContainerStatus {
  if (!canTransition(from, to)) throw new TsiboxError('INVALID_STATE', `container ${id} is ${from}; it cannot become ${to}`);
  return to;
}

/** What each runtime operation needs (runtime.md "Operations"), or INVALID_STATE. */
export function requireStatusFor(op: 'start' | 'kill' | 'delete', id: string, status: ContainerStatus, force = false): void {
  const ok = op === 'start' ? status === 'created'
    : op === 'kill' ? status === 'created' || status === 'running'
      : force || status === 'stopped';
  if (!ok) {
    const want = op === 'start' ? 'created' : op === 'kill' ? 'created or running' : 'stopped (or use --force)';
    throw new TsiboxError('INVALID_STATE', `cannot ${op} container ${id}: it is ${status}, not ${want}`);
  }
}
