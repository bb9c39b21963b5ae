// Resume with the reference client against real groups: every accepted
// notification reaches the app exactly once and in seq order across kill -9
// of the worker, a drain and restart, a crash of the whole group, and an
// overflowing mailbox (then `recovered:false` reaches the app). Needs the
// recovery work (mailbox + resume); skipped, with the reason, on a tether
// without --mailbox-ttl.
import { test, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { TetherClient } from '../../tools/client-js/src/index.js';
import { Group, freePort, loadWs, record, sleep, waitFor, SANITIZED } from './group.mjs';

const WS = loadWs();
const SLOW = SANITIZED ? 3 : 1;
const HAVE = Group.hasFlag('--mailbox-ttl');
const LIMIT = { timeout: 90000 * SLOW, skip: HAVE ? false : 'recovery (mailbox + resume) is not in this tether yet: `tether run --help` has no --mailbox-ttl' };
const clients = new Set();
const groups = new Set();

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

// A client whose reconnects can be held off (sent to a port nobody listens
// on) so that notifications pile up in the mailbox meanwhile.
async function client(g, user, opts = {}) {
  const hold = { on: false, port: await freePort() };
  class HoldWS extends WS {
    constructor(url) {
      super(hold.on ? url.replace(`:${g.port}/`, `:${hold.port}/`) : url);
    }
  }
  const c = new TetherClient({ url: g.url, token: g.token(user), WebSocket: HoldWS, backoffBase: 50, backoffCap: 200,
    drainSpread: 200, ...opts });
  clients.add(c);
  const rec = record(c);
  return [c, rec, hold];
}

// Posts one notification; a 503 (the owning worker did not confirm) is
// retried with the same id, which the mailbox answers with the first seq.
// Returns the seq the server gave it.
async function send(g, user, i) {
  for (let k = 0; k < 100; k++) {
    const r = await g.notify(user, { i }, { id: `${user}-${i}` }).catch(() => ({ status: 0 }));
    if ((r.status === 200 || r.status === 202) && Number.isSafeInteger(r.body.seq)) return r.body.seq;
    assert.ok(r.status === 503 || r.status === 0, `notify ${i}: ${r.status} ${JSON.stringify(r.body)}`);
    await sleep(50);
  }
  throw new Error(`notify ${i}: no 200/202 after 100 tries`);
}

// The app saw exactly these seqs, once each, in increasing order.
function assertExactlyOnce(rec, seqs, what) {
  const got = rec.notes.map((n) => n.seq);
  assert.deepEqual(got, [...got].sort((a, b) => a - b), `${what}: in order`);
  assert.equal(new Set(got).size, got.length, `${what}: no duplicate`);
  assert.deepEqual(got, [...seqs].sort((a, b) => a - b), `${what}: nothing lost`);
  assert.equal(new Set(rec.notes.map((n) => n.id)).size, rec.notes.length, `${what}: ids once each`);
}

const seqsArrived = (rec, seqs, ms = 15000) =>
  waitFor(() => seqs.every((s) => rec.notes.some((n) => n.seq === s)), ms, `seqs ${seqs[0]}..${seqs.at(-1)} to arrive`);

test('the first connection (since=0) replays what was stored before it', LIMIT, async () => {
  const g = await group({ workers: 2 });
  const seqs = [];
  for (let i = 0; i < 3; i++) seqs.push(await send(g, 'rz', i));
  const [c, rec] = await client(g, 'rz');
  await seqsArrived(rec, seqs);
  assert.equal(rec.resumes.length, 1);
  assert.equal(rec.resumes[0].recovered, true);
  assert.equal(rec.resumes[0].replay, 3);
  assert.equal(c.position.epoch, rec.resumes[0].epoch);
  assert.equal(c.position.seq, seqs.at(-1));
  assertExactlyOnce(rec, seqs, 'replay');
});

test('kill -9 of the worker while notifications flow: nothing lost, nothing twice', LIMIT, async () => {
  const g = await group({ workers: 2 });
  const [c, rec, hold] = await client(g, 'rk', { ack: true });
  await waitFor(() => rec.connected === 1, 10000, 'connected');
  const seqs = [];
  for (let i = 0; i < 120; i++) {
    if (i === 40) process.kill(g.workerPidOf('rk'), 'SIGKILL'); // mid-stream: frames in flight die with it
    if (i === 80) {
      // Again, once the client is back from the first kill (the 40 posts in
      // between may finish before it reconnects on a loaded machine), and
      // keep it away while 20 more are stored. Holding it off before it is
      // back would keep it away for good.
      const pid = await waitFor(() => rec.connected >= 2 && g.workerPidOf('rk'), 10000, 'the reconnect after the first kill');
      hold.on = true;
      process.kill(pid, 'SIGKILL');
    }
    if (i === 100) hold.on = false;
    seqs.push(await send(g, 'rk', i));
  }
  await seqsArrived(rec, seqs);
  assertExactlyOnce(rec, seqs, 'kill -9');
  assert.ok(rec.resumes.length >= 3, `resumed on every connection: ${rec.resumes.length}`);
  assert.ok(rec.resumes.every((r) => r.recovered === true), JSON.stringify(rec.resumes));
  assert.ok(rec.resumes.some((r) => r.replay > 0), 'something was replayed');
  assert.equal(c.state, 'connected');
});

test('drain (1001) and restart: stored notifications come back, same epoch', LIMIT, async () => {
  const g = await group({ workers: 2 });
  const [, rec, hold] = await client(g, 'rd');
  await waitFor(() => rec.connected === 1, 10000, 'connected');
  const seqs = [];
  for (let i = 0; i < 5; i++) seqs.push(await send(g, 'rd', i));
  await seqsArrived(rec, seqs);
  const epoch = rec.resumes[0].epoch;
  hold.on = true;
  assert.equal((await g.stop()).code, 0, g.log().slice(-3000));
  await waitFor(() => rec.disconnects.length >= 1, 5000, 'the 1001');
  assert.equal(rec.disconnects[0].code, 1001);
  await g.start();
  for (let i = 5; i < 10; i++) seqs.push(await send(g, 'rd', i));
  hold.on = false;
  await seqsArrived(rec, seqs);
  assertExactlyOnce(rec, seqs, 'restart');
  const last = rec.resumes.at(-1);
  assert.deepEqual([last.recovered, last.epoch, last.replay], [true, epoch, 5]);
});

test('crash of the whole group (kill -9 of every process) and restart', LIMIT, async (t) => {
  const g = await group({ workers: 2 });
  const [, rec, hold] = await client(g, 'rc');
  await waitFor(() => rec.connected === 1, 10000, 'connected');
  const before = [];
  for (let i = 0; i < 5; i++) before.push(await send(g, 'rc', i));
  await seqsArrived(rec, before);
  const epoch = rec.notes[0].epoch;
  hold.on = true;
  await g.crash();
  await g.start();
  const afterCrash = [];
  for (let i = 5; i < 10; i++) afterCrash.push(await send(g, 'rc', i));
  hold.on = false;
  await waitFor(() => rec.resumes.length >= 2, 15000, 'the resume after the crash');
  const last = rec.resumes.at(-1);
  t.diagnostic(`after the crash: ${JSON.stringify(last)}`);
  if (last.recovered) {
    assert.equal(last.epoch, epoch);
    await seqsArrived(rec, afterCrash);
    assertExactlyOnce(rec, [...before, ...afterCrash], 'crash');
  } else {
    // The mailbox started a new epoch: the app is told, keeps what it had, and gets the new
    // epoch's notifications once each, in order.
    assert.notEqual(last.epoch, epoch);
    await waitFor(() => rec.notes.filter((n) => n.epoch === last.epoch).length >= afterCrash.length, 15000,
      'the new epoch\'s notifications');
    const old = rec.notes.filter((n) => n.epoch === epoch).map((n) => n.seq);
    const now = rec.notes.filter((n) => n.epoch === last.epoch).map((n) => n.seq);
    assert.deepEqual(old, before);
    assert.deepEqual(now, afterCrash);
    assert.equal(rec.notes.length, before.length + afterCrash.length);
  }
});

test('an overflowing mailbox: recovered:false reaches the app, the rest arrives once', LIMIT, async () => {
  const g = await group({ workers: 1, args: ['--mailbox-per-user', '3'] });
  const [, rec, hold] = await client(g, 'ro');
  await waitFor(() => rec.connected === 1, 10000, 'connected');
  const first = await send(g, 'ro', 0);
  await seqsArrived(rec, [first]);
  hold.on = true;
  process.kill(g.workerPidOf('ro'), 'SIGKILL');
  await waitFor(() => rec.disconnects.length >= 1, 15000, 'the disconnect'); // a killed process's sockets close when the kernel reaps it: seconds on a loaded box
  const stored = [];
  for (let i = 1; i <= 6; i++) stored.push(await send(g, 'ro', i));
  hold.on = false;
  await waitFor(() => rec.resumes.length >= 2, 15000, 'the resume');
  const last = rec.resumes.at(-1);
  assert.equal(last.recovered, false, JSON.stringify(last));
  await seqsArrived(rec, stored.slice(-3));
  assertExactlyOnce(rec, [first, ...stored.slice(-3)], 'overflow');
});
