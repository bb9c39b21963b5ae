// 1,000 reference clients with the default backoff and drain spread, a
// restart of the group (SIGTERM drain: everyone gets 1001, then a new group
// on the same ports): their reconnects must spread out, no second holding
// more than 30% of them. Prints the per-second histogram and the worst
// sliding one-second window.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { TetherClient } from '../../tools/client-js/src/index.js';
import { Group, loadWs, waitFor, SANITIZED } from './group.mjs';

const WS = loadWs();
const N = Number(process.env.SPREAD_CLIENTS || 1000);
// Client options over the defaults, for trying the measurement by hand (e.g.
// SPREAD_OPTIONS='{"drainSpread":500}' must fail it).
const OPTIONS = JSON.parse(process.env.SPREAD_OPTIONS || '{}');
const clients = [];
let g;

after(async () => {
  clients.forEach((c) => c.close());
  if (g) await g.close();
});

// The largest number of times falling in any window [t, t + 1000 ms).
function worstSecond(times) {
  const s = [...times].sort((a, b) => a - b);
  let best = 0;
  for (let i = 0, j = 0; i < s.length; i++) {
    while (s[i] - s[j] >= 1000) j++;
    best = Math.max(best, i - j + 1);
  }
  return best;
}

test(`${N} clients reconnecting after a restart spread over time`, { timeout: 180000 }, async (t) => {
  g = new Group({ workers: 2, slots: 4096 });
  await g.start();
  const reconnectedAt = new Map();
  let restartAt = Infinity;
  for (let i = 0; i < N; i++) {
    const user = `spread-${i}`;
    const c = new TetherClient({ url: g.url, token: g.token(user), WebSocket: WS, ...OPTIONS });
    c.on('connected', () => {
      if (Date.now() >= restartAt && !reconnectedAt.has(user)) reconnectedAt.set(user, Date.now());
    });
    clients.push(c);
  }
  await waitFor(() => clients.every((c) => c.state === 'connected'), 60000 * (SANITIZED ? 3 : 1), 'every client connected');
  await waitFor(async () => g.dump().slots_used === N, 10000, 'every client registered');

  restartAt = Date.now();
  const stop = await g.stop();
  assert.equal(stop.code, 0, g.log().slice(-2000));
  const stoppedAt = Date.now();
  await g.start();
  const upAt = Date.now();
  await waitFor(() => reconnectedAt.size === N, 60000, `all ${N} reconnected (now ${reconnectedAt.size})`);

  const times = [...reconnectedAt.values()];
  const perSecond = [];
  for (const at of times) {
    const s = Math.floor((at - restartAt) / 1000);
    perSecond[s] = (perSecond[s] ?? 0) + 1;
  }
  const worst = worstSecond(times);
  const summary = {
    clients: N,
    drain_ms: stoppedAt - restartAt,
    down_ms: upAt - restartAt,
    last_reconnect_ms: Math.max(...times) - restartAt,
    per_second: Array.from(perSecond, (x) => x ?? 0),
    worst_sliding_second: worst,
    worst_share: Math.round((worst / N) * 1000) / 10 + '%',
  };
  t.diagnostic(JSON.stringify(summary));
  console.log('reconnect spread:', JSON.stringify(summary));
  assert.ok(worst <= 0.3 * N, `${worst} of ${N} reconnected within one second`);
  assert.equal(g.dump().slots_used, N);
});
