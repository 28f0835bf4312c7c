// Runs the `hello` synthetic guest on KVM and prints what it wrote to COM1.
// Build first: npm run build
import { Vm, loadSyntheticGuest, testGuestPath } from 'tsibox';

const vm = Vm.create({ memoryMiB: 16, serial: process.stdout });
try {
  loadSyntheticGuest(vm, testGuestPath('hello'));
  const exit = await vm.run({ timeoutMs: 5000 });
  console.log(`guest ended: ${exit.reason}`);
} finally {
  await vm.close();
}
