// Benchmark peer for tether on Node.js and the npm `ws` package: the same
// client protocol (GET /ws?token=JWT, HS256 verified with Node's crypto;
// {"type":"ping"} -> {"type":"pong","timestamp":...}) and the same notify
// API (POST /v1/notify on the API port, 200 delivered / 404 not_connected).
// One process, one event loop, as ws servers are commonly deployed; written
// plainly, with ws defaults except permessage-deflate off (tether has none).
'use strict';
const http = require('http');
const { WebSocketServer } = require('ws');
const { options, verify: verifyWith, rfc3339 } = require('../peer-common.cjs');

const { listen, apiListen, secret } = options('server.js');
const verify = (token) => verifyWith(secret, token);

const users = new Map();    // user id -> Set of sockets
const lastSeen = new Map(); // user id -> ms of the last frame
let nextId = 1;

const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, maxPayload: 65536 });
const server = http.createServer((req, res) => {
  res.writeHead(req.url === '/healthz' ? 200 : 404, { 'Content-Type': 'application/json' });
  res.end(req.url === '/healthz' ? '{"status":"ok"}' : '{"error":"not found"}');
});
server.on('upgrade', (req, socket, head) => {
  const url = new URL(req.url, 'http://x');
  let token = url.searchParams.get('token');
  const auth = req.headers.authorization;
  if (!token && auth && auth.startsWith('Bearer ')) token = auth.slice(7);
  const user = url.pathname === '/ws' ? verify(token) : null;
  if (!user) {
    socket.end('HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => onClient(ws, user));
});

function onClient(ws, user) {
  let set = users.get(user);
  if (!set) users.set(user, (set = new Set()));
  set.add(ws);
  lastSeen.set(user, Date.now());
  ws.on('message', (data, isBinary) => {
    lastSeen.set(user, Date.now());
    let msg;
    try {
      msg = JSON.parse(data);
    } catch (e) {
      ws.send('{"type":"error","error":"bad JSON"}');
      return;
    }
    if (msg && msg.type === 'ping') ws.send(JSON.stringify({ type: 'pong', timestamp: rfc3339(Date.now()) }));
    else if (!(msg && msg.type === 'ack')) ws.send('{"type":"error","error":"unknown type"}');
  });
  ws.on('pong', () => lastSeen.set(user, Date.now()));
  ws.on('close', () => {
    set.delete(ws);
    if (set.size === 0) users.delete(user);
  });
  ws.on('error', () => {});
}

function reply(res, status, obj) {
  const body = JSON.stringify(obj);
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) });
  res.end(body);
}

const api = http.createServer((req, res) => {
  if (req.method === 'GET' && req.url === '/healthz') return reply(res, 200, { status: 'ok' });
  if (req.method !== 'POST' || req.url !== '/v1/notify') return reply(res, 404, { error: 'not found' });
  const chunks = [];
  let size = 0;
  req.on('data', (c) => {
    size += c.length;
    if (size <= 65536) chunks.push(c);
  });
  req.on('end', () => {
    if (size > 65536) return reply(res, 413, { error: 'body too large' });
    let n;
    try {
      n = JSON.parse(Buffer.concat(chunks));
    } catch (e) {
      return reply(res, 400, { error: 'bad JSON' });
    }
    if (!n || typeof n.user_id !== 'string' || typeof n.type !== 'string') return reply(res, 400, { error: 'user_id and type are required' });
    const id = typeof n.id === 'string' ? n.id : 'n' + process.pid + '-' + nextId++;
    const set = users.get(n.user_id);
    if (!set || set.size === 0) {
      const ls = lastSeen.get(n.user_id);
      return reply(res, 404, { status: 'not_connected', user_id: n.user_id, last_seen: ls ? rfc3339(ls) : null });
    }
    const frame = JSON.stringify({ type: n.type, id, timestamp: rfc3339(Date.now()), data: n.data === undefined ? {} : n.data });
    for (const ws of set) ws.send(frame);
    reply(res, 200, { status: 'delivered', user_id: n.user_id, id, connections: set.size });
  });
});

server.listen(listen.port, listen.host, () => {
  api.listen(apiListen.port, apiListen.host, () => {
    console.error(`node-ws peer: ws://${listen.host}:${listen.port}/ws api http://${apiListen.host}:${apiListen.port} pid ${process.pid}`);
  });
});
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => process.exit(0));
