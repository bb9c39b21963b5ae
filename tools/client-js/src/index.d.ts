// Type declarations for @tether/client (src/index.js).

/**
 * The constructor of a WebSocket: the browser's, or the `ws` package's. The
 * client sets the on* handlers itself; event parameters are left open so
 * both implementations' own event types fit.
 */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((ev: any) => any) | null;
  onmessage: ((ev: any) => any) | null;
  onclose: ((ev: any) => any) | null;
  onerror: ((ev: any) => any) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  /** `ws` only: drop the TCP connection at once. */
  terminate?(): void;
}
export type WebSocketConstructor = new (url: string) => WebSocketLike;

export interface TetherClientOptions {
  /** ws:// or wss:// URL of tether's /ws endpoint. */
  url: string;
  /** A JWT, or a function returning one (called again after a 1008 close or when the cached token expired). */
  token: string | (() => string | Promise<string>);
  /** Defaults to globalThis.WebSocket; pass the `ws` package's export in Node 20. */
  WebSocket?: WebSocketConstructor;
  /** App ping period, ms (30000). */
  pingInterval?: number;
  /** The socket is dead after 2 * pingInterval + deadSlack ms without a frame (5000). */
  deadSlack?: number;
  /** Bound on one connection attempt, ms (10000). */
  connectTimeout?: number;
  /** Full-jitter backoff: delay = random * min(backoffCap, backoffBase * 2^attempt), ms (500, 30000). */
  backoffBase?: number;
  backoffCap?: number;
  /** A connection up this long resets the backoff, ms (10000). */
  stableAfter?: number;
  /** After a 1001 (drain) close, reconnect after random * drainSpread ms, and keep at least that window for retries until one opens (10000). */
  drainSpread?: number;
  /** Answer every notification with {"type":"ack","id":...} (false). */
  ack?: boolean;
  /** Connect with since/epoch and de-duplicate by seq (true). */
  resume?: boolean;
  /** Where a previous run of the app stopped (its `position`). */
  epoch?: string;
  since?: number;
}

export type TetherState = 'connecting' | 'connected' | 'waiting' | 'stopped';

export interface Notification {
  type: string;
  id?: string;
  seq?: number;
  epoch?: string;
  timestamp?: string;
  data?: unknown;
  [key: string]: unknown;
}

export interface DisconnectedEvent {
  /** The close code; 1006 for an attempt that failed, timed out or a dead socket; null when no socket was opened. */
  code: number | null;
  reason: string;
  willReconnect: boolean;
  /** ms until the next attempt, or null. */
  delay: number | null;
}

export interface ResumedEvent {
  /** false: something after `since` was lost; refresh from your backend. */
  recovered: boolean;
  epoch: string;
  since: number;
  replay: number;
}

export interface TetherEvents {
  connected: { url: string };
  disconnected: DisconnectedEvent;
  notification: Notification;
  resumed: ResumedEvent;
  error: TetherError;
  state: { state: TetherState; previous: TetherState };
}

export class TetherError extends Error {
  /** The close code behind the error, when there is one. */
  readonly code: number | null;
  /** 'close' | 'token' | 'url' | 'frame' | 'server' | 'listener' */
  readonly kind: string;
}

export class TetherClient {
  constructor(options: TetherClientOptions);
  readonly state: TetherState;
  /** The epoch and the last seq handed to the app. */
  readonly position: { epoch: string | null; seq: number };
  on<K extends keyof TetherEvents>(event: K, fn: (detail: TetherEvents[K]) => void): () => void;
  off<K extends keyof TetherEvents>(event: K, fn: (detail: TetherEvents[K]) => void): void;
  /** Start again after the client stopped. */
  connect(): void;
  /** Stop: close the socket, clear every timer, never reconnect. */
  close(): void;
}

export default TetherClient;
