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
