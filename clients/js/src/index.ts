export {
  Client,
  Subscription,
  WsdError,
  TimeoutError,
  DisconnectedError,
  tokenExpiry,
  type ClientOptions,
  type ClientEvents,
  type SubscriptionEvents,
  type SubscribedEvent,
  type ConnectingEvent,
  type ConnectedEvent,
  type DisconnectedEvent,
  type Publication,
  type ClientInfo,
  type StreamPosition,
  type Protocol,
  type State,
  type WebSocketLike,
  type WebSocketConstructor,
} from "./client.js";
export { backoffDelay, retryHint, defaultBackoff, type Backoff } from "./backoff.js";
export { encode as encodeMsgpack, decode as decodeMsgpack, MsgpackError } from "./msgpack.js";
