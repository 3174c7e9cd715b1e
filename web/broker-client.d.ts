// Types of broker-client.js (hand-written; `tsc --strict` checks them in the test suite).

/** Codes the client raises itself; the broker's problem+json codes come on top. */
export type ClientErrorCode =
  | "mic_denied"
  | "network_error"
  | "cors_blocked"
  | "offer_failed"
  | "token_unavailable"
  | "channel_closed"
  | "bridge_failed"
  | "request_failed";

/** Problem codes a page is likely to meet from the broker's browser endpoints. */
export type BrokerProblemCode =
  | "token_expired"
  | "token_invalid"
  | "token_replayed"
  | "token_wrong_audience"
  | "token_session_mismatch"
  | "provider_error"
  | "provider_unreachable"
  | "provider_timeout"
  | "shutting_down"
  | "rate_limited"
  | "session_not_live"
  | "tool_not_allowed"
  | "origin_not_allowed";

/** A `BrokerClientError`'s code: one of the known ones, or another problem+json `code`. */
export type ErrorCode = ClientErrorCode | BrokerProblemCode | (string & {});

/** An RFC 9457 problem body, as the broker sends it. */
export interface Problem {
  type?: string;
  title?: string;
  status?: number;
  detail?: string;
  code?: string;
  [member: string]: unknown;
}

export interface BrokerClientErrorOptions {
  status?: number;
  problem?: Problem | null;
  cause?: unknown;
}

/** An error with a stable `.code` and the HTTP `.status` (0 when there was no reply). */
export class BrokerClientError extends Error {
  constructor(code: ErrorCode, message?: string, options?: BrokerClientErrorOptions);
  readonly name: "BrokerClientError";
  code: ErrorCode;
  status: number;
  /** The parsed problem+json body, when there was one. */
  problem: Problem | null;
  /** The error for a failed HTTP reply, read from its problem+json body if it has one. */
  static fromResponse(response: Response, fallbackCode?: ErrorCode): Promise<BrokerClientError>;
}

/** `client_secret` of the create response. */
export interface ClientSecret {
  value: string;
  /** Unix time (seconds) after which no new offer is accepted with it. */
  expires_at: number;
}

export type SessionState = "created" | "offered" | "live" | "degraded" | "ended" | "failed";

/**
 * What `POST /api/v1/sessions` returns (and, in demo mode, `POST /demo/session`): an app
 * backend passes it to its page unchanged. The URLs are absolute (`BROKER_PUBLIC_URL`).
 */
export interface CreatedSession {
  id: string;
  state: SessionState;
  model: string;
  tools: string[];
  sideband: boolean;
  input_transcription: { [setting: string]: unknown } | null;
  client_secret: ClientSecret;
  offer_url: string;
  /** The tool's name is appended: `bridge_url + encodeURIComponent(name)`. */
  bridge_url: string;
  end_url: string;
}

/**
 * What a token provider may return besides a bare secret: the create response, or any object
 * with its browser part (extra members are kept, in `Call.session`).
 */
export interface SessionGrant {
  id?: string;
  /** The API's `{value, expires_at}`; a plain string is accepted too. */
  client_secret: ClientSecret | string;
  offer_url?: string;
  bridge_url?: string;
  end_url?: string;
  [member: string]: unknown;
}

/** A realtime server event from the `oai-events` channel. */
export interface ServerEvent {
  type: string;
  event_id?: string;
  [member: string]: unknown;
}

/** A realtime client event sent on the `oai-events` channel. */
export interface ClientEvent {
  type: string;
  event_id?: string;
  [member: string]: unknown;
}

export type CloseReason = "hangup" | "channel_closed" | "connection_failed" | "connection_closed";

export interface ClientErrorDetail {
  code: ErrorCode;
  message: string;
  status: number;
}

/** `detail` of each event `Call.events` dispatches (server events come by their `type` too). */
export interface CallEventMap {
  open: Record<string, never>;
  closed: { reason: CloseReason };
  track: { track: MediaStreamTrack; stream: MediaStream };
  /** Every server event. */
  event: ServerEvent;
  /** A client-side failure, or a server `error` event (then `detail.type === "error"`). */
  error: ClientErrorDetail | ServerEvent;
}

export type CallEventListener<D> = (event: CustomEvent<D>) => void;

/** The `EventTarget` of a call, typed for its events. */
export interface CallEvents extends EventTarget {
  addEventListener<K extends keyof CallEventMap>(
    type: K,
    listener: CallEventListener<CallEventMap[K]>,
    options?: boolean | AddEventListenerOptions,
  ): void;
  /** A server event by its type (`response.done`, `session.created`, …). */
  addEventListener(
    type: string,
    listener: CallEventListener<ServerEvent>,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | AddEventListenerOptions,
  ): void;
  removeEventListener<K extends keyof CallEventMap>(
    type: K,
    listener: CallEventListener<CallEventMap[K]>,
    options?: boolean | EventListenerOptions,
  ): void;
  removeEventListener(
    type: string,
    listener: CallEventListener<ServerEvent>,
    options?: boolean | EventListenerOptions,
  ): void;
  removeEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | EventListenerOptions,
  ): void;
}

export interface ConnectOptions {
  /** Returns the create response (passed through by the app's backend) or a bare secret. */
  tokenProvider: () => Promise<string | SessionGrant | CreatedSession>;
  /** The offer URL, used when `tokenProvider` returns a bare string. */
  offerUrl?: string;
  /** Plays the model's voice. */
  audioElement?: HTMLAudioElement;
  /** `false`: receive audio only (default `true`). */
  microphone?: boolean;
  iceServers?: RTCIceServer[];
  /** Your own target, so listeners can be in place before the call exists. */
  events?: EventTarget;
}

export interface Call {
  pc: RTCPeerConnection;
  channel: RTCDataChannel;
  events: CallEvents;
  /** The client secret that made the offer (the bridge accepts it while the call is live). */
  token: string;
  /** What the token provider returned, unless it was a bare string. */
  session: SessionGrant | CreatedSession | null;
  /** JSON-encode `event` onto the channel; throws `channel_closed` if it is not open. */
  send(event: ClientEvent): void;
  /**
   * Hang up: stop the microphone and mute the model at once; with an `end_url`, ask the
   * broker to end the call and close the channel and the connection once it answered (at
   * most 3 s), else close them at once. Resolves once the broker answered (`true`: a 2xx;
   * `false` without an `end_url`, on failure, or when called again); never rejects. The
   * `closed` event then reports `hangup`.
   */
  close(): Promise<boolean>;
}

/** Start a call. Rejects with a `BrokerClientError`. */
export function connect(options: ConnectOptions): Promise<Call>;

export interface CallBridgeOptions {
  /** The session's `bridge_url`. */
  bridgeUrl: string;
  /** `Call.token`. */
  token: string;
  name: string;
  callId: string;
  arguments: unknown;
  /** How many times a 202 (the sideband has not finished) is asked again (default 3). */
  retries?: number;
}

export type ToolCallStatus = "pending" | "running" | "succeeded" | "failed" | "denied" | "cancelled";

export interface BridgeReply {
  call_id: string;
  status: ToolCallStatus;
  output: unknown;
  handled_by: "sideband" | "bridge" | null;
}

/** Run one function call through the broker's bridge: `POST {bridgeUrl}{name}`. */
export function callBridge(options: CallBridgeOptions): Promise<BridgeReply>;
