// What every end-to-end test needs before its first boot: QEMU, the guest kernel and
// initramfs (built here when missing, which lifts tap's timeout), optionally the
// guest tools archive and a passt that can start. Returns why to skip, or the tools.
import type { Test } from 'tap';
import { pino } from 'pino';
import { findQemu } from '../../src/engine/qemu.js';
import { ensureInitramfs, ensureKernel, kernelPaths } from '../../src/guest/index.js';
import { guestToolsArchive } from '../../src/index.js';
import { startPasst } from '../../proxies/passt.js';
import { findGvproxy, GVPROXY_DEBIAN_PACKAGE } from '../../proxies/gvproxy.js';

/**
 * The engine the end-to-end tests run under: 'qemu' (default, any host) or 'kvm'
 * (TSIBOX_E2E_ENGINE=kvm; `npm run test:kvm` sets it inside the nested SVM test host).
 * Tests of QEMU-only behaviour (QEMU missing, its pid) stay on 'qemu'.
 */
export const E2E_ENGINE: 'qemu' | 'kvm' = process.env['TSIBOX_E2E_ENGINE'] === 'kvm' ? 'kvm' : 'qemu';

export interface Prerequisites {
  skip: string | false;
  tools: Buffer | undefined;
}

export async function e2ePrerequisites(t: Test, opts: { tools?: boolean; passt?: boolean; gvproxy?: boolean } = {}): Promise<Prerequisites> {
  if (kernelPaths() === undefined) t.setTimeout(20 * 60_000);
  if (E2E_ENGINE === 'qemu' && findQemu() === undefined) return { skip: 'qemu-system-x86_64 is not installed (Debian: qemu-system-x86)', tools: undefined };
  if (opts.gvproxy && findGvproxy() === undefined) {
    return { skip: `gvproxy is not installed (${GVPROXY_DEBIAN_PACKAGE}; or set TSIBOX_GVPROXY)`, tools: undefined };
  }
  if (opts.passt) {
    try {
      const p = await startPasst({ address: '10.0.2.15', prefix: 24, gateway: '10.0.2.2', mac: '02:00:00:00:00:01', logger: pino({ level: 'silent' }) });
      await p.close();
    } catch (e) {
      return { skip: `passt cannot run here: ${(e as Error).message}`, tools: undefined };
    }
  }
  try {
    await ensureKernel({ onProgress: (l) => t.comment(l) });
    await ensureInitramfs({ onProgress: (l) => t.comment(l) });
    return { skip: false, tools: opts.tools ? await guestToolsArchive() : undefined };
  } catch (e) {
    return { skip: `the guest kernel/initramfs${opts.tools ? '/tools' : ''} cannot be built here: ${(e as Error).message}`, tools: undefined };
  }
}
