// Test harness for the JavaScript client's tests: starts a real `tether run`
// group (build/bin from the same build tree, or $TETHER_BIN) on free loopback
// ports with a segment, runtime directory and secret of its own, restarts it
// on the same ports and segment, and gives tests tokens (signed here with
// node:crypto, not tether's signer), the backend API, tether-dump and the
// roles' pids. Also loads the `ws` package from tools/client-js's
// node_modules (installed by `npm ci` from the committed package-lock.json).
import { spawn, execFileSync } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { createRequire } from 'node:module';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
export const ROOT = path.resolve(here, '..', '..');
export const CLIENT_DIR = path.join(ROOT, 'tools', 'client-js');
export const BIN = process.env.TETHER_BIN || path.join(ROOT, 'build', 'bin');
export const SANITIZED = process.env.TETHER_SANITIZED === '1';

export function loadWs() {
  try {
    return createRequire(path.join(CLIENT_DIR, 'package.json'))('ws');
  } catch (err) {
    throw new Error(`the ws package is missing: run \`npm ci\` in ${CLIENT_DIR} (tools/deps does): ${err.message}`);
  }
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * Polls pred (sync or async) until it returns a truthy value; throws after
 * timeoutMs (three times that against a sanitizer build: its waits widen,
 * never what is asserted).
 */
export async function waitFor(pred, timeoutMs, what = 'condition') {
  if (SANITIZED) timeoutMs *= 3;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await pred();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(20);
  }
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

const b64url = (buf) => Buffer.from(buf).toString('base64url');

/** An HS256 JWT for `sub`, expiring in ttlS seconds (null: no exp). */
export function makeToken(secret, sub, ttlS = 3600) {
  const now = Math.floor(Date.now() / 1000);
  const claims = { sub, iat: now };
  if (ttlS !== null) claims.exp = now + ttlS;
  const input = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' })) + '.' + b64url(JSON.stringify(claims));
  return input + '.' + createHmac('sha256', secret).update(input).digest('base64url');
}

// The one sanitizer check of the test tree is the Python harness's
// (tests/harness/sanitizer.py): run it on the group's log rather than copy it.
function sanitizerCheck(logPath) {
  const code = 'import sys; sys.path.insert(0, sys.argv[1]); from harness import sanitizer; ' +
    'sanitizer.check(open(sys.argv[2], errors="replace").read(), sys.argv[2])';
  try {
    execFileSync('/usr/bin/python3', ['-c', code, path.join(ROOT, 'tests'), logPath], { encoding: 'utf8', stdio: 'pipe' });
  } catch (err) {
    throw new Error(String(err.stderr || err.message).trim().split('\n').slice(-60).join('\n'));
  }
}

let counter = 0;

export class Group {
  constructor({ workers = 2, slots = 1024, args = [] } = {}) {
    this.tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tether-js-'));
    this.secret = 'js-client-test-secret-0123456789';
    this.secretFile = path.join(this.tmp, 'secret');
    fs.writeFileSync(this.secretFile, this.secret + '\n', { mode: 0o600 });
    this.shmName = `/tether-js-${process.pid}-${counter++}`;
    this.logPath = path.join(this.tmp, 'tether.log');
    this.workers = workers;
    this.slots = slots;
    this.extra = args;
    this.proc = null;
    this.starts = 0;
  }

  get url() {
    return `ws://127.0.0.1:${this.port}/ws`;
  }

  token(user, ttlS = 3600) {
    return makeToken(this.secret, user, ttlS);
  }

  /**
   * Starts the group; again after a stop, on the same client port (the
   * clients' URL). Another program on this machine may have taken the API
   * port meanwhile (free ports are only free when asked): then the API moves.
   */
  async start(timeoutMs = SANITIZED ? 40000 : 20000) {
    if (this.port === undefined) {
      this.port = await freePort();
      this.apiPort = await freePort();
    }
    for (let tries = 0; ; tries++) {
      try {
        return await this.#startOnce(timeoutMs);
      } catch (err) {
        if (tries >= 3 || !/api-listen .* Address already in use/.test(err.message)) throw err;
        this.apiPort = await freePort();
      }
    }
  }

  async #startOnce(timeoutMs) {
    const args = ['run', '--listen', `127.0.0.1:${this.port}`, '--api-listen', `127.0.0.1:${this.apiPort}`,
      '--workers', String(this.workers), '--slots', String(this.slots), '--shm-name', this.shmName,
      '--jwt-secret-file', this.secretFile, '--log-level', 'debug', ...this.extra];
    const log = fs.openSync(this.logPath, 'a');
    const env = { ...process.env, TETHER_RUNTIME_DIR: path.join(this.tmp, 'run') };
    delete env.TETHER_JWT_SECRET;
    const proc = spawn(path.join(BIN, 'tether'), args, { stdio: ['ignore', log, log], env, detached: true });
    fs.closeSync(log);
    this.proc = proc;
    this.starts++;
    proc.exited = new Promise((resolve) => proc.on('exit', (code, signal) => resolve({ code, signal })));
    let done = false;
    proc.exited.then(() => { done = true; });
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      if (done) throw new Error(`tether run exited at start:\n${this.log()}`);
      try {
        const { status } = await this.api('GET', '/healthz');
        if (status === 200) return this;
      } catch {
        // not listening yet
      }
      await sleep(50);
    }
    throw new Error(`tether group not healthy within ${timeoutMs} ms:\n${this.log()}`);
  }

  /** Sends sig to the supervisor and waits for the group to exit. */
  async stop(sig = 'SIGTERM', timeoutMs = 30000) {
    const proc = this.proc;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return null;
    proc.kill(sig);
    const t = setTimeout(() => this.#killGroup(), timeoutMs);
    const r = await proc.exited;
    clearTimeout(t);
    return r;
  }

  /** kill -9 of the whole process group: supervisor and every role at once. */
  async crash() {
    this.#killGroup();
    await this.proc.exited;
    // Orphaned roles die with the group; wait until none holds the port.
    await waitFor(async () => !(await this.#listening()), 10000, 'the crashed group to release its port');
  }

  #killGroup() {
    try {
      process.kill(-this.proc.pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }

  #listening() {
    return new Promise((resolve) => {
      const s = net.connect(this.port, '127.0.0.1');
      s.on('connect', () => { s.destroy(); resolve(true); });
      s.on('error', () => resolve(false));
    });
  }

  /** Stops (SIGTERM unless told otherwise) and starts again on the same ports and segment name. */
  async restart() {
    await this.stop();
    return this.start();
  }

  /** Stops the group, removes what it left, and fails on any sanitizer report in its log. */
  async close() {
    try {
      await this.stop('SIGTERM', 15000);
    } finally {
      this.#killGroup();
      // The registry segment, and the mailbox, which outlives a graceful stop on purpose.
      for (const f of ['/dev/shm' + this.shmName, '/dev/shm' + this.shmName + '.mailbox']) {
        try {
          fs.unlinkSync(f);
        } catch {
          // removed by the group itself, or never made
        }
      }
    }
    sanitizerCheck(this.logPath);
    // Kept when the check failed (the log is there), or on request for a look at the logs.
    if (!process.env.TETHER_KEEP_LOGS) fs.rmSync(this.tmp, { recursive: true, force: true });
  }

  async api(method, pathname, body) {
    const res = await fetch(`http://127.0.0.1:${this.apiPort}${pathname}`, {
      method,
      headers: body === undefined ? {} : { 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(10000),
    });
    const text = await res.text();
    let json = null;
    try {
      json = JSON.parse(text);
    } catch {
      // metrics and other text bodies
    }
    return { status: res.status, body: json ?? text };
  }

  notify(user, data = {}, extra = {}) {
    return this.api('POST', '/v1/notify', { user_id: user, type: 'test.note', data, ...extra });
  }

  /**
   * Notifies until the group takes it (200 delivered, or 202 stored where a
   * mailbox exists), under one id so a retry is never a second notification.
   */
  async deliver(user, data, timeoutMs) {
    const id = `deliver-${process.pid}-${counter++}`;
    let last;
    await waitFor(async () => {
      last = await this.notify(user, data, { id });
      return last.status === 200 || last.status === 202;
    }, timeoutMs, `notify ${user} to be answered 200 or 202`);
    return last;
  }

  dump(user) {
    const args = ['--shm-name', this.shmName, '--json', ...(user ? ['--user', user] : [])];
    return JSON.parse(execFileSync(path.join(BIN, 'tether-dump'), args, { encoding: 'utf8', timeout: 30000 }));
  }

  /**
   * The pid of the live worker that holds `user`'s single connection, or
   * null while there is none, or more than one. After a kill -9 the dead
   * worker's slot stays in the registry until the supervisor reaps it and
   * reclaims its slots; a client quicker to reconnect than that shows two
   * connections, and the dead one may come first (slot order): its pid is
   * then a zombie a SIGKILL does nothing to. So a caller waits for this.
   */
  workerPidOf(user) {
    const d = this.dump(user);
    const mine = d.connections.filter((x) => x.user_id === user);
    if (mine.length !== 1) return null;
    const w = d.workers.find((x) => x.index === mine[0].worker);
    return w && w.alive && w.pid > 0 ? w.pid : null;
  }

  async metric(name) {
    const { body } = await this.api('GET', '/metrics');
    const line = body.split('\n').find((l) => l.startsWith(name + ' ') || l.startsWith(name + '{'));
    return line === undefined ? null : Number(line.split(' ').pop());
  }

  log() {
    try {
      return fs.readFileSync(this.logPath, 'utf8');
    } catch {
      return '';
    }
  }

  /** Whether this build of tether knows a `tether run` flag (features landing during development). */
  static hasFlag(flag) {
    const out = (() => {
      try {
        return execFileSync(path.join(BIN, 'tether'), ['run', '--help'], { encoding: 'utf8' });
      } catch (err) {
        return String(err.stdout ?? '') + String(err.stderr ?? '');
      }
    })();
    return out.includes(flag);
  }
}

/** Records what a TetherClient emits, for assertions. */
export function record(client) {
  const rec = { events: [], notes: [], connected: 0, disconnects: [], errors: [], resumes: [] };
  const push = (name) => (d) => rec.events.push({ name, d, at: Date.now() });
  for (const e of ['connected', 'disconnected', 'notification', 'resumed', 'error', 'state']) client.on(e, push(e));
  client.on('connected', () => rec.connected++);
  client.on('notification', (n) => rec.notes.push(n));
  client.on('disconnected', (d) => rec.disconnects.push(d));
  client.on('error', (e) => rec.errors.push(e));
  client.on('resumed', (r) => rec.resumes.push(r));
  return rec;
}
