// The VMM builder's level (`tsibox/vmm`): runs the `hello` synthetic guest (a flat
// image built by `npm run build`, native/testguest/) on KVM and prints what it wrote
// to COM1. The guest runs in 64-bit mode at CPL3, so any /dev/kvm runs it at native
// speed, nested PVM included (docs/synthetic-guests.md).
import { fileURLToPath } from 'node:url';
import { Vm, loadSyntheticGuest } from 'tsibox/vmm';

const image = fileURLToPath(new URL('../native/build/testguest/hello.bin', import.meta.url));
const vm = Vm.create({ memoryMiB: 16, serial: process.stdout });
try {
  loadSyntheticGuest(vm, image);
  const exit = await vm.run({ timeoutMs: 5000 });
  console.log(`guest ended: ${exit.reason}`);
} finally {
  await vm.close();
}
