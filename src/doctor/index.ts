export { runDoctor, checkKvmAccess, checkKvmApi, checkRing0, checkTool, checkKernelCache, checkGuestKernel, kernelCacheDir, type DoctorOptions } from './checks.js';
export { probeRing0, NATIVE_RATIO_LIMIT, type Ring0Probe, type Ring0ProbeOptions } from '../engine/ring0-probe.js';
export { formatTable, worstStatus, type CheckResult, type CheckStatus } from './check.js';
