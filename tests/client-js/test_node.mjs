// The reference JavaScript client (tools/client-js) in Node 20 with the npm
// `ws` package, against real tether groups: what each close code and each
// fault makes the client do, and that the app sees every notification once.
import { test, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { spawn } from 'node:child_process';
import { TetherClient } from '../../tools/client-js/src/index.js';
import { Group, loadWs, record, sleep, waitFor, SANITIZED } from './group.mjs';

const WS = loadWs();
const SLOW = SANITIZED ? 3 : 1;
const LIMIT = { timeout: 60000 * SLOW }; // a hung step fails its test, not the whole suite
const clients = new Set();
const groups = new Set();

// Each test ends its clients and groups, so nothing of it runs into the next.
afterEach(async () => {
  for (const c of clients) c.close();
  clients.clear();
  for (const g of groups) await g.close();
  groups.clear();
});

async function group(opts) {
  const g = new Group(opts);
  groups.add(g);
  return g.start();
}

// A WebSocket class that keeps every socket it opened (and what each sent),
// so a test can count a client's attempts and reach the raw `ws` object.
function trackedWS() {
  const all = [];
  return class TrackedWS extends WS {
    static all = all;
    constructor(url) {
      super(url);
      all.push(this);
      this.sentFrames = [];
      this.lastMessageAt = null;
      this.addEventListener('message', () => { this.lastMessageAt = Date.now(); });
      const send = this.send.bind(this);
      this.send = (data, ...rest) => {
        this.sentFrames.push({ data: String(data), at: Date.now() });
        return send(data, ...rest);
      };
    }
  };
}

function client(g, user, opts = {}) {
  const Tracked = trackedWS();
  const c = new TetherClient({ url: g.url, token: g.token(user), WebSocket: Tracked, ...opts });
  clients.add(c);
  const rec = record(c);
  rec.socks = Tracked.all;
  return [c, rec];
}

const connectedTimes = (rec, n, ms = 10000) => waitFor(() => rec.connected >= n, ms, `${n} connection(s)`);

test('notifications reach the app in order, once each, and are acked', LIMIT, async () => {
  const g = await group({ workers: 2 });
  const [c, rec] = client(g, 'n1', { ack: true });
  await connectedTimes(rec, 1);
  assert.equal(c.state, 'connected');
  for (let i = 0; i < 20; i++) {
    const r = await g.notify('n1', { i }, { id: `n1-${i}` });
    assert.equal(r.status, 200, JSON.stringify(r.body));
  }
  await waitFor(() => rec.notes.length >= 20, 5000, '20 notifications');
  assert.deepEqual(rec.notes.map((n) => n.data.i), [...Array(20).keys()]);
  assert.deepEqual(rec.notes.map((n) => n.id), [...Array(20).keys()].map((i) => `n1-${i}`));
  assert.ok(rec.notes.every((n) => n.type === 'test.note' && typeof n.timestamp === 'string'));
  const sock = rec.socks.at(-1);
  await waitFor(() => sock.sentFrames.filter((f) => f.data.includes('"ack"')).length === 20, 5000, '20 acks');
  assert.deepEqual(sock.sentFrames.filter((f) => f.data.includes('"ack"')).map((f) => JSON.parse(f.data).id),
    rec.notes.map((n) => n.id));
  assert.deepEqual(rec.errors, []);
});

test('app pings follow pingInterval and refresh the registry', LIMIT, async () => {
  const g = await group({ workers: 1 });
  const interval = 200;
  const [, rec] = client(g, 'p1', { pingInterval: interval });
  await connectedTimes(rec, 1);
  const sock = rec.socks.at(-1);
  const pingsBefore = await g.metric('tether_pings_total');
  await waitFor(() => sock.sentFrames.length >= 8, 10000, '8 pings');
  const pings = sock.sentFrames.filter((f) => JSON.parse(f.data).type === 'ping');
  assert.equal(pings.length, sock.sentFrames.length, 'only pings were sent');
  const gaps = pings.slice(1).map((p, i) => p.at - pings[i].at);
  // No tight loop and no long gap: each gap near the interval (timers may run late on a busy machine).
  assert.ok(gaps.every((d) => d >= interval * 0.8), `gaps ${gaps}`);
  assert.ok(gaps.every((d) => d <= interval + 1000 * SLOW), `gaps ${gaps}`);
  // The server counted them, and the user's LastSeen follows the last ping.
  await waitFor(async () => (await g.metric('tether_pings_total')) - pingsBefore >= 7, 5000, 'pings counted');
  const pres = await g.api('GET', '/v1/presence/p1');
  assert.equal(pres.body.connected, true);
  assert.ok(g.log().includes('[WebSocket] User p1 - connection refreshed via ping'));
  assert.equal(rec.disconnects.length, 0);
});

test('a SIGSTOPped worker: dead socket detected, reconnect to another worker while it is stopped', LIMIT, async () => {
  const g = await group({ workers: 2 });
  const interval = 300, slack = 300;
  const [c, rec] = client(g, 's1', { pingInterval: interval, deadSlack: slack, connectTimeout: 500, backoffBase: 50 });
  await connectedTimes(rec, 1);
  const stopped = g.workerPidOf('s1');
  assert.ok(stopped, 'the connection is in the registry');
  process.kill(stopped, 'SIGSTOP');
  try {
    await waitFor(() => rec.disconnects.length >= 1, 5000, 'the dead socket to be noticed');
    const d = rec.disconnects[0];
    assert.equal(d.code, 1006);
    assert.match(d.reason, /dead socket/);
    assert.equal(d.willReconnect, true);
    // Not before 2 intervals + slack of silence on that socket.
    const at = rec.events.find((e) => e.name === 'disconnected').at;
    const silent = at - rec.socks[0].lastMessageAt;
    assert.ok(silent >= 2 * interval + slack - 2, `declared dead after ${silent} ms of silence`);
    // The group steers new connections away from the stopped worker (and an attempt that still
    // reaches it would end at connectTimeout and be tried again).
    await connectedTimes(rec, 2);
    assert.equal(c.state, 'connected');
    const other = g.dump().workers.find((w) => w.pid !== stopped && w.alive);
    assert.ok(g.dump('s1').connections.some((x) => x.worker === other.index), 'on the live worker');
  } finally {
    try {
      process.kill(stopped, 'SIGCONT');
    } catch {
      // the supervisor replaced it already (--hung-after)
    }
  }
  // The old slot goes (the worker resumed and saw the dropped socket, or was replaced); delivery confirms.
  await waitFor(() => g.dump('s1').connections.length === 1, 10000, 'the old slot to be released');
  const r = await g.notify('s1', { after: 'stop' });
  assert.equal(r.status, 200, JSON.stringify(r.body));
  await waitFor(() => rec.notes.some((n) => n.data.after === 'stop'), 5000, 'the notification');
  assert.equal(rec.notes.length, 1);
});

test('a frozen client process (suspended app) is not taken for a dead socket when it wakes', LIMIT, async () => {
  const g = await group({ workers: 1 });
  const child = spawn(process.execPath, [new URL('./frozen_child.mjs', import.meta.url).pathname, g.url, g.token('z1'), '300', '300'],
    { stdio: ['pipe', 'pipe', 'inherit'] });
  const events = [];
  let buf = '';
  child.stdout.on('data', (b) => {
    buf += b;
    for (let i; (i = buf.indexOf('\n')) >= 0; buf = buf.slice(i + 1)) events.push(JSON.parse(buf.slice(0, i)));
  });
  try {
    await waitFor(() => events.some((e) => e.event === 'connected'), 10000, 'the child to connect');
    child.kill('SIGSTOP');
    await sleep(2500); // far past 2 x 300 + 300 ms: every timer of the child is overdue when it wakes
    const pings = await g.metric('tether_pings_total');
    child.kill('SIGCONT');
    // Woken, it pings at once and the pong keeps the socket: no disconnect, pings go on.
    await waitFor(async () => (await g.metric('tether_pings_total')) >= pings + 3, 5000, 'pings after waking');
    assert.deepEqual(events.filter((e) => e.event !== 'connected'), []);
    assert.equal(events.filter((e) => e.event === 'connected').length, 1);
    assert.equal((await g.api('GET', '/v1/presence/z1')).body.connections.length, 1);
  } finally {
    child.kill('SIGCONT');
    child.stdin.end();
    await new Promise((r) => (child.exitCode !== null ? r() : child.on('exit', r)));
  }
});

test('connection attempt timeout: a new client of a stopped single worker retries until it answers', LIMIT, async () => {
  const g = await group({ workers: 1 });
  const pid = g.dump().workers[0].pid;
  process.kill(pid, 'SIGSTOP');
  let c, rec;
  try {
    [c, rec] = client(g, 't1', { connectTimeout: 300, backoffBase: 50, backoffCap: 100 });
    await waitFor(() => rec.disconnects.filter((d) => /timed out/.test(d.reason)).length >= 2, 5000, 'two timed-out attempts');
    assert.equal(rec.connected, 0);
    assert.ok(rec.disconnects.every((d) => d.code === 1006 && d.willReconnect));
  } finally {
    try {
      process.kill(pid, 'SIGCONT');
    } catch {
      // the supervisor replaced it already (--hung-after)
    }
  }
  await connectedTimes(rec, 1);
  assert.equal(c.state, 'connected');
  const r = await g.notify('t1', { x: 1 });
  assert.equal(r.status, 200, JSON.stringify(r.body));
  await waitFor(() => rec.notes.length === 1, 5000, 'the notification');
});

test('connection attempt timeout against a listener that never answers the upgrade', LIMIT, async () => {
  const held = [];
  const srv = net.createServer((s) => held.push(s));
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  try {
    const c = new TetherClient({ url: `ws://127.0.0.1:${srv.address().port}/ws`, token: 'x', WebSocket: WS,
      connectTimeout: 200, backoffBase: 20, backoffCap: 40 });
    clients.add(c);
    const rec = record(c);
    await waitFor(() => rec.disconnects.length >= 3, 5000, 'three timed-out attempts');
    assert.ok(rec.disconnects.every((d) => d.code === 1006 && /timed out/.test(d.reason)));
    assert.ok(held.length >= 3, 'each attempt opened its own connection');
    c.close();
    assert.equal(c.state, 'stopped');
  } finally {
    held.forEach((s) => s.destroy());
    srv.close();
  }
});

test('reconnect backoff: full jitter under a doubling ceiling, reset after a stable connection', LIMIT, async () => {
  const g = await group({ workers: 1 });
  await g.stop();
  const base = 40, cap = 320;
  const [c, rec] = client(g, 'b1', { backoffBase: base, backoffCap: cap, stableAfter: 300 });
  await waitFor(() => rec.disconnects.length >= 12, 15000, '12 refused attempts');
  const delays = rec.disconnects.slice(0, 12).map((d) => d.delay);
  const ceilings = delays.map((_, i) => Math.min(cap, base * 2 ** i));
  delays.forEach((d, i) => assert.ok(d >= 0 && d <= ceilings[i], `delay ${i} = ${d} over ${ceilings[i]}`));
  assert.ok(new Set(delays.map((d) => Math.round(d))).size > 6, `jittered: ${delays}`);
  // The capped tail still spreads: not all near the cap.
  assert.ok(delays.slice(4).some((d) => d < cap * 0.75), `tail ${delays.slice(4)}`);
  await g.start();
  await connectedTimes(rec, 1);
  await sleep(600); // past stableAfter: the next outage starts the backoff over
  const n = rec.disconnects.length;
  process.kill(g.workerPidOf('b1'), 'SIGKILL');
  await waitFor(() => rec.disconnects.length > n, 15000, 'the disconnect'); // a killed process's sockets close when the kernel reaps it: seconds on a loaded box
  assert.ok(rec.disconnects[n].delay <= base, `first delay after a stable connection: ${rec.disconnects[n].delay}`);
  await connectedTimes(rec, 2);
  assert.equal(c.state, 'connected');
});

test('kill -9 of the worker: the client reconnects and gets what is sent after', LIMIT, async () => {
  const g = await group({ workers: 2 });
  const [c, rec] = client(g, 'k1', { backoffBase: 100 });
  await connectedTimes(rec, 1);
  assert.equal((await g.notify('k1', { n: 1 })).status, 200);
  process.kill(g.workerPidOf('k1'), 'SIGKILL');
  await waitFor(() => rec.disconnects.length === 1, 15000, 'the disconnect'); // a killed process's sockets close when the kernel reaps it: seconds on a loaded box
  assert.equal(rec.disconnects[0].willReconnect, true);
  await connectedTimes(rec, 2);
  await g.deliver('k1', { n: 2 }, 5000); // delivery after reconnect
  await waitFor(() => rec.notes.length === 2, 5000, 'both notifications');
  assert.deepEqual(rec.notes.map((n) => n.data.n), [1, 2]);
  assert.equal(c.state, 'connected');
});

test('drain (1001) then restart of the group: reconnect within drainSpread, then delivery', LIMIT, async () => {
  const g = await group({ workers: 2 });
  const [c, rec] = client(g, 'd1', { drainSpread: 400, backoffBase: 100, backoffCap: 400 });
  await connectedTimes(rec, 1);
  const stopped = g.stop();
  await waitFor(() => rec.disconnects.length >= 1, 10000, 'the 1001');
  assert.equal(rec.disconnects[0].code, 1001);
  assert.equal(rec.disconnects[0].willReconnect, true);
  assert.ok(rec.disconnects[0].delay <= 400);
  assert.equal((await stopped).code, 0, g.log());
  await g.start();
  await connectedTimes(rec, 2);
  assert.equal((await g.notify('d1', { after: 'restart' })).status, 200);
  await waitFor(() => rec.notes.length === 1, 5000, 'the notification');
  // A crash of the whole group (kill -9 of every process) too: the next group takes the segment over.
  await g.crash();
  await waitFor(() => rec.disconnects.length >= 2, 5000, 'the reset');
  assert.notEqual(rec.disconnects[1].code, 1001);
  await g.start();
  await connectedTimes(rec, 3);
  await g.deliver('d1', { after: 'crash' }, 5000); // delivery after crash
  await waitFor(() => rec.notes.length === 2, 5000, 'the second notification');
  assert.equal(c.state, 'connected');
  assert.deepEqual(rec.errors, []);
});

test('stale eviction (4000): the client reconnects', LIMIT, async () => {
  const g = await group({ workers: 1, args: ['--stale-after', '2', '--sweep-every', '1'] });
  // A client that pings too rarely for this threshold (and does not take the silence for a dead socket).
  const [c, rec] = client(g, 'e1', { pingInterval: 60000, backoffBase: 100 });
  await connectedTimes(rec, 1);
  await waitFor(() => rec.disconnects.length >= 1, 10000, 'the eviction');
  assert.equal(rec.disconnects[0].code, 4000);
  assert.equal(rec.disconnects[0].willReconnect, true);
  await connectedTimes(rec, 2);
  assert.equal(c.state, 'connected');
  assert.ok(g.log().includes('[ConnectionManager] Removing stale connection: e1'));
});

test('replaced (4001): the older client stops and does not reconnect', LIMIT, async () => {
  const g = await group({ workers: 2, args: ['--max-conns-per-user', '1'] });
  const [a, recA] = client(g, 'r1', { backoffBase: 20 });
  await connectedTimes(recA, 1);
  const [b, recB] = client(g, 'r1', { backoffBase: 20 });
  await connectedTimes(recB, 1);
  await waitFor(() => recA.disconnects.length === 1, 5000, 'the 4001');
  assert.deepEqual({ ...recA.disconnects[0], reason: undefined }, { code: 4001, reason: undefined, willReconnect: false, delay: null });
  assert.equal(a.state, 'stopped');
  const opened = recA.socks.length;
  await sleep(500); // 25 backoff bases: a reconnecting client would have tried by now
  assert.equal(recA.socks.length, opened, 'no new attempt');
  assert.equal(recA.connected, 1);
  assert.equal(b.state, 'connected');
  assert.equal(recB.disconnects.length, 0);
  assert.equal((await g.notify('r1', { to: 'b' })).body.connections, 1);
  await waitFor(() => recB.notes.length === 1, 5000, 'delivery to the newer client');
  assert.equal(recA.notes.length, 0);
});

test('token expiry (1008): the token function is called again and the client reconnects', LIMIT, async () => {
  const g = await group({ workers: 1 });
  const issued = [];
  const token = async () => {
    const t = g.token('x1', issued.length === 0 ? 2 : 3600);
    issued.push(t);
    return t;
  };
  const [c, rec] = client(g, 'x1', { token, backoffBase: 50 });
  await connectedTimes(rec, 1);
  await waitFor(() => rec.disconnects.length === 1, 6000, 'the 1008');
  assert.equal(rec.disconnects[0].code, 1008);
  assert.equal(rec.disconnects[0].willReconnect, true);
  await connectedTimes(rec, 2);
  assert.equal(issued.length, 2, 'one refresh');
  assert.ok(rec.socks.at(-1).url.includes(issued[1]), 'the new token is used');
  assert.equal(c.state, 'connected');
  assert.equal((await g.notify('x1', {})).status, 200);
  await waitFor(() => rec.notes.length === 1, 5000, 'delivery');
});

test('token expiry (1008) with a fixed token: error and stop', LIMIT, async () => {
  const g = await group({ workers: 1 });
  const [c, rec] = client(g, 'x2', { token: g.token('x2', 2), backoffBase: 20 });
  await connectedTimes(rec, 1);
  await waitFor(() => c.state === 'stopped', 6000, 'the stop');
  assert.equal(rec.errors[0].kind, 'token');
  assert.equal(rec.disconnects.at(-1).code, 1008);
  assert.equal(rec.disconnects.at(-1).willReconnect, false);
});

// Each fault makes the server close with the code; the client must report it and stop.
const faults = {
  1002: (ws) => ws._socket.write(Buffer.from([0xc1, 0x80, 1, 2, 3, 4])), // RSV1 set, no extension
  1007: (ws) => ws.send(Buffer.from([0x7b, 0xff, 0xfe, 0x7d]), { binary: false }), // text, not UTF-8
  1009: (ws) => ws.send('x'.repeat(200)), // over --max-message 125
};
for (const [code, inject] of Object.entries(faults)) {
  test(`close ${code}: error reported, no reconnect`, LIMIT, async () => {
    const g = await group({ workers: 1, args: ['--max-message', '125'] });
    const [c, rec] = client(g, `f${code}`, { backoffBase: 20 });
    await connectedTimes(rec, 1);
    const opened = rec.socks.length;
    inject(rec.socks.at(-1));
    await waitFor(() => c.state === 'stopped', 5000, 'the stop');
    assert.equal(rec.disconnects.at(-1).code, Number(code));
    assert.equal(rec.disconnects.at(-1).willReconnect, false);
    assert.equal(rec.errors.length, 1);
    assert.equal(rec.errors[0].code, Number(code));
    await sleep(300);
    assert.equal(rec.socks.length, opened, 'no new attempt');
  });
}

test('close() stops everything and connect() starts again', LIMIT, async () => {
  const g = await group({ workers: 1 });
  const [c, rec] = client(g, 'c1', { pingInterval: 100 });
  await connectedTimes(rec, 1);
  c.close();
  assert.equal(c.state, 'stopped');
  await waitFor(async () => (await g.api('GET', '/v1/presence/c1')).body.connected === false, 5000, 'the server to see the close');
  const opened = rec.socks.length;
  await sleep(300);
  assert.equal(rec.socks.length, opened);
  c.connect();
  await connectedTimes(rec, 2);
  assert.equal((await g.notify('c1', {})).status, 200);
});

// The client's own bookkeeping, with a scripted socket instead of a server:
// what it hands the app when a server replays what it already delivered.
class ScriptedWS {
  static all = [];
  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.sent = [];
    ScriptedWS.all.push(this);
  }
  open() { this.readyState = 1; this.onopen({}); }
  frame(obj) { this.onmessage({ data: JSON.stringify(obj) }); }
  drop(code) { this.readyState = 3; this.onclose({ code, reason: '' }); }
  send(d) { this.sent.push(d); }
  close() { this.readyState = 3; }
}

test('seq bookkeeping: duplicates and old seqs dropped, since/epoch sent, a new epoch starts over', LIMIT, async () => {
  ScriptedWS.all.length = 0;
  const c = new TetherClient({ url: 'ws://127.0.0.1:9/ws', token: 't', WebSocket: ScriptedWS, backoffBase: 1, backoffCap: 1 });
  clients.add(c);
  const rec = record(c);
  const note = (seq, epoch = 'E1') => ({ type: 't', id: `${epoch}-${seq}`, seq, epoch, data: {} });
  await waitFor(() => ScriptedWS.all.length === 1, 1000, 'the first attempt');
  let s = ScriptedWS.all[0];
  assert.match(s.url, /[?&]since=0(&|$)/);
  assert.doesNotMatch(s.url, /epoch=/);
  s.open();
  s.frame({ type: 'resumed', recovered: true, epoch: 'E1', since: 0, replay: 2 });
  [1, 2, 2, 3, 1].forEach((q) => s.frame(note(q)));
  assert.deepEqual(rec.notes.map((n) => n.seq), [1, 2, 3]);
  s.drop(1006);
  await waitFor(() => ScriptedWS.all.length === 2, 1000, 'the reconnect');
  s = ScriptedWS.all[1];
  assert.match(s.url, /[?&]since=3&epoch=E1(&|$)/);
  s.open();
  s.frame({ type: 'resumed', recovered: true, epoch: 'E1', since: 3, replay: 1 });
  [3, 4, 4, 5].forEach((q) => s.frame(note(q))); // replay overlapping live
  assert.deepEqual(rec.notes.map((n) => n.seq), [1, 2, 3, 4, 5]);
  s.frame({ type: 'resumed', recovered: false, epoch: 'E2', since: 5, replay: 1 });
  s.frame(note(1, 'E2'));
  assert.deepEqual(rec.notes.map((n) => `${n.epoch}/${n.seq}`), ['E1/1', 'E1/2', 'E1/3', 'E1/4', 'E1/5', 'E2/1']);
    assert.deepEqual(c.position, { epoch: 'E2', seq: 1 });
  // Not recovered in the same epoch (e.g. a since ahead of the user's stream): what follows is taken.
  s.frame({ type: 'resumed', recovered: false, epoch: 'E2', since: 1, replay: 0 });
  s.frame(note(1, 'E2'));
  assert.equal(rec.notes.length, 7);
  s.frame(note(1, 'E2'));
  assert.equal(rec.notes.length, 7, 'and deduplicated from there');
  assert.deepEqual(rec.resumes.map((r) => r.recovered), [true, true, false, false]);
  s.frame({ type: 'pong', timestamp: 'x' });
  s.frame({ type: 'error', error: 'unknown type' });
  assert.equal(rec.notes.length, 7, 'pong and error are not notifications');
  assert.equal(rec.errors.at(-1).kind, 'server');
  // A persisted position is where a new client starts.
  const c2 = new TetherClient({ url: 'ws://127.0.0.1:9/ws', token: 't', WebSocket: ScriptedWS, epoch: 'E2', since: 1 });
  clients.add(c2);
  await waitFor(() => ScriptedWS.all.length === 3, 1000, 'its attempt');
  assert.match(ScriptedWS.all[2].url, /[?&]since=1&epoch=E2(&|$)/);
});

test('after a drain, retries keep the drain spread until a connection opens', LIMIT, async () => {
  ScriptedWS.all.length = 0;
  const c = new TetherClient({ url: 'ws://127.0.0.1:9/ws', token: 't', WebSocket: ScriptedWS,
    backoffBase: 1, backoffCap: 1000, drainSpread: 400, stableAfter: 60000 });
  clients.add(c);
  const rec = record(c);
  await waitFor(() => ScriptedWS.all.length === 1, 1000, 'the first attempt');
  ScriptedWS.all[0].open();
  ScriptedWS.all[0].drop(1001);
  // The server is down: five attempts fail before opening.
  for (let k = 2; k <= 6; k++) {
    await waitFor(() => ScriptedWS.all.length === k, 3000, `attempt ${k}`);
    ScriptedWS.all[k - 1].drop(1006);
  }
  const delays = rec.disconnects.map((d) => d.delay);
  assert.equal(delays.length, 6);
  assert.ok(delays.every((d) => d >= 0 && d <= 400), `${delays}`);
  // Without the floor the ceilings would be 1, 2, 4, 8, 16 ms.
  assert.ok(delays.slice(1).some((d) => d > 16), `retries kept the spread: ${delays}`);
  await waitFor(() => ScriptedWS.all.length === 7, 3000, 'attempt 7');
  ScriptedWS.all[6].open();
  ScriptedWS.all[6].drop(1006); // an ordinary failure again: back to the doubling ceiling (2^5 = 32 ms)
  assert.ok(rec.disconnects.at(-1).delay <= 32, `after opening: ${rec.disconnects.at(-1).delay}`);
});
