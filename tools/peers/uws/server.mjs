// Benchmark peer for tether on uWebSockets.js (npm `uws-pack`, a repack of
// the uWebSockets.js release binaries: uWS's C++ core with a V8 binding).
// The same client protocol as tether (GET /ws?token=JWT or Authorization:
// Bearer, HS256; {"type":"ping"} parsed with JSON.parse -> {"type":"pong",
// "timestamp":...}) and the same notify API on a second port of the same
// process and event loop (POST /v1/notify: 200 delivered / 404
// not_connected / 400 / 413). One thread, as uWS.js servers are commonly
// deployed; compression off (tether has none).
import { createRequire } from 'node:module';
import * as uWS from 'uws-pack';

const require = createRequire(import.meta.url);
const { options, verify: verifyWith, rfc3339 } = require('../peer-common.cjs');

const { listen, apiListen, secret } = options('server.mjs');
const MAX_BODY = 65536;
const users = new Map();    // user id -> Set of sockets
const lastSeen = new Map(); // user id -> ms of the last frame
const decoder = new TextDecoder();
let nextId = 1;

function tokenOf(req) {
  const q = req.getQuery('token');
  if (q) return q;
  const auth = req.getHeader('authorization');
  return auth.startsWith('Bearer ') ? auth.slice(7) : null;
}

const app = uWS.App();
app.ws('/ws', {
  compression: uWS.DISABLED,
  maxPayloadLength: MAX_BODY,
  idleTimeout: 0, // liveness is the client's business here, as in tether (its janitor)
  maxBackpressure: 1 << 20,
  upgrade: (res, req, context) => {
    const user = verifyWith(secret, tokenOf(req));
    if (!user) {
      res.writeStatus('401 Unauthorized').end();
      return;
    }
    res.upgrade({ user }, req.getHeader('sec-websocket-key'), req.getHeader('sec-websocket-protocol'),
                req.getHeader('sec-websocket-extensions'), context);
  },
  open: (ws) => {
    const user = ws.getUserData().user;
    let set = users.get(user);
    if (!set) users.set(user, (set = new Set()));
    set.add(ws);
    lastSeen.set(user, Date.now());
  },
  message: (ws, message) => {
    const user = ws.getUserData().user;
    lastSeen.set(user, Date.now());
    let msg;
    try {
      msg = JSON.parse(decoder.decode(message));
    } catch (e) {
      ws.send('{"type":"error","error":"bad JSON"}');
      return;
    }
    if (msg && msg.type === 'ping') ws.send(JSON.stringify({ type: 'pong', timestamp: rfc3339(Date.now()) }));
    else if (!(msg && msg.type === 'ack')) ws.send('{"type":"error","error":"unknown type"}');
  },
  pong: (ws) => lastSeen.set(ws.getUserData().user, Date.now()),
  close: (ws) => {
    const user = ws.getUserData().user;
    const set = users.get(user);
    if (!set) return;
    set.delete(ws);
    if (set.size === 0) users.delete(user);
  },
});
app.get('/healthz', (res) => res.writeHeader('Content-Type', 'application/json').end('{"status":"ok"}'));
app.any('/*', (res) => res.writeStatus('404 Not Found').end('{"error":"not found"}'));

function reply(res, status, obj) {
  res.cork(() => res.writeStatus(status).writeHeader('Content-Type', 'application/json').end(JSON.stringify(obj)));
}

function notify(res, body) {
  let n;
  try {
    n = JSON.parse(body);
  } catch (e) {
    return reply(res, '400 Bad Request', { error: 'bad JSON' });
  }
  if (!n || typeof n.user_id !== 'string' || typeof n.type !== 'string')
    return reply(res, '400 Bad Request', { error: 'user_id and type are required' });
  const id = typeof n.id === 'string' ? n.id : 'n' + process.pid + '-' + nextId++;
  const set = users.get(n.user_id);
  if (!set || set.size === 0) {
    const ls = lastSeen.get(n.user_id);
    return reply(res, '404 Not Found', { status: 'not_connected', user_id: n.user_id, last_seen: ls ? rfc3339(ls) : null });
  }
  const frame = JSON.stringify({ type: n.type, id, timestamp: rfc3339(Date.now()), data: n.data === undefined ? {} : n.data });
  for (const ws of set) ws.cork(() => ws.send(frame, false));
  reply(res, '200 OK', { status: 'delivered', user_id: n.user_id, id, connections: set.size });
}

const api = uWS.App();
api.get('/healthz', (res) => res.writeHeader('Content-Type', 'application/json').end('{"status":"ok"}'));
api.post('/v1/notify', (res) => {
  const chunks = [];
  let size = 0;
  let aborted = false;
  res.onAborted(() => { aborted = true; });
  res.onData((chunk, isLast) => {
    size += chunk.byteLength;
    if (size <= MAX_BODY) chunks.push(Buffer.from(chunk.slice(0))); // the ArrayBuffer is only lent
    if (!isLast || aborted) return;
    if (size > MAX_BODY) return reply(res, '413 Payload Too Large', { error: 'body too large' });
    notify(res, decoder.decode(chunks.length === 1 ? chunks[0] : Buffer.concat(chunks)));
  });
});
api.any('/*', (res) => reply(res, '404 Not Found', { error: 'not found' }));

app.listen(listen.host, listen.port, (ok) => {
  if (!ok) {
    console.error(`uws peer: cannot listen on ${listen.host}:${listen.port}`);
    process.exit(1);
  }
  api.listen(apiListen.host, apiListen.port, (ok2) => {
    if (!ok2) {
      console.error(`uws peer: cannot listen on ${apiListen.host}:${apiListen.port}`);
      process.exit(1);
    }
    console.error(`uws peer: ws://${listen.host}:${listen.port}/ws api http://${apiListen.host}:${apiListen.port} pid ${process.pid}`);
  });
});
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => process.exit(0));
