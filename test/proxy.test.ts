/** Intermediary duties (RFC 9110 §7.6, RFC 9112) asserted on what a real origin receives. */
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import {
  startGateway, startUpstream, startRawOrigin, rawRequest, request, statuses, sleep,
  type TestGateway, type TestUpstream, type RawOrigin,
} from './helpers.js';

const REQUEST_ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}#[0-9a-z]+$/;
let up: TestUpstream;
let admin: TestUpstream;
let raw: RawOrigin;
let gw: TestGateway;

before(async () => {
  up = await startUpstream();
  admin = await startUpstream((_req, res) => res.writeHead(200, { 'content-type': 'text/plain' }).end('admin-area'));
  raw = await startRawOrigin((data) => {
    const text = data.toString('latin1');
    const end = text.indexOf('\r\n\r\n');
    if (end === -1) return null;
    const cl = /\r\ncontent-length: *(\d+)/i.exec(text.slice(0, end));
    if (cl && text.length - end - 4 < Number(cl[1])) return null;
    return 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: X-Secret, close\r\nX-Secret: s\r\nKeep-Alive: timeout=5\r\n' +
      'Proxy-Connection: keep-alive\r\nUpgrade: h2c\r\nVia: 1.1 origin\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n' +
      // cookie tossing: the console's / portal's session cookies are the gateway's, never an upstream's
      'Set-Cookie: tp_console=viewer-session; Path=/console/api\r\nSet-Cookie:  tp_portal =x; Path=/portal/\r\nSet-Cookie: tp_consoles=kept\r\n' +
      // (an https console's: an upstream served over https on the admin's host could set it)
      'Set-Cookie: __Host-tp_console=viewer-session; Path=/; Secure\r\nSet-Cookie: __Host-tp_portal=dev-session; Path=/; Secure\r\n' +
      // nameless: browsers keep the value alone and send `Cookie: tp_console=AAAA` (RFC 6265bis §5.6)
      'Set-Cookie: =tp_console=AAAA; Path=/\r\nSet-Cookie: = tp_portal=y\r\n\r\nok';
  });
  gw = await startGateway(`
limits: {max_uri_length: 1kb, max_header_size: 4kb, max_headers: 30}
services:
  - name: echo
    url: ${up.url}
    routes:
      - {name: echo, paths: [/echo]}
      - {name: strip, paths: ["/strip/{id}"], strip_path: true}
      - {name: keep-host, paths: [/keep-host], preserve_host: true}
      - {name: public, paths: [/public]}
      - {name: exact-host, paths: [/h], hosts: [api.example.com]}
  - name: base
    url: ${up.url}/v1/
    routes:
      - {name: base, paths: [/base], strip_path: true}
      - {name: base-root, paths: [/], hosts: [base-root.test]}
  - name: admin
    url: ${admin.url}
    routes:
      - {name: admin, paths: [/admin]}
  - name: raw
    url: ${raw.url}
    routes:
      - {name: raw, paths: [/raw]}
`);
});

after(async () => {
  await gw.close();
  await Promise.all([up.close(), admin.close(), raw.close()]);
});

const last = () => up.requests[up.requests.length - 1]!;

test('forwards method, path, query and body; Via and X-Request-Id both ways', async () => {
  const r = await request(`${gw.url}/echo/a?b=1&c`, { method: 'POST', body: 'hello', headers: { 'content-type': 'text/plain' } });
  assert.equal(r.status, 200);
  const seen = last();
  assert.equal(seen.method, 'POST');
  assert.equal(seen.url, '/echo/a?b=1&c');
  assert.equal(seen.body.toString(), 'hello');
  assert.equal(seen.headers['content-length'], '5');
  assert.equal(seen.headers['via'], '1.1 turnpike');
  assert.equal(seen.headers.host, `127.0.0.1:${up.port}`);
  assert.match(r.headers['x-request-id'] as string, REQUEST_ID);
  assert.equal(seen.headers['x-request-id'], r.headers['x-request-id']);
  assert.equal(r.headers['via'], '1.1 turnpike');
  // a client's request id is passed through
  const again = await request(`${gw.url}/echo`);
  assert.notEqual(again.headers['x-request-id'], r.headers['x-request-id']);
  const r2 = await request(`${gw.url}/echo`, { headers: { 'x-request-id': 'abc-123' } });
  assert.equal(r2.headers['x-request-id'], 'abc-123');
  assert.equal(last().headers['x-request-id'], 'abc-123');
});

test('hop-by-hop request headers and those named in Connection are removed', async () => {
  const res = await rawRequest(gw.port,
    'GET /raw/x HTTP/1.1\r\nHost: gw.test\r\nConnection: keep-alive, X-Private, Host, Content-Length, X-Forwarded-For\r\n' +
    'X-Private: secret\r\nKeep-Alive: timeout=99\r\nTE: gzip;q=0.5\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n' +
    'Proxy-Connection: keep-alive\r\nX-Kept: yes\r\n\r\n', 800);
  assert.deepEqual(statuses(res.text), [200]);
  const got = raw.connections[raw.connections.length - 1]!.toString('latin1');
  for (const h of ['x-private', 'keep-alive', 'te:', 'upgrade', 'http2-settings', 'proxy-connection']) {
    assert.ok(!got.toLowerCase().includes(`\r\n${h}`), `origin received ${h}: ${got}`);
  }
  assert.match(got, /^GET \/raw\/x HTTP\/1\.1\r\n/);
  assert.match(got, /\r\nhost: 127\.0\.0\.1:\d+\r\n/i); // naming Host in Connection does not remove it
  assert.match(got, /\r\nx-forwarded-for: 127\.0\.0\.1\r\n/i);
  assert.match(got, /\r\nX-Kept: yes\r\n/);
});

test('Proxy-Authorization (a forward proxy\'s credentials) and Proxy (httpoxy, CVE-2016-5385) never reach the upstream, in any spelling', async () => {
  const res = await rawRequest(gw.port,
    'GET /raw/p HTTP/1.1\r\nHost: gw.test\r\nProxy-Authorization: Basic dXNlcjpwcm94eS1zZWNyZXQ=\r\n' +
    'Proxy: http://evil.example:8080\r\nProxy_Authorization: Basic c2Vjb25k\r\nX-Kept: yes\r\n\r\n', 800);
  assert.deepEqual(statuses(res.text), [200]);
  const got = raw.connections[raw.connections.length - 1]!.toString('latin1');
  assert.doesNotMatch(got, /\r\nproxy[-_:]/i, got);
  assert.ok(!got.includes('dXNlcjpwcm94eS1zZWNyZXQ=') && !got.includes('evil.example') && !got.includes('c2Vjb25k'), got);
  assert.match(got, /\r\nX-Kept: yes\r\n/);
});

test('TE: only its "trailers" goes on (the gateway relays trailers), and not for an HTTP/1.0 client', async () => {
  const origin = () => raw.connections[raw.connections.length - 1]!.toString('latin1');
  for (const [te, version, want] of [
    ['trailers', '1.1', 'trailers'], ['gzip, Trailers', '1.1', 'trailers'], ['deflate', '1.1', null], ['trailers', '1.0', null],
  ] as const) {
    const res = await rawRequest(gw.port, `GET /raw/te HTTP/${version}\r\nHost: gw.test\r\nConnection: TE\r\nTE: ${te}\r\n\r\n`, 800);
    assert.deepEqual(statuses(res.text), [200]);
    const got = origin().toLowerCase();
    const seen = got.match(/\r\nte: *([^\r]*)\r\n/g) ?? [];
    assert.deepEqual(seen, want === null ? [] : [`\r\nte: ${want}\r\n`], `${version} TE: ${te} -> ${got}`);
  }
});

test('hop-by-hop response headers and those named in Connection are removed; Set-Cookie kept whole, except the console\'s and the portal\'s session cookies', async () => {
  const r = await request(`${gw.url}/raw/y`);
  assert.equal(r.status, 200);
  assert.equal(r.body, 'ok');
  for (const h of ['x-secret', 'keep-alive', 'proxy-connection', 'upgrade']) assert.equal(r.headers[h], undefined, h);
  assert.deepEqual(r.headers['set-cookie'], ['a=1', 'b=2', 'tp_consoles=kept']);
  assert.equal(r.headers['via'], '1.1 origin, 1.1 turnpike');
});

test('a 426 Upgrade Required keeps its Upgrade field and says so in Connection (RFC 9110 §15.5.22, §7.8); other answers lose Upgrade', async () => {
  const up = await startUpstream((req, res) => {
    res.writeHead(req.url === '/426' ? 426 : 200, { upgrade: 'TLS/1.2, HTTP/1.1', connection: 'Upgrade', 'content-type': 'text/plain' }).end('switch');
  });
  const g = await startGateway(`services: [{name: u, url: ${up.url}, routes: [{paths: [/]}]}]\n`);
  try {
    const r = await request(`${g.url}/426`);
    assert.equal(r.status, 426);
    assert.equal(r.headers['upgrade'], 'TLS/1.2, HTTP/1.1');
    assert.match(String(r.headers['connection']), /upgrade/i);
    assert.equal(r.body, 'switch');
    const ok = await request(`${g.url}/x`);
    assert.equal(ok.status, 200);
    assert.equal(ok.headers['upgrade'], undefined);
    assert.doesNotMatch(String(ok.headers['connection']), /upgrade/i);
  } finally {
    await g.close();
    await up.close();
  }
});

test('forwarding headers from an untrusted client are discarded (default set: XFF, -Proto, -Host, Forwarded)', async () => {
  await request(`${gw.url}/echo`, {
    headers: {
      'x-forwarded-for': '6.6.6.6', 'x-forwarded-proto': 'https', 'x-forwarded-host': 'evil.example',
      forwarded: 'for=6.6.6.6;proto=https', 'x-real-ip': '6.6.6.6', 'x-forwarded-port': '1',
    },
  });
  const h = last().headers;
  assert.equal(h['x-forwarded-for'], '127.0.0.1');
  assert.equal(h['x-real-ip'], undefined); // not in the default set, and a client's copy is dropped
  assert.equal(h['x-forwarded-proto'], 'http');
  assert.equal(h['x-forwarded-host'], `127.0.0.1:${gw.port}`);
  assert.equal(h['forwarded'], `for=127.0.0.1;host="127.0.0.1:${gw.port}";proto=http`);
  assert.equal(h['x-forwarded-port'], undefined);
  assert.ok(!JSON.stringify(h).includes('6.6.6.6'));
});

test('forwarding headers from a trusted proxy are extended, and the client IP computed from them', async () => {
  const t = await startGateway(`
trusted_proxies: [127.0.0.0/8, 10.0.0.0/8]
forwarding_headers: [x-forwarded-for, x-forwarded-proto, x-forwarded-host, x-forwarded-port, x-real-ip, forwarded]
services:
  - name: echo
    url: ${up.url}
    routes: [{paths: [/]}]
`);
  try {
    await request(`${t.url}/x`, {
      headers: { 'x-forwarded-for': '203.0.113.9, 10.1.2.3', 'x-forwarded-proto': 'https', 'x-forwarded-host': 'api.example.com', forwarded: 'for=203.0.113.9' },
    });
    const h = last().headers;
    assert.equal(h['x-forwarded-for'], '203.0.113.9, 10.1.2.3, 127.0.0.1');
    assert.equal(h['x-real-ip'], '203.0.113.9'); // right-most untrusted hop
    assert.equal(h['x-forwarded-proto'], 'https');
    assert.equal(h['x-forwarded-host'], 'api.example.com');
    assert.match(h['forwarded'] as string, /^for=203\.0\.113\.9, for=127\.0\.0\.1;/);
    assert.equal(h['x-forwarded-port'], String(t.port));
    // a trusted proxy that sent X-Forwarded-* but no Forwarded: its hops are told in Forwarded too
    // (the first element the client's, with its scheme and Host), not only this hop from the proxy
    await request(`${t.url}/x`, {
      headers: { host: 'gw.test', 'x-forwarded-for': '203.0.113.9, 2001:db8::7, 10.1.2.3:4711', 'x-forwarded-proto': 'https, http', 'x-forwarded-host': 'api.example.com' },
    });
    assert.equal(last().headers['forwarded'],
      'for=203.0.113.9;proto=https;host="api.example.com", for="[2001:db8::7]", for="10.1.2.3:4711", for=127.0.0.1;host="gw.test";proto=http');
    await request(`${t.url}/x`, { headers: { host: 'gw.test', 'x-forwarded-proto': 'https' } });
    assert.equal(last().headers['forwarded'], 'for=unknown;proto=https, for=127.0.0.1;host="gw.test";proto=http');
    await request(`${t.url}/x`, { headers: { host: 'gw.test' } });
    assert.equal(last().headers['forwarded'], 'for=127.0.0.1;host="gw.test";proto=http');
    // a spoofed left-most entry cannot win: the right-most untrusted address is the client
    await request(`${t.url}/x`, { headers: { 'x-forwarded-for': '1.1.1.1, 198.51.100.7' } });
    assert.equal(last().headers['x-real-ip'], '198.51.100.7');
    // a chain of proxies that each appended its scheme: the list goes on (its first entry is the
    // client's); anything but schemes is replaced by this hop's
    for (const [sent, want] of [['https, http', 'https, http'], ['HTTPS', 'HTTPS'], ['https, javascript', 'http'], ['', 'http']] as const) {
      await request(`${t.url}/x`, { headers: { 'x-forwarded-proto': sent } });
      assert.equal(last().headers['x-forwarded-proto'], want, sent);
    }
    // so does a list of hosts; anything else is replaced by the Host this hop got
    for (const [sent, want] of [['api.example.com, lb.internal:8080', 'api.example.com, lb.internal:8080'], ['a.example, evil/x', 'gw.test']] as const) {
      await request(`${t.url}/x`, { headers: { host: 'gw.test', 'x-forwarded-host': sent } });
      assert.equal(last().headers['x-forwarded-host'], want, sent);
    }
  } finally {
    await t.close();
  }
});

test('a trusted proxy that sends only Forwarded (RFC 7239: HAProxy\'s option forwarded): its hops, scheme and host are the X-Forwarded-* ones and its client the client IP', async () => {
  const t = await startGateway(`
trusted_proxies: [127.0.0.0/8, 10.0.0.0/8]
forwarding_headers: [x-forwarded-for, x-forwarded-proto, x-forwarded-host, x-real-ip, forwarded]
services:
  - name: echo
    url: ${up.url}
    routes: [{paths: [/]}]
`);
  try {
    await request(`${t.url}/x`, { headers: { host: 'gw.test', forwarded: 'for=203.0.113.9;proto=https;host=api.example.com, for="[2001:db8::7]:4711", for=10.1.2.3' } });
    let h = last().headers;
    assert.equal(h['x-forwarded-for'], '203.0.113.9, 2001:db8::7, 10.1.2.3, 127.0.0.1');
    assert.equal(h['x-real-ip'], '2001:db8::7', 'the right-most address that is no trusted proxy');
    assert.equal(h['x-forwarded-proto'], 'https');
    assert.equal(h['x-forwarded-host'], 'api.example.com');
    assert.equal(h['forwarded'], 'for=203.0.113.9;proto=https;host=api.example.com, for="[2001:db8::7]:4711", for=10.1.2.3, for=127.0.0.1;host="gw.test";proto=http');
    // a quoted value holding a comma adds no hop; an element without an address adds `unknown`
    await request(`${t.url}/x`, { headers: { host: 'gw.test', forwarded: 'for="6.6.6.6, 7.7.7.7";proto=http, for=198.51.100.7' } });
    h = last().headers;
    assert.equal(h['x-forwarded-for'], 'unknown, 198.51.100.7, 127.0.0.1');
    assert.equal(h['x-real-ip'], '198.51.100.7');
    // no address in it, or malformed: this hop's values, as before
    for (const f of ['proto=https', 'garbage']) {
      await request(`${t.url}/x`, { headers: { host: 'gw.test', forwarded: f } });
      h = last().headers;
      assert.equal(h['x-forwarded-for'], '127.0.0.1', f);
      assert.equal(h['x-real-ip'], '127.0.0.1', f);
      assert.equal(h['x-forwarded-proto'], f === 'garbage' ? 'http' : 'https', f);
      assert.equal(h['x-forwarded-host'], 'gw.test', f);
    }
    // X-Forwarded-* sent too: those are the ones read, as before
    await request(`${t.url}/x`, { headers: { host: 'gw.test', 'x-forwarded-for': '192.0.2.1', forwarded: 'for=203.0.113.9;proto=https' } });
    h = last().headers;
    assert.equal(h['x-forwarded-for'], '192.0.2.1, 127.0.0.1');
    assert.equal(h['x-forwarded-proto'], 'http');
  } finally {
    await t.close();
  }
  // from an untrusted peer, Forwarded is replaced and nothing is taken from it
  await request(`${gw.url}/echo`, { headers: { forwarded: 'for=203.0.113.9;proto=https;host=api.example.com' } });
  const h = last().headers;
  assert.equal(h['x-forwarded-for'], '127.0.0.1');
  assert.equal(h['x-forwarded-proto'], 'http');
  assert.match(h['forwarded'] as string, /^for=127\.0\.0\.1;/);
});

test('x-forwarded-prefix (opt-in): the prefix strip_path removed, after a trusted proxy\'s own; never an untrusted client\'s', async () => {
  const t = await startGateway(`
trusted_proxies: [10.0.0.0/8]
forwarding_headers: [x-forwarded-for, x-forwarded-prefix]
services:
  - name: echo
    url: ${up.url}
    routes:
      - {paths: [/api/v1], strip_path: true}
      - {paths: ["/users/{id}/files"], strip_path: true}
      - {paths: [/kept]}
`);
  const tp = await startGateway(`
trusted_proxies: [127.0.0.0/8]
forwarding_headers: [x-forwarded-prefix]
services:
  - name: echo
    url: ${up.url}
    routes: [{paths: [/v1], strip_path: true}, {paths: [/plain]}]
`);
  try {
    await request(`${t.url}/api/v1/orders?x=1`, { headers: { 'x-forwarded-prefix': '/evil' } });
    assert.equal(last().url, '/orders?x=1');
    assert.equal(last().headers['x-forwarded-prefix'], '/api/v1');
    await request(`${t.url}/api/v1/`);
    assert.equal(last().headers['x-forwarded-prefix'], '/api/v1');
    await request(`${t.url}/api/v1`);
    assert.equal(last().headers['x-forwarded-prefix'], '/api/v1');
    await request(`${t.url}/users/42/files/a.txt`);
    assert.equal(last().url, '/a.txt');
    assert.equal(last().headers['x-forwarded-prefix'], '/users/42/files');
    // nothing stripped: no prefix to tell, and an untrusted client's copy is dropped
    await request(`${t.url}/kept/x`, { headers: { 'x-forwarded-prefix': '/evil' } });
    assert.equal(last().headers['x-forwarded-prefix'], undefined);
    // a trusted proxy that stripped its own prefix: ours goes after it
    await request(`${tp.url}/v1/a`, { headers: { 'x-forwarded-prefix': '/edge/' } });
    assert.equal(last().headers['x-forwarded-prefix'], '/edge/v1');
    await request(`${tp.url}/plain/a`, { headers: { 'x-forwarded-prefix': '/edge' } });
    assert.equal(last().headers['x-forwarded-prefix'], '/edge');
    // not in forwarding_headers (the default): nothing added
    await request(`${gw.url}/echo`);
    assert.equal(last().headers['x-forwarded-prefix'], undefined);
  } finally {
    await t.close();
    await tp.close();
  }
});

test('Host: missing, duplicated or malformed is 400 problem+json; HTTP/1.0 without Host is fine', async () => {
  for (const req of [
    'GET /echo HTTP/1.1\r\n\r\n',
    'GET /echo HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n',
    'GET /echo HTTP/1.1\r\nHost: a b\r\n\r\n',
    'GET /echo HTTP/1.1\r\nHost: a.example/evil\r\n\r\n',
    'GET /echo HTTP/1.1\r\nHost: a@b\r\n\r\n',
    // a port past 65535 (no TCP port), in Host or an absolute-form authority
    'GET /echo HTTP/1.1\r\nHost: a.example:99999\r\n\r\n',
    'GET http://a.example:65536/echo HTTP/1.1\r\nHost: a.example\r\n\r\n',
    // empty: an http URI with an empty host is invalid (RFC 9110 §4.2.1); nginx says 400 too
    'GET /echo HTTP/1.1\r\nHost: \r\n\r\n',
    'GET /echo HTTP/1.0\r\nHost:\r\n\r\n',
  ]) {
    const before = up.requests.length;
    const r = await rawRequest(gw.port, req);
    assert.equal(up.requests.length, before, `forwarded: ${JSON.stringify(req)}`);
    assert.deepEqual(statuses(r.text), [400], req);
    assert.match(r.text, /application\/problem\+json/);
    assert.ok(r.closed, `connection not closed for ${JSON.stringify(req)}`);
  }
  assert.deepEqual(statuses((await rawRequest(gw.port, 'GET /echo HTTP/1.1\r\nHost: a.example:65535\r\nConnection: close\r\n\r\n')).text), [200]);
  assert.deepEqual(statuses((await rawRequest(gw.port, 'GET /echo HTTP/1.1\r\nHost: [::1]:8080\r\nConnection: close\r\n\r\n')).text), [200]);
  const ok = await rawRequest(gw.port, 'GET /echo HTTP/1.0\r\n\r\n');
  assert.deepEqual(statuses(ok.text).length, 1);
  assert.match(ok.text, /^HTTP\/1\.1 200/);
  // no Host to tell the upstream about: no empty X-Forwarded-Host, no host= in Forwarded
  assert.equal(last().headers['x-forwarded-host'], undefined);
  assert.equal(last().headers.forwarded, 'for=127.0.0.1;proto=http');
});

test('absolute-form targets: the authority replaces Host; the origin sees origin-form', async () => {
  const r = await rawRequest(gw.port, 'GET http://api.example.com/h/1?q=2 HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n');
  assert.deepEqual(statuses(r.text), [200]);
  assert.equal(last().url, '/h/1?q=2');
  assert.equal(last().headers['x-forwarded-host'], 'api.example.com');
  const bad = await rawRequest(gw.port, 'GET ftp://x/echo HTTP/1.1\r\nHost: x\r\n\r\n');
  assert.deepEqual(statuses(bad.text), [400]);
});

test('fragments in the target are rejected; dot segments cannot escape a route', async () => {
  const frag = await rawRequest(gw.port, 'GET /echo#frag HTTP/1.1\r\nHost: x\r\n\r\n');
  assert.deepEqual(statuses(frag.text), [400]);
  const r = await request(`${gw.url}/public/%2e%2e/admin`);
  assert.equal(r.body, 'admin-area'); // routed by the normalized path, to the service that owns /admin
  const r2 = await rawRequest(gw.port, 'GET /public/../echo/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
  assert.deepEqual(statuses(r2.text), [200]);
  assert.equal(last().url, '/echo/x');
  const badPct = await request(`${gw.url}/echo/%zz`);
  assert.equal(badPct.status, 400);
});

test('414 for an over-long target, 431 for over-large or too many headers', async () => {
  const long = await request(`${gw.url}/echo/${'a'.repeat(2000)}`);
  assert.equal(long.status, 414);
  assert.equal(long.headers['content-type'], 'application/problem+json');
  const veryLong = await rawRequest(gw.port, `GET /echo/${'a'.repeat(20_000)} HTTP/1.1\r\nHost: x\r\n\r\n`);
  assert.deepEqual(statuses(veryLong.text), [414]);
  const big = await request(`${gw.url}/echo`, { headers: { 'x-big': 'b'.repeat(5000) } });
  assert.equal(big.status, 431);
  const huge = await rawRequest(gw.port, `GET /echo HTTP/1.1\r\nHost: x\r\nX-Huge: ${'h'.repeat(20_000)}\r\n\r\n`);
  assert.deepEqual(statuses(huge.text), [431]);
  const many: Record<string, string> = {};
  for (let i = 0; i < 40; i++) many[`x-h${i}`] = 'v';
  const r = await request(`${gw.url}/echo`, { headers: many });
  assert.equal(r.status, 431);
  const body = JSON.parse(r.body);
  assert.equal(body.status, 431);
  assert.equal(body.request_id, r.headers['x-request-id']);
});

test('404 and 405 are problem+json with the request id', async () => {
  const r = await request(`${gw.url}/nothing-here`);
  assert.equal(r.status, 404);
  assert.equal(r.headers['content-type'], 'application/problem+json');
  const p = JSON.parse(r.body);
  assert.deepEqual(Object.keys(p).sort(), ['detail', 'request_id', 'status', 'title', 'type']);
  assert.equal(p.request_id, r.headers['x-request-id']);
});

test('strip_path, path params, a service base path, and preserve_host', async () => {
  await request(`${gw.url}/strip/42/rest?x=1`);
  assert.equal(last().url, '/rest?x=1');
  await request(`${gw.url}/strip/42`);
  assert.equal(last().url, '/');
  await request(`${gw.url}/base/items`);
  assert.equal(last().url, '/v1/items');
  await request(`${gw.url}/base`);
  assert.equal(last().url, '/v1');
  await request(`${gw.url}/base?q=1`);
  assert.equal(last().url, '/v1?q=1');
  // a trailing slash the client sent stays (as Kong sends it): /v1 and /v1/ may be different resources
  await request(`${gw.url}/base/`);
  assert.equal(last().url, '/v1/');
  await request(`${gw.url}/base/?q=1`);
  assert.equal(last().url, '/v1/?q=1');
  await request(`${gw.url}/strip/42/`);
  assert.equal(last().url, '/');
  // without strip_path the whole path follows the base path, `/` included
  await request(`${gw.url}/`, { headers: { host: 'base-root.test' } });
  assert.equal(last().url, '/v1/');
  await request(`${gw.url}/?a`, { headers: { host: 'base-root.test' } });
  assert.equal(last().url, '/v1/?a');
  await request(`${gw.url}/keep-host`, { headers: { host: 'client.example:1234' } });
  assert.equal(last().headers.host, 'client.example:1234');
  await request(`${gw.url}/echo`, { headers: { host: 'client.example' } });
  assert.equal(last().headers.host, `127.0.0.1:${up.port}`);
});

test('Upgrade: h2c (or any upgrade) is never forwarded; the request is served as plain HTTP/1.1', async () => {
  const r = await rawRequest(gw.port,
    'GET /echo HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n', 800);
  assert.deepEqual(statuses(r.text), [200]);
  assert.equal(last().headers.upgrade, undefined);
  assert.equal(last().headers['http2-settings'], undefined);
  const ws = await rawRequest(gw.port,
    'GET /echo HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n', 800);
  assert.ok(!ws.text.startsWith('HTTP/1.1 101'));
  assert.equal(last().headers.upgrade, undefined);
});

test('a POST offering Upgrade: h2c (curl --http2, Java HttpClient) is served as HTTP/1.1 with its body, and the connection stays usable', async () => {
  const h2c = 'Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n';
  const r = await rawRequest(gw.port,
    `POST /echo HTTP/1.1\r\nHost: x\r\n${h2c}Content-Type: text/plain\r\nContent-Length: 11\r\n\r\nhello world` +
    `PUT /echo HTTP/1.1\r\nHost: x\r\n${h2c}Transfer-Encoding: chunked\r\n\r\n5\r\nchunk\r\n0\r\n\r\n` +
    'GET /echo HTTP/1.1\r\nHost: x\r\n\r\n', 800);
  assert.deepEqual(statuses(r.text), [200, 200, 200], r.text);
  assert.ok(!r.closed, 'keep-alive');
  const seen = last();
  assert.equal(seen.method, 'GET');
  const [post, put] = up.requests.slice(-3);
  assert.equal(post!.method, 'POST');
  assert.equal(post!.body.toString(), 'hello world');
  assert.equal(put!.body.toString(), 'chunk');
  for (const q of [post!, put!]) {
    assert.equal(q.headers.upgrade, undefined);
    assert.equal(q.headers['http2-settings'], undefined);
    assert.doesNotMatch(String(q.headers.connection ?? ''), /upgrade/i);
  }
  // Many on one connection: each goes back to a parser, nothing piles up on the socket.
  const warnings: string[] = [];
  const onWarning = (w: Error) => warnings.push(w.name);
  process.on('warning', onWarning);
  try {
    const one = `POST /echo HTTP/1.1\r\nHost: x\r\n${h2c}Content-Length: 2\r\n\r\nhi`;
    const many = await rawRequest(gw.port, one.repeat(20), 800);
    assert.equal(statuses(many.text).length, 20);
    assert.ok(statuses(many.text).every((s) => s === 200));
    await sleep(50);
    assert.deepEqual(warnings, []);
  } finally {
    process.off('warning', onWarning);
  }
});

test('1xx: 103 Early Hints forwarded; 100-continue answered by the gateway after routing', async () => {
  const hints = await startUpstream((_req, res) => {
    res.writeEarlyHints({ link: '</style.css>; rel=preload; as=style' });
    res.writeHead(200, { 'content-type': 'text/plain' }).end('after hints');
  });
  const t = await startGateway(`services:\n  - name: h\n    url: ${hints.url}\n    routes: [{paths: [/]}]\n`);
  try {
    const r = await request(`${t.url}/x`);
    assert.equal(r.body, 'after hints');
    assert.deepEqual(r.informational.map((i) => i.status), [103]);
    assert.equal(r.informational[0]!.headers['link'], '</style.css>; rel=preload; as=style');
    // Expect: 100-continue: a 100 for a routable request, then the upstream's answer
    const cont = await rawRequest(t.port, 'POST /x HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n', 300);
    assert.match(cont.text, /^HTTP\/1\.1 100 Continue\r\n/);
    // no 100 for a request that has no route
    const nr = await rawRequest(gw.port, 'POST /nothing HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n', 300);
    assert.deepEqual(statuses(nr.text), [404]);
  } finally {
    await t.close();
    await hints.close();
  }
});

test('HEAD, 204 and 304 responses carry no body', async () => {
  const u = await startUpstream((req, res) => {
    if (req.url === '/204') return res.writeHead(204).end();
    if (req.url === '/304') return res.writeHead(304, { etag: '"x"' }).end();
    res.writeHead(200, { 'content-type': 'text/plain', 'content-length': '11' }).end(req.method === 'HEAD' ? undefined : 'hello world');
  });
  const t = await startGateway(`services:\n  - name: h\n    url: ${u.url}\n    routes: [{paths: [/]}]\n`);
  try {
    const out = await rawRequest(t.port,
      'HEAD /x HTTP/1.1\r\nHost: x\r\n\r\nGET /204 HTTP/1.1\r\nHost: x\r\n\r\nGET /304 HTTP/1.1\r\nHost: x\r\n\r\nGET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    assert.deepEqual(statuses(out.text), [200, 204, 304, 200]);
    const parts = out.text.split(/(?=HTTP\/1\.1 )/);
    assert.match(parts[0]!, /content-length: 11\r\n/i);
    assert.ok(parts[0]!.endsWith('\r\n\r\n'), 'HEAD response had a body');
    assert.ok(parts[1]!.endsWith('\r\n\r\n'), '204 had a body');
    assert.ok(parts[2]!.endsWith('\r\n\r\n'), '304 had a body');
    assert.ok(parts[3]!.endsWith('hello world'));
  } finally {
    await t.close();
    await u.close();
  }
});

test('chunked request bodies are forwarded whole', async () => {
  const r = await rawRequest(gw.port,
    'POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n');
  assert.deepEqual(statuses(r.text), [200]);
  assert.equal(last().body.toString(), 'hello world');
  // framing is re-done for the upstream: chunked, or a Content-Length when the body already arrived whole
  assert.ok(last().headers['transfer-encoding'] === 'chunked' || last().headers['content-length'] === '11');
});

// (with h2c, the plain listener sniffs each connection and hands HTTP/1.1 ones to the HTTP server)
for (const h2c of [false, true]) test(`timeouts${h2c ? ' (h2c on the plain listener)' : ''}: slow headers (slowloris), an idle body, and idle keep-alive connections are cut`, async () => {
  const t = await startGateway(`${h2c ? 'http2: {h2c: true}' : ''}
timeouts: {client_header: 400ms, client_body: 300ms, keepalive: 300ms}
services:
  - name: echo
    url: ${up.url}
    routes: [{paths: [/]}]
`);
  try {
    // slowloris: one header line at a time, never finishing
    const start = Date.now();
    const closed = await new Promise<{ text: string; ms: number }>((resolve) => {
      const s = connect(t.port, '127.0.0.1');
      let text = '';
      let n = 0;
      s.write('GET / HTTP/1.1\r\nHost: x\r\n');
      const iv = setInterval(() => { if (!s.destroyed) s.write(`X-Slow-${n++}: 1\r\n`); }, 100);
      s.on('data', (d) => (text += d.toString()));
      s.on('close', () => { clearInterval(iv); resolve({ text, ms: Date.now() - start }); });
      s.on('error', () => {});
      setTimeout(() => s.destroy(), 5000);
    });
    assert.ok(closed.ms < 3000, `slowloris connection lived ${closed.ms} ms`);
    assert.match(closed.text, /^HTTP\/1\.1 408/);
    // a body that stops arriving
    const body = await rawRequest(t.port, 'POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab', 3000);
    assert.deepEqual(statuses(body.text), [408]);
    assert.ok(body.closed);
    // idle keep-alive
    const idle = await new Promise<number>((resolve) => {
      const s = connect(t.port, '127.0.0.1');
      const t0 = Date.now();
      s.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
      s.on('data', () => {});
      s.on('close', () => resolve(Date.now() - t0));
      s.on('error', () => {});
      setTimeout(() => s.destroy(), 5000);
    });
    assert.ok(idle < 2500, `idle keep-alive connection lived ${idle} ms`);
  } finally {
    await t.close();
  }
});

test('CONNECT is refused with 405, with Allow, Date and no-store (RFC 9110 §15.5.6, §6.6.1)', async () => {
  const r = await rawRequest(gw.port, 'CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n');
  assert.deepEqual(statuses(r.text), [405]);
  assert.match(r.text, /\r\nallow: GET, HEAD, POST/i);
  assert.match(r.text, /\r\ndate: [A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} /i);
  assert.match(r.text, /\r\ncache-control: no-store\r\n/i);
  // the request id, as on every response (the client's when valid)
  const own = await rawRequest(gw.port, 'CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nX-Request-Id: tunnel-1\r\n\r\n');
  assert.match(own.text, /\r\nx-request-id: tunnel-1\r\n/i);
  assert.match(own.text, /"request_id":"tunnel-1"/);
  await sleep(10);
});

test('an unknown method is 501, an unsupported HTTP version 505, a malformed request line still 400 (problem+json)', async () => {
  const foo = await rawRequest(gw.port, 'FOO /echo HTTP/1.1\r\nHost: x\r\n\r\n');
  assert.deepEqual(statuses(foo.text), [501]);
  assert.match(foo.text, /urn:turnpike:problem:not-implemented/);
  const v3 = await rawRequest(gw.port, 'GET /echo HTTP/3.0\r\nHost: x\r\n\r\n');
  assert.deepEqual(statuses(v3.text), [505]);
  const bad = await rawRequest(gw.port, 'GET /echo HTTP/1.1 HTTP/1.1\r\nHost: x\r\n\r\n');
  assert.deepEqual(statuses(bad.text), [400]);
});

test('an Expect other than 100-continue: 417 problem+json, nothing forwarded', async () => {
  const before = up.requests.length;
  const r = await request(`${gw.url}/echo`, { method: 'POST', headers: { expect: 'bogus', 'content-length': '2' }, body: 'hi' });
  assert.equal(r.status, 417);
  assert.equal(r.headers['content-type'], 'application/problem+json');
  assert.match(r.body, /urn:turnpike:problem:expectation-failed/);
  assert.match(r.headers['x-request-id'] as string, REQUEST_ID);
  assert.equal(JSON.parse(r.body).request_id, r.headers['x-request-id']);
  assert.equal(up.requests.length, before);
});

test('bytes after a request with Connection: close: that request is answered, then the connection closes (RFC 9112 §9.6)', async () => {
  const before = up.requests.length;
  const r = await rawRequest(gw.port,
    'POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}' +
    'GET /echo?second HTTP/1.1\r\nHost: x\r\n\r\n');
  assert.deepEqual(statuses(r.text), [200], r.text);
  assert.ok(r.closed);
  assert.equal(up.requests.length, before + 1, 'only the first request reaches the upstream');
  // The same for an HTTP/1.0 request without keep-alive, and after a keep-alive request.
  const r10 = await rawRequest(gw.port, 'GET /echo HTTP/1.0\r\nHost: x\r\n\r\nGET /echo HTTP/1.0\r\nHost: x\r\n\r\n');
  assert.deepEqual(statuses(r10.text.replace(/HTTP\/1\.0/g, 'HTTP/1.1')), [200], r10.text);
  const three = await rawRequest(gw.port,
    'GET /echo HTTP/1.1\r\nHost: x\r\n\r\nGET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\nGET /echo HTTP/1.1\r\nHost: x\r\n\r\n');
  assert.deepEqual(statuses(three.text), [200, 200], three.text);
  assert.ok(three.closed);
});

test('fields spelled with underscores that stand for the gateway\'s own never reach the upstream; others do', async () => {
  await request(`${gw.url}/echo`, {
    headers: { 'X_Forwarded_For': '6.6.6.6', 'X_Consumer_ID': 'admin', 'x_real_ip': '6.6.6.6', 'X_Request_Id': 'forged', 'my_custom': 'kept' },
  });
  const h = last().headers;
  assert.equal(h['x_consumer_id'], undefined);
  assert.equal(h['x_forwarded_for'], undefined);
  assert.equal(h['x_real_ip'], undefined);
  assert.equal(h['x_request_id'], undefined);
  assert.equal(h['my_custom'], 'kept');
  assert.doesNotMatch(String(h['x-forwarded-for']), /6\.6\.6\.6/);
});

test('a client X-Request-Id with markup or spaces is replaced by the gateway\'s own', async () => {
  const bad = await request(`${gw.url}/echo`, { headers: { 'x-request-id': '"><script>alert(1)</script>' } });
  assert.match(String(bad.headers['x-request-id']), REQUEST_ID);
  assert.match(String(last().headers['x-request-id']), REQUEST_ID);
  const ok = await request(`${gw.url}/echo`, { headers: { 'x-request-id': 'Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8' } });
  assert.equal(ok.headers['x-request-id'], 'Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8');
});

test('a partly sent request body never leaves its upstream connection reusable', async () => {
  const before = raw.connections.length;
  await new Promise<void>((resolve) => {
    const s = connect(gw.port, '127.0.0.1');
    s.write('POST /raw/partial HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789');
    s.on('error', () => {});
    setTimeout(() => { s.destroy(); resolve(); }, 200);
  });
  await sleep(100);
  const r = await request(`${gw.url}/raw/after`);
  assert.equal(r.status, 200);
  const conns = raw.connections.slice(before).map((b) => b.toString('latin1'));
  const partial = conns.find((c) => c.includes('/raw/partial'));
  assert.ok(partial, 'origin never saw the partial request');
  assert.ok(!partial.includes('/raw/after'), 'the next request reused the connection of an incomplete body');
  assert.ok(conns.some((c) => c.startsWith('GET /raw/after')));
});

test('pipelined requests of a client that disconnects are all ended, upstream too', async () => {
  let aborted = 0;
  const slow = await startUpstream((_req, res) => {
    res.on('close', () => { if (!res.writableFinished) aborted++; });
    setTimeout(() => res.end('late'), 1000);
  });
  const t = await startGateway(`services:\n  - name: e\n    url: ${slow.url}\n    routes: [{paths: [/]}]\n`);
  try {
    const s = connect(t.port, '127.0.0.1');
    s.on('error', () => {});
    s.write('GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\nGET /c HTTP/1.1\r\nHost: x\r\n\r\n');
    await sleep(150);
    s.destroy();
    await sleep(150);
    assert.equal(t.gw.inFlight, 0);
    assert.equal(aborted, 3);
  } finally {
    await t.close();
    await slow.close();
  }
});

test('HTTP versions other than 1.x get 505', async () => {
  const r = await rawRequest(gw.port, 'GET / HTTP/2.0\r\nHost: x\r\n\r\n');
  assert.deepEqual(statuses(r.text), [505]);
});

test('Max-Forwards: OPTIONS with 0 is answered by the gateway, otherwise decremented; TRACE is never forwarded', async () => {
  const before = up.requests.length;
  const zero = await request(`${gw.url}/echo`, { method: 'OPTIONS', headers: { 'max-forwards': '0' } });
  // An OPTIONS answer without content says Content-Length: 0, which a 204 may not (RFC 9110 §9.3.7, §8.6).
  assert.equal(zero.status, 200);
  assert.equal(zero.headers['content-length'], '0');
  assert.ok(zero.headers.allow);
  assert.equal(up.requests.length, before);
  await request(`${gw.url}/echo`, { method: 'OPTIONS', headers: { 'max-forwards': '3' } });
  assert.equal(last().headers['max-forwards'], '2');
  await request(`${gw.url}/echo`, { method: 'GET', headers: { 'max-forwards': '3' } });
  assert.equal(last().headers['max-forwards'], '3');
  const trace = await request(`${gw.url}/echo`, { method: 'TRACE' });
  assert.equal(trace.status, 405);
  assert.ok(trace.headers.allow, 'a 405 lists what is allowed (RFC 9110 §15.5.6)');
  assert.doesNotMatch(String(trace.headers.allow), /TRACE/);
  // A huge Max-Forwards is still 1*DIGIT (decremented, not refused).
  await request(`${gw.url}/echo`, { method: 'OPTIONS', headers: { 'max-forwards': '123456789012' } });
  assert.equal(last().headers['max-forwards'], '123456789011');
  assert.equal(up.requests.length, before + 3);
});

/** The trailer section of a chunked answer to `GET /t` (TE: trailers), read off a raw socket. */
function trailersOf(port: number): Promise<string> {
  return new Promise<string>((resolve, reject) => {
    const s = connect(port, '127.0.0.1');
    let buf = '';
    s.on('data', (d) => { buf += d.toString('latin1'); if (buf.endsWith('\r\n\r\n') && buf.includes('\r\n0\r\n')) { s.end(); resolve(buf.slice(buf.indexOf('\r\n0\r\n') + 5)); } });
    s.on('error', reject);
    s.write('GET /t HTTP/1.1\r\nHost: x\r\nTE: trailers\r\nConnection: close\r\n\r\n');
  });
}

test('trailers: end-to-end ones pass; framing, routing, auth, cookies and response controls never do (RFC 9110 §6.5.1)', async () => {
  const origin = await startUpstream((_req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain', trailer: 'x-checksum, set-cookie' });
    res.write('body');
    res.addTrailers([['X-Checksum', 'abc'], ['Set-Cookie', 'sid=tossed'], ['Content-Type', 'text/html'], ['Location', '/elsewhere'], ['Authorization', 'Bearer x'], ['Cache-Control', 'public']]);
    res.end();
  });
  const g = await startGateway(`services:\n  - name: t\n    url: ${origin.url}\n    routes: [{paths: [/t]}]\n`);
  try {
    const tail = await trailersOf(g.port);
    assert.match(tail, /^X-Checksum: abc\r\n/im);
    for (const f of ['set-cookie', 'content-type', 'location', 'authorization', 'cache-control']) assert.doesNotMatch(tail, new RegExp(`^${f}:`, 'im'), f);
  } finally {
    await g.close();
    await origin.close();
  }
});

test('trailers: a field the upstream\'s Connection names is connection-specific in the trailers too, never relayed (RFC 9110 §7.6.1)', async () => {
  const origin = await startRawOrigin((data) => (data.includes('\r\n\r\n') ? 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n' +
    'Connection: X-Hop, close\r\nTrailer: X-Hop, X-Sum\r\n\r\n4\r\nbody\r\n0\r\nX-Hop: secret-hop\r\nX-Sum: abc\r\n\r\n' : null));
  const g = await startGateway(`services:\n  - name: t\n    url: ${origin.url}\n    routes: [{paths: [/t]}]\n`);
  try {
    const tail = await trailersOf(g.port);
    assert.match(tail, /^X-Sum: abc\r\n/im);
    assert.doesNotMatch(tail, /x-hop/i, tail);
  } finally {
    await g.close();
    await origin.close();
  }
});

test('a response head the upstream sends alone (SSE, long poll) reaches an HTTP/1.1 client before any body byte', async () => {
  let release!: () => void;
  const held = new Promise<void>((r) => { release = r; });
  const sse = await startUpstream((_req, res) => {
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
    res.flushHeaders();
    void held.then(() => res.end('data: first\n\n'));
  });
  const g = await startGateway(`services: [{name: sse, url: "${sse.url}", routes: [{paths: [/events]}]}]`);
  const sock = connect(g.port, '127.0.0.1');
  try {
    let got = '';
    const head = await new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no response head while the body is held; got ${JSON.stringify(got)}`)), 10_000);
      sock.on('data', (d) => {
        got += d.toString('latin1');
        if (got.includes('\r\n\r\n')) { clearTimeout(timer); resolve(got); }
      });
      sock.write('GET /events HTTP/1.1\r\nHost: gw.test\r\n\r\n');
    });
    assert.match(head, /^HTTP\/1\.1 200 /);
    assert.match(head, /\r\ncontent-type: text\/event-stream\r\n/i);
    assert.ok(!head.includes('data: first'), head);
    release();
    await eventuallyIncludes(() => got, 'data: first');
  } finally {
    release();
    sock.destroy();
    await g.close();
    await sse.close();
  }
});

async function eventuallyIncludes(text: () => string, want: string): Promise<void> {
  for (let i = 0; i < 200 && !text().includes(want); i++) await sleep(50);
  assert.ok(text().includes(want), text());
}
