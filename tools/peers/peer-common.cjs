// What the Node.js peers (node-ws/, uws/) share: their flags, the HS256 JWT
// check tether's workers make on upgrade (verified with Node's crypto; sub
// 1..64 bytes without control characters; exp and nbf enforced) and the
// RFC 3339 timestamp of pongs and notification frames. CommonJS so that both
// the CommonJS ws peer and the ES-module uWS peer load it.
'use strict';
const crypto = require('crypto');
const fs = require('fs');

function flag(name, def) {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1] : def;
}

function hostPort(s) {
  const i = s.lastIndexOf(':');
  return { host: s.slice(0, i), port: Number(s.slice(i + 1)) };
}

// The peer's listen addresses and secret from its command line; exits 2 without a secret.
function options(peer) {
  const secretFile = flag('--jwt-secret-file');
  if (!secretFile) {
    console.error(`${peer}: --jwt-secret-file is required`);
    process.exit(2);
  }
  return {
    listen: hostPort(flag('--listen', '127.0.0.1:8080')),
    apiListen: hostPort(flag('--api-listen', '127.0.0.1:8081')),
    secret: fs.readFileSync(secretFile, 'utf8').replace(/[\r\n]+$/, ''),
  };
}

// The token's user id, or null when it is not a valid HS256 token signed with secret.
function verify(secret, token) {
  const parts = (token || '').split('.');
  if (parts.length !== 3) return null;
  try {
    const hdr = JSON.parse(Buffer.from(parts[0], 'base64url'));
    if (hdr.alg !== 'HS256') return null;
    const want = crypto.createHmac('sha256', secret).update(parts[0] + '.' + parts[1]).digest();
    const got = Buffer.from(parts[2], 'base64url');
    if (got.length !== want.length || !crypto.timingSafeEqual(got, want)) return null;
    const claims = JSON.parse(Buffer.from(parts[1], 'base64url'));
    const now = Date.now() / 1000;
    if (typeof claims.exp === 'number' && now >= claims.exp) return null;
    if (typeof claims.nbf === 'number' && now < claims.nbf) return null;
    const sub = claims.sub;
    if (typeof sub !== 'string' || sub.length < 1 || Buffer.byteLength(sub) > 64 || /[\x00-\x1f\x7f]/.test(sub)) return null;
    return sub;
  } catch (e) {
    return null;
  }
}

const rfc3339 = (ms) => new Date(ms).toISOString().slice(0, 19) + 'Z';

module.exports = { flag, hostPort, options, verify, rfc3339 };
