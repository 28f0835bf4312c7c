import { ociUsage, runOci } from '../../oci/cli.js';
import type { Command } from '../registry.js';

export const ociCommand: Command = {
  name: 'oci',
  summary: 'the OCI runtime (runc\'s command line; also the tsibox-oci program) for podman and containerd: each container a microVM (docs/oci.md)',
  usage: 'oci [--root DIR] [--log FILE] [--log-format text|json] <create|start|state|kill|delete|features> ...',
  options: {},
  rawArgs: true,
  help: ociUsage(),
  async run(args, io) {
    return runOci(args.positionals, io);
  },
};
