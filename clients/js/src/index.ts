export { CLOSE_CODES, type Blame, type CloseReason, ERROR_CODES, type ErrorCode, FINAL_CLOSE_CODES, closeReasonOf } from "./codes.js";
export { BufferFullError, ClosedError, GatewayError, TimeoutError } from "./errors.js";
export { type Body, Packet, decodeBinary, decodeJson, encodeBinary, encodeJson } from "./packet.js";
export {
  type ClientOptions,
  DEFAULT_ROUTES,
  type Events,
  type Login,
  type ReconnectOptions,
  type RoomMessage,
  type Routes,
  type State,
  WasmgateClient,
} from "./client.js";
