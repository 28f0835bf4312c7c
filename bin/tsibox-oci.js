#!/usr/bin/env node
// The OCI runtime command line (runc's interface) as its own program, for podman's
// --runtime / containers.conf and containerd's runc shim BinaryName: `tsibox-oci ARGS`
// is `tsibox oci ARGS` (docs/oci.md).
import { runOci } from '../dist/src/oci/cli.js';

process.exitCode = await runOci(process.argv.slice(2), { stdout: process.stdout, stderr: process.stderr });
