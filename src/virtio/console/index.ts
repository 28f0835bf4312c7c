export { ConsoleDevice, PortName, DEFAULT_PORT_NAMES, type ConsoleOptions, type ConsoleEvents } from './device.js';
export { ConsolePort } from './port.js';
export { ConsoleFeature, ControlEvent } from './control.js';
