// A multiport virtio-console behind a software driver, every queue set up and the
// driver live (the control-tx ring full size, the others 16 slots): what the console
// flood tests start from.
import { Feature } from '../../src/virtio/constants.js';
import { ConsoleDevice, ConsoleFeature } from '../../src/virtio/console/index.js';
import { CONTROL_TX_QUEUE } from '../../src/virtio/console/control.js';
import { createHarness } from '../support/virtio/harness.js';
import type { DriverQueue } from '../support/virtio/driver.js';
import type { Logger } from 'pino';

export function consoleRig(opts: { memorySize?: number; logger?: Logger } = {}): {
  dev: ConsoleDevice; h: ReturnType<typeof createHarness>; queues: DriverQueue[]; tx: DriverQueue;
} {
  const dev = new ConsoleDevice();
  const h = createHarness(dev, { memorySize: opts.memorySize ?? 16 * 1024 * 1024, ...(opts.logger ? { logger: opts.logger } : {}) });
  const d = h.driver;
  d.negotiate(Feature.VERSION_1 | ConsoleFeature.MULTIPORT);
  const queues = dev.queueSizes.map((_, i) => d.setupQueue(i, { size: i === CONTROL_TX_QUEUE ? dev.queueSizes[i]! : 16, slotSize: 512 }));
  d.driverOk();
  return { dev, h, queues, tx: queues[CONTROL_TX_QUEUE]! };
}
