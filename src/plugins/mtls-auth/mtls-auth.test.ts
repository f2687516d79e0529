/** mtls-auth end to end: client certificates made in the test, over HTTP/1.1 and HTTP/2 on the TLS listener. */
import test, { after, before } from 'node:test';
import assert from 'node:assert/strict';
import { request as httpsRequest } from 'node:https';
import { connect as h2connect } from 'node:http2';
import { createHash } from 'node:crypto';
import { startGateway, startUpstream, type TestGateway, type TestUpstream } from '../../../test/helpers.js';
import { makeCa, type Pem, type TestCa } from '../../../test/certs.js';
import { compile } from '../../config/compile.js';
import { parseConfigText } from '../../config/load.js';
import { PoolRegistry } from '../../upstream/pools.js';

let ca: TestCa;
let rogueCa: TestCa;
let up: TestUpstream;
let gw: TestGateway;
let app: Pem;
let bySan: Pem;
let stranger: Pem;
let rogue: Pem;
let namedApp: Pem;
let expired: Pem;
let dnsUpper: Pem;
let mailUpper: Pem;

before(async () => {
  ca = makeCa('Client CA');
  rogueCa = makeCa('Rogue CA');
  const server = ca.issue('api.test');
  app = ca.issue('app-1', { client: true });
  bySan = ca.issue('device-77', { client: true });
  stranger = ca.issue('nobody', { client: true });
  rogue = rogueCa.issue('app-1', { client: true });
  namedApp = ca.issue('app', { client: true });
  expired = ca.issue('app-1', { client: true, expired: true });
  dnsUpper = ca.issue('unlisted-1', { client: true, sans: ['DNS:Sensor-9.Plant.EXAMPLE'] });
  mailUpper = ca.issue('unlisted-2', { client: true, sans: ['email:ops@Example.COM'] });
  up = await startUpstream();
  gw = await startGateway(`
listen_tls: 127.0.0.1:0
tls:
  certificates: [{hosts: [api.test], cert: ${server.certFile}, key: ${server.keyFile}}]
  client_ca: ${ca.certFile}
consumers:
  - {name: app, credentials: [{type: mtls-auth, subject_name: app-1}]}
  - {name: device-77}
  - {name: sensor, credentials: [{type: mtls-auth, subject_name: sensor-9.plant.example}]}
  - {name: ops-mail, credentials: [{type: mtls-auth, subject_name: ops@example.com}]}
  - {name: guest}
services:
  - name: api
    url: ${up.url}
    routes:
      - {name: secure, paths: [/secure], plugins: [{name: mtls-auth}]}
      - {name: lenient, paths: [/lenient], plugins: [{name: mtls-auth, config: {anonymous: guest}}]}
      - {name: public, paths: [/public]}
`);
});
after(async () => {
  await gw?.close();
  await up?.close();
  ca.cleanup();
  rogueCa.cleanup();
});

function get(path: string, client?: Pem): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const r = httpsRequest({
      host: '127.0.0.1', port: gw.gw.tlsAddress!.port, path, servername: 'api.test', ca: ca.cert, agent: false,
      ...(client ? { cert: client.cert, key: client.key } : {}),
    }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode!, body }));
    });
    r.on('error', reject);
    r.end();
  });
}

test('a trusted client certificate names its consumer (credential subject_name, or the CN as consumer name)', async () => {
  const r = await get('/secure', app);
  assert.equal(r.status, 200, r.body);
  assert.equal(up.requests.at(-1)!.headers['x-consumer-name'], 'app');
  assert.match(String(up.requests.at(-1)!.headers['x-credential-identifier']), /^mtls:[0-9A-F]{16}$/);
  assert.equal((await get('/secure', bySan)).status, 200);
  assert.equal(up.requests.at(-1)!.headers['x-consumer-name'], 'device-77');
  // A consumer that names its certificate (app: subject_name app-1) is not also any
  // certificate whose CN is its name.
  const cnOnly = await get('/secure', namedApp);
  assert.equal(cnOnly.status, 401, cnOnly.body);
});

test('no certificate, an untrusted one (same CN, other CA), or one for no consumer: 401; anonymous when allowed; routes without the plugin need none', async () => {
  const none = await get('/secure');
  assert.equal(none.status, 401);
  const untrusted = await get('/secure', rogue);
  assert.equal(untrusted.status, 401);
  assert.match(untrusted.body, /not trusted \(UNABLE_TO_VERIFY_LEAF_SIGNATURE\)/);
  // The right CA and the name of a consumer, but expired (2020): refused, and the client is told why.
  const old = await get('/secure', expired);
  assert.equal(old.status, 401, old.body);
  assert.equal(JSON.parse(old.body).detail, 'the client certificate is not trusted: it has expired');
  const unknown = await get('/secure', stranger);
  assert.equal(unknown.status, 401);
  assert.match(unknown.body, /not for a known consumer/);
  assert.equal((await get('/lenient')).status, 200);
  assert.equal(up.requests.at(-1)!.headers['x-consumer-name'], 'guest');
  assert.equal(up.requests.at(-1)!.headers['x-anonymous-consumer'], 'true');
  assert.equal((await get('/public')).status, 200);
  // Over plain HTTP there is no certificate at all.
  const plain = await fetch(`${gw.url}/secure`);
  assert.equal(plain.status, 401);
});

test('HTTP/2 over TLS with a client certificate', async () => {
  const c = h2connect(`https://127.0.0.1:${gw.gw.tlsAddress!.port}`, { ca: ca.cert, servername: 'api.test', cert: app.cert, key: app.key });
  try {
    const status = await new Promise<number>((resolve, reject) => {
      const s = c.request({ ':path': '/secure', ':authority': 'api.test' });
      s.on('response', (h) => resolve(Number(h[':status'])));
      s.on('error', reject);
      s.resume();
      s.end();
    });
    assert.equal(status, 200);
    assert.equal(up.requests.at(-1)!.headers['x-consumer-name'], 'app');
  } finally {
    c.close();
  }
});

test('mtls-auth without tls.client_ca is a config error at the binding', () => {
  const pools = new PoolRegistry();
  assert.throws(
    () => compile(parseConfigText(`services:\n  - name: s\n    url: http://127.0.0.1:1\n    plugins: [{name: mtls-auth}]\n`), { pools }),
    /services\[0\]\.plugins\[0\]\.config.*needs tls\.client_ca/,
  );
});

test('subjectAltNames that Node prints quoted (one holding a comma) are matched by their value; a comma in one never makes another name', async () => {
  const { execFileSync } = await import('node:child_process');
  const { readFileSync, writeFileSync } = await import('node:fs');
  const { join } = await import('node:path');
  const { X509Certificate } = await import('node:crypto');
  const { certificateNames } = await import('./index.js');
  const cnf = join(ca.dir, 'quoted-san.cnf');
  writeFileSync(cnf, [
    '[req]', 'distinguished_name=dn', '[dn]', '[ext]', 'subjectAltName=@alt', '[alt]',
    'URI.1 = https://apps.example/a,b', 'URI.2 = spiffe://example.org/ns/default/sa/app',
    'URI.3 = x, DNS:admin, y', 'email.1 = dev+ops@example.com', 'DNS.1 = plain.example', '',
  ].join('\n'));
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'quoted.key', '-out', 'quoted.pem',
    '-days', '1', '-subj', '/CN=quoted', '-config', cnf, '-extensions', 'ext'], { cwd: ca.dir, stdio: ['ignore', 'ignore', 'pipe'] });
  const x = new X509Certificate(readFileSync(join(ca.dir, 'quoted.pem')));
  const { cn, sans } = certificateNames({ subject: { CN: 'quoted' }, subjectaltname: x.subjectAltName } as never);
  assert.equal(cn, 'quoted');
  assert.deepEqual(sans, ['https://apps.example/a,b', 'spiffe://example.org/ns/default/sa/app', 'x, DNS:admin, y', 'dev+ops@example.com', 'plain.example']);
  assert.ok(!sans.includes('admin'));
});

test('a DNS name in a certificate matches a subject_name without regard to case (RFC 5280 §7.2, RFC 4343); an email address, its domain part so (its local part as written)', async () => {
  const r = await get('/secure', dnsUpper);
  assert.equal(r.status, 200, r.body);
  assert.equal(up.requests.at(-1)!.headers['x-consumer-name'], 'sensor');
  const m = await get('/secure', mailUpper);
  assert.equal(m.status, 200, m.body);
  assert.equal(up.requests.at(-1)!.headers['x-consumer-name'], 'ops-mail');
});


test('subject_name matches by kind: a plain name the CN, a DNS name or an email address (as Kong\'s mtls-auth), never a URI SAN spelled like it; a name written as a URI (spiffe://, urn:) a URI SAN only, never a CN spelled like it', async () => {
  const uriLikeCn = ca.issue('stray-1', { client: true, sans: ['URI:app-1'] });
  const spiffe = ca.issue('workload', { client: true, sans: ['URI:spiffe://example.org/ns/default/sa/app'] });
  // (openssl's -subj reads '/' as the next RDN: escaped)
  const cnLikeUri = ca.issue('spiffe://example.org/ns/default/sa/app'.replace(/\//g, '\\/'), { client: true, file: 'cn-like-uri' });
  const t = await startGateway(`
listen_tls: 127.0.0.1:0
tls:
  certificates: [{hosts: [api.test], cert: ${ca.issue('api.test', { file: 'kind-server' }).certFile}, key: ${ca.dir}/kind-server.key}]
  client_ca: ${ca.certFile}
consumers:
  - {name: app, credentials: [{type: mtls-auth, subject_name: app-1}]}
  - {name: workload, credentials: [{type: mtls-auth, subject_name: "spiffe://example.org/ns/default/sa/app"}]}
services: [{name: s, url: "${up.url}", routes: [{paths: [/secure], plugins: [{name: mtls-auth}]}]}]
`);
  const as = (who: Pem) => new Promise<{ status: number; consumer: unknown }>((resolve, reject) => {
    httpsRequest({ host: '127.0.0.1', port: t.gw.tlsAddress!.port, path: '/secure', servername: 'api.test', ca: ca.cert, cert: who.cert, key: who.key, agent: false }, (res) => {
      res.resume();
      res.on('end', () => resolve({ status: res.statusCode!, consumer: res.statusCode === 200 ? up.requests.at(-1)!.headers['x-consumer-name'] : undefined }));
    }).on('error', reject).end();
  });
  try {
    assert.deepEqual(await as(app), { status: 200, consumer: 'app' }, 'the CN');
    assert.deepEqual(await as(uriLikeCn), { status: 401, consumer: undefined }, 'a URI SAN is no CN, DNS name or email address');
    assert.deepEqual(await as(spiffe), { status: 200, consumer: 'workload' }, 'a SPIFFE id in a URI SAN');
    assert.deepEqual(await as(cnLikeUri), { status: 401, consumer: undefined }, 'a CN is no URI');
  } finally {
    await t.close();
  }
});

/** A TLS listener for api.test whose clients are checked against ca and the CRL in crlFile; app-1's certificate is consumer app. */
const crlConfig = (server: Pem, crlFile: string) => `
listen_tls: 127.0.0.1:0
tls:
  certificates: [{hosts: [api.test], cert: ${server.certFile}, key: ${server.keyFile}}]
  client_ca: ${ca.certFile}
  client_crl: ${crlFile}
consumers: [{name: app, credentials: [{type: mtls-auth, subject_name: app-1}]}]
services: [{name: s, url: "${up.url}", routes: [{paths: [/secure], plugins: [{name: mtls-auth}]}]}]
access_log: {enabled: false}
`;

test('tls.client_crl: a revoked client certificate is refused (401 saying so) while the CA\'s others pass; a CRL revoking one more applies on reload, to new connections; a CRL file that holds none, or client_crl without client_ca, is a config error', async () => {
  const { parseConfigText: parse } = await import('../../config/load.js');
  const { configIssues } = await import('../../../test/helpers.js');
  const { copyFileSync, writeFileSync } = await import('node:fs');
  const server = ca.issue('api.test', { file: 'crl-server' });
  const lost = ca.issue('app-1', { client: true, file: 'crl-lost' });
  const kept = ca.issue('app-1', { client: true, file: 'crl-kept' });
  const crlFile = `${ca.dir}/clients.crl`;
  copyFileSync(ca.crl([lost], 'crl-1.pem'), crlFile);
  const text = crlConfig(server, crlFile);
  const t = await startGateway(text);
  const as = (who: Pem) => new Promise<{ status: number; body: string }>((resolve, reject) => {
    httpsRequest({ host: '127.0.0.1', port: t.gw.tlsAddress!.port, path: '/secure', servername: 'api.test', ca: ca.cert, cert: who.cert, key: who.key, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode!, body }));
    }).on('error', reject).end();
  });
  try {
    const refused = await as(lost);
    assert.equal(refused.status, 401, refused.body);
    assert.equal(JSON.parse(refused.body).detail, 'the client certificate is not trusted: it has been revoked');
    assert.equal((await as(kept)).status, 200, 'a certificate of the same CA and name, not revoked');
    copyFileSync(ca.crl([lost, kept], 'crl-2.pem'), crlFile);
    await t.gw.reloadAsync(parse(text, { env: {} }));
    assert.equal((await as(kept)).status, 401);
    assert.equal((await as(app)).status, 200);
  } finally {
    await t.close();
  }
  const noCrl = `${ca.dir}/not-a-crl.pem`;
  writeFileSync(noCrl, ca.cert);
  const issues = configIssues(text.replace(crlFile, noCrl));
  assert.deepEqual(issues.map((i) => [i.path, i.line]), [['tls.client_crl', 6]]);
  assert.match(issues[0]!.message, /holds no PEM certificate revocation list/);
  // A CRL of another CA revokes nothing of client_ca's, and with it OpenSSL refuses every client
  // certificate (UNABLE_TO_GET_CRL: no CRL of their CA): a config error. Beside the CA's own (an
  // intermediate's, say) it is fine.
  const { readFileSync } = await import('node:fs');
  const foreign = rogueCa.crl([], 'foreign.pem');
  const wrong = configIssues(text.replace(crlFile, foreign));
  assert.deepEqual(wrong.map((i) => [i.path, i.line]), [['tls.client_crl', 6]]);
  assert.match(wrong[0]!.message, /holds no revocation list signed by the client CA CN=Client CA \(tls\.client_ca\)/);
  // Another CA of the same name (its CRL names the client CA as issuer; signed by another key).
  const twin = makeCa('Client CA');
  try {
    assert.deepEqual(configIssues(text.replace(crlFile, twin.crl([], 'twin.pem'))).map((i) => [i.path, i.line]), [['tls.client_crl', 6]]);
  } finally {
    twin.cleanup();
  }
  const both = `${ca.dir}/both.crl`;
  writeFileSync(both, Buffer.concat([readFileSync(foreign), readFileSync(ca.crl([], 'own.pem'))]));
  assert.deepEqual(configIssues(text.replace(crlFile, both)), []);
  assert.deepEqual(configIssues(text.replace(/  client_ca: .*\n/, '').replace(/plugins: \[\{name: mtls-auth\}\]/, '')).map((i) => [i.path, i.message]), [['tls.client_crl', 'client_crl needs tls.client_ca (the CA whose revoked client certificates it lists)']]);
});

test('tls.client_crl past its nextUpdate: every client certificate of its CA is refused (CRL_HAS_EXPIRED), and the start and each reload warn, naming the file and the nextUpdate; one due within a day is warned of ahead, one issued in the future (CRL_NOT_YET_VALID) warned of, a current one not at all', async () => {
  const { Gateway } = await import('../../server/gateway.js');
  const { createLogger } = await import('../../core/log.js');
  const { copyFileSync } = await import('node:fs');
  const server = ca.issue('api.test', { file: 'stale-server' });
  const crlFile = `${ca.dir}/stale.crl`;
  const due = new Date(Math.floor(Date.now() / 1000) * 1000 - 3600_000);
  copyFileSync(ca.crl([], 'stale-1.pem', { nextUpdate: due }), crlFile);
  const lines: { level: number; msg: string; file?: string; next_update?: string }[] = [];
  const logger = createLogger('info', { write: (l: string) => void lines.push(JSON.parse(l)) });
  const text = crlConfig(server, crlFile).replace(/^listen_tls/m, 'listen: 127.0.0.1:0\nlisten_tls');
  const gw = await Gateway.start(parseConfigText(text, { env: {} }), { logger });
  const warned = () => lines.filter((l) => l.level === 40 && /client CRL/.test(l.msg)).map((l) => [l.file, l.next_update, /expired/.test(l.msg) ? 'expired' : 'soon']);
  try {
    assert.deepEqual(warned(), [[crlFile, due.toISOString(), 'expired']]);
    const call = () => new Promise<{ status: number; body: string }>((resolve, reject) => {
      httpsRequest({ host: '127.0.0.1', port: gw.tlsAddress!.port, path: '/secure', servername: 'api.test', ca: ca.cert, cert: app.cert, key: app.key, agent: false }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (d) => (body += d));
        res.on('end', () => resolve({ status: res.statusCode!, body }));
      }).on('error', reject).end();
    });
    const r = await call();
    assert.equal(r.status, 401, r.body);
    assert.match(JSON.parse(r.body).detail, /CRL_HAS_EXPIRED/);
    lines.length = 0;
    await gw.reloadAsync(parseConfigText(text, { env: {} }));
    assert.deepEqual(warned(), [[crlFile, due.toISOString(), 'expired']], 'a reload with the same stale CRL says it again');
    const soon = new Date(Math.floor(Date.now() / 1000) * 1000 + 3 * 3600_000);
    copyFileSync(ca.crl([], 'stale-2.pem', { nextUpdate: soon }), crlFile);
    lines.length = 0;
    await gw.reloadAsync(parseConfigText(text, { env: {} }));
    assert.deepEqual(warned(), [[crlFile, soon.toISOString(), 'soon']]);
    // Issued in the future (a clock ahead where it was made): refused too (CRL_NOT_YET_VALID) until then.
    const issued = new Date(Math.floor(Date.now() / 1000) * 1000 + 2 * 3600_000);
    copyFileSync(ca.crl([], 'stale-3.pem', { thisUpdate: issued, nextUpdate: new Date(issued.getTime() + 3 * 86400_000) }), crlFile);
    lines.length = 0;
    await gw.reloadAsync(parseConfigText(text, { env: {} }));
    assert.deepEqual(lines.filter((l) => l.level === 40 && /client CRL/.test(l.msg)).map((l) => [l.file, (l as { this_update?: string }).this_update, /not valid yet/.test(l.msg)]), [[crlFile, issued.toISOString(), true]]);
    const early = await call();
    assert.equal(early.status, 401, early.body);
    assert.match(JSON.parse(early.body).detail, /CRL_NOT_YET_VALID/);
    copyFileSync(ca.crl([], 'stale-4.pem'), crlFile);
    lines.length = 0;
    await gw.reloadAsync(parseConfigText(text, { env: {} }));
    assert.deepEqual(warned(), []);
  } finally {
    await gw.stop();
  }
});

test('a reload that revokes a client certificate (tls.client_crl) or replaces the client CA closes the connections already verified under the old ones — HTTP/2 sessions get GOAWAY, idle HTTP/1.1 keep-alive connections are closed — so the next request is judged under the new ones', async () => {
  const { parseConfigText: parse } = await import('../../config/load.js');
  const { Agent } = await import('node:https');
  const { copyFileSync } = await import('node:fs');
  const { eventually } = await import('../../../test/helpers.js');
  const server = ca.issue('api.test', { file: 'retire-server' });
  const device = ca.issue('app-1', { client: true, file: 'retire-device' });
  const crlFile = `${ca.dir}/retire.crl`;
  copyFileSync(ca.crl([], 'retire-1.pem'), crlFile);
  const text = crlConfig(server, crlFile);
  const t = await startGateway(text);
  const port = t.gw.tlsAddress!.port;
  const agent = new Agent({ keepAlive: true, maxSockets: 1 });
  const h1 = () => new Promise<number>((resolve, reject) => {
    httpsRequest({ host: '127.0.0.1', port, path: '/secure', servername: 'api.test', ca: ca.cert, cert: device.cert, key: device.key, agent }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode!));
    }).on('error', reject).end();
  });
  const session = h2connect(`https://127.0.0.1:${port}`, { ca: ca.cert, servername: 'api.test', cert: device.cert, key: device.key });
  session.on('error', () => {});
  let goaway = false;
  session.on('goaway', () => (goaway = true));
  const h2 = (s = session) => new Promise<number>((resolve, reject) => {
    const st = s.request({ ':path': '/secure', ':authority': 'api.test' });
    st.on('response', (h) => resolve(Number(h[':status'])));
    st.on('error', reject);
    st.resume();
    st.end();
  });
  try {
    assert.equal(await h1(), 200);
    assert.equal(await h2(), 200);
    copyFileSync(ca.crl([device], 'retire-2.pem'), crlFile);
    await t.gw.reloadAsync(parse(text, { env: {} }));
    await eventually(() => goaway && session.closed, 3000);
    const fresh = h2connect(`https://127.0.0.1:${port}`, { ca: ca.cert, servername: 'api.test', cert: device.cert, key: device.key });
    try {
      assert.equal(await h2(fresh), 401, 'a new HTTP/2 session is verified under the new CRL');
    } finally {
      fresh.close();
    }
    await eventually(() => Object.values(agent.freeSockets).every((l) => !l?.length), 3000);
    assert.equal(await h1(), 401, 'the kept-alive connection was closed: a new one is verified under the new CRL');
  } finally {
    agent.destroy();
    session.destroy();
    await t.close();
  }
});

test('a reload that changes the client CRL while requests are in flight: the HTTP/1.1 answer says Connection: close and the connection closes after it; the HTTP/2 session gets its GOAWAY and the stream in flight its answer', async () => {
  const { parseConfigText: parse } = await import('../../config/load.js');
  const { connect: tlsConnect } = await import('node:tls');
  const { copyFileSync } = await import('node:fs');
  const { eventually } = await import('../../../test/helpers.js');
  const server = ca.issue('api.test', { file: 'busy-server' });
  const device = ca.issue('app-1', { client: true, file: 'busy-device' });
  const crlFile = `${ca.dir}/busy.crl`;
  copyFileSync(ca.crl([], 'busy-1.pem'), crlFile);
  const held: import('node:http').ServerResponse[] = [];
  const slow = await startUpstream((_req, res) => held.push(res));
  const text = crlConfig(server, crlFile).replace(`url: "${up.url}"`, `url: "${slow.url}"`);
  const t = await startGateway(text);
  const port = t.gw.tlsAddress!.port;
  const s = tlsConnect({ host: '127.0.0.1', port, servername: 'api.test', ca: ca.cert, cert: device.cert, key: device.key });
  s.on('error', () => {});
  let got = '';
  let closed = false;
  s.setEncoding('latin1');
  s.on('data', (d: string) => (got += d));
  s.on('close', () => (closed = true));
  const session = h2connect(`https://127.0.0.1:${port}`, { ca: ca.cert, servername: 'api.test', cert: device.cert, key: device.key });
  session.on('error', () => {});
  let goaway = false;
  session.on('goaway', () => (goaway = true));
  try {
    await new Promise((r) => s.once('secureConnect', r));
    s.write('GET /secure HTTP/1.1\r\nHost: api.test\r\n\r\n');
    const st = session.request({ ':path': '/secure', ':authority': 'api.test' });
    let h2status = 0;
    st.on('response', (h) => (h2status = Number(h[':status'])));
    st.on('error', () => {});
    st.resume();
    st.end();
    await eventually(() => held.length === 2, 3000);
    copyFileSync(ca.crl([device], 'busy-2.pem'), crlFile);
    await t.gw.reloadAsync(parse(text, { env: {} }));
    await eventually(() => goaway, 3000);
    for (const r of held.splice(0)) r.end('ok');
    await eventually(() => closed && h2status !== 0, 3000);
    assert.match(got, /^HTTP\/1\.1 200 /);
    assert.match(got, /\r\nconnection: close\r\n/i, got);
    assert.doesNotMatch(got, /keep-alive/i);
    assert.equal(h2status, 200, 'the stream in flight is answered');
    await eventually(() => session.closed, 3000);
  } finally {
    s.destroy();
    session.destroy();
    await t.close();
    await slow.close();
  }
});

test('a reload that changes the client CRL closes a WebSocket on a connection verified under the old one with close frames (1001, going away: a client whose certificate still passes reconnects) before the TCP close, upstream leg included', async () => {
  const { parseConfigText: parse } = await import('../../config/load.js');
  const { WebSocket, WebSocketServer } = await import('ws');
  const { copyFileSync } = await import('node:fs');
  const { eventually } = await import('../../../test/helpers.js');
  const server = ca.issue('api.test', { file: 'ws-server' });
  const device = ca.issue('app-1', { client: true, file: 'ws-device' });
  const crlFile = `${ca.dir}/ws.crl`;
  copyFileSync(ca.crl([], 'ws-1.pem'), crlFile);
  const wss = new WebSocketServer({ port: 0, host: '127.0.0.1' });
  await new Promise((r) => wss.once('listening', r));
  const upCloses: number[] = [];
  wss.on('connection', (ws) => {
    ws.on('message', (d, binary) => ws.send(d, { binary }));
    ws.on('close', (code) => upCloses.push(code));
  });
  const wsUrl = `http://127.0.0.1:${(wss.address() as import('node:net').AddressInfo).port}`;
  const text = crlConfig(server, crlFile).replace(`services: [{name: s, url: "${up.url}", routes: [{paths: [/secure], plugins: [{name: mtls-auth}]}]}]`,
    `services: [{name: s, url: "${wsUrl}", routes: [{paths: [/secure], websocket: true, plugins: [{name: mtls-auth}]}]}]`);
  assert.notEqual(text, crlConfig(server, crlFile));
  const t = await startGateway(text);
  const ws = new WebSocket(`wss://127.0.0.1:${t.gw.tlsAddress!.port}/secure`, { ca: ca.cert, cert: device.cert, key: device.key, servername: 'api.test' } as import('ws').ClientOptions);
  ws.on('error', () => {});
  try {
    await new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject); });
    const echoed = new Promise((r) => ws.once('message', r));
    ws.send('hello');
    await echoed;
    const end = new Promise<{ code: number; reason: string }>((r) => ws.once('close', (code, reason) => r({ code, reason: reason.toString() })));
    copyFileSync(ca.crl([device], 'ws-2.pem'), crlFile);
    await t.gw.reloadAsync(parse(text, { env: {} }));
    const c = await Promise.race([end, new Promise<null>((r) => setTimeout(() => r(null), 3000))]);
    assert.ok(c !== null, 'the WebSocket is closed');
    assert.equal(c.code, 1001, JSON.stringify(c));
    assert.equal(c.reason, 'client certificate trust changed: reconnect');
    await eventually(() => upCloses.length === 1, 3000);
    assert.deepEqual(upCloses, [1001]);
  } finally {
    ws.terminate();
    await t.close();
    await new Promise((r) => wss.close(r));
  }
});

test('a WebSocket handshake waiting on its upstream while a reload changes the client CRL: the relay it opens is closed at once (1001), not kept under the old verdict', async () => {
  const { parseConfigText: parse } = await import('../../config/load.js');
  const { WebSocket, WebSocketServer } = await import('ws');
  const { createServer } = await import('node:http');
  const { copyFileSync } = await import('node:fs');
  const { eventually } = await import('../../../test/helpers.js');
  const server = ca.issue('api.test', { file: 'wsh-server' });
  const device = ca.issue('app-1', { client: true, file: 'wsh-device' });
  const crlFile = `${ca.dir}/wsh.crl`;
  copyFileSync(ca.crl([], 'wsh-1.pem'), crlFile);
  // (an upstream that holds each handshake until released)
  const wss = new WebSocketServer({ noServer: true });
  wss.on('connection', (ws) => ws.on('message', (d, binary) => ws.send(d, { binary })));
  const waiting: (() => void)[] = [];
  const http = createServer();
  http.on('upgrade', (req, sock, head) => waiting.push(() => wss.handleUpgrade(req, sock, head, (ws) => wss.emit('connection', ws, req))));
  await new Promise<void>((r) => http.listen(0, '127.0.0.1', r));
  const wsUrl = `http://127.0.0.1:${(http.address() as import('node:net').AddressInfo).port}`;
  const text = crlConfig(server, crlFile).replace(`services: [{name: s, url: "${up.url}", routes: [{paths: [/secure], plugins: [{name: mtls-auth}]}]}]`,
    `services: [{name: s, url: "${wsUrl}", routes: [{paths: [/secure], websocket: true, plugins: [{name: mtls-auth}]}]}]`);
  const t = await startGateway(text);
  const ws = new WebSocket(`wss://127.0.0.1:${t.gw.tlsAddress!.port}/secure`, { ca: ca.cert, cert: device.cert, key: device.key, servername: 'api.test' } as import('ws').ClientOptions);
  ws.on('error', () => {});
  const end = new Promise<{ code: number; reason: string }>((r) => ws.once('close', (code, reason) => r({ code, reason: reason.toString() })));
  try {
    await eventually(() => waiting.length === 1, 3000);
    copyFileSync(ca.crl([device], 'wsh-2.pem'), crlFile);
    await t.gw.reloadAsync(parse(text, { env: {} }));
    waiting.shift()!();
    const c = await Promise.race([end, new Promise<null>((r) => setTimeout(() => r(null), 3000))]);
    assert.ok(c !== null, 'the WebSocket is closed');
    assert.equal(c.code, 1001, JSON.stringify(c));
  } finally {
    ws.terminate();
    await t.close();
    wss.close();
    http.closeAllConnections();
    await new Promise((r) => http.close(r));
  }
});

test('a client certificate that expires while its connection lives (a kept-alive HTTP/1.1 connection, an HTTP/2 session) is refused from then on, on that connection too', async () => {
  const { Agent } = await import('node:https');
  const { sleep } = await import('../../../test/helpers.js');
  const until = new Date(Date.now() + 5000);
  const shortLived = ca.issue('app-1', { client: true, file: 'short-lived', notAfter: until });
  const session = h2connect(`https://127.0.0.1:${gw.gw.tlsAddress!.port}`, { ca: ca.cert, servername: 'api.test', cert: shortLived.cert, key: shortLived.key });
  session.on('error', () => {});
  const agent = new Agent({ keepAlive: true, maxSockets: 1 });
  let sockets = 0;
  const h1 = () => new Promise<{ status: number; body: string }>((resolve, reject) => {
    const r = httpsRequest({ host: '127.0.0.1', port: gw.gw.tlsAddress!.port, path: '/secure', servername: 'api.test', ca: ca.cert, cert: shortLived.cert, key: shortLived.key, agent }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode!, body }));
    });
    r.on('socket', (s) => { if (!(s as { counted?: true }).counted) { (s as { counted?: true }).counted = true; sockets++; } });
    r.on('error', reject).end();
  });
  const h2 = () => new Promise<{ status: number; body: string }>((resolve, reject) => {
    const st = session.request({ ':path': '/secure', ':authority': 'api.test' });
    let status = 0;
    let body = '';
    st.on('response', (h) => (status = Number(h[':status'])));
    st.setEncoding('utf8');
    st.on('data', (d) => (body += d));
    st.on('end', () => resolve({ status, body }));
    st.on('error', reject);
    st.end();
  });
  try {
    assert.equal((await h1()).status, 200);
    assert.equal((await h2()).status, 200);
    // Kept busy past the certificate's end (a request a second: the keep-alive timeout never fires).
    while (Date.now() < until.getTime() + 300) {
      await sleep(Math.min(1000, until.getTime() + 300 - Date.now()));
      await h1();
      await h2();
    }
    const [a, b] = [await h1(), await h2()];
    assert.equal(sockets, 1, 'one kept-alive connection throughout');
    assert.equal(a.status, 401, a.body);
    assert.equal(JSON.parse(a.body).detail, 'the client certificate is not trusted: it has expired');
    assert.equal(b.status, 401, b.body);
  } finally {
    agent.destroy();
    session.destroy();
  }
});

test('forward_client_cert: the verified certificate goes upstream as RFC 9440 Client-Cert / Client-Cert-Chain and as Envoy\'s X-Forwarded-Client-Cert (HTTP/1.1 and HTTP/2); a client\'s own client-certificate fields never do on an mtls-auth route, a trusted proxy\'s neither, with forwarding off too', async () => {
  const { X509Certificate } = await import('node:crypto');
  const inter = ca.intermediate('Devices Intermediate');
  try {
    const server = ca.issue('api.test', { file: 'fwd-server' });
    const leaf = inter.issue('dev-1', { client: true, sans: ['URI:spiffe://example.org/dev/1', 'DNS:dev-1.example'] });
    const chain = Buffer.concat([leaf.cert, inter.cert]);
    // (the loopback is a trusted proxy here: its client-certificate fields pass the request
    // parsing, and only mtls-auth keeps them from the upstream)
    const t = await startGateway(`
listen_tls: 127.0.0.1:0
trusted_proxies: [127.0.0.1]
tls:
  certificates: [{hosts: [api.test], cert: ${server.certFile}, key: ${server.keyFile}}]
  client_ca: ${ca.certFile}
consumers: [{name: dev, credentials: [{type: mtls-auth, subject_name: dev-1}]}, {name: guest}]
services:
  - name: s
    url: ${up.url}
    routes:
      - {paths: [/fwd], plugins: [{name: mtls-auth, config: {anonymous: guest, forward_client_cert: [client-cert, client-cert-chain, x-forwarded-client-cert]}}]}
      - {paths: [/off], plugins: [{name: mtls-auth, config: {anonymous: guest}}]}
      - {paths: [/open]}
`);
    try {
    const port = t.gw.tlsAddress!.port;
    const forged = {
      'client-cert': `:${Buffer.from('forged').toString('base64')}:`, 'Client-Cert-Chain': ':Zm9v:',
      'x-forwarded-client-cert': 'Hash=00;Subject="CN=admin"', 'x-ssl-client-s-dn': 'CN=admin', 'X-Amzn-Mtls-Clientcert': 'x',
    };
    const h1 = (path: string, withCert: boolean) => new Promise<number>((resolve, reject) => {
      httpsRequest({ host: '127.0.0.1', port, path, servername: 'api.test', ca: ca.cert, agent: false, headers: forged, ...(withCert ? { cert: chain, key: leaf.key } : {}) }, (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode!));
      }).on('error', reject).end();
    });
    const der = new X509Certificate(leaf.cert).raw;
    const expected = {
      'client-cert': `:${der.toString('base64')}:`,
      'client-cert-chain': `:${new X509Certificate(inter.cert).raw.toString('base64')}:`,
      'x-forwarded-client-cert': `Hash=${createHash('sha256').update(der).digest('hex')};Subject="CN=dev-1";URI=spiffe://example.org/dev/1;DNS=dev-1.example`,
    };
    const certFields = () => Object.fromEntries(Object.entries(up.requests.at(-1)!.headers).filter(([k]) => /cert|ssl|mtls/.test(k)));
    assert.equal(await h1('/fwd', true), 200);
    assert.equal(up.requests.at(-1)!.headers['x-consumer-name'], 'dev');
    assert.deepEqual(certFields(), expected);
    assert.equal(await h1('/off', true), 200);
    assert.deepEqual(certFields(), {}, 'forwarding off: nothing, the client\'s neither');
    assert.equal(await h1('/fwd', false), 200);
    assert.equal(up.requests.at(-1)!.headers['x-anonymous-consumer'], 'true');
    assert.deepEqual(certFields(), {}, 'anonymous: no certificate, the forged ones dropped');
    const s = h2connect(`https://127.0.0.1:${port}`, { ca: ca.cert, servername: 'api.test', cert: chain, key: leaf.key });
    try {
      for (const [path, want] of [['/fwd', expected], ['/off', {}]] as const) {
        const status = await new Promise<number>((resolve, reject) => {
          const st = s.request({ ':path': path, ':authority': 'api.test', ...forged });
          st.on('response', (h) => resolve(Number(h[':status'])));
          st.on('error', reject);
          st.resume();
          st.end();
        });
        assert.equal(status, 200);
        assert.deepEqual(certFields(), want, `HTTP/2 ${path}`);
      }
    } finally {
      s.close();
    }
    } finally {
      await t.close();
    }
  } finally {
    inter.cleanup();
  }
});

test('fingerprint_sha256: a consumer pins its certificate by the SHA-256 of its DER (hex, with or without colons, any case), before any subject_name; another certificate of the same name is not it; a credential with both or neither field is a config error', async () => {
  const { X509Certificate } = await import('node:crypto');
  const { configIssues } = await import('../../../test/helpers.js');
  const server = ca.issue('api.test', { file: 'pin-server' });
  const one = ca.issue('pinned-device', { client: true, file: 'pin-one' });
  const twin = ca.issue('pinned-device', { client: true, file: 'pin-twin' });
  const named = ca.issue('app-1', { client: true, file: 'pin-named' });
  const fp = (p: Pem) => new X509Certificate(p.cert).fingerprint256; // AB:CD:...
  const text = `
listen_tls: 127.0.0.1:0
tls:
  certificates: [{hosts: [api.test], cert: ${server.certFile}, key: ${server.keyFile}}]
  client_ca: ${ca.certFile}
consumers:
  - {name: pin-lower, credentials: [{type: mtls-auth, fingerprint_sha256: "${fp(one).replace(/:/g, '').toLowerCase()}"}]}
  - {name: pin-colons, credentials: [{type: mtls-auth, fingerprint_sha256: "${fp(named).toLowerCase()}"}]}
  - {name: app, credentials: [{type: mtls-auth, subject_name: app-1}]}
services: [{name: s, url: "${up.url}", routes: [{paths: [/secure], plugins: [{name: mtls-auth}]}]}]
`;
  const t = await startGateway(text);
  const as = (who: Pem) => new Promise<{ status: number; body: string }>((resolve, reject) => {
    httpsRequest({ host: '127.0.0.1', port: t.gw.tlsAddress!.port, path: '/secure', servername: 'api.test', ca: ca.cert, cert: who.cert, key: who.key, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode!, body }));
    }).on('error', reject).end();
  });
  try {
    assert.equal((await as(one)).status, 200);
    assert.equal(up.requests.at(-1)!.headers['x-consumer-name'], 'pin-lower');
    const other = await as(twin);
    assert.equal(other.status, 401, 'the same CN, another certificate');
    assert.match(other.body, /not for a known consumer/);
    assert.equal((await as(named)).status, 200);
    assert.equal(up.requests.at(-1)!.headers['x-consumer-name'], 'pin-colons', 'the pin wins over app\'s subject_name app-1');
    assert.equal((await as(app)).status, 200);
    assert.equal(up.requests.at(-1)!.headers['x-consumer-name'], 'app');
  } finally {
    await t.close();
  }
  const both = configIssues(text.replace('{type: mtls-auth, subject_name: app-1}', `{type: mtls-auth, subject_name: app-1, fingerprint_sha256: "${fp(app)}"}`));
  assert.deepEqual(both.map((i) => [i.path, i.line, i.message]), [['consumers[2].credentials[0]', 9, 'give one of subject_name and fingerprint_sha256']]);
  const twice = configIssues(text.replace('subject_name: app-1', `fingerprint_sha256: "${fp(one)}"`));
  assert.deepEqual(twice.map((i) => [i.path, i.line]), [['consumers[2].credentials[0].fingerprint_sha256', 9]]);
  assert.match(twice[0]!.message, /the same certificate as consumer "pin-lower"/);
  assert.deepEqual(configIssues(text.replace(/fingerprint_sha256: "[0-9a-f]{4}/, 'fingerprint_sha256: "zz')).map((i) => [i.path, i.line]), [['consumers[0].credentials[0].fingerprint_sha256', 7]]);
});

test('anonymous stands in for no certificate (or a trusted one for no consumer), never for one presented and not trusted — another CA, expired, over HTTP/1.1 and HTTP/2: 401 saying why', async () => {
  const untrusted = await get('/lenient', rogue);
  assert.equal(untrusted.status, 401, untrusted.body);
  assert.match(JSON.parse(untrusted.body).detail, /not trusted \(UNABLE_TO_VERIFY_LEAF_SIGNATURE\)/);
  const old = await get('/lenient', expired);
  assert.equal(old.status, 401, old.body);
  assert.equal(JSON.parse(old.body).detail, 'the client certificate is not trusted: it has expired');
  const seen = up.requests.length;
  assert.equal((await get('/lenient', stranger)).status, 200);
  assert.equal(up.requests.at(-1)!.headers['x-anonymous-consumer'], 'true');
  assert.equal((await get('/lenient')).status, 200);
  assert.equal(up.requests.length, seen + 2, 'the refused ones never reached the upstream');
  const c = h2connect(`https://127.0.0.1:${gw.gw.tlsAddress!.port}`, { ca: ca.cert, servername: 'api.test', cert: rogue.cert, key: rogue.key });
  try {
    const status = await new Promise<number>((resolve, reject) => {
      const s = c.request({ ':path': '/lenient', ':authority': 'api.test' });
      s.on('response', (h) => resolve(Number(h[':status'])));
      s.on('error', reject);
      s.resume();
      s.end();
    });
    assert.equal(status, 401);
  } finally {
    c.close();
  }
});
