import { ensureKernel, ensureInitramfs } from '../../guest/index.js';
import { expectPositionals, type Command } from '../registry.js';

export const kernelCommand: Command = {
  name: 'kernel',
  summary: 'print the guest kernel path, building it (and the default initramfs) when missing',
  usage: 'kernel [--bzimage] [--initramfs] [--force]',
  options: {
    bzimage: { type: 'boolean', description: 'print the bzImage path instead of vmlinux' },
    initramfs: { type: 'boolean', description: 'also print the default initramfs path (second line)' },
    force: { type: 'boolean', description: 'rebuild even when the cache has it' },
  },
  help: 'Builds from Debian\'s linux-source-6.1 (about 4 minutes on 2 cores), cached under ${XDG_CACHE_HOME:-~/.cache}/tsibox. Progress goes to stderr.',
  async run(args, io) {
    expectPositionals(this, args, 0, 0);
    const onProgress = (line: string): void => { io.stderr.write(line + '\n'); };
    const force = args.options.force === true;
    const k = await ensureKernel({ onProgress, force });
    io.stdout.write((args.options.bzimage ? k.bzImage : k.vmlinux) + '\n');
    if (args.options.initramfs) io.stdout.write(await ensureInitramfs({ onProgress, force }) + '\n');
    return 0;
  },
};
