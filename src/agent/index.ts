// The guest exec agent, host side (docs/exec-agent.md).
export { AgentClient, type AgentClientOptions, type ExecOptions, type ExecHandle, type ExecExit } from './client.js';
export { AGENT_PORT } from './protocol.js';
