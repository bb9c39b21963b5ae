// The reference JavaScript client in headless Chromium (the browser's own
// WebSocket), against real tether groups: delivery, ping cadence, kill -9,
// a stopped worker, drain and restart, eviction, replacement, token refresh.
// A small HTTP server on loopback serves the page, the client module and
// tokens; the test drives the page over the DevTools protocol.
import { test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { Browser } from './chromium.mjs';
import { CLIENT_DIR, Group, loadWs, makeToken, sleep, waitFor, SANITIZED } from './group.mjs';

const WS = loadWs();
const SLOW = SANITIZED ? 3 : 1;
const LIMIT = { timeout: 60000 * SLOW }; // a hung step fails its test, not the whole suite
const SECRET = new Group().secret; // every group signs with the same test secret
const here = path.dirname(new URL(import.meta.url).pathname);
let browser, server, page, origin;
const groups = new Set();

before(async () => {
  server = http.createServer((req, res) => {
    const u = new URL(req.url, 'http://x');
    if (u.pathname === '/') {
      res.writeHead(200, { 'content-type': 'text/html' }).end(fs.readFileSync(path.join(here, 'page.html')));
    } else if (u.pathname === '/client/index.js') {
      res.writeHead(200, { 'content-type': 'text/javascript' }).end(fs.readFileSync(path.join(CLIENT_DIR, 'src', 'index.js')));
    } else if (u.pathname === '/token') {
      res.writeHead(200, { 'content-type': 'text/plain' }).end(makeToken(SECRET, u.searchParams.get('user'), Number(u.searchParams.get('ttl'))));
    } else {
      res.writeHead(404).end();
    }
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  origin = `http://127.0.0.1:${server.address().port}`;
  browser = await Browser.launch(WS);
  page = await browser.open(origin + '/');
  await waitFor(() => page.eval('typeof window.T === "object"'), 15000, 'the page to load the client');
});

// Each test ends its clients and groups, so nothing of it runs into the next.
afterEach(async () => {
  await page.eval('T.closeAll()');
  // Nothing thrown in the page, nothing the client logged as broken.
  const bad = browser.consoleLines.filter((l) => l.startsWith('exception') || l.includes('TetherClient'));
  browser.consoleLines.length = 0;
  assert.deepEqual(bad, []);
  for (const g of groups) await g.close();
  groups.clear();
});

// Every step runs even when one before it failed: a handle left open keeps
// the test process alive until ctest's timeout.
after(async () => {
  const steps = [
    () => page && page.eval('T.closeAll()'),
    () => browser && browser.close(),
    () => server && (server.closeAllConnections(), new Promise((r) => server.close(r))),
    ...[...groups].map((g) => () => g.close()),
  ];
  const errors = [];
  for (const step of steps) {
    try {
      await step();
    } catch (err) {
      errors.push(err);
    }
  }
  if (errors.length) throw errors[0];
});

async function group(opts) {
  const g = new Group(opts);
  groups.add(g);
  return g.start();
}

let n = 0;
async function client(g, user, opts = {}, ttls = [3600]) {
  const name = `c${n++}`;
  await page.eval(`T.make(${JSON.stringify(name)}, ${JSON.stringify(g.url)}, ${JSON.stringify(user)}, ${JSON.stringify(ttls)}, ${JSON.stringify(opts)})`);
  const rec = () => page.eval(`T.rec(${JSON.stringify(name)})`);
  rec.close = () => page.eval(`T.clients[${JSON.stringify(name)}].c.close()`);
  return rec;
}

const until = (rec, pred, what, ms = 10000) => waitFor(async () => { const r = await rec(); return pred(r) && r; }, ms, what);

test('browser: notifications in order, once each', LIMIT, async () => {
  const g = await group({ workers: 2 });
  const rec = await client(g, 'bn1', { ack: true });
  await until(rec, (r) => r.connected === 1, 'connected');
  for (let i = 0; i < 10; i++) assert.equal((await g.notify('bn1', { i })).status, 200);
  const r = await until(rec, (x) => x.notes.length >= 10, '10 notifications');
  assert.deepEqual(r.notes.map((x) => x.data.i), [...Array(10).keys()]);
  assert.deepEqual(r.errors, []);
});

test('browser: app pings at pingInterval refresh the registry', LIMIT, async () => {
  const g = await group({ workers: 1 });
  const rec = await client(g, 'bp1', { pingInterval: 200 });
  await until(rec, (r) => r.connected === 1, 'connected');
  const p0 = await g.metric('tether_pings_total');
  const t0 = Date.now();
  await waitFor(async () => (await g.metric('tether_pings_total')) - p0 >= 6, 10000, '6 pings at the server');
  const elapsed = Date.now() - t0;
  const pings = (await g.metric('tether_pings_total')) - p0;
  // Never faster than the interval (a ping loop), and the server saw them as pings of this user.
  assert.ok(pings <= Math.ceil((Date.now() - t0) / 200) + 2, `${pings} pings in ${elapsed} ms`);
  assert.ok(g.log().includes('[WebSocket] User bp1 - connection refreshed via ping'));
});

test('browser: kill -9 of the worker, reconnect, delivery', LIMIT, async () => {
  const g = await group({ workers: 2 });
  const rec = await client(g, 'bk1', { backoffBase: 100 });
  await until(rec, (r) => r.connected === 1, 'connected');
  process.kill(g.workerPidOf('bk1'), 'SIGKILL');
  await until(rec, (r) => r.connected === 2, 'reconnected');
  await g.deliver('bk1', { after: 'kill' }, 5000); // delivery
  const r = await until(rec, (x) => x.notes.length === 1, 'the notification');
  assert.equal(r.disconnects[0].willReconnect, true);
  assert.equal(r.state, 'connected');
});

test('browser: SIGSTOPped worker, dead socket detected, reconnect to another worker', LIMIT, async () => {
  const g = await group({ workers: 2 });
  const rec = await client(g, 'bs1', { pingInterval: 300, deadSlack: 300, connectTimeout: 500, backoffBase: 50 });
  await until(rec, (r) => r.connected === 1, 'connected');
  const pid = g.workerPidOf('bs1');
  process.kill(pid, 'SIGSTOP');
  try {
    const r = await until(rec, (x) => x.disconnects.length >= 1, 'the dead socket', 5000);
    assert.match(r.disconnects[0].reason, /dead socket/);
    await until(rec, (x) => x.connected === 2, 'reconnected while the worker is stopped');
  } finally {
    try {
      process.kill(pid, 'SIGCONT');
    } catch {
      // the supervisor replaced it already (--hung-after)
    }
  }
  await waitFor(() => g.dump('bs1').connections.length === 1, 10000, 'the old slot released');
  assert.equal((await g.notify('bs1', {})).status, 200);
  await until(rec, (x) => x.notes.length === 1, 'the notification');
});

test('browser: drain (1001) and restart of the group', LIMIT, async () => {
  const g = await group({ workers: 2 });
  const rec = await client(g, 'bd1', { drainSpread: 400, backoffBase: 100, backoffCap: 400 });
  await until(rec, (r) => r.connected === 1, 'connected');
  const stopped = g.stop();
  const r = await until(rec, (x) => x.disconnects.length >= 1, 'the 1001');
  assert.equal(r.disconnects[0].code, 1001);
  assert.equal((await stopped).code, 0);
  await g.start();
  await until(rec, (x) => x.connected === 2, 'reconnected after the restart');
  assert.equal((await g.notify('bd1', {})).status, 200);
  await until(rec, (x) => x.notes.length === 1, 'the notification');
});

test('browser: eviction (4000) reconnects, replacement (4001) does not', LIMIT, async () => {
  const g = await group({ workers: 1, args: ['--stale-after', '2', '--sweep-every', '1', '--max-conns-per-user', '1'] });
  const stale = await client(g, 'be1', { pingInterval: 60000, backoffBase: 100 });
  const r = await until(stale, (x) => x.connected === 2, 'evicted and reconnected');
  assert.equal(r.disconnects[0].code, 4000);
  await stale.close(); // it would go on being evicted and reconnecting
  const old = await client(g, 'br1', { pingInterval: 500 });
  await until(old, (x) => x.connected === 1, 'the first device');
  const newer = await client(g, 'br1', { pingInterval: 500 });
  await until(newer, (x) => x.connected === 1, 'the newer device');
  const o = await until(old, (x) => x.state === 'stopped', 'the 4001');
  assert.equal(o.disconnects[0].code, 4001);
  assert.equal(o.disconnects[0].willReconnect, false);
  const opened = o.opened;
  await sleep(500);
  assert.equal((await old()).opened, opened, 'no new attempt anywhere on the page');
});

test('browser: token expiry (1008) fetches a new token and reconnects', LIMIT, async () => {
  const g = await group({ workers: 1 });
  const rec = await client(g, 'bx1', { backoffBase: 50 }, [2, 3600]);
  await until(rec, (r) => r.connected === 1, 'connected');
  const r = await until(rec, (x) => x.connected === 2, 'reconnected with a new token', 8000);
  assert.equal(r.disconnects[0].code, 1008);
  assert.equal(r.tokens, 2);
  assert.equal((await g.notify('bx1', {})).status, 200);
  await until(rec, (x) => x.notes.length === 1, 'the notification');
});

const RESUME = Group.hasFlag('--mailbox-ttl') ? LIMIT
  : { ...LIMIT, skip: 'recovery (mailbox + resume) is not in this tether yet: `tether run --help` has no --mailbox-ttl' };

test('browser: resume across kill -9 of the worker, each notification once and in order', RESUME, async () => {
  const g = await group({ workers: 2 });
  const rec = await client(g, 'bz1', { backoffBase: 50, backoffCap: 200 });
  await until(rec, (r) => r.connected === 1, 'connected');
  const seqs = [];
  for (let i = 0; i < 60; i++) {
    if (i === 20 || i === 40) process.kill(await waitFor(() => g.workerPidOf('bz1'), 10000, 'the connection'), 'SIGKILL');
    let r;
    for (let k = 0; k < 100 && !(r && (r.status === 200 || r.status === 202)); k++) {
      r = await g.notify('bz1', { i }, { id: `bz1-${i}` }).catch(() => ({ status: 0 }));
      if (r.status !== 200 && r.status !== 202) await sleep(50);
    }
    assert.ok(Number.isSafeInteger(r.body.seq), JSON.stringify(r.body));
    seqs.push(r.body.seq);
  }
  const r = await until(rec, (x) => seqs.every((s) => x.notes.some((n) => n.seq === s)), 'every seq');
  const got = r.notes.map((n) => n.seq);
  assert.deepEqual(got, [...seqs].sort((a, b) => a - b), 'once each, in order, nothing lost');
  assert.ok(r.resumes >= 3 && r.lost === 0, JSON.stringify({ resumes: r.resumes, lost: r.lost }));
});
