// netstack/address.ts is the one place that reads addresses: its IPv4 parsers agree
// with each other and with node:net on what an address is.
import t from 'tap';
import { isIPv4 } from 'node:net';
import { canonicalAddress, ipv4Bytes, ipv4FromString, ipv6Bytes } from '../../netstack/address.js';

t.test('IPv4 text: the canonical dotted quad only, the same answer from every reader', (t) => {
  for (const good of ['0.0.0.0', '10.0.2.15', '255.255.255.255', '127.0.0.1']) {
    t.same([...ipv4FromString(good)!], good.split('.').map(Number), good);
    t.same(ipv4Bytes(good), good.split('.').map(Number));
    t.equal(canonicalAddress(good)?.address, good);
  }
  for (const bad of ['010.0.2.15', '1.2.3', '1.2.3.4.5', '256.0.0.1', ' 1.2.3.4', '1.2.3.4 ', '1.2.3.-4', '0x7f.0.0.1', '']) {
    t.equal(ipv4FromString(bad), null, JSON.stringify(bad));
    t.equal(isIPv4(bad), false, `node:net agrees on ${JSON.stringify(bad)}`);
    t.equal(canonicalAddress(bad), null);
    t.throws(() => ipv4Bytes(bad), TypeError);
  }
  t.end();
});

t.test('IPv6 text: compression, a dotted tail and a zone', (t) => {
  t.same(ipv6Bytes('::1'), [...new Array(15).fill(0), 1]);
  t.same(ipv6Bytes('::ffff:10.0.2.15').slice(10), [0xff, 0xff, 10, 0, 2, 15]);
  t.same(ipv6Bytes('fe80::1%eth0').slice(0, 2), [0xfe, 0x80]);
  t.equal(canonicalAddress('::ffff:10.0.2.15')?.address, '10.0.2.15', 'IPv4-mapped is IPv4');
  t.equal(canonicalAddress('fd00::2')?.address, 'fd00:0:0:0:0:0:0:2');
  t.throws(() => ipv6Bytes('1.2.3.4'), TypeError);
  t.end();
});
