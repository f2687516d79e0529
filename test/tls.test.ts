/** TLS at the edge and to upstreams: SNI, live certificate reload, versions, HSTS, redirect, upstream CA / mTLS. */
import test, { after, before } from 'node:test';
import assert from 'node:assert/strict';
import { connect as tlsConnect, type PeerCertificate } from 'node:tls';
import { request as httpsRequest, createServer as createHttpsServer, type Server as HttpsServer } from 'node:https';
import { connect as h2connect } from 'node:http2';
import { copyFileSync, renameSync, writeFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { makeCa, subjectCn, type TestCa } from './certs.js';
import { eventually, freePort, rawRequest, request, sleep, startCli, startGateway, startUpstream, statuses, waitFor, type TestUpstream } from './helpers.js';
import { compile } from '../src/config/compile.js';
import { parseConfigText } from '../src/config/load.js';
import { ConfigError } from '../src/config/errors.js';
import { PoolRegistry } from '../src/upstream/pools.js';
import { CertSet, CertStore, DEFAULT_CIPHERS } from '../src/server/tls.js';
import { watchInputs } from '../src/config/watch.js';
import { createLogger, silentLogger } from '../src/core/log.js';
import { Gateway } from '../src/server/gateway.js';

let ca: TestCa;
let up: TestUpstream;
before(async () => {
  ca = makeCa();
  up = await startUpstream();
});
after(async () => {
  await up.close();
  ca.cleanup();
});

/** Handshakes with the given SNI (none when undefined) and returns the server's certificate and protocol. */
function handshake(port: number, servername: string | undefined, opts: { minVersion?: 'TLSv1' | 'TLSv1.2' | 'TLSv1.3'; maxVersion?: 'TLSv1.1' | 'TLSv1.2' | 'TLSv1.3'; ALPNProtocols?: string[]; ciphers?: string } = {}): Promise<{ cert: PeerCertificate; protocol: string | null; alpn: string | false | null }> {
  return new Promise((resolve, reject) => {
    const s = tlsConnect({ host: '127.0.0.1', port, servername, rejectUnauthorized: false, ...opts }, () => {
      const r = { cert: s.getPeerCertificate(), protocol: s.getProtocol(), alpn: s.alpnProtocol };
      s.destroy();
      resolve(r);
    });
    s.on('error', reject);
    s.setTimeout(3000, () => s.destroy(new Error('handshake timeout')));
  });
}

function httpsGet(port: number, path: string, opts: { servername?: string; ca?: Buffer; headers?: Record<string, string> } = {}): Promise<{ status: number; headers: Record<string, unknown>; body: string }> {
  return new Promise((resolve, reject) => {
    const r = httpsRequest({ host: '127.0.0.1', port, path, servername: opts.servername, ca: opts.ca ?? ca.cert, headers: opts.headers, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body }));
    });
    r.on('error', reject);
    r.end();
  });
}

test('SNI picks the certificate: exact name, wildcard, default for unknown or no SNI; HTTP/1.1 and h2 over TLS reach the upstream', async () => {
  const a = ca.issue('a.test');
  const b = ca.issue('b.test', { dns: ['b.test', 'b2.test'] });
  const w = ca.issue('wild', { dns: ['*.w.test'] });
  const c = ca.issue('c.test', { dns: ['c.test', '*.cw.test'] });
  const t = await startGateway(`
listen_tls: 127.0.0.1:0
tls:
  certificates:
    - {hosts: [a.test], cert: ${a.certFile}, key: ${a.keyFile}}
    - {hosts: [b.test, B2.test], cert: ${b.certFile}, key: ${b.keyFile}, default: true}
    - {hosts: ["*.w.test"], cert: ${w.certFile}, key: ${w.keyFile}}
    - {hosts: [c.test., "*.cw.test."], cert: ${c.certFile}, key: ${c.keyFile}}
services:
  - {name: s, url: ${up.url}, routes: [{paths: [/]}]}
`);
  try {
    const port = t.gw.tlsAddress!.port;
    assert.equal(subjectCn((await handshake(port, 'a.test')).cert), 'a.test');
    assert.equal(subjectCn((await handshake(port, 'b2.test')).cert), 'b.test', 'host names compare case-insensitively');
    assert.equal(subjectCn((await handshake(port, 'x.w.test')).cert), 'wild');
    assert.equal(subjectCn((await handshake(port, 'y.x.w.test')).cert), 'b.test', 'a wildcard covers one label only');
    assert.equal(subjectCn((await handshake(port, 'c.test')).cert), 'c.test', 'a host written fully qualified (c.test.) is the name clients send');
    assert.equal(subjectCn((await handshake(port, 'x.cw.test')).cert), 'c.test');
    assert.equal(subjectCn((await handshake(port, 'unknown.test')).cert), 'b.test');
    assert.equal(subjectCn((await handshake(port, undefined)).cert), 'b.test', 'no SNI: the default');

    // HTTP/1.1 over TLS, certificate verified against the CA by the client.
    const r = await httpsGet(port, '/hello?x=1', { servername: 'a.test', headers: { host: 'a.test' } });
    assert.equal(r.status, 200);
    const echoed = JSON.parse(r.body);
    assert.equal(echoed.url, '/hello?x=1');
    assert.equal(echoed.headers['x-forwarded-proto'], 'https');
    assert.match(echoed.headers.forwarded, /proto=https/);
    assert.equal(r.headers['strict-transport-security'], undefined, 'no HSTS unless configured');

    // HTTP/2 over TLS (ALPN h2).
    assert.equal((await handshake(port, 'a.test', { ALPNProtocols: ['h2', 'http/1.1'] })).alpn, 'h2');
    const c = h2connect(`https://127.0.0.1:${port}`, { ca: ca.cert, servername: 'a.test' });
    try {
      const res = await new Promise<{ status: number; body: string }>((resolve, reject) => {
        const s = c.request({ ':path': '/h2', ':authority': 'a.test' });
        let body = '';
        let status = 0;
        s.on('response', (h) => (status = Number(h[':status'])));
        s.setEncoding('utf8');
        s.on('data', (d) => (body += d));
        s.on('end', () => resolve({ status, body }));
        s.on('error', reject);
        s.end();
      });
      assert.equal(res.status, 200);
      const e = JSON.parse(res.body);
      assert.equal(e.headers.host, new URL(up.url).host);
      assert.equal(e.headers['x-forwarded-host'], 'a.test');
      assert.equal(e.headers['x-forwarded-proto'], 'https');
      assert.equal(e.headers.via, '2 turnpike');
    } finally {
      c.close();
    }
  } finally {
    await t.close();
  }
});

test('tls.strict_sni: a server name no certificate is for, or none, fails the handshake (no certificate is sent), over TLS 1.2 and 1.3; default: true serves clients without one; a reload turns it on and off', async () => {
  const a = ca.issue('a.test', { file: 'strict-a' });
  const w = ca.issue('wild', { dns: ['*.w.test'], file: 'strict-w' });
  const text = (strict: boolean, dflt: boolean) => `
listen_tls: 127.0.0.1:0
tls:
  strict_sni: ${strict}
  certificates:
    - {hosts: [a.test], cert: ${a.certFile}, key: ${a.keyFile}${dflt ? ', default: true' : ''}}
    - {hosts: ["*.w.test"], cert: ${w.certFile}, key: ${w.keyFile}}
services:
  - {name: s, url: ${up.url}, routes: [{paths: [/]}]}
`;
  const t = await startGateway(text(true, false));
  try {
    const port = t.gw.tlsAddress!.port;
    for (const maxVersion of ['TLSv1.2', 'TLSv1.3'] as const) {
      assert.equal(subjectCn((await handshake(port, 'A.test', { maxVersion })).cert), 'a.test');
      assert.equal(subjectCn((await handshake(port, 'x.w.test', { maxVersion })).cert), 'wild');
      await assert.rejects(handshake(port, 'unknown.test', { maxVersion }), `an unknown name (${maxVersion})`);
      await assert.rejects(handshake(port, 'y.x.w.test', { maxVersion }), 'a wildcard covers one label');
      await assert.rejects(handshake(port, undefined, { maxVersion }), `no server name (${maxVersion})`);
    }
    await t.gw.reloadAsync(parseConfigText(text(true, true), { env: {} }));
    assert.equal(subjectCn((await handshake(port, undefined)).cert), 'a.test', 'no server name: the certificate marked default');
    await assert.rejects(handshake(port, 'unknown.test'), 'an unknown name still');
    await t.gw.reloadAsync(parseConfigText(text(false, false), { env: {} }));
    assert.equal(subjectCn((await handshake(port, 'unknown.test')).cert), 'a.test', 'strict_sni off: the default');
    assert.equal(subjectCn((await handshake(port, undefined)).cert), 'a.test');
  } finally {
    await t.close();
  }
});

test('TLS 1.2 is the floor: a TLS 1.1 client is refused, 1.2 and 1.3 are served; min_version TLSv1.3 refuses 1.2', async () => {
  const a = ca.issue('a.test');
  const t = await startGateway(`
listen_tls: 127.0.0.1:0
tls: {certificates: [{hosts: [a.test], cert: ${a.certFile}, key: ${a.keyFile}}]}
services: [{name: s, url: ${up.url}, routes: [{paths: [/]}]}]
`);
  const t13 = await startGateway(`
listen_tls: 127.0.0.1:0
tls: {min_version: TLSv1.3, certificates: [{hosts: [a.test], cert: ${a.certFile}, key: ${a.keyFile}}]}
services: [{name: s, url: ${up.url}, routes: [{paths: [/]}]}]
`);
  try {
    const port = t.gw.tlsAddress!.port;
    await assert.rejects(handshake(port, 'a.test', { minVersion: 'TLSv1', maxVersion: 'TLSv1.1' }));
    assert.equal((await handshake(port, 'a.test', { maxVersion: 'TLSv1.2' })).protocol, 'TLSv1.2');
    assert.equal((await handshake(port, 'a.test')).protocol, 'TLSv1.3');
    await assert.rejects(handshake(t13.gw.tlsAddress!.port, 'a.test', { maxVersion: 'TLSv1.2' }));
    // A client that never completes the handshake does not hurt: the next one is served.
    assert.equal((await httpsGet(port, '/', { servername: 'a.test', headers: { host: 'a.test' } })).status, 200);
  } finally {
    await t.close();
    await t13.close();
  }
});

test('a reload that changes only tls.min_version or tls.ciphers applies it (the certificates unchanged), with SNI and without', async () => {
  const a = ca.issue('a.test', { file: 'reload-versions' });
  const text = (extra: string) => `
listen_tls: 127.0.0.1:0
tls: {${extra}certificates: [{hosts: [a.test], cert: ${a.certFile}, key: ${a.keyFile}}]}
services: [{name: s, url: ${up.url}, routes: [{paths: [/]}]}]
`;
  const t = await startGateway(text(''));
  try {
    const port = t.gw.tlsAddress!.port;
    assert.equal((await handshake(port, 'a.test', { maxVersion: 'TLSv1.2' })).protocol, 'TLSv1.2');
    await t.gw.reloadAsync(parseConfigText(text('min_version: TLSv1.3, '), { env: {} }));
    await assert.rejects(handshake(port, 'a.test', { maxVersion: 'TLSv1.2' }), 'TLS 1.2 refused after the reload');
    await assert.rejects(handshake(port, undefined, { maxVersion: 'TLSv1.2' }), 'without SNI too');
    assert.equal((await handshake(port, 'a.test')).protocol, 'TLSv1.3');
    // Only ECDHE-ECDSA-AES256-GCM-SHA384 for TLS 1.2: a 1.2 client offering AES-128 alone is refused.
    await t.gw.reloadAsync(parseConfigText(text('ciphers: "TLS_AES_128_GCM_SHA256:ECDHE-ECDSA-AES256-GCM-SHA384", '), { env: {} }));
    const only128 = { maxVersion: 'TLSv1.2' as const, ciphers: 'ECDHE-ECDSA-AES128-GCM-SHA256' };
    await assert.rejects(handshake(port, 'a.test', only128));
    await assert.rejects(handshake(port, undefined, only128));
    assert.equal((await handshake(port, 'a.test', { maxVersion: 'TLSv1.2' })).protocol, 'TLSv1.2');
    await t.gw.reloadAsync(parseConfigText(text(''), { env: {} }));
    assert.equal((await handshake(port, 'a.test', only128)).protocol, 'TLSv1.2', 'back to the defaults');
  } finally {
    await t.close();
  }
  // tls.watch turned on by a reload (the files unchanged so far): a later change is picked up.
  const b = ca.issue('b.test', { file: 'reload-watch-b', dns: ['a.test'] });
  const live = { certFile: `${ca.dir}/reload-watch.pem`, keyFile: `${ca.dir}/reload-watch.key` };
  copyFileSync(a.certFile, live.certFile);
  copyFileSync(a.keyFile, live.keyFile);
  const watched = (on: boolean) => `
listen_tls: 127.0.0.1:0
tls: {watch: ${on}, certificates: [{hosts: [a.test], cert: ${live.certFile}, key: ${live.keyFile}}]}
services: [{name: s, url: ${up.url}, routes: [{paths: [/]}]}]
`;
  const w = await startGateway(watched(false));
  try {
    const port = w.gw.tlsAddress!.port;
    await w.gw.reloadAsync(parseConfigText(watched(true), { env: {} }));
    copyFileSync(b.keyFile, live.keyFile);
    copyFileSync(b.certFile, live.certFile);
    // (polled every second; the key and the certificate may be seen apart, a pair that does not match kept out: two polls, more on a loaded machine)
    await eventually(async () => subjectCn((await handshake(port, 'a.test')).cert) === 'b.test', 15_000);
  } finally {
    await w.close();
  }
});

test('a reload that changes listen_tls, tls.handshake_timeout or http2.enabled says a restart is needed (the listener stays as it is)', async () => {
  const { default: pino } = await import('pino');
  const { Gateway } = await import('../src/server/gateway.js');
  const a = ca.issue('a.test', { file: 'restart-warn' });
  const text = (extra: string, listen = '127.0.0.1:0') => `listen: 127.0.0.1:0
listen_tls: ${listen}
${extra}tls: {certificates: [{hosts: [a.test], cert: ${a.certFile}, key: ${a.keyFile}}]}
services: [{name: s, url: ${up.url}, routes: [{paths: [/]}]}]
access_log: {enabled: false}
`;
  const lines: { setting?: string; msg?: string }[] = [];
  const gw = await Gateway.start(parseConfigText(text('')), { logger: pino({ level: 'warn' }, { write: (l: string) => void lines.push(JSON.parse(l)) }) });
  try {
    const port = gw.tlsAddress!.port;
    await gw.reloadAsync(parseConfigText(text('http2: {enabled: false}\n', '127.0.0.1:41223'), { env: {} }));
    await gw.reloadAsync(parseConfigText(text('http2: {enabled: false}\n', '127.0.0.1:41223').replace('tls: {', 'tls: {handshake_timeout: 3s, '), { env: {} }));
    const settings = lines.filter((l) => /restart to apply/.test(l.msg ?? '')).map((l) => l.setting);
    assert.deepEqual(settings, ['listen_tls', 'http2.enabled', 'tls.handshake_timeout'], JSON.stringify(lines));
    assert.equal(gw.tlsAddress!.port, port);
    assert.equal((await handshake(port, 'a.test', { ALPNProtocols: ['h2', 'http/1.1'] })).alpn, 'h2', 'ALPN as at the start');
  } finally {
    await gw.stop();
  }
});

test('a certificate file replaced on disk is served to new connections without a restart; a broken replacement keeps the old one', async () => {
  const first = ca.issue('live.test', { file: 'live-a' });
  const second = ca.issue('live.test', { file: 'live-b' });
  const dir = ca.dir;
  const certFile = `${dir}/live.pem`;
  const keyFile = `${dir}/live.key`;
  copyFileSync(first.certFile, certFile);
  copyFileSync(first.keyFile, keyFile);
  // (the log says when a changed file was tried and refused: no fixed wait for the poll)
  const lines: string[] = [];
  const gw = await Gateway.start(parseConfigText(`
listen: 127.0.0.1:0
listen_tls: 127.0.0.1:0
access_log: {enabled: false}
tls: {certificates: [{hosts: [live.test], cert: ${certFile}, key: ${keyFile}}]}
services: [{name: s, url: ${up.url}, routes: [{paths: [/]}]}]
`, { env: {} }), { logger: createLogger('info', { write: (l: string) => lines.push(l) }) });
  const t = { gw, close: () => gw.stop() };
  const refusals = () => lines.filter((l) => l.includes('certificate changed on disk but does not load')).length;
  /** Writes the files, then waits until the gateway tried them and refused them. */
  const refused = async (write: () => void) => {
    const before = refusals();
    write();
    await eventually(() => refusals() > before, 6000);
  };
  try {
    const port = t.gw.tlsAddress!.port;
    const serial = async () => (await handshake(port, 'live.test')).cert.serialNumber;
    const s1 = await serial();
    // A half-written pair (new cert, old key) does not load: the old certificate stays.
    await refused(() => copyFileSync(second.certFile, certFile));
    assert.equal(await serial(), s1, 'a mismatched pair is not adopted');
    copyFileSync(second.keyFile, keyFile);
    await eventually(async () => (await serial()) !== s1, 6000);
    const s2 = await serial();
    assert.notEqual(s2, s1);
    // Garbage: kept.
    await refused(() => writeFileSync(certFile, 'not a certificate'));
    assert.equal(await serial(), s2);
    // A good pair for another name (not live.test): every client would refuse it; kept too.
    const stranger = ca.issue('other.test', { file: 'live-other' });
    await refused(() => {
      copyFileSync(stranger.keyFile, keyFile);
      copyFileSync(stranger.certFile, certFile);
    });
    assert.equal(await serial(), s2, 'a certificate not for live.test is not adopted');
    // Also the default context (clients without SNI) follows.
    copyFileSync(first.certFile, certFile);
    copyFileSync(first.keyFile, keyFile);
    await eventually(async () => (await handshake(port, undefined)).cert.serialNumber === s1, 6000);
    assert.equal(await serial(), s1);
  } finally {
    await t.close();
  }
});

test('a certificate set swapped by a reload stops only its own polling: the config\'s watcher of the same file (a listener certificate that is also an upstream client certificate) keeps seeing changes', async () => {
  const first = ca.issue('a.test', { file: 'shared-a' });
  const second = ca.issue('a.test', { file: 'shared-b' });
  const certFile = `${ca.dir}/shared.pem`;
  const keyFile = `${ca.dir}/shared.key`;
  copyFileSync(first.certFile, certFile);
  copyFileSync(first.keyFile, keyFile);
  let inputChanges = 0;
  const inputs = watchInputs(() => inputChanges++, { pollMs: 100, debounceMs: 10 });
  inputs.set([certFile, keyFile]);
  const loaded = () => {
    const set = new CertSet([{ hosts: ['a.test'], certFile, keyFile, isDefault: false, path: [] }], { minVersion: 'TLSv1.2', ciphers: DEFAULT_CIPHERS, clientCaFile: null });
    assert.deepEqual(set.load(), []);
    return set;
  };
  const store = new CertStore(loaded(), silentLogger, 100);
  try {
    store.watch();
    store.swap(loaded(), true); // a reload that changed the TLS settings
    copyFileSync(second.keyFile, keyFile);
    copyFileSync(second.certFile, certFile);
    await eventually(() => inputChanges > 0, 3000);
    // (and the store's own polling adopted the new pair)
    await eventually(() => store.current.digest() === loaded().digest(), 3000);
  } finally {
    store.close();
    inputs.close();
  }
});

test('HSTS on HTTPS responses only; redirect_http sends plain requests to the TLS listener', async () => {
  const a = ca.issue('a.test');
  const t = await startGateway(`
listen_tls: 127.0.0.1:0
tls:
  hsts: {max_age: 1d, include_subdomains: true}
  redirect_http: true
  certificates: [{hosts: [a.test], cert: ${a.certFile}, key: ${a.keyFile}}]
services: [{name: s, url: ${up.url}, routes: [{paths: [/]}]}]
`);
  try {
    const port = t.gw.tlsAddress!.port;
    const secure = await httpsGet(port, '/x', { servername: 'a.test', headers: { host: 'a.test' } });
    assert.equal(secure.status, 200);
    assert.equal(secure.headers['strict-transport-security'], 'max-age=86400; includeSubDomains');
    const before = up.requests.length;
    const plain = await request(`${t.url}/a/b?c=1`, { headers: { host: 'a.test:8080' } });
    assert.equal(plain.status, 308);
    assert.equal(plain.headers.location, `https://a.test:${port}/a/b?c=1`);
    assert.equal(plain.headers['strict-transport-security'], undefined, 'never HSTS over plain HTTP (RFC 6797 §7.2)');
    assert.equal(up.requests.length, before, 'a redirected request is not forwarded');
    // the request id is echoed on every response (the contract), the redirect's too
    assert.match(plain.headers['x-request-id'] as string, /^[0-9a-f-]{36}#[0-9a-z]+$/);
    const own = await request(`${t.url}/`, { headers: { host: 'a.test', 'x-request-id': 'trace-7' } });
    assert.equal(own.status, 308);
    assert.equal(own.headers['x-request-id'], 'trace-7');
    // absolute-form: its authority and path, not the Host header's (RFC 9112 §3.2.2)
    const abs = await rawRequest(Number(new URL(t.url).port), 'GET http://a.test:8080/p/q?r=1 HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n');
    assert.deepEqual(statuses(abs.text), [308]);
    assert.match(abs.text, new RegExp(`\r\nlocation: https://a\\.test:${port}/p/q\\?r=1\r\n`, 'i'));
    const absNoPath = await rawRequest(Number(new URL(t.url).port), 'GET http://a.test?r=2 HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n');
    assert.match(absNoPath.text, new RegExp(`\r\nlocation: https://a\\.test:${port}/\\?r=2\r\n`, 'i'));
    const bad = await request(`${t.url}/`, { headers: { host: 'evil/../' } });
    assert.equal(bad.status, 400);
    assert.match(bad.headers['x-request-id'] as string, /#/);
    assert.equal(JSON.parse(bad.body).request_id, bad.headers['x-request-id']);
  } finally {
    await t.close();
  }
});

test('redirect_http behind a TLS-terminating load balancer: a trusted proxy saying https is served (with HSTS), not redirected in a loop; anyone else saying so is redirected', async () => {
  const a = ca.issue('a.test', { file: 'lb-a' });
  const config = (trusted: string) => `
listen_tls: 127.0.0.1:0
trusted_proxies: [${trusted}]
tls:
  hsts: {max_age: 1d}
  redirect_http: true
  certificates: [{hosts: [a.test], cert: ${a.certFile}, key: ${a.keyFile}}]
services: [{name: s, url: ${up.url}, routes: [{paths: [/]}]}]
`;
  const lb = await startGateway(config('127.0.0.1'));
  try {
    const before = up.requests.length;
    const r = await request(`${lb.url}/x?y=1`, { headers: { host: 'a.test', 'x-forwarded-proto': 'HTTPS' } });
    assert.equal(r.status, 200, 'the load balancer already spoke https with the client');
    assert.equal(r.headers['strict-transport-security'], 'max-age=86400');
    assert.equal(up.requests.length, before + 1);
    assert.equal(up.requests.at(-1)!.headers['x-forwarded-proto'], 'HTTPS');
    // a chain whose first hop was https (the client's), then http between proxies
    assert.equal((await request(`${lb.url}/x`, { headers: { host: 'a.test', 'x-forwarded-proto': 'https, http' } })).status, 200);
    // the load balancer's plain-http side is still redirected
    const plain = await request(`${lb.url}/x`, { headers: { host: 'a.test', 'x-forwarded-proto': 'http' } });
    assert.equal(plain.status, 308);
    assert.equal(plain.headers['strict-transport-security'], undefined);
    assert.equal((await request(`${lb.url}/x`, { headers: { host: 'a.test', 'x-forwarded-proto': 'http, https' } })).status, 308);
    assert.equal((await request(`${lb.url}/x`, { headers: { host: 'a.test' } })).status, 308);
  } finally {
    await lb.close();
  }
  const direct = await startGateway(config('10.9.9.9'));
  try {
    const r = await request(`${direct.url}/x`, { headers: { host: 'a.test', 'x-forwarded-proto': 'https' } });
    assert.equal(r.status, 308, 'a client that is no trusted proxy cannot talk its way out of the redirect');
    assert.equal(r.headers['strict-transport-security'], undefined);
  } finally {
    await direct.close();
  }
});

test('config errors: a missing file, a key that does not match, tls without listen_tls — with their paths; nothing listens', () => {
  const a = ca.issue('a.test');
  const b = ca.issue('b.test');
  const pools = new PoolRegistry();
  const errorOf = (yaml: string) => {
    try {
      compile(parseConfigText(yaml), { pools }).dispose();
    } catch (e) {
      assert.ok(e instanceof ConfigError);
      return e.message;
    }
    assert.fail('expected a config error');
  };
  assert.match(errorOf(`listen_tls: 127.0.0.1:0\ntls:\n  certificates:\n    - {hosts: [a.test], cert: /nonexistent/x.pem, key: ${a.keyFile}}\n`), /tls\.certificates\[0\].*line 4.*cannot read certificate/s);
  assert.match(errorOf(`listen_tls: 127.0.0.1:0\ntls:\n  certificates:\n    - {hosts: [a.test], cert: ${a.certFile}, key: ${b.keyFile}}\n`), /tls\.certificates\[0\].*does not load/s);
  assert.match(errorOf(`tls:\n  certificates:\n    - {hosts: [a.test], cert: ${a.certFile}, key: ${a.keyFile}}\n`), /tls.*needs listen_tls/);
  // hosts the certificate itself is not for (its subjectAltNames, as clients check it): every
  // client connecting for such a name would refuse the certificate
  const w = ca.issue('wild', { dns: ['*.w.test', '127.0.0.9'] });
  const notCovered = errorOf(`listen_tls: 127.0.0.1:0\ntls:\n  certificates:\n    - cert: ${a.certFile}\n      key: ${a.keyFile}\n      hosts:\n        - A.test\n        - api.example.com\n`);
  assert.match(notCovered, /tls\.certificates\[0\]\.hosts\[1\].*line 8.*is not for api\.example\.com \(its subjectAltNames: DNS:a\.test\)/s);
  assert.match(errorOf(`listen_tls: 127.0.0.1:0\ntls:\n  certificates:\n    - {hosts: [x.w.test, "*.x.w.test"], cert: ${w.certFile}, key: ${w.keyFile}}\n`), /hosts\[1\].*is not for \*\.x\.w\.test/s);
  assert.match(errorOf(`listen_tls: 127.0.0.1:0\ntls:\n  certificates:\n    - {hosts: [a.b.w.test], cert: ${w.certFile}, key: ${w.keyFile}}\n`), /hosts\[0\].*is not for a\.b\.w\.test/s, 'a wildcard covers one label');
  assert.match(errorOf(`listen_tls: 127.0.0.1:0\ntls:\n  certificates:\n    - {hosts: [127.0.0.1], cert: ${w.certFile}, key: ${w.keyFile}}\n`), /hosts\[0\].*is not for 127\.0\.0\.1/s);
  assert.match(errorOf(`listen_tls: 127.0.0.1:0\ntls:\n  certificates:\n    - {hosts: [a.test], cert: ${a.certFile}, key: ${a.keyFile}}\n    - {hosts: [wild], cert: ${w.certFile}, key: ${w.keyFile}}\n`), /tls\.certificates\[1\]\.hosts\[0\].*is not for wild/s, 'the subject CN is no name a client checks beside subjectAltNames');
  compile(parseConfigText(`listen_tls: 127.0.0.1:0\ntls:\n  certificates:\n    - {hosts: ["*.W.test", x.w.test, y.w.test., 127.0.0.9], cert: ${w.certFile}, key: ${w.keyFile}}\n`), { pools }).dispose();
  // A cipher list OpenSSL cannot use is the list's error (not each certificate's).
  const badCiphers = errorOf(`listen_tls: 127.0.0.1:0\ntls:\n  ciphers: ECDHE-RSA-AES128-GCM-SHA265\n  certificates:\n    - {hosts: [a.test], cert: ${a.certFile}, key: ${a.keyFile}}\n`);
  assert.match(badCiphers, /tls\.ciphers.*line 3.*OpenSSL takes none of these ciphers/s);
  assert.doesNotMatch(badCiphers, /certificates/);
  compile(parseConfigText(`listen_tls: 127.0.0.1:0\ntls:\n  ciphers: ECDHE-ECDSA-AES128-GCM-SHA256\n  certificates:\n    - {hosts: [a.test], cert: ${a.certFile}, key: ${a.keyFile}}\n`), { pools }).dispose();
  assert.match(errorOf(`services: [{name: s, url: 'http://127.0.0.1:1', protocol: grpcs}]\n`), /services\[0\]\.url.*protocol grpcs needs an https:\/\/ URL/);
  assert.match(errorOf(`services: [{name: s, url: 'https://127.0.0.1:1', tls: {ca: /nonexistent/ca.pem}}]\n`), /services\[0\]\.tls\.ca.*cannot read/);
  // tls beside an http:// URL (or h2c / grpc) would be ignored: plaintext to an upstream the config says is verified
  assert.match(errorOf(`services: [{name: s, url: 'http://127.0.0.1:1', tls: {ca: ${ca.certFile}}}]\n`), /services\[0\]\.tls.*line 1.*needs https:\/\/ targets/s);
  assert.match(errorOf(`services: [{name: s, protocol: grpc, upstream: {targets: [{url: 'http://127.0.0.1:1'}]}, tls: {verify: true}}]\n`), /services\[0\]\.tls.*needs https:\/\/ targets/s);
});

test('config errors: TLS material that Node would take without a word and fail (or trust nothing) at run time — a CA file without certificates, a broken block in a bundle, an upstream client certificate with the wrong key', () => {
  const pools = new PoolRegistry();
  const errorOf = (yaml: string) => {
    try {
      compile(parseConfigText(yaml), { pools }).dispose();
    } catch (e) {
      assert.ok(e instanceof ConfigError);
      return e.message;
    }
    assert.fail('expected a config error');
  };
  const leaf = ca.issue('a.test', { file: 'material-leaf' });
  const c1 = ca.issue('client-1', { client: true, file: 'material-c1' });
  const c2 = ca.issue('client-2', { client: true, file: 'material-c2' });
  const garbage = `${ca.dir}/garbage-ca.pem`;
  writeFileSync(garbage, 'not a certificate\n');
  const keyOnly = `${ca.dir}/key-as-ca.pem`;
  writeFileSync(keyOnly, c1.key);
  // A bundle whose second block is cut: Node reads the first and drops the rest silently.
  const broken = `${ca.dir}/broken-bundle.pem`;
  const pem = ca.cert.toString();
  writeFileSync(broken, `${pem}-----BEGIN CERTIFICATE-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8A\n-----END CERTIFICATE-----\n`);
  const upstream = (tls: string) => `services: [{name: s, url: 'https://127.0.0.1:1', tls: ${tls}}]\n`;
  assert.match(errorOf(upstream(`{ca: ${garbage}}`)), /services\[0\]\.tls\.ca.*holds no PEM certificate/s);
  assert.match(errorOf(upstream(`{ca: ${keyOnly}}`)), /services\[0\]\.tls\.ca.*holds no PEM certificate/s);
  assert.match(errorOf(upstream(`{ca: ${broken}}`)), /services\[0\]\.tls\.ca.*certificate 2 of 2 does not parse/s);
  assert.match(errorOf(upstream(`{ca: ${ca.certFile}, cert: ${c1.certFile}, key: ${c2.keyFile}}`)), /services\[0\]\.tls\.cert.*does not load.*mismatch/is);
  assert.match(errorOf(upstream(`{cert: ${garbage}, key: ${c2.keyFile}}`)), /services\[0\]\.tls\.cert.*does not load/s);
  const listener = (clientCa: string) => `listen_tls: 127.0.0.1:0\ntls:\n  certificates: [{hosts: [a.test], cert: ${leaf.certFile}, key: ${leaf.keyFile}}]\n  client_ca: ${clientCa}\n`;
  assert.match(errorOf(listener(garbage)), /tls\.client_ca.*line 4.*holds no PEM certificate/s);
  assert.match(errorOf(listener(broken)), /tls\.client_ca.*certificate 2 of 2 does not parse/s);
  // Good material compiles (the bundle with two good certificates too).
  const two = `${ca.dir}/two-ca.pem`;
  writeFileSync(two, `${pem}${makeCaPem()}`);
  compile(parseConfigText(upstream(`{ca: ${two}, cert: ${c1.certFile}, key: ${c1.keyFile}}`)), { pools }).dispose();
  compile(parseConfigText(listener(two)), { pools }).dispose();
});

/** The certificate of another CA (a second block for a bundle). */
function makeCaPem(): string {
  const other = makeCa('Bundle CA');
  try {
    return other.cert.toString();
  } finally {
    other.cleanup();
  }
}

/** An HTTPS upstream with a certificate from the test CA, optionally requiring a client certificate. */
async function startTlsUpstream(opts: { requireClientCert?: boolean } = {}): Promise<{ server: HttpsServer; port: number; clients: (string | undefined)[]; close(): Promise<void> }> {
  const leaf = ca.issue('upstream.test', { dns: ['upstream.test', '127.0.0.1'] });
  const clients: (string | undefined)[] = [];
  const server = createHttpsServer({ cert: leaf.cert, key: leaf.key, ca: ca.cert, requestCert: opts.requireClientCert ?? false, rejectUnauthorized: opts.requireClientCert ?? false }, (req, res) => {
    const peer = (req.socket as import('node:tls').TLSSocket).getPeerCertificate();
    clients.push(subjectCn(peer));
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ host: req.headers.host, client: subjectCn(peer) ?? null }));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { server, port: (server.address() as AddressInfo).port, clients, close: () => new Promise((r) => { server.closeAllConnections(); server.close(() => r()); }) };
}

test('upstream TLS: verified against tls.ca (502 without it), verify: false, server_name, and a client certificate for mTLS', async () => {
  const plainUp = await startTlsUpstream();
  const mtlsUp = await startTlsUpstream({ requireClientCert: true });
  const client = ca.issue('turnpike-client', { client: true });
  const t = await startGateway(`
services:
  - {name: verified, url: 'https://127.0.0.1:${plainUp.port}', tls: {ca: ${ca.certFile}}, routes: [{paths: [/verified]}]}
  - {name: named, url: 'https://127.0.0.1:${plainUp.port}', tls: {ca: ${ca.certFile}, server_name: upstream.test}, routes: [{paths: [/named]}]}
  - {name: wrong-name, url: 'https://127.0.0.1:${plainUp.port}', tls: {ca: ${ca.certFile}, server_name: other.test}, routes: [{paths: [/wrong-name]}]}
  - {name: system-cas, url: 'https://127.0.0.1:${plainUp.port}', routes: [{paths: [/system]}]}
  - {name: unverified, url: 'https://127.0.0.1:${plainUp.port}', tls: {verify: false}, routes: [{paths: [/unverified]}]}
  - {name: mtls, url: 'https://127.0.0.1:${mtlsUp.port}', tls: {ca: ${ca.certFile}, cert: ${client.certFile}, key: ${client.keyFile}}, routes: [{paths: [/mtls]}]}
  - {name: no-client-cert, url: 'https://127.0.0.1:${mtlsUp.port}', tls: {ca: ${ca.certFile}}, routes: [{paths: [/nocert]}]}
`);
  try {
    assert.equal((await request(`${t.url}/verified`)).status, 200);
    assert.equal((await request(`${t.url}/named`)).status, 200);
    const wrong = await request(`${t.url}/wrong-name`);
    assert.equal(wrong.status, 502, 'a certificate for another name is refused');
    assert.equal(wrong.headers['content-type'], 'application/problem+json');
    const sys = await request(`${t.url}/system`);
    assert.equal(sys.status, 502, 'a certificate from an unknown CA is refused by default');
    assert.equal((await request(`${t.url}/unverified`)).status, 200);
    const m = await request(`${t.url}/mtls`);
    assert.equal(m.status, 200);
    assert.equal(JSON.parse(m.body).client, 'turnpike-client');
    assert.equal((await request(`${t.url}/nocert`)).status, 502);
  } finally {
    await t.close();
    await plainUp.close();
    await mtlsUp.close();
  }
});

test('upstream TLS: a target whose handshake fails (an expired certificate, no TLS on its port) is a connect error: the request, a POST too, is retried on another target; alone, a 502 naming the failure', async () => {
  const served: string[] = [];
  const tlsTarget = async (leaf: { cert: Buffer; key: Buffer }, name: string) => {
    const server = createHttpsServer({ cert: leaf.cert, key: leaf.key }, (req, res) => {
      served.push(`${name} ${req.method}`);
      req.resume().on('end', () => res.end(name));
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    return { port: (server.address() as AddressInfo).port, close: () => new Promise<void>((r) => { server.closeAllConnections(); server.close(() => r()); }) };
  };
  const good = await tlsTarget(ca.issue('good', { dns: ['127.0.0.1'] }), 'good');
  const expired = await tlsTarget(ca.issue('expired', { dns: ['127.0.0.1'], expired: true }), 'expired');
  const t = await startGateway(`
services:
  - name: pool
    tls: {ca: ${ca.certFile}}
    retries: 1
    upstream: {targets: [{url: 'https://127.0.0.1:${expired.port}'}, {url: 'https://127.0.0.1:${good.port}'}]}
    routes: [{paths: [/pool]}]
  - name: plain-port
    tls: {ca: ${ca.certFile}}
    retries: 1
    upstream: {targets: [{url: 'https://127.0.0.1:${up.port}'}, {url: 'https://127.0.0.1:${good.port}'}]}
    routes: [{paths: [/plain-port]}]
  - {name: lone, url: 'https://127.0.0.1:${expired.port}', tls: {ca: ${ca.certFile}}, routes: [{paths: [/lone]}]}
`);
  try {
    // round-robin: every other request goes to the broken target first
    for (const path of ['/pool', '/plain-port']) {
      for (let i = 0; i < 6; i++) {
        const method = i < 3 ? 'POST' : 'GET';
        const r = await request(`${t.url}${path}`, { method, body: method === 'POST' ? 'x' : undefined });
        assert.equal(r.status, 200, `${path} ${method} #${i}: ${r.body}`);
        assert.equal(r.body, 'good');
      }
    }
    assert.deepEqual(served.filter((s) => !s.startsWith('good')), [], 'nothing reached the broken targets');
    const lone = await request(`${t.url}/lone`);
    assert.equal(lone.status, 502);
    assert.equal(lone.headers['content-type'], 'application/problem+json');
    assert.match(JSON.parse(lone.body).detail, /"lone".*CERT_HAS_EXPIRED/);
  } finally {
    await t.close();
    await good.close();
    await expired.close();
  }
});

test('upstream TLS: the TLS name is server_name (else the URL\'s host), never a Host header — not a URL host name, a client Host a route preserves, nor a probe\'s host; a preserved Host that changes does not cost a connection', async () => {
  const leaf = ca.issue('upstream-only', { dns: ['upstream.test'] });
  const names: (string | false | null)[] = [];
  let connections = 0;
  const server = createHttpsServer({ cert: leaf.cert, key: leaf.key }, (req, res) => {
    names.push((req.socket as import('node:tls').TLSSocket).servername);
    res.end(req.headers.host);
  });
  server.on('secureConnection', () => connections++);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  const t = await startGateway(`
services:
  - {name: by-name, url: 'https://localhost:${port}', tls: {ca: ${ca.certFile}, server_name: upstream.test}, routes: [{paths: [/by-name]}]}
  - name: by-address
    tls: {ca: ${ca.certFile}, server_name: upstream.test}
    upstream:
      targets: [{url: 'https://127.0.0.1:${port}'}]
      healthcheck: {active: {path: /healthz, host: probe.example, interval: 100ms, timeout: 90ms, healthy: 1, unhealthy: 1}}
    routes: [{paths: [/preserved], preserve_host: true}]
`);
  try {
    const r = await request(`${t.url}/by-name`);
    assert.equal(r.status, 200, r.body);
    assert.equal(r.body, `localhost:${port}`);
    await sleep(400); // (probes with Host: probe.example ran meanwhile: the target stays up)
    const before = connections;
    for (let i = 0; i < 4; i++) {
      const p = await request(`${t.url}/preserved`, { headers: { host: `tenant-${i}.example` } });
      assert.equal(p.status, 200, p.body);
      assert.equal(p.body, `tenant-${i}.example`, 'the client\'s Host is preserved');
    }
    assert.ok(connections - before <= 1, `${connections - before} upstream connections for 4 requests with different preserved Hosts`);
    assert.deepEqual([...new Set(names)], ['upstream.test'], 'every connection (requests and probes) named server_name');
  } finally {
    await t.close();
    await new Promise<void>((r) => { server.closeAllConnections(); server.close(() => r()); });
  }
});

test('client CA: a certificate rotated while the CA file is unreadable keeps the CA (never the system roots); a changed CA applies on reload to every SNI context at once', async () => {
  const other = makeCa('Other CA');
  try {
    const a = ca.issue('a.test', { file: 'ca-rot-a' });
    const b = ca.issue('b.test', { file: 'ca-rot-b' });
    const alice1 = ca.issue('alice', { client: true, file: 'alice-ca1' });
    const alice2 = other.issue('alice', { client: true, file: 'alice-ca2' });
    const dir = ca.dir;
    const caFile = `${dir}/clients-ca.pem`;
    const aCert = `${dir}/rot-a.pem`;
    const aKey = `${dir}/rot-a.key`;
    copyFileSync(ca.certFile, caFile);
    copyFileSync(a.certFile, aCert);
    copyFileSync(a.keyFile, aKey);
    const text = `
listen_tls: 127.0.0.1:0
tls:
  certificates:
    - {hosts: [a.test], cert: ${aCert}, key: ${aKey}, default: true}
    - {hosts: [b.test], cert: ${b.certFile}, key: ${b.keyFile}}
  client_ca: ${caFile}
services: [{name: s, url: "${up.url}", plugins: [{name: mtls-auth}], routes: [{paths: [/]}]}]
consumers: [{name: alice}]
access_log: {enabled: false}
`;
    const t = await startGateway(text);
    const port = t.gw.tlsAddress!.port;
    const as = (servername: string, who: { cert: Buffer; key: Buffer }) => new Promise<number>((resolve, reject) => {
      httpsRequest({ host: '127.0.0.1', port, path: '/x', servername, ca: ca.cert, cert: who.cert, key: who.key, agent: false }, (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode!));
      }).on('error', reject).end();
    });
    try {
      assert.deepEqual([await as('a.test', alice1), await as('a.test', alice2), await as('b.test', alice1)], [200, 401, 200]);
      // The server certificate is rotated while the CA file is away: the new context keeps the CA.
      renameSync(caFile, `${caFile}.away`);
      const before = (await handshake(port, 'a.test')).cert.serialNumber;
      const a2 = ca.issue('a.test', { file: 'ca-rot-a2' });
      copyFileSync(a2.keyFile, aKey);
      copyFileSync(a2.certFile, aCert);
      await eventually(async () => (await handshake(port, 'a.test')).cert.serialNumber !== before, 6000);
      renameSync(`${caFile}.away`, caFile);
      assert.deepEqual([await as('a.test', alice1), await as('a.test', alice2)], [200, 401], 'the rotated context still trusts the CA, and only it');
      // A new CA in the same file: a reload applies it to both names at once.
      copyFileSync(other.certFile, caFile);
      t.gw.reload(parseConfigText(text, { env: {} }));
      assert.deepEqual([await as('a.test', alice2), await as('b.test', alice2), await as('a.test', alice1), await as('b.test', alice1)], [200, 200, 401, 401]);
    } finally {
      await t.close();
    }
  } finally {
    other.cleanup();
  }
});

test('a client CA file changed on disk (a CA rollover: the new CA added to the bundle) applies without a signal, as an upstream tls.ca does: certificates from the new CA are accepted', async () => {
  const [p, a, tp] = [await freePort(), await freePort(), await freePort()];
  const newCa = makeCa('New Client CA');
  const server = ca.issue('a.test');
  const device = newCa.issue('device-1', { client: true });
  const dir = ca.dir;
  const caFile = `${dir}/clients-ca.pem`;
  writeFileSync(caFile, ca.cert);
  const file = `${dir}/rollover.yaml`;
  writeFileSync(file, `listen: 127.0.0.1:${p}
admin: {listen: 127.0.0.1:${a}}
listen_tls: 127.0.0.1:${tp}
tls:
  certificates: [{hosts: [a.test], cert: ${server.certFile}, key: ${server.keyFile}}]
  client_ca: clients-ca.pem
consumers: [{name: device-1}]
services:
  - {name: s, url: ${up.url}, routes: [{paths: [/secure], plugins: [{name: mtls-auth}]}]}
`);
  const run = startCli(['start', '--config', file], {});
  const get = async (): Promise<number> => {
    return new Promise((resolve, reject) => {
      const r = httpsRequest({ host: '127.0.0.1', port: tp, path: '/secure', servername: 'a.test', ca: ca.cert, cert: device.cert, key: device.key, agent: false }, (res) => {
        res.resume().on('end', () => resolve(res.statusCode!));
      });
      r.on('error', reject);
      r.end();
    });
  };
  try {
    await waitFor(`http://127.0.0.1:${a}/status`);
    assert.equal(await get(), 401, 'the device\'s CA is not trusted yet');
    writeFileSync(`${caFile}.tmp`, Buffer.concat([ca.cert, newCa.cert]));
    renameSync(`${caFile}.tmp`, caFile);
    const end = Date.now() + 8000;
    while ((await get()) !== 200) {
      if (Date.now() > end) assert.fail(`the new client CA was not taken\n${run.stderr().slice(-2000)}`);
      await sleep(200);
    }
    assert.match(run.stderr(), /referenced file change/);
  } finally {
    run.child.kill('SIGTERM');
    await run.exit;
    newCa.cleanup();
  }
});

test('tls.client_ca added by a reload (with an mtls-auth route) applies without a restart: new connections are asked for their certificate', async () => {
  const server = ca.issue('a.test', { file: 'add-ca-server' });
  const bob = ca.issue('bob', { client: true, file: 'add-ca-bob' });
  const text = (mtls: boolean) => `
listen_tls: 127.0.0.1:0
tls:
  certificates: [{hosts: [a.test], cert: ${server.certFile}, key: ${server.keyFile}}]
${mtls ? `  client_ca: ${ca.certFile}\n` : ''}services:
  - name: s
    url: "${up.url}"
    routes:
      - {paths: [/open]}
${mtls ? '      - {paths: [/secure], plugins: [{name: mtls-auth}]}\n' : ''}consumers: [{name: bob}]
access_log: {enabled: false}
`;
  const t = await startGateway(text(false));
  const port = t.gw.tlsAddress!.port;
  const get = (path: string) => new Promise<number>((resolve, reject) => {
    httpsRequest({ host: '127.0.0.1', port, path, servername: 'a.test', ca: ca.cert, cert: bob.cert, key: bob.key, agent: false }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode!));
    }).on('error', reject).end();
  });
  try {
    assert.equal(await get('/open'), 200);
    await t.gw.reloadAsync(parseConfigText(text(true), { env: {} }));
    assert.equal(await get('/secure'), 200, 'the certificate was asked for and verified');
    assert.equal(up.requests.at(-1)!.headers['x-consumer-name'], 'bob');
    await t.gw.reloadAsync(parseConfigText(text(false), { env: {} }));
    assert.equal(await get('/open'), 200);
  } finally {
    await t.close();
  }
});

test('client-initiated TLS 1.2 renegotiation is refused', async () => {
  const leaf = ca.issue('reneg.test', { file: 'reneg' });
  const t = await startGateway(`
listen_tls: 127.0.0.1:0
tls: {certificates: [{hosts: [reneg.test], cert: ${leaf.certFile}, key: ${leaf.keyFile}}]}
services: [{name: s, url: "${up.url}", routes: [{paths: [/]}]}]
`);
  try {
    const outcome = await new Promise<string>((resolve) => {
      const s = tlsConnect({ host: '127.0.0.1', port: t.gw.tlsAddress!.port, servername: 'reneg.test', ca: ca.cert, maxVersion: 'TLSv1.2' }, () => {
        const ok = s.renegotiate({ rejectUnauthorized: true }, (err) => {
          s.destroy();
          resolve(err ? 'refused' : 'renegotiated');
        });
        if (!ok) { s.destroy(); resolve('refused'); }
      });
      s.on('error', () => resolve('refused'));
      s.setTimeout(3000, () => { s.destroy(); resolve('timeout'); });
    });
    assert.equal(outcome, 'refused');
  } finally {
    await t.close();
  }
});

test('portal pages over TLS (or from a trusted proxy that says https) carry Strict-Transport-Security; over plain HTTP they do not', async () => {
  const a = ca.issue('a.test');
  const t = await startGateway(`
listen_tls: 127.0.0.1:0
trusted_proxies: [127.0.0.1/32]
tls: {certificates: [{hosts: [a.test], cert: ${a.certFile}, key: ${a.keyFile}}]}
portal: {enabled: true}
services: [{name: s, url: ${up.url}, published: true, routes: [{paths: [/s]}]}]
`);
  try {
    for (const path of ['/portal/', '/portal/apis/s', '/portal/apis/s/openapi.json', '/portal/apis/nope']) {
      const r = await httpsGet(t.gw.tlsAddress!.port, path, { servername: 'a.test', headers: { host: 'a.test' } });
      assert.equal(r.headers['strict-transport-security'], 'max-age=31536000', `${path}: ${r.status}`);
    }
    const plain = await request(`${t.url}/portal/`);
    assert.equal(plain.status, 200);
    assert.equal(plain.headers['strict-transport-security'], undefined);
    const proxied = await request(`${t.url}/portal/`, { headers: { 'x-forwarded-proto': 'https' } });
    assert.equal(proxied.headers['strict-transport-security'], 'max-age=31536000');
    // Not on proxied (upstream) responses: the gateway does not decide an upstream's HSTS.
    const api = await httpsGet(t.gw.tlsAddress!.port, '/s', { servername: 'a.test', headers: { host: 'a.test' } });
    assert.equal(api.headers['strict-transport-security'], undefined);
  } finally {
    await t.close();
  }
});

test('domain fronting with client certificates: a request whose Host the connection\'s certificate (chosen by its SNI) neither lists nor covers is a 421 (HTTP/1.1 and HTTP/2), never served on that connection; names of the same certificate, and addresses, are served', async () => {
  const a = ca.issue('a.test', { dns: ['a.test', 'alt.test'], file: 'front-a' });
  const b = ca.issue('b.test', { file: 'front-b' });
  const w = ca.issue('wild', { dns: ['*.w.test'], file: 'front-w' });
  const ip = ca.issue('by-ip', { dns: ['127.0.0.1'], file: 'front-ip' });
  const alice = ca.issue('alice', { client: true, file: 'front-alice' });
  const t = await startGateway(`
listen_tls: 127.0.0.1:0
tls:
  certificates:
    - {hosts: [a.test], cert: ${a.certFile}, key: ${a.keyFile}, default: true}
    - {hosts: [b.test], cert: ${b.certFile}, key: ${b.keyFile}}
    - {hosts: ["*.w.test"], cert: ${w.certFile}, key: ${w.keyFile}}
    - {hosts: [127.0.0.1], cert: ${ip.certFile}, key: ${ip.keyFile}}
  client_ca: ${ca.certFile}
consumers: [{name: alice}]
services:
  - name: s
    url: "${up.url}"
    plugins: [{name: mtls-auth}]
    routes: [{paths: [/]}]
`);
  const port = t.gw.tlsAddress!.port;
  const get = (servername: string | undefined, host: string) => new Promise<{ status: number; type: string | undefined; connection: string | undefined }>((resolve, reject) => {
    // (servername '': none sent; node:https would take the Host header's)
    httpsRequest({ host: '127.0.0.1', port, path: '/front', servername: servername ?? '', headers: { host }, ca: ca.cert, cert: alice.cert, key: alice.key, agent: false, checkServerIdentity: () => undefined }, (res) => {
      res.resume();
      res.on('end', () => resolve({ status: res.statusCode!, type: res.headers['content-type'], connection: res.headers.connection }));
    }).on('error', reject).end();
  });
  try {
    const before = up.requests.length;
    const fronted = await get('a.test', 'b.test');
    assert.deepEqual(fronted, { status: 421, type: 'application/problem+json', connection: 'close' }, 'SNI a.test, Host b.test');
    assert.equal((await get('b.test', 'a.test')).status, 421, 'SNI b.test, Host a.test (the default)');
    assert.equal((await get('c.test', 'b.test')).status, 421, 'an SNI no certificate names (the default chosen), Host b.test');
    assert.equal((await get(undefined, 'b.test')).status, 421, 'no SNI (the default), Host b.test');
    assert.equal((await get('x.w.test', 'a.test')).status, 421);
    assert.equal((await get('a.test', 'routes-only.test')).status, 421, 'a name no certificate lists, that a.test\'s certificate does not cover');
    assert.equal((await get('x.w.test', 'a.b.w.test')).status, 421, 'a wildcard certificate covers one label (RFC 6125), whatever a route\'s *.w.test takes');
    assert.equal(up.requests.length, before, 'nothing went upstream');
    assert.equal((await get('a.test', 'a.test')).status, 200);
    assert.equal((await get('B.TEST', 'b.test.')).status, 200, 'names compare without case, trailing dot');
    assert.equal((await get('b.test', 'b.test:443')).status, 200);
    assert.equal((await get('x.w.test', 'y.w.test')).status, 200, 'two names of one certificate (a browser coalescing connections)');
    assert.equal((await get('a.test', 'alt.test')).status, 200, 'a name the connection\'s certificate covers (its subjectAltNames), though no hosts list it');
    assert.equal((await get('b.test', `127.0.0.1:${port}`)).status, 200, 'a Host that names no certificate is not judged');
    assert.equal((await get(undefined, 'a.test')).status, 200, 'no SNI: the default certificate\'s names');
    assert.equal((await get(undefined, `127.0.0.1:${port}`)).status, 200, 'an address a certificate lists (never an SNI: clients send none for it)');
    assert.equal(up.requests.at(-1)!.headers['x-consumer-name'], 'alice');

    // HTTP/2: one session for a.test; a stream for b.test is refused, the session serves a.test on.
    const c = h2connect(`https://127.0.0.1:${port}`, { ca: ca.cert, servername: 'a.test', cert: alice.cert, key: alice.key });
    try {
      const stream = (authority: string) => new Promise<number>((resolve, reject) => {
        const s = c.request({ ':path': '/front', ':authority': authority });
        s.on('response', (h) => resolve(Number(h[':status'])));
        s.on('error', reject);
        s.resume();
        s.end();
      });
      assert.equal(await stream('b.test'), 421);
      assert.equal(await stream('a.test'), 200);
    } finally {
      c.close();
    }
  } finally {
    await t.close();
  }
});

test('upstream TLS: a server_name that is an IP address is never sent as SNI (RFC 6066 §3), and the certificate must still carry that address (requests and probes)', async () => {
  const leaf = ca.issue('by-address', { dns: ['127.0.0.1', 'localhost'], file: 'ip-sni' });
  const names: (string | false | null)[] = [];
  const server = createHttpsServer({ cert: leaf.cert, key: leaf.key }, (req, res) => {
    names.push((req.socket as import('node:tls').TLSSocket).servername);
    res.end('ok');
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  const t = await startGateway(`
services:
  - {name: named, url: 'https://localhost:${port}', tls: {ca: ${ca.certFile}, server_name: 127.0.0.1}, routes: [{paths: [/named]}]}
  - name: address
    tls: {ca: ${ca.certFile}, server_name: 127.0.0.1}
    upstream:
      targets: [{url: 'https://127.0.0.1:${port}'}]
      healthcheck: {active: {path: /healthz, interval: 100ms, timeout: 90ms, healthy: 1, unhealthy: 3}}
    routes: [{paths: [/address]}]
  - {name: other-address, url: 'https://127.0.0.1:${port}', tls: {ca: ${ca.certFile}, server_name: 127.0.0.2}, routes: [{paths: [/other]}]}
`);
  try {
    const r = await request(`${t.url}/named`);
    assert.equal(r.status, 200, r.body);
    assert.notEqual(names.at(-1), '127.0.0.1', 'the address is not sent as SNI');
    await sleep(300); // (probes ran)
    const a = await request(`${t.url}/address`);
    assert.equal(a.status, 200, a.body);
    assert.ok(names.length >= 3, `${names.length} requests`);
    assert.ok(!names.includes('127.0.0.1'), `an address was sent as SNI: ${JSON.stringify(names)}`);
    const other = await request(`${t.url}/other`);
    assert.equal(other.status, 502, 'a certificate without the server_name address is refused');
    assert.match(JSON.parse(other.body).detail, /ERR_TLS_CERT_ALTNAME_INVALID/);
  } finally {
    await t.close();
    await new Promise<void>((r) => { server.closeAllConnections(); server.close(() => r()); });
  }
});
