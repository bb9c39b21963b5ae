// Headless Debian Chromium driven over the DevTools protocol with nothing
// but the `ws` package: start it on a fresh profile with the flags this
// machine needs (no sandbox as root, no background networking: the network
// is closed), open a page, evaluate expressions in it.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

export class Browser {
  static async launch(WS) {
    const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'tether-chromium-'));
    const proc = spawn(CHROMIUM, ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--disable-background-timer-throttling', '--disable-renderer-backgrounding',
      `--user-data-dir=${profile}`, '--remote-debugging-port=0', 'about:blank'],
    { stdio: ['ignore', 'ignore', 'pipe'], detached: true }); // its own process group: close() ends every helper
    let stderr = '';
    const endpoint = await new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`chromium did not start:\n${stderr}`)), 30000);
      proc.stderr.on('data', (b) => {
        stderr += b;
        const m = /DevTools listening on (ws:\/\/\S+)/.exec(stderr);
        if (m) { clearTimeout(t); resolve(m[1]); }
      });
      proc.on('exit', (code) => { clearTimeout(t); reject(new Error(`chromium exited ${code}:\n${stderr}`)); });
    });
    const sock = new WS(endpoint, { perMessageDeflate: false });
    await new Promise((resolve, reject) => { sock.once('open', resolve); sock.once('error', reject); });
    return new Browser(proc, sock, profile);
  }

  constructor(proc, sock, profile) {
    this.proc = proc;
    this.sock = sock;
    this.profile = profile;
    this.nextId = 1;
    this.pending = new Map();
    this.consoleLines = [];
    sock.on('message', (raw) => {
      const msg = JSON.parse(raw);
      if (msg.id && this.pending.has(msg.id)) {
        const { resolve, reject } = this.pending.get(msg.id);
        this.pending.delete(msg.id);
        if (msg.error) reject(new Error(`CDP: ${JSON.stringify(msg.error)}`));
        else resolve(msg.result);
      } else if (msg.method === 'Runtime.consoleAPICalled') {
        this.consoleLines.push(msg.params.args.map((a) => a.value ?? a.description).join(' '));
      } else if (msg.method === 'Runtime.exceptionThrown') {
        this.consoleLines.push('exception: ' + JSON.stringify(msg.params.exceptionDetails));
      }
    });
  }

  send(method, params = {}, sessionId, timeoutMs = 20000) {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`CDP ${method}: no answer within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, {
        resolve: (v) => { clearTimeout(t); resolve(v); },
        reject: (e) => { clearTimeout(t); reject(e); },
      });
      this.sock.send(JSON.stringify({ id, method, params, ...(sessionId ? { sessionId } : {}) }));
    });
  }

  /** Opens url in a new tab; returns a page whose eval() runs an expression there. */
  async open(url) {
    const { targetId } = await this.send('Target.createTarget', { url: 'about:blank' });
    const { sessionId } = await this.send('Target.attachToTarget', { targetId, flatten: true });
    await this.send('Runtime.enable', {}, sessionId);
    await this.send('Page.enable', {}, sessionId);
    await this.send('Page.navigate', { url }, sessionId);
    const page = {
      eval: async (expression) => {
        const r = await this.send('Runtime.evaluate', { expression, awaitPromise: true, returnByValue: true }, sessionId);
        if (r.exceptionDetails) throw new Error(`in the page: ${r.exceptionDetails.exception?.description ?? r.exceptionDetails.text}`);
        return r.result.value;
      },
      close: () => this.send('Target.closeTarget', { targetId }),
    };
    return page;
  }

  async close() {
    try {
      this.sock.close();
    } catch {
      // already closed
    }
    try {
      process.kill(-this.proc.pid, 'SIGKILL'); // the browser and its zygote, renderer and GPU helpers
    } catch {
      // already gone
    }
    await new Promise((r) => (this.proc.exitCode !== null || this.proc.signalCode !== null ? r() : this.proc.on('exit', r)));
    // A helper may still be writing the profile for a moment after the kill.
    fs.rmSync(this.profile, { recursive: true, force: true, maxRetries: 10, retryDelay: 100 });
  }
}
