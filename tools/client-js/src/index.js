// TetherClient: the reference client for tether's WebSocket protocol, and
// the executable form of the rules every tether client follows (README
// "Clients"). It runs unchanged on the browser's WebSocket and on the npm
// `ws` package in Node, and has no runtime dependency.
//
// The rules, and why:
// - Send an app ping every `pingInterval` (30 s): only frames the client
//   sends keep its registry entry fresh, and the janitor evicts (4000) a
//   connection silent for --stale-after.
// - Declare the socket dead when nothing arrived for 2 ping intervals plus
//   `deadSlack`: a half-open TCP connection (NAT dropped it, the server's
//   worker is stopped) never reports a close by itself.
// - Give every connection attempt its own timeout: a stopped worker's ring
//   can accept the TCP connection and never answer the upgrade.
// - Reconnect with exponential backoff and full jitter, reset only after a
//   connection stayed up: a fleet that reconnects in lock-step after a
//   deploy is a denial of service.
// - Close codes: 1001 (drain) reconnects soon, spread over `drainSpread`
//   (and so do the retries while the server is still down);
//   4000 (stale) and 1000/1006/1011 reconnect with backoff; 4001 (replaced
//   by a newer device) does not reconnect; 1008 (token expired) fetches a
//   new token first; 1002/1007/1009 mean this client is broken, so it
//   reports an error and stops instead of repeating the mistake.
// - Resume: remember the epoch and the last seq handed to the app, connect
//   with since/epoch, hand each notification to the app once and in seq
//   order, and pass `recovered:false` on so the app refreshes from its
//   backend.

const DEFAULTS = Object.freeze({
  pingInterval: 30000,
  deadSlack: 5000,
  connectTimeout: 10000,
  backoffBase: 500,
  backoffCap: 30000,
  stableAfter: 10000,
  drainSpread: 10000,
  ack: false,
  resume: true,
});

const STOP_CODES = new Set([1002, 1007, 1009]);
const CLOSE_REPLACED = 4001;
const CLOSE_TOKEN = 1008;
const CLOSE_DRAIN = 1001;
const RESERVED_TYPES = new Set(['pong', 'resumed', 'error']);

/** An error the client reports through its `error` event. */
export class TetherError extends Error {
  constructor(message, { code = null, kind = 'error', cause } = {}) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = 'TetherError';
    this.code = code;
    this.kind = kind;
  }
}

// The `exp` claim of a JWT in milliseconds, or null. Only read to know when
// to ask for a new token; the server is the one that verifies it.
function tokenExpiry(token) {
  try {
    const part = token.split('.')[1];
    const b64 = part.replace(/-/g, '+').replace(/_/g, '/');
    const exp = JSON.parse(atob(b64 + '==='.slice((b64.length + 3) % 4))).exp;
    return typeof exp === 'number' ? exp * 1000 : null;
  } catch {
    return null;
  }
}

// Handlers for a socket we are done with: its late events must change
// nothing, and `ws` throws on an 'error' event that has no listener at all.
function detach(sock) {
  const noop = () => {};
  sock.onopen = noop;
  sock.onmessage = noop;
  sock.onclose = noop;
  sock.onerror = noop;
}

// Drops a socket we gave up on (dead, or its attempt timed out) at once: a
// closing handshake would wait on a peer that is not answering.
function abandon(sock) {
  detach(sock);
  try {
    if (typeof sock.terminate === 'function') sock.terminate();
    else sock.close(1000);
  } catch {
    // Already closing or closed: nothing left to release.
  }
}

export class TetherClient {
  #opt;
  #WS;
  #token;
  #cachedToken = null;
  #refreshToken = false;
  #listeners = new Map();
  #state = 'connecting';
  #gen = 0; // bumped by every attempt and by close(): stale callbacks compare it
  #sock = null;
  #attempts = 0;
  #spreadFloor = 0; // after a drain: every retry of that outage keeps the drain's spread
  #timers = {};
  #lastFrameAt = 0;
  #silenceFrom = 0;
  #epoch = null;
  #seq = 0;

  /**
   * @param {object} options see index.d.ts
   */
  constructor(options = {}) {
    const { url, token, WebSocket: WS, ...rest } = options;
    if (typeof url !== 'string' || url === '') throw new TypeError('TetherClient: url is required');
    if (typeof token !== 'string' && typeof token !== 'function')
      throw new TypeError('TetherClient: token must be a string or a function returning one');
    this.#WS = WS ?? globalThis.WebSocket;
    if (typeof this.#WS !== 'function')
      throw new TypeError('TetherClient: no WebSocket: pass one (e.g. the ws package) as options.WebSocket');
    this.#opt = { ...DEFAULTS, ...rest, url };
    this.#token = token;
    if (typeof rest.epoch === 'string' && Number.isSafeInteger(rest.since) && rest.since >= 0) {
      this.#epoch = rest.epoch;
      this.#seq = rest.since;
    }
    // Start after the caller had the chance to add listeners.
    queueMicrotask(() => {
      if (this.#state === 'connecting' && this.#gen === 0) this.#attempt();
    });
  }

  /** 'connecting' | 'connected' | 'waiting' | 'stopped' */
  get state() {
    return this.#state;
  }

  /** Where the app is in the user's stream: persist it to resume after a restart of the app. */
  get position() {
    return { epoch: this.#epoch, seq: this.#seq };
  }

  /** Adds a listener; returns a function that removes it. */
  on(event, fn) {
    if (!this.#listeners.has(event)) this.#listeners.set(event, new Set());
    this.#listeners.get(event).add(fn);
    return () => this.off(event, fn);
  }

  off(event, fn) {
    this.#listeners.get(event)?.delete(fn);
  }

  /** Starts again after a stop (4001, a fatal close code, or close()). */
  connect() {
    if (this.#state !== 'stopped') return;
    this.#attempts = 0;
    this.#attempt();
  }

  /** Stops everything: the socket, every timer, every future reconnect. */
  close() {
    const wasOpen = this.#state === 'connected';
    this.#gen++;
    this.#clearTimers();
    const sock = this.#sock;
    this.#sock = null;
    if (sock && sock.readyState === 1) {
      detach(sock);
      try {
        sock.close(1000); // a polite close frame: the server frees the slot at once
      } catch {
        abandon(sock);
      }
    } else if (sock) {
      abandon(sock);
    }
    if (this.#state !== 'stopped') {
      this.#setState('stopped');
      if (wasOpen) this.#emit('disconnected', { code: 1000, reason: 'closed by the client', willReconnect: false, delay: null });
    }
  }

  #emit(event, detail) {
    for (const fn of [...(this.#listeners.get(event) ?? [])]) {
      try {
        fn(detail);
      } catch (err) {
        if (event === 'error') console.error('TetherClient: error listener threw', err);
        else this.#emit('error', new TetherError(`a ${event} listener threw: ${err?.message ?? err}`, { kind: 'listener', cause: err }));
      }
    }
  }

  #setState(state) {
    if (state === this.#state) return;
    const previous = this.#state;
    this.#state = state;
    this.#emit('state', { state, previous });
  }

  #timer(name, ms, fn) {
    clearTimeout(this.#timers[name]);
    this.#timers[name] = setTimeout(fn, ms);
  }

  #clearTimers() {
    for (const name of Object.keys(this.#timers)) {
      clearTimeout(this.#timers[name]);
      clearInterval(this.#timers[name]);
    }
    this.#timers = {};
  }

  async #getToken() {
    if (typeof this.#token === 'string') return this.#token;
    const exp = this.#cachedToken === null ? null : tokenExpiry(this.#cachedToken);
    if (this.#cachedToken === null || this.#refreshToken || (exp !== null && exp <= Date.now())) {
      const t = await this.#token();
      if (typeof t !== 'string' || t === '') throw new TypeError('the token function returned no token');
      this.#cachedToken = t;
      this.#refreshToken = false;
    }
    return this.#cachedToken;
  }

  #buildUrl(token) {
    const u = new URL(this.#opt.url);
    u.searchParams.set('token', token);
    if (this.#opt.resume) {
      u.searchParams.set('since', String(this.#epoch === null ? 0 : this.#seq));
      if (this.#epoch !== null) u.searchParams.set('epoch', this.#epoch);
    }
    return u.toString();
  }

  async #attempt() {
    const gen = ++this.#gen;
    this.#setState('connecting');
    let token;
    try {
      token = await this.#getToken();
    } catch (err) {
      if (gen !== this.#gen) return;
      this.#emit('error', new TetherError(`token: ${err?.message ?? err}`, { kind: 'token', cause: err }));
      this.#retry(null, 'token function failed', this.#backoff());
      return;
    }
    if (gen !== this.#gen) return;
    let sock;
    try {
      sock = new this.#WS(this.#buildUrl(token));
    } catch (err) {
      this.#fail(new TetherError(`cannot open ${this.#opt.url}: ${err?.message ?? err}`, { kind: 'url', cause: err }), null, '');
      return;
    }
    this.#sock = sock;
    let opened = false;
    this.#timer('connect', this.#opt.connectTimeout, () => {
      if (gen !== this.#gen) return;
      abandon(sock);
      this.#down(gen, 1006, 'connection attempt timed out', false);
    });
    sock.onopen = () => {
      if (gen !== this.#gen) return;
      opened = true;
      this.#opened(gen);
    };
    sock.onmessage = (ev) => {
      if (gen === this.#gen) this.#frame(ev.data);
    };
    sock.onerror = () => {}; // a close event follows; it carries what we act on
    sock.onclose = (ev) => {
      if (gen === this.#gen) this.#down(gen, ev.code ?? 1006, ev.reason ?? '', opened);
    };
  }

  #opened(gen) {
    clearTimeout(this.#timers.connect);
    this.#spreadFloor = 0;
    this.#lastFrameAt = this.#silenceFrom = Date.now();
    this.#setState('connected');
    const { pingInterval, stableAfter } = this.#opt;
    this.#timers.ping = setInterval(() => this.#send({ type: 'ping' }), pingInterval);
    this.#armWatchdog(gen);
    this.#timer('stable', stableAfter, () => {
      if (gen === this.#gen) this.#attempts = 0;
    });
    this.#emit('connected', { url: this.#opt.url });
  }

  // Fires when the socket has been silent for 2 ping intervals + deadSlack.
  // A timer that fires far too late means this process was frozen (a
  // suspended tab or app): then the silence is ours, not the server's, so
  // ping and give the answer a fresh window instead of dropping the socket.
  #armWatchdog(gen) {
    const deadAfter = 2 * this.#opt.pingInterval + this.#opt.deadSlack;
    const due = Math.max(this.#lastFrameAt, this.#silenceFrom) + deadAfter;
    const planned = Math.max(0, due - Date.now());
    const plannedAt = Date.now() + planned;
    this.#timer('watchdog', planned, () => {
      if (gen !== this.#gen) return;
      const now = Date.now();
      if (now - plannedAt > this.#opt.pingInterval) {
        this.#silenceFrom = now - deadAfter + this.#opt.pingInterval + this.#opt.deadSlack;
        this.#send({ type: 'ping' });
      } else if (now - Math.max(this.#lastFrameAt, this.#silenceFrom) >= deadAfter) {
        const sock = this.#sock;
        if (sock) abandon(sock);
        this.#down(gen, 1006, `no frame for ${deadAfter} ms: dead socket`, true);
        return;
      }
      this.#armWatchdog(gen);
    });
  }

  #send(obj) {
    const sock = this.#sock;
    if (!sock || sock.readyState !== 1) return false;
    try {
      sock.send(JSON.stringify(obj));
      return true;
    } catch {
      return false;
    }
  }

  #frame(data) {
    this.#lastFrameAt = Date.now();
    if (typeof data !== 'string') return; // tether sends text only
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      this.#emit('error', new TetherError('the server sent a frame that is not JSON', { kind: 'frame' }));
      return;
    }
    if (msg === null || typeof msg !== 'object' || typeof msg.type !== 'string') return;
    if (msg.type === 'resumed') this.#resumed(msg);
    else if (msg.type === 'error') this.#emit('error', new TetherError(`server: ${msg.error}`, { kind: 'server' }));
    else if (!RESERVED_TYPES.has(msg.type)) this.#notification(msg);
  }

  #resumed(msg) {
    if (typeof msg.epoch === 'string') this.#epoch = msg.epoch;
    // Not recovered: a new epoch numbers from the start again, and a `since`
    // ahead of the user's stream would make us drop what comes next. The
    // server sends only seqs above `since` on this connection, so starting
    // the count over cannot let a duplicate through.
    if (msg.recovered !== true) this.#seq = 0;
    this.#emit('resumed', { recovered: msg.recovered === true, epoch: msg.epoch, since: msg.since, replay: msg.replay });
  }

  #notification(msg) {
    if (Number.isSafeInteger(msg.seq) && typeof msg.epoch === 'string') {
      if (msg.epoch !== this.#epoch) {
        this.#epoch = msg.epoch;
        this.#seq = 0;
      }
      if (msg.seq <= this.#seq) {
        this.#ack(msg); // seen before (replay overlapping live): the app has it
        return;
      }
      this.#seq = msg.seq;
    }
    this.#emit('notification', msg);
    this.#ack(msg);
  }

  #ack(msg) {
    if (this.#opt.ack && typeof msg.id === 'string') this.#send({ type: 'ack', id: msg.id });
  }

  // Full jitter under a doubling ceiling. After a drain the ceiling stays at
  // least drainSpread until a connection opens: the clients that tried while
  // the server was still down would otherwise retry on short windows and
  // arrive together the moment it is back.
  #backoff() {
    const { backoffBase, backoffCap } = this.#opt;
    const ceiling = Math.max(this.#spreadFloor, Math.min(backoffCap, backoffBase * 2 ** Math.min(this.#attempts, 30)));
    this.#attempts++;
    return Math.random() * ceiling;
  }

  // The socket of attempt `gen` is gone: decide what the close code asks for.
  #down(gen, code, reason, opened) {
    if (gen !== this.#gen) return;
    this.#gen++;
    this.#clearTimers();
    this.#sock = null;
    if (code === CLOSE_REPLACED) {
      this.#setState('stopped');
      this.#emit('disconnected', { code, reason, willReconnect: false, delay: null });
      return;
    }
    if (STOP_CODES.has(code)) {
      const what = { 1002: 'protocol error', 1007: 'invalid UTF-8', 1009: 'message too big' }[code];
      this.#fail(new TetherError(`server closed ${code} (${what}): the client must be fixed`, { code, kind: 'close' }), code, reason);
      return;
    }
    if (code === CLOSE_TOKEN) {
      if (typeof this.#token !== 'function') {
        this.#fail(new TetherError('server closed 1008 (token expired) and the token is a fixed string', { code, kind: 'token' }), code, reason);
        return;
      }
      this.#refreshToken = true;
    }
    let delay;
    if (code === CLOSE_DRAIN && opened) {
      this.#spreadFloor = this.#opt.drainSpread;
      delay = Math.random() * this.#opt.drainSpread;
    } else {
      delay = this.#backoff();
    }
    this.#retry(code, reason, delay);
  }

  #retry(code, reason, delay) {
    this.#setState('waiting');
    const gen = this.#gen;
    this.#timer('retry', delay, () => {
      if (gen === this.#gen) this.#attempt();
    });
    this.#emit('disconnected', { code, reason, willReconnect: true, delay });
  }

  #fail(err, code, reason) {
    this.#setState('stopped');
    this.#emit('error', err);
    this.#emit('disconnected', { code, reason, willReconnect: false, delay: null });
  }
}

export default TetherClient;
