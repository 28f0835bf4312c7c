// vhost-user, both roles. backend/: we serve our VirtioDevices to a front end (QEMU);
// frontend/: we drive an external back end (virtiofsd, qemu-storage-daemon) for the
// KVM engine. protocol.ts is the wire codec both speak.
export { VhostUserConnection, type ConnectionOptions, type ConnectionEvents } from './backend/connection.js';
export { VhostUserBackend, OFFERED_PROTOCOL_FEATURES, type BackendOptions } from './backend/backend.js';
export { MessageReader, ProtocolError, Req, requestName, type Message } from './protocol.js';
export {
  VhostUserFrontend, FRONTEND_PROTOCOL_FEATURES, type FrontendOptions, type ConnectOptions, type FrontendEvents, type VringLayout,
  type VringFds, type HandshakeOptions, type HandshakeResult,
} from './frontend/frontend.js';
