export { cacheRoot, packageRoot, type ProgressFn } from './build.js';
export { kernelPaths, ensureKernel, type KernelPaths, type EnsureOptions } from './kernel.js';
export { initramfsPath, ensureInitramfs } from './initramfs.js';
export { testRootPath, ensureTestRoot } from './test-root.js';
export * from './cmdline.js';
export { GUEST_TOOLS, ensureGuestTools, guestToolsArchive, type GuestToolName } from './tools.js';
