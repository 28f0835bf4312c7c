export { BalloonDevice, type BalloonOptions, type BalloonStats } from './device.js';
export { BALLOON_DEVICE_ID, BALLOON_PAGE_SIZE, BalloonConfig, BalloonFeature, BalloonQueue } from './constants.js';
export { checkRange, pfnRanges, reportedRanges, ViewLocator, type BalloonMemory, type PageRange, type RangeResult } from './ranges.js';
