export { VhostUserConnection, type ConnectionOptions, type ConnectionEvents } from './connection.js';
export { VhostUserBackend, OFFERED_PROTOCOL_FEATURES, type BackendOptions } from './backend.js';
export { MessageReader, ProtocolError, Req, requestName, type Message } from './protocol.js';
