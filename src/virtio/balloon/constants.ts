// Numbers from the virtio 1.2 specification, §5.5 (Traditional Memory Balloon Device).
import { DeviceId } from '../constants.js';

/** Device id of the memory balloon (§5.5.1; the one DeviceId table). */
export const BALLOON_DEVICE_ID = DeviceId.BALLOON;

/** Feature bits (§5.5.3), as bigint masks. */
export const BalloonFeature = {
  MUST_TELL_HOST: 1n << 0n,
  STATS_VQ: 1n << 1n,
  DEFLATE_ON_OOM: 1n << 2n,
  FREE_PAGE_HINT: 1n << 3n,
  PAGE_POISON: 1n << 4n,
  PAGE_REPORTING: 1n << 5n,
} as const;

/**
 * Queue indices. §5.5.2 numbers them 0..4 (inflateq, deflateq, statsq, free_page_vq,
 * reporting_vq) and says the optional ones exist only with their feature; Linux's
 * find_vqs numbers only the queues that exist, so with neither STATS_VQ nor
 * FREE_PAGE_HINT its reporting_vq is queue 2. We offer neither, so queue 2 cannot be
 * anything else: both 2 and 4 serve as the reporting queue.
 */
export const BalloonQueue = {
  INFLATE: 0,
  DEFLATE: 1,
  REPORTING_COMPACT: 2,
  REPORTING: 4,
} as const;

/** Config space (§5.5.4): le32 num_pages at 0 (device writes), le32 actual at 4 (driver writes). */
export const BalloonConfig = {
  NUM_PAGES: 0,
  ACTUAL: 4,
  /** num_pages and actual; free_page_hint_cmd_id and poison_val read as 0 (features not offered). */
  SIZE: 8,
} as const;

/** Page frame numbers on the inflate and deflate queues are in 4 KiB units whatever the guest's page size (§5.5.6). */
export const BALLOON_PAGE_SIZE = 4096;
