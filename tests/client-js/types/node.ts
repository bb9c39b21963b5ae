// Compile-only check of tools/client-js's declarations as a Node app uses
// them, with the ws package (run by ctest client_types: tsc --noEmit).
import { TetherClient, TetherError, type Notification, type TetherState } from '../../../tools/client-js/src/index.js';
import WebSocket from 'ws';

const client = new TetherClient({
  url: 'ws://127.0.0.1:8080/ws',
  token: async () => 'jwt',
  WebSocket,
  pingInterval: 30000, deadSlack: 5000, connectTimeout: 10000,
  backoffBase: 500, backoffCap: 30000, stableAfter: 10000, drainSpread: 10000,
  ack: true, resume: true, epoch: 'e', since: 3,
});
const off = client.on('notification', (n: Notification) => console.log(n.type, n.seq, n.data));
off();
client.on('disconnected', (d) => { const delay: number | null = d.delay; console.log(d.code, d.reason, d.willReconnect, delay); });
client.on('error', (e: TetherError) => console.log(e.kind, e.code, e.message));
client.on('resumed', (r) => { if (!r.recovered) console.log(r.epoch, r.since, r.replay); });
client.on('state', ({ state, previous }) => console.log(previous, '->', state));
const state: TetherState = client.state;
const where: { epoch: string | null; seq: number } = client.position;
console.log(state, where);
client.close();
client.connect();
// @ts-expect-error: not an event of the client
client.on('message', () => {});
// @ts-expect-error: the token is a string or a function
new TetherClient({ url: 'ws://x/ws', token: 1 });
