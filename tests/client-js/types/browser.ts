// Compile-only check of tools/client-js's declarations in a browser app: the
// DOM's own WebSocket fits, and may be left out (run by ctest client_types).
import { TetherClient } from '../../../tools/client-js/src/index.js';

const a = new TetherClient({ url: 'wss://push.example.com/ws', token: 'jwt', WebSocket });
const b = new TetherClient({ url: 'wss://push.example.com/ws', token: () => 'jwt' });
a.close();
b.close();
