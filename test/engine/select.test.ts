// Engine choice from the KVM module, with a fake /sys/module and /dev/kvm.
import t from 'tap';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { kvmKind, describeKind } from '../../src/engine/select.js';

t.test('kvmKind reads the loaded module, PVM first', (t) => {
  const root = mkdtempSync(join(tmpdir(), 'tsibox-sel-'));
  t.teardown(() => { rmSync(root, { recursive: true, force: true }); });
  const mods = join(root, 'module');
  const dev = join(root, 'kvm');
  mkdirSync(mods);
  t.same(kvmKind(mods, dev), { kind: 'absent' }, 'no /dev/kvm');
  writeFileSync(dev, '');
  t.same(kvmKind(mods, dev), { kind: 'unknown' });
  mkdirSync(join(mods, 'kvm_amd'));
  t.same(kvmKind(mods, dev), { kind: 'hardware', module: 'kvm_amd' });
  mkdirSync(join(mods, 'kvm_pvm'));
  t.same(kvmKind(mods, dev), { kind: 'pvm' }, 'kvm_pvm wins: its guests get emulated ring 0');
  t.match(describeKind(kvmKind(mods, dev)), /emulated/);
  t.end();
});

t.test('this machine: the answer is deterministic', (t) => {
  const a = kvmKind();
  t.same(kvmKind(), a);
  t.comment(describeKind(a));
  t.end();
});
