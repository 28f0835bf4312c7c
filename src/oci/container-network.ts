// A container's network as a Sandbox network option. The container engine gave the
// container a network namespace (podman's CNI or netavark, containerd's CNI); the
// container monitor runs inside it, so every host socket TSI makes is the container's:
// guest connect()s leave through the namespace's interface and firewall, and every guest
// listener is published on the same port at the namespace's addresses (mirror mode), where
// the engine's own port forwarding (`podman run -p`) finds it.
import { TsiboxError } from '../errors.js';
import { Policy, type PolicyOptions } from '../policy/index.js';
import { PortMap } from '../portmap/index.js';
import type { PasstNetwork } from '../engine/network-passt.js';
import type { TsiNetwork } from '../engine/network-tsi.js';
import type { OciPlan } from './config.js';
import { isObject, readJsonFile } from './json-fields.js';

/** The fields of a PolicyRule (src/policy/index.ts). */
const RULE_FIELDS: ReadonlySet<string> = new Set(['action', 'protocol', 'direction', 'cidr', 'ports', 'path', 'name']);

/** A policy file is a few rules; larger is refused. */
const MAX_POLICY_BYTES = 1024 * 1024;

/**
 * The Sandbox `network` for a planned container, or undefined for `none` (no TSI, no NIC:
 * the guest has loopback only).
 * - `tsi` (default): TSI with the policy file's policy (or allow-all: the namespace the
 *   engine made is then the only limit, as with runc), guest listeners mirrored on
 *   0.0.0.0 (IPv4; the engines' default networks are IPv4).
 * - `passt`: a virtio-net NIC wired to passt, which runs in the namespace too; outbound
 *   only (passt publishes no guest ports here).
 * Errors: INVALID_ARGUMENT for an unreadable or malformed policy file (POLICY_INVALID
 * for a rule the policy refuses).
 */
export function containerNetwork(plan: Pick<OciPlan, 'network'>): TsiNetwork | PasstNetwork | undefined {
  const { mode, policyFile } = plan.network;
  if (mode === 'none') return undefined;
  const policy = policyFile === undefined ? Policy.allowAll() : loadPolicyFile(policyFile);
  if (mode === 'passt') return { mode: 'passt', policy };
  return { mode: 'tsi', policy, portMap: new PortMap([], { mirrorAddress: '0.0.0.0' }) };
}

/**
 * The io.tsibox.policy file: JSON `{ "default": "allow" | "deny", "rules": [PolicyRule...] }`,
 * the library's `PolicyOptions` (src/policy/index.ts; semantics in docs/security.md §2), e.g.
 * `{"default":"deny","rules":[{"action":"allow","protocol":"tcp","cidr":"10.88.0.0/16","ports":80}]}`.
 */
export function loadPolicyFile(path: string): Policy {
  const json = readJsonFile(path, MAX_POLICY_BYTES, `policy file (annotation io.tsibox.policy)`);
  if (!isObject(json)) throw new TsiboxError('INVALID_ARGUMENT', `policy file ${path}: must be a JSON object { "default": ..., "rules": [...] }`);
  const known = new Set(['default', 'rules']);
  const extra = Object.keys(json).filter((k) => !known.has(k));
  if (extra.length > 0) throw new TsiboxError('INVALID_ARGUMENT', `policy file ${path}: unknown field ${JSON.stringify(extra[0])} (only "default" and "rules")`);
  // A misspelt rule field ("port" for "ports", "cidrs") would otherwise widen the rule
  // silently: the policy ignores what it does not know.
  const rules = json['rules'];
  if (Array.isArray(rules)) {
    rules.forEach((r: unknown, i) => {
      const bad = isObject(r) ? Object.keys(r).find((k) => !RULE_FIELDS.has(k)) : undefined;
      if (bad !== undefined) throw new TsiboxError('INVALID_ARGUMENT', `policy file ${path}: rules[${i}] has an unknown field ${JSON.stringify(bad)} (known: ${[...RULE_FIELDS].join(', ')})`);
    });
  }
  try {
    return new Policy(json as unknown as PolicyOptions);
  } catch (err) {
    if (err instanceof TsiboxError) throw new TsiboxError(err.code, `policy file ${path}: ${err.message}`, { cause: err });
    throw err;
  }
}
