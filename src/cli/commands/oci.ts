import { ociUsage, runOci } from '../../oci/cli.js';
import type { Command } from '../registry.js';

export const ociCommand: Command = {
  name: 'oci',
  summary: 'the runc command-line interface for podman and containerd (groundwork: state and features work; docs/oci.md)',
  usage: 'oci [--root DIR] [--log FILE] [--log-format text|json] <state|features|create|start|kill|delete> ...',
  options: {},
  rawArgs: true,
  help: ociUsage(),
  async run(args, io) {
    return runOci(args.positionals, io);
  },
};
