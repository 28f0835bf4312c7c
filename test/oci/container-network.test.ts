// src/oci/container-network.ts: an OCI container's network annotations → a Sandbox network,
// and the io.tsibox.policy file read as hostile input.
import t from 'tap';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { containerNetwork, loadPolicyFile } from '../../src/oci/container-network.js';

const dir = mkdtempSync(join(tmpdir(), 'tsibox-oci-net-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
function file(name: string, text: string): string {
  const p = join(dir, name);
  writeFileSync(p, text);
  return p;
}

t.test('modes', async (t) => {
  t.equal(containerNetwork({ network: { mode: 'none' } }), undefined, 'none: no network at all');
  const tsi = containerNetwork({ network: { mode: 'tsi' } });
  t.equal(tsi?.mode, 'tsi');
  if (tsi?.mode !== 'tsi') return;
  t.equal(tsi.portMap?.mirrorAddress, '0.0.0.0', 'guest listeners are mirrored in the namespace');
  t.equal(tsi.policy.defaultAction, 'allow', 'no policy file: the namespace is the limit, as with runc');
  const passt = containerNetwork({ network: { mode: 'passt', policyFile: file('deny.json', '{"default":"deny"}') } });
  t.equal(passt?.mode, 'passt');
  t.equal(passt?.policy.defaultAction, 'deny');
});

t.test('the policy file decides', async (t) => {
  const p = loadPolicyFile(file('web.json', JSON.stringify({ default: 'deny', rules: [{ action: 'allow', protocol: 'tcp', cidr: '10.88.0.0/16', ports: 80 }] })));
  t.equal(p.evaluate({ direction: 'outbound', protocol: 'tcp', address: '10.88.0.5', port: 80 }).action, 'allow');
  t.equal(p.evaluate({ direction: 'outbound', protocol: 'tcp', address: '10.88.0.5', port: 81 }).action, 'deny');
  t.equal(p.evaluate({ direction: 'outbound', protocol: 'udp', address: '10.88.0.5', port: 80 }).action, 'deny');
});

t.test('a malformed policy file is refused with the reason', async (t) => {
  t.throws(() => loadPolicyFile(join(dir, 'absent.json')), { code: 'INVALID_ARGUMENT', message: /cannot open/ });
  t.throws(() => loadPolicyFile(file('a.json', '[]')), { code: 'INVALID_ARGUMENT', message: /must be a JSON object/ });
  t.throws(() => loadPolicyFile(file('b.json', '{"rules":[]}')), { code: 'POLICY_INVALID', message: /explicit default/ });
  t.throws(() => loadPolicyFile(file('c.json', '{"default":"deny","rules":[{"action":"allow","cidr":"10.0.0.0/99"}]}')), { code: 'POLICY_INVALID', message: /policy file .*c\.json/ });
  t.throws(() => loadPolicyFile(file('d.json', '{"default":"deny","extra":1}')), { code: 'INVALID_ARGUMENT', message: /unknown field "extra"/ });
  t.throws(() => loadPolicyFile(file('e.json', '{"default":')), { code: 'INVALID_ARGUMENT', message: /not valid JSON/ });
  t.throws(() => loadPolicyFile(file('f.json', '{"default":"deny","rules":[{"action":"allow","protocol":"tcp","cidr":"10.0.0.1","port":443}]}')), { code: 'INVALID_ARGUMENT', message: /rules\[0\] has an unknown field "port"/ }, 'a misspelt field would widen the rule');
  t.throws(() => loadPolicyFile(file('g.json', '{"default":"deny","rules":[{"action":"allow","cidrs":"10.0.0.0/8"}]}')), { code: 'INVALID_ARGUMENT', message: /unknown field "cidrs"/ });
  t.throws(() => loadPolicyFile(file('big.json', ' '.repeat(1024 * 1024 + 1))), { code: 'INVALID_ARGUMENT', message: /more than/ });
});
