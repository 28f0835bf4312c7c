// The package's public entry point (`tsibox`): the sandbox and everything its options,
// results and events use. The VMM builder's parts (Vm, buses, virtio devices and
// transports, the Linux loader) are in `tsibox/vmm` (src/vmm-api.ts).
export {
  Sandbox, type SandboxOptions, type SandboxResult, type SandboxEvents, type VsockPort, type TsiNetwork, type PasstNetwork,
  type GvproxyNetwork, type EngineChoice, type EngineName, type ConnectionEvent, type PublishSpec, type PublishedPort,
  type PublishOptions, type SandboxPorts, type TsiLimitOptions, type TerminalSize, type DirectoryMount, type GuestBind,
} from './sandbox.js';
export type { FinishedConnection, ConnectionRecord, FlowRecord } from './connection-records.js';
export { chooseEngine, type EngineDecision } from './engine/select.js';
export { TsiboxError, type TsiboxErrorCode } from './errors.js';
export { ensureKernel, ensureInitramfs, kernelPaths, initramfsPath, type KernelPaths, type Rlimit, type RlimitName } from './guest/index.js';
export { guestToolsArchive, ensureGuestTools, newcArchive, GUEST_TOOLS, type GuestToolName, type ArchiveEntry } from './guest/index.js';
export { Policy, type PolicyOptions, type PolicyRule, type PolicyQuery, type Decision, type Action, type Protocol, type Direction } from './policy/index.js';
export { PortMap, type PortMapping, type PortMappingSpec, type PortMapEvents, type PortMapOptions, type MapProtocol } from './portmap/index.js';
