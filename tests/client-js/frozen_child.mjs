// A client in a process of its own, so test_node.mjs can freeze the whole
// process (SIGSTOP), as a suspended app or tab is frozen: prints each event
// as one JSON line on stdout. argv: url, token, pingInterval, deadSlack.
import { TetherClient } from '../../tools/client-js/src/index.js';
import { loadWs } from './group.mjs';

const [url, token, pingInterval, deadSlack] = process.argv.slice(2);
const c = new TetherClient({ url, token, WebSocket: loadWs(), pingInterval: Number(pingInterval), deadSlack: Number(deadSlack) });
for (const e of ['connected', 'disconnected', 'error']) {
  c.on(e, (d) => process.stdout.write(JSON.stringify({ event: e, d: e === 'error' ? d.message : d }) + '\n'));
}
process.stdin.on('data', () => c.close()); // any input: stop
process.stdin.on('end', () => c.close());
