import t from 'tap';
import { Kvm } from '../../src/kvm/system.js';
import { KvmVmFd } from '../../src/kvm/vm-fd.js';
import { KVM, KVM_CAP } from '../../src/kvm/ioctl-numbers.js';
import { TsiboxError } from '../../src/errors.js';

t.test('ioctl numbers match <linux/kvm.h>', async (t) => {
  // Spot checks against the values the kernel headers expand to.
  t.equal(KVM.RUN, 0xae80);
  t.equal(KVM.GET_REGS, 0x8090ae81);
  t.equal(KVM.SET_SREGS, 0x4138ae84);
  t.equal(KVM.SET_USER_MEMORY_REGION, 0x4020ae46);
  t.equal(KVM.IOEVENTFD, 0x4040ae79);
  t.equal(KVM.GET_SUPPORTED_CPUID, 0xc008ae05);
  t.equal(KVM.GET_FPU, 0x81a0ae8c);
  t.equal(KVM.SET_LAPIC, 0x4400ae8f);
});

t.test('opens /dev/kvm and reads its capabilities', async (t) => {
  const kvm = Kvm.open();
  t.teardown(() => kvm.close());
  t.equal(kvm.apiVersion(), 12);
  t.ok(kvm.checkExtension(KVM_CAP.IRQCHIP) > 0, 'in-kernel irqchip');
  t.ok(kvm.checkExtension(KVM_CAP.IOEVENTFD) > 0, 'ioeventfd');
  t.ok(kvm.vcpuMmapSize() >= 4096, 'kvm_run mapping is at least a page');
  const cpuid = kvm.supportedCpuid();
  t.ok(cpuid.some((e) => e.function === 0), 'leaf 0 present');
  t.ok(cpuid.some((e) => e.function === 1), 'leaf 1 present');
});

t.test('a failing ioctl throws a TsiboxError naming the ioctl and errno', async (t) => {
  const kvm = Kvm.open();
  const vm = new KvmVmFd(kvm.createVm());
  t.teardown(() => { vm.close(); kvm.close(); });
  // A vCPU id far beyond KVM_MAX_VCPU_IDS is refused with EINVAL.
  const err = (() => { try { vm.createVcpu(1 << 30); return null; } catch (e) { return e; } })();
  t.ok(err instanceof TsiboxError, 'TsiboxError');
  t.equal((err as TsiboxError).code, 'KVM_IOCTL');
  t.match((err as TsiboxError).message, /KVM_CREATE_VCPU failed: EINVAL/);
  t.equal((err as TsiboxError).errno, 22);
});

t.test('a missing device is KVM_UNAVAILABLE', async (t) => {
  t.throws(() => Kvm.open('/dev/does-not-exist-kvm'), { code: 'KVM_UNAVAILABLE', message: /ENOENT/ });
});
