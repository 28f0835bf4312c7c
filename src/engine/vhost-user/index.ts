export { VhostUserConnection, type ConnectionOptions, type ConnectionEvents } from './connection.js';
export { VhostUserBackend, OFFERED_PROTOCOL_FEATURES, type BackendOptions } from './backend.js';
export { MessageReader, ProtocolError, Req, requestName, type Message } from './protocol.js';
export {
  VhostUserFrontend, FRONTEND_PROTOCOL_FEATURES, type FrontendOptions, type ConnectOptions, type FrontendEvents, type VringLayout,
  type VringFds, type HandshakeOptions, type HandshakeResult,
} from './frontend.js';
