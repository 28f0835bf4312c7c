import t from 'tap';
import { Policy } from '../../src/policy/index.js';

t.test('a default is required', (t) => {
  t.throws(() => new Policy({} as never), { code: 'POLICY_INVALID' });
  t.throws(() => new Policy({ default: 'maybe' } as never), { code: 'POLICY_INVALID' });
  t.end();
});

t.test('first matching rule wins, then the default', (t) => {
  const p = new Policy({
    default: 'deny',
    rules: [
      { action: 'deny', cidr: '127.0.0.2/32', name: 'block-two' },
      { action: 'allow', cidr: '127.0.0.0/8', protocol: 'tcp', ports: [1000, 2000], name: 'lo-tcp' },
      { action: 'allow', cidr: '::1', protocol: ['tcp', 'udp'] },
      { action: 'allow', protocol: 'unix', path: '/run/svc/' },
      { action: 'allow', direction: 'inbound', protocol: 'tcp' },
    ],
  });
  const q = (o: Partial<Parameters<Policy['evaluate']>[0]>) => p.evaluate({ direction: 'outbound', protocol: 'tcp', ...o });
  t.same(q({ address: '127.0.0.2', port: 1500 }), { action: 'deny', rule: 0, by: 'block-two' }, 'earlier deny beats later allow');
  t.equal(q({ address: '127.0.0.1', port: 1500 }).by, 'lo-tcp');
  t.equal(q({ address: '127.0.0.1', port: 2001 }).by, 'default');
  t.equal(q({ address: '127.0.0.1', port: 1500, protocol: 'udp' }).action, 'deny');
  t.equal(q({ address: '::ffff:127.0.0.1', port: 1000 }).by, 'lo-tcp', 'IPv4-mapped IPv6 matches IPv4 rules');
  t.equal(q({ address: '0:0:0:0:0:0:0:1', port: 5, protocol: 'udp' }).action, 'allow');
  t.equal(q({ protocol: 'unix', path: '/run/svc/a.sock' }).action, 'allow');
  t.equal(q({ protocol: 'unix', path: '/run/other.sock' }).action, 'deny');
  t.equal(q({ direction: 'inbound', address: '10.0.0.1', port: 80 }).action, 'allow');
  t.equal(q({ address: '10.0.0.1', port: 80 }).action, 'deny');
  t.end();
});

t.test('bad rules are rejected with the rule index', (t) => {
  for (const rule of [
    { action: 'allow', cidr: '300.1.1.1/8' }, { action: 'allow', cidr: '10.0.0.0/33' }, { action: 'allow', cidr: '::1/129' },
    { action: 'allow', ports: [5, 1] }, { action: 'allow', ports: 70000 }, { action: 'allow', protocol: 'sctp' },
    { action: 'permit' }, { action: 'allow', direction: 'sideways' },
  ]) {
    t.throws(() => new Policy({ default: 'deny', rules: [rule as never] }), { code: 'POLICY_INVALID', message: /rule 0/ }, JSON.stringify(rule));
  }
  t.end();
});

t.test('IPv6 CIDRs match IPv6 only; IPv4-mapped CIDRs and queries are IPv4', (t) => {
  const allow6 = new Policy({ default: 'deny', rules: [{ action: 'allow', cidr: '::/0' }] });
  t.equal(allow6.evaluate({ direction: 'outbound', protocol: 'tcp', address: '127.0.0.1', port: 1 }).action, 'deny', 'allow ::/0 does not allow IPv4');
  t.equal(allow6.evaluate({ direction: 'outbound', protocol: 'tcp', address: '::ffff:127.0.0.1', port: 1 }).action, 'deny', 'nor a mapped IPv4 address');
  t.equal(allow6.evaluate({ direction: 'outbound', protocol: 'tcp', address: '2001:db8::1', port: 1 }).action, 'allow');
  const deny6 = new Policy({ default: 'allow', rules: [{ action: 'deny', cidr: '::/0' }] });
  t.equal(deny6.evaluate({ direction: 'outbound', protocol: 'tcp', address: '93.184.216.34', port: 1 }).action, 'allow', 'deny ::/0 does not deny IPv4');
  t.equal(deny6.evaluate({ direction: 'inbound', protocol: 'tcp', address: '::1', port: 1 }).action, 'deny');
  const mapped = new Policy({ default: 'deny', rules: [{ action: 'allow', cidr: '::ffff:127.0.0.0/104' }] });
  t.equal(mapped.evaluate({ direction: 'outbound', protocol: 'tcp', address: '127.9.9.9', port: 1 }).action, 'allow', '::ffff:127.0.0.0/104 is 127.0.0.0/8');
  t.equal(mapped.evaluate({ direction: 'outbound', protocol: 'tcp', address: '128.0.0.1', port: 1 }).action, 'deny');
  const all4 = new Policy({ default: 'deny', rules: [{ action: 'allow', cidr: '::ffff:0:0/96' }] });
  t.equal(all4.evaluate({ direction: 'outbound', protocol: 'udp', address: '8.8.8.8', port: 53 }).action, 'allow', '::ffff:0:0/96 is all of IPv4');
  t.equal(all4.evaluate({ direction: 'outbound', protocol: 'udp', address: '2001:db8::8', port: 53 }).action, 'deny');
  t.throws(() => new Policy({ default: 'deny', rules: [{ action: 'allow', cidr: '::ffff:0:0/80' }] }), { code: 'POLICY_INVALID' }, 'a mapped prefix shorter than /96 is ambiguous');
  const odd = new Policy({ default: 'deny', rules: [{ action: 'allow', cidr: ['10.1.2.128/25', '2001:db8:8000::/33'] }] });
  t.equal(odd.evaluate({ direction: 'outbound', protocol: 'tcp', address: '10.1.2.200', port: 1 }).action, 'allow');
  t.equal(odd.evaluate({ direction: 'outbound', protocol: 'tcp', address: '10.1.2.100', port: 1 }).action, 'deny');
  t.equal(odd.evaluate({ direction: 'outbound', protocol: 'tcp', address: '2001:db8:8000::5', port: 1 }).action, 'allow');
  t.equal(odd.evaluate({ direction: 'outbound', protocol: 'tcp', address: '2001:db8:7fff::5', port: 1 }).action, 'deny');
  t.end();
});

t.test('outbound to unspecified or host-local addresses is judged as loopback', (t) => {
  const p = new Policy({
    default: 'allow', rules: [{ action: 'deny', cidr: ['127.0.0.0/8', '::1/128'] }],
    hostAddresses: () => ['192.0.2.10', 'fe80::1', '127.0.0.1'],
  });
  const q = (address: string) => p.evaluate({ direction: 'outbound', protocol: 'tcp', address, port: 80 });
  for (const a of ['0.0.0.0', '0.1.2.3', '::', '::ffff:0.0.0.0', '0:0:0:0:0:0:0:0', '::127.0.0.1', '::7f00:1']) t.equal(q(a).action, 'deny', `${a} is unspecified (or IPv4-compatible)`);
  t.equal(q('2001:db8::1').action, 'allow', 'ordinary IPv6 is judged by the rules');
  t.equal(q('192.0.2.10').action, 'deny', "the host's own address reaches loopback services");
  t.match(q('192.0.2.10').by, /judged as loopback/);
  t.equal(q('192.0.2.11').action, 'allow', 'another address on that network is not the host');
  t.equal(q('fe80::1').action, 'deny');
  for (const m of ['224.0.0.1', '239.1.2.3', 'ff02::1', 'ff05::2']) t.equal(q(m).action, 'deny', `multicast ${m} loops back to the host: judged as loopback too`);
  t.equal(new Policy({ default: 'allow', hostAddresses: () => [] }).evaluate({ direction: 'outbound', protocol: 'udp', address: '224.0.0.251', port: 5353 }).action, 'allow', 'allowed when loopback is allowed');
  t.equal(p.evaluate({ direction: 'inbound', protocol: 'tcp', address: '192.0.2.10', port: 80 }).action, 'allow', 'inbound clients are judged as themselves');
  const open = new Policy({ default: 'allow', hostAddresses: () => ['192.0.2.10'] });
  t.equal(open.evaluate({ direction: 'outbound', protocol: 'tcp', address: '192.0.2.10', port: 80 }).action, 'allow', 'allowed when loopback is allowed');
  t.equal(open.evaluate({ direction: 'outbound', protocol: 'tcp', address: '0.0.0.0', port: 80 }).action, 'deny', 'unspecified is denied even by allow-all');
  t.end();
});

t.test('unix paths: absolute, normalised, directory rules match on a path boundary', (t) => {
  const p = new Policy({ default: 'deny', rules: [{ action: 'allow', protocol: 'unix', path: '/run/svc/' }, { action: 'allow', protocol: 'unix', path: '/tmp//one.sock' }] });
  const q = (path: string) => p.evaluate({ direction: 'outbound', protocol: 'unix', path }).action;
  t.equal(q('/run/svc/a.sock'), 'allow');
  t.equal(q('/run/svc/../docker.sock'), 'deny', '.. is resolved before matching');
  t.equal(q('/run/svcX/a.sock'), 'deny', 'a sibling with the same prefix is not under the directory');
  t.equal(q('/tmp/one.sock'), 'allow', 'rule paths are normalised too');
  t.equal(q('run/svc/a.sock'), 'deny', 'relative paths never match');
  t.throws(() => new Policy({ default: 'deny', rules: [{ action: 'allow', protocol: 'unix', path: 'relative/' }] }), { code: 'POLICY_INVALID' });
  t.end();
});

t.test('unix rule paths are canonical too, and rules mixing unix with addresses are refused', async (t) => {
  const { mkdtempSync, mkdirSync, symlinkSync, rmSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const { join } = await import('node:path');
  const dir = mkdtempSync(join(tmpdir(), 'tsibox-pol-'));
  t.teardown(() => { rmSync(dir, { recursive: true, force: true }); });
  mkdirSync(join(dir, 'real'));
  symlinkSync(join(dir, 'real'), join(dir, 'link'));
  // A rule written through a symlink (like /var/run → /run) matches the resolved target.
  const p = new Policy({ default: 'deny', rules: [{ action: 'allow', protocol: 'unix', path: `${join(dir, 'link')}/` }] });
  t.equal(p.evaluate({ direction: 'outbound', protocol: 'unix', path: join(dir, 'real', 'x.sock') }).action, 'allow');
  t.throws(() => new Policy({ default: 'deny', rules: [{ action: 'allow', protocol: 'unix', cidr: '127.0.0.1' }] }), { code: 'POLICY_INVALID' });
  t.throws(() => new Policy({ default: 'deny', rules: [{ action: 'allow', protocol: 'tcp', path: '/x' }] }), { code: 'POLICY_INVALID' });
});

t.test('clone() and replace(): a sandbox\'s own copy, changed at once, the original untouched', async (t) => {
  const original = new Policy({ default: 'deny', rules: [{ action: 'allow', cidr: ['10.0.0.0/8'], name: 'ten' }] });
  const live = original.clone();
  const q = { direction: 'outbound' as const, protocol: 'tcp' as const, address: '10.1.2.3', port: 80 };
  t.equal(live.evaluate(q).action, 'allow');
  live.replace(new Policy({ default: 'deny', rules: [{ action: 'deny', cidr: ['10.1.0.0/16'], name: 'no 10.1' }, { action: 'allow', cidr: ['0.0.0.0/0'] }] }));
  t.same(live.evaluate(q), { action: 'deny', rule: 0, by: 'no 10.1' }, 'the new rules decide the next query');
  t.equal(live.evaluate({ ...q, address: '192.0.2.1' }).action, 'allow');
  t.equal(original.evaluate(q).action, 'allow', 'the original is unchanged');
  t.equal(original.evaluate({ ...q, address: '192.0.2.1' }).action, 'deny');
  live.replace(Policy.allowAll());
  t.equal(live.defaultAction, 'allow', 'the default moves too');
  t.same(live.rules, []);
});
