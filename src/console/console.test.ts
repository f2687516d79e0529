/** The console's server side: sign-in, the session cookie, CSRF on changes, the live event stream. */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { createServer as createHttpsServer, request as httpsRequest } from 'node:https';
import type { AddressInfo } from 'node:net';
import { makeCa } from '../../test/certs.js';
import { request, startGateway, startUpstream, type TestGateway, type TestUpstream } from '../../test/helpers.js';

const ADMIN = 'console-admin-token-0123456789';
const READER = 'console-reader-token-012345678';
let gw: TestGateway;
let up: TestUpstream;
let admin: string;

before(async () => {
  up = await startUpstream();
  gw = await startGateway(`
admin: {listen: 127.0.0.1:0, tokens: [{name: ops, token: ${ADMIN}, role: admin}, {name: viewer, token: ${READER}, role: read-only}]}
analytics: {enabled: true}
services:
  - name: api
    url: ${up.url}
    routes: [{name: hello, paths: [/hello]}]
`);
  admin = gw.adminUrl!;
});
after(async () => {
  await gw?.close();
  await up?.close();
});

async function login(token: string, headers: Record<string, string> = {}) {
  const r = await request(`${admin}/console/api/login`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify({ token }) });
  const cookie = String(r.headers['set-cookie'] ?? '').split(';')[0]!;
  return { r, cookie, body: r.body ? JSON.parse(r.body) : null };
}

test('sign-in: a wrong token is 401 problem+json and sets no cookie; the right one gives an httpOnly SameSite=Strict cookie and a CSRF token; the token is never echoed', async () => {
  assert.equal((await request(`${admin}/console/api/session`)).status, 401);
  const bad = await login('nope-nope-nope');
  assert.equal(bad.r.status, 401);
  assert.equal(bad.r.headers['content-type'], 'application/problem+json');
  assert.equal(bad.r.headers['set-cookie'], undefined);
  const ok = await login(ADMIN);
  assert.equal(ok.r.status, 200);
  const setCookie = String(ok.r.headers['set-cookie']);
  assert.match(setCookie, /^tp_console=[A-Za-z0-9_-]{40,}; Path=\/; HttpOnly; SameSite=Strict; Max-Age=\d+$/);
  assert.equal(ok.body.name, 'ops');
  assert.equal(ok.body.role, 'admin');
  assert.ok(ok.body.csrf.length >= 40);
  assert.doesNotMatch(ok.r.body + setCookie, new RegExp(ADMIN));
  const s = await request(`${admin}/console/api/session`, { headers: { cookie: ok.cookie } });
  assert.equal(s.status, 200);
  assert.equal(JSON.parse(s.body).csrf, ok.body.csrf);
  // Hostile sign-in bodies.
  for (const [type, body] of [['text/plain', `{"token":"${ADMIN}"}`], ['application/json', '{"token":'], ['application/json', '{"token": 5}'], ['application/json', JSON.stringify({ token: 'x'.repeat(10_000) })]] as const) {
    const r = await request(`${admin}/console/api/login`, { method: 'POST', headers: { 'content-type': type }, body });
    assert.ok(r.status >= 400 && r.status < 500, `${type} ${body.slice(0, 20)} -> ${r.status}`);
    assert.equal(r.headers['content-type'], 'application/problem+json');
  }
});

test('the session stands for its token on the admin listener: reads pass; a change without the CSRF token, with a wrong one or from another origin is 403; with it, it passes; a read-only session cannot change', async () => {
  const { cookie, body } = await login(ADMIN);
  assert.equal((await request(`${admin}/metrics`, { headers: { cookie } })).status, 200);
  assert.equal((await request(`${admin}/metrics`)).status, 401, 'no cookie, no token');
  assert.equal((await request(`${admin}/metrics`, { headers: { cookie: 'tp_console=forged-forged-forged-forged-forged' } })).status, 401);
  const purge = (headers: Record<string, string>) => request(`${admin}/cache`, { method: 'DELETE', headers: { cookie, ...headers } });
  assert.equal((await purge({})).status, 403, 'no CSRF token');
  assert.equal((await purge({ 'x-csrf-token': 'x'.repeat(43) })).status, 403, 'forged CSRF token');
  assert.equal((await purge({ 'x-csrf-token': body.csrf, origin: 'https://evil.example' })).status, 403, 'another origin');
  const okPurge = await purge({ 'x-csrf-token': body.csrf });
  assert.notEqual(okPurge.status, 403);
  assert.notEqual(okPurge.status, 401);
  const reader = await login(READER);
  assert.equal((await request(`${admin}/cache`, { method: 'DELETE', headers: { cookie: reader.cookie, 'x-csrf-token': reader.body.csrf } })).status, 403, 'read-only');
  assert.equal((await request(`${admin}/analytics`, { headers: { cookie: reader.cookie } })).status, 200);
});

test('behind a TLS proxy (the page is https): the session cookie is __Host-tp_console (Secure, Path=/, no Domain: no sibling host nor plain-HTTP page can toss one), and so is its clearing; from an http page it is tp_console', async () => {
  // (the admin listener is plain HTTP: TLS is a proxy's in front, here a real one)
  const ca = makeCa();
  const leaf = ca.issue('127.0.0.1');
  const front = createHttpsServer({ cert: leaf.cert, key: leaf.key }, (req, res) => {
    const back = httpRequest(`${admin}${req.url}`, { method: req.method, headers: req.headers }, (r) => {
      res.writeHead(r.statusCode!, r.headers);
      r.pipe(res);
    });
    req.pipe(back);
  });
  await new Promise<void>((r) => front.listen(0, '127.0.0.1', r));
  const origin = `https://127.0.0.1:${(front.address() as AddressInfo).port}`;
  const call = (path: string, headers: Record<string, string>, body?: string) => new Promise<{ status: number; cookie: string; body: string }>((resolve, reject) => {
    const q = httpsRequest(`${origin}${path}`, { method: body === undefined ? 'GET' : 'POST', ca: ca.cert, headers: { ...(body === undefined ? {} : { 'content-type': 'application/json', origin }), ...headers } }, (r) => {
      let b = '';
      r.setEncoding('utf8').on('data', (c: string) => (b += c)).on('end', () => resolve({ status: r.statusCode!, cookie: String(r.headers['set-cookie'] ?? ''), body: b }));
    });
    q.on('error', reject);
    q.end(body);
  });
  try {
    const signIn = await call('/console/api/login', {}, JSON.stringify({ token: ADMIN }));
    assert.equal(signIn.status, 200, signIn.body);
    assert.match(signIn.cookie, /^__Host-tp_console=[A-Za-z0-9_-]{40,}; Path=\/; HttpOnly; SameSite=Strict; Max-Age=\d+; Secure$/);
    assert.doesNotMatch(signIn.cookie, /Domain/i);
    const id = signIn.cookie.split(';')[0]!.split('=')[1]!;
    const csrf = JSON.parse(signIn.body).csrf as string;
    assert.equal((await call('/console/api/session', { cookie: `__Host-tp_console=${id}` })).status, 200);
    // the id under the name any page can set is no session; nor does a tossed tp_console beside it
    // (a plain-HTTP sibling's) take its place
    assert.equal((await call('/console/api/session', { cookie: `tp_console=${id}` })).status, 401);
    const plain = gw.gw.console!.sessions.create({ name: 'viewer', role: 'read-only' }, READER);
    assert.equal((await request(`${admin}/console/api/session`, { headers: { cookie: `tp_console=${plain.id}` } })).status, 200);
    assert.equal((await call('/console/api/session', { cookie: `__Host-tp_console=${plain.id}` })).status, 401);
    const both = await call('/console/api/session', { cookie: `tp_console=${plain.id}; __Host-tp_console=${id}` });
    assert.equal(JSON.parse(both.body).name, 'ops');
    // an http:// page of the same host (a plain-HTTP listener, a MITM'd page) makes no change to the https page's session
    const fromHttp = await call('/console/api/logout', { cookie: `__Host-tp_console=${id}`, 'x-csrf-token': csrf, origin: origin.replace('https:', 'http:') }, '');
    assert.equal(fromHttp.status, 403, fromHttp.body);
    const out = await call('/console/api/logout', { cookie: `__Host-tp_console=${id}`, 'x-csrf-token': csrf }, '');
    assert.equal(out.status, 204);
    assert.match(out.cookie, /^__Host-tp_console=; Path=\/; .*Max-Age=0; Secure$/);
    assert.equal((await call('/console/api/session', { cookie: `__Host-tp_console=${id}` })).status, 401);
  } finally {
    front.closeAllConnections();
    await new Promise<void>((r) => front.close(() => r()));
    ca.cleanup();
  }
  const host = new URL(admin).host;
  const http = await login(ADMIN, { origin: `http://${host}` });
  assert.equal(http.r.status, 200);
  assert.match(String(http.r.headers['set-cookie']), /^tp_console=/);
  assert.doesNotMatch(String(http.r.headers['set-cookie']), /Secure/i);
});

test('sign-out needs the CSRF token and ends the session; too many failed sign-ins from one address are 429', async () => {
  const { cookie, body } = await login(ADMIN);
  assert.equal((await request(`${admin}/console/api/logout`, { method: 'POST', headers: { cookie } })).status, 403);
  const out = await request(`${admin}/console/api/logout`, { method: 'POST', headers: { cookie, 'x-csrf-token': body.csrf } });
  assert.equal(out.status, 204);
  assert.match(String(out.headers['set-cookie']), /Max-Age=0/);
  assert.equal((await request(`${admin}/console/api/session`, { headers: { cookie } })).status, 401);
  let last = 0;
  for (let i = 0; i < 12; i++) last = (await login(`wrong-${i}-xxxxxxxx`)).r.status;
  assert.equal(last, 429);
});

test('the event stream: refused without a session; with one, a stats event every second whose numbers follow the traffic; it ends when the session ends', async () => {
  assert.equal((await request(`${admin}/console/api/events`)).status, 401);
  // (sign-ins from this address are blocked for a minute by the previous test: the session is made directly)
  const events: { event: string; data: Record<string, unknown> }[] = [];
  const session = gw.gw.console!.sessions.create({ name: 'ops', role: 'admin' });
  const cookie = `tp_console=${session.id}`;
  const done = new Promise<void>((resolve, reject) => {
    const req = httpRequest(`${admin}/console/api/events`, { headers: { cookie } }, (res) => {
      assert.equal(res.statusCode, 200);
      assert.match(String(res.headers['content-type']), /^text\/event-stream/);
      let buf = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => {
        buf += c;
        let i;
        while ((i = buf.indexOf('\n\n')) >= 0) {
          const frame = buf.slice(0, i);
          buf = buf.slice(i + 2);
          const event = /^event: (.*)$/m.exec(frame)?.[1];
          const data = /^data: (.*)$/m.exec(frame)?.[1];
          if (event && data) events.push({ event, data: JSON.parse(data) });
        }
      });
      res.on('end', () => resolve());
    });
    req.on('error', reject);
    req.end();
  });
  const until = async (pred: () => boolean, ms = 5000) => {
    const end = Date.now() + ms;
    while (!pred() && Date.now() < end) await new Promise((r) => setTimeout(r, 50));
    assert.ok(pred(), JSON.stringify(events.at(-1)));
  };
  await until(() => events.length >= 1);
  const before = (events.at(-1)!.data['totals'] as { rps: number }).rps;
  for (let i = 0; i < 30; i++) assert.equal((await request(`${gw.url}/hello`)).status, 200);
  await until(() => ((events.at(-1)!.data['totals'] as { rps: number }).rps > before));
  const last = events.at(-1)!.data as { analytics: boolean; services: { name: string }[]; routes: { name: string }[]; upstreams: { targets: number } };
  assert.equal(last.analytics, true);
  assert.deepEqual(last.services.map((s) => s.name), ['api']);
  assert.deepEqual(last.routes.map((r) => r.name), ['hello']);
  gw.gw.console!.sessions.end(session.id);
  await done;
});

test('the page: served with a strict CSP when built; only its own files', async () => {
  const built = existsSync('dist/console-ui/index.html');
  const page = await request(`${admin}/console/`);
  if (built) {
    assert.equal(page.status, 200);
    assert.match(String(page.headers['content-type']), /^text\/html/);
    assert.match(String(page.headers['content-security-policy']), /script-src 'self'/);
    assert.equal(page.headers['x-frame-options'], 'DENY');
  } else {
    assert.equal(page.status, 404);
  }
  assert.equal((await request(`${admin}/console`)).status, 308);
  for (const p of ['/console/handler.js', '/console/../package.json', '/console/%2e%2e/package.json', '/console/session.js']) {
    const r = await request(`${admin}${p}`);
    assert.ok(r.status === 404 || r.status === 401, `${p}: ${r.status}`);
    assert.doesNotMatch(r.body, /"name": *"turnpike"/);
  }
});

test('rotating a token (same name, new value) ends the sessions signed in with the old one', async () => {
  const t = await startGateway(`
admin: {listen: 127.0.0.1:0, tokens: [{name: ops, token: old-token-0123456789abc, role: admin}]}
services: [{name: api, url: "${up.url}", routes: [{paths: [/x]}]}]
`);
  try {
    const a = t.adminUrl!;
    const r = await request(`${a}/console/api/login`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ token: 'old-token-0123456789abc' }) });
    const cookie = String(r.headers['set-cookie']).split(';')[0]!;
    assert.equal((await request(`${a}/metrics`, { headers: { cookie } })).status, 200);
    const { parseConfigText } = await import('../config/load.js');
    await t.gw.reloadAsync(parseConfigText(`listen: 127.0.0.1:0
admin: {listen: 127.0.0.1:0, tokens: [{name: ops, token: new-token-0123456789abc, role: admin}]}
access_log: {enabled: false}
services: [{name: api, url: "${up.url}", routes: [{paths: [/x]}]}]
`));
    await new Promise((res) => setTimeout(res, 50));
    assert.equal((await request(`${a}/metrics`, { headers: { cookie } })).status, 401, 'the old token\'s session ended');
  } finally {
    await t.close();
  }
});

test('behind a reverse proxy that rewrites Host, console changes come from the public origin named in admin.console_origins (default port and case as browsers send them); any other origin is still 403', async () => {
  const t = await startGateway(`
admin: {listen: 127.0.0.1:0, token: ${ADMIN}, console_origins: ["https://Admin.Example.test:443", "http://127.0.0.1:41399"]}
services: [{name: api, url: "${up.url}", routes: [{paths: [/x]}]}]
`);
  try {
    const a = t.adminUrl!;
    const r = await request(`${a}/console/api/login`, { method: 'POST', headers: { 'content-type': 'application/json', origin: 'https://admin.example.test' }, body: JSON.stringify({ token: ADMIN }) });
    assert.equal(r.status, 200, r.body);
    const cookie = String(r.headers['set-cookie']).split(';')[0]!;
    const csrf = (JSON.parse(r.body) as { csrf: string }).csrf;
    // (the proxy sends the admin listener's own Host; the browser the page's Origin)
    const purge = (origin: string) => request(`${a}/cache`, { method: 'DELETE', headers: { cookie, 'x-csrf-token': csrf, origin } });
    for (const origin of ['https://admin.example.test', 'http://127.0.0.1:41399']) assert.notEqual((await purge(origin)).status, 403, origin);
    for (const origin of ['https://evil.example', 'http://admin.example.test', 'https://admin.example.test:8443', 'null']) assert.equal((await purge(origin)).status, 403, origin);
    const out = await request(`${a}/console/api/logout`, { method: 'POST', headers: { cookie, 'x-csrf-token': csrf, origin: 'https://admin.example.test' } });
    assert.equal(out.status, 204);
  } finally {
    await t.close();
  }
  // not an origin: a config error at its path
  await assert.rejects(startGateway(`
admin: {listen: 127.0.0.1:0, token: ${ADMIN}, console_origins: ["https://admin.example.test/console"]}
services: [{name: api, url: "${up.url}", routes: [{paths: [/x]}]}]
`), /console_origins/);
});

test('a tokenless (loopback) admin listener refuses what a web page could send: a foreign Host (DNS rebinding), a cross-site request, another Origin', async () => {
  const t = await startGateway(`
admin: {listen: 127.0.0.1:0}
services: [{name: api, url: "${up.url}", routes: [{paths: [/x]}]}]
`);
  try {
    const a = t.adminUrl!;
    const port = new URL(a).port;
    assert.equal((await request(`${a}/status`)).status, 200);
    assert.equal((await request(`${a}/status`, { headers: { host: `localhost:${port}` } })).status, 200);
    assert.equal((await request(`${a}/status`, { headers: { host: 'evil.example:80' } })).status, 403);
    assert.equal((await request(`${a}/cache`, { method: 'DELETE', headers: { 'sec-fetch-site': 'cross-site' } })).status, 403);
    assert.equal((await request(`${a}/cache`, { method: 'DELETE', headers: { origin: 'https://evil.example' } })).status, 403);
    assert.equal((await request(`${a}/cache`, { method: 'DELETE', headers: { origin: 'null' } })).status, 403);
    assert.notEqual((await request(`${a}/cache`, { method: 'DELETE', headers: { origin: `http://127.0.0.1:${port}`, 'sec-fetch-site': 'same-origin' } })).status, 403);
  } finally {
    await t.close();
  }
});

test('the console session cookie never reaches an upstream (browsers send it to every port of the host); other cookies do', async () => {
  const n = up.requests.length;
  await request(`${gw.url}/hello`, { headers: { cookie: 'a=1; tp_console=abcdefghijklmnopqrstuvwxyz0123456789; b=2' } });
  await request(`${gw.url}/hello`, { headers: { cookie: 'tp_console=abcdefghijklmnopqrstuvwxyz0123456789' } });
  await request(`${gw.url}/hello`, { headers: { cookie: 'session=keep' } });
  // (the cookie of a session signed in from an https page)
  await request(`${gw.url}/hello`, { headers: { cookie: 'a=1; __Host-tp_console=abcdefghijklmnopqrstuvwxyz0123456789' } });
  // (the portal's, from an https page: Path=/, so it comes with every request to the host)
  await request(`${gw.url}/hello`, { headers: { cookie: '__Host-tp_portal=ZGV2.1.sid.mac; c=3' } });
  const got = up.requests.slice(n).map((r) => r.headers.cookie);
  assert.deepEqual(got, ['a=1; b=2', undefined, 'session=keep', 'a=1', 'c=3']);
});

test('rate-limit refusals per second: over the last minute of the metrics counters, not one tick', async () => {
  const { LiveStats } = await import('./stats.js');
  let total = 0;
  const live = new LiveStats({
    analyticsStates: async () => ({ states: [] }),
    analyticsEnabled: () => false,
    inFlight: 0,
    health: null,
    metricsText: async () => `turnpike_limit_decisions_total{service="a",route="r",plugin="rate-limit",decision="rejected"} ${total}\nturnpike_limit_decisions_total{service="a",route="r",plugin="rate-limit",decision="allowed"} 999\n`,
  });
  await live.snapshot();
  total = 30;
  await new Promise((r) => setTimeout(r, 200));
  const s1 = (await live.snapshot()) as { totals: { rate_limited_per_s: number } };
  assert.ok(s1.totals.rate_limited_per_s > 50, `30 refusals in ~0.2 s: ${s1.totals.rate_limited_per_s}/s`);
  await new Promise((r) => setTimeout(r, 200));
  const s2 = (await live.snapshot()) as { analytics: boolean; totals: { rate_limited_per_s: number } };
  assert.equal(s2.analytics, false, 'the page says analytics are off');
  assert.ok(s2.totals.rate_limited_per_s > 0, 'still counted a tick later (the window is a minute)');
});

test('per token: 1000 sign-ins with the read-only token end only its own oldest sessions (the admin stays signed in); its 11th live stream ends its own oldest', async () => {
  const { SessionStore } = await import('./session.js');
  const store = new SessionStore();
  const reqOf = (id: string) => ({ headers: { cookie: `tp_console=${id}` } }) as unknown as import('node:http').IncomingMessage;
  const ops = store.create({ name: 'ops', role: 'admin' }, ADMIN);
  const viewer: string[] = [];
  for (let i = 0; i < 1000; i++) viewer.push(store.create({ name: 'viewer', role: 'read-only' }, READER).id);
  assert.ok(store.of(reqOf(ops.id)), 'the admin\'s session survives');
  assert.equal(store.of(reqOf(viewer[0]!)), null, 'the token\'s oldest session went');
  assert.ok(store.of(reqOf(viewer[999]!)), 'its newest is kept');

  // Streams: 11 from the read-only token; the first ends, an admin one still opens.
  const sessions = gw.gw.console!.sessions;
  const open = (cookie: string) => new Promise<{ status: number; ended: Promise<void>; close(): void }>((resolve, reject) => {
    const req = httpRequest(`${admin}/console/api/events`, { headers: { cookie } }, (res) => {
      res.resume();
      resolve({ status: res.statusCode!, ended: new Promise((r) => res.on('end', () => r())), close: () => req.destroy() });
    });
    req.on('error', () => undefined);
    req.end();
    req.on('error', reject);
  });
  const streams = [];
  for (let i = 0; i < 11; i++) streams.push(await open(`tp_console=${sessions.create({ name: 'viewer', role: 'read-only' }, READER).id}`));
  assert.deepEqual([...new Set(streams.map((s) => s.status))], [200]);
  const first = await Promise.race([streams[0]!.ended.then(() => 'ended'), new Promise((r) => setTimeout(() => r('open'), 3000))]);
  assert.equal(first, 'ended', 'the token\'s oldest stream was ended');
  const mine = await open(`tp_console=${sessions.create({ name: 'ops', role: 'admin' }, ADMIN).id}`);
  assert.equal(mine.status, 200);
  for (const s of [...streams, mine]) s.close();
});

test('two tp_console cookies in one request are no session (cookie tossing from a sibling origin)', async () => {
  const { cookieValue } = await import('./session.js');
  const id = 'a'.repeat(43);
  assert.equal(cookieValue(`x=1; tp_console=${id}; y=2`, 'tp_console'), id);
  assert.equal(cookieValue(`tp_console=${id}; tp_console=${'b'.repeat(43)}`, 'tp_console'), null);
  assert.equal(cookieValue(`tp_console=${id}; tp_console=${id}`, 'tp_console'), null);
  const sessions = gw.gw.console!.sessions;
  const mine = sessions.create({ name: 'ops', role: 'admin' }, ADMIN);
  const tossed = sessions.create({ name: 'viewer', role: 'read-only' }, READER);
  assert.equal((await request(`${admin}/console/api/session`, { headers: { cookie: `tp_console=${mine.id}` } })).status, 200);
  for (const cookie of [`tp_console=${tossed.id}; tp_console=${mine.id}`, `tp_console=${mine.id}; tp_console=${tossed.id}`]) {
    assert.equal((await request(`${admin}/console/api/session`, { headers: { cookie } })).status, 401, cookie);
    assert.equal((await request(`${admin}/metrics`, { headers: { cookie } })).status, 401);
  }
});

test('the console\'s error answers (404, 401, a refused sign-in) carry the page\'s security fields: nosniff, no framing', async () => {
  const answers = [
    await request(`${admin}/console/nope`),
    await request(`${admin}/console/api/session`),
    await request(`${admin}/console/api/events`),
    await request(`${admin}/console/api/login`, { method: 'POST', headers: { 'content-type': 'text/plain' }, body: 'x' }),
  ];
  for (const r of answers) {
    assert.ok(r.status >= 400 && r.status < 500, String(r.status));
    assert.equal(r.headers['content-type'], 'application/problem+json');
    assert.equal(r.headers['x-content-type-options'], 'nosniff', String(r.status));
    assert.equal(r.headers['x-frame-options'], 'DENY', String(r.status));
    assert.match(String(r.headers['content-security-policy']), /frame-ancestors 'none'/);
  }
});

test('a console resource asked with a method it does not take is 405 with Allow (not 404); an unknown one is 404', async () => {
  for (const [method, path, allow] of [['GET', '/console/api/login', 'POST'], ['PUT', '/console/api/logout', 'POST'], ['POST', '/console/api/session', 'GET, HEAD'], ['DELETE', '/console/api/events', 'GET, HEAD'], ['POST', '/console/app.js', 'GET, HEAD']] as const) {
    const r = await request(`${admin}${path}`, { method });
    assert.equal(r.status, 405, `${method} ${path}: ${r.body}`);
    assert.equal(r.headers['allow'], allow);
    assert.equal(JSON.parse(r.body).type, 'urn:turnpike:problem:method-not-allowed');
  }
  assert.equal((await request(`${admin}/console/api/nope`, { method: 'POST' })).status, 404);
});

test('HEAD is answered wherever GET is (RFC 9110 §9.3.2): the session and the event stream give their GET\'s status and fields without a body; 405s list HEAD', async () => {
  // (a session as a sign-in makes it: the sign-ins of this address are over their limit by now)
  const cookie = `tp_console=${gw.gw.console!.sessions.create({ name: 'viewer', role: 'read-only' }, READER).id}`;
  const s = await request(`${admin}/console/api/session`, { method: 'HEAD', headers: { cookie } });
  assert.equal(s.status, 200);
  assert.equal(s.headers['content-type'], 'application/json');
  assert.equal(s.body, '');
  assert.equal((await request(`${admin}/console/api/session`, { method: 'HEAD' })).status, 401);
  const e = await request(`${admin}/console/api/events`, { method: 'HEAD', headers: { cookie } });
  assert.equal(e.status, 200);
  assert.equal(e.headers['content-type'], 'text/event-stream');
  assert.equal(e.body, '');
  assert.equal((await request(`${admin}/console/api/events`, { method: 'HEAD' })).status, 401);
  for (const path of ['/console/api/session', '/console/api/events']) assert.equal((await request(`${admin}${path}`, { method: 'PUT', headers: { cookie } })).headers['allow'], 'GET, HEAD', path);
});

test('OPTIONS on a console resource answers 204 with its Allow, as the rest of the admin listener does (an unknown one is 404)', async () => {
  for (const [path, allow] of [['/console/api/login', 'POST, OPTIONS'], ['/console/api/logout', 'POST, OPTIONS'], ['/console/api/session', 'GET, HEAD, OPTIONS'], ['/console/api/events', 'GET, HEAD, OPTIONS'], ['/console/app.js', 'GET, HEAD, OPTIONS'], ['/console/', 'GET, HEAD, OPTIONS']] as const) {
    const r = await request(`${admin}${path}`, { method: 'OPTIONS' });
    assert.equal(r.status, 204, `${path}: ${r.status} ${r.body}`);
    assert.equal(r.headers['allow'], allow, path);
    assert.equal(r.body, '');
  }
  assert.equal((await request(`${admin}/console/api/nope`, { method: 'OPTIONS' })).status, 404);
});

test('an event stream ended while it waits behind another on its connection (two pipelined on one socket, the second\'s session signed out) is not written to again: the gateway lives', async () => {
  const { connect } = await import('node:net');
  // (a gateway of its own: earlier tests rotate this file's tokens)
  const g = await startGateway(`admin: {listen: 127.0.0.1:0, tokens: [{name: ops, token: ${ADMIN}, role: admin}]}\nservices: []\n`);
  const url = g.adminUrl!;
  const signIn = async () => {
    const r = await request(`${url}/console/api/login`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ token: ADMIN }) });
    assert.equal(r.status, 200);
    return { cookie: String(r.headers['set-cookie']).split(';')[0]!, csrf: (JSON.parse(r.body) as { csrf: string }).csrf };
  };
  const a = await signIn();
  const b = await signIn();
  const sock = connect(g.gw.adminAddress!.port, '127.0.0.1');
  sock.on('error', () => undefined);
  let got = '';
  sock.on('data', (d: Buffer) => (got += d.toString('latin1')));
  try {
    const ask = (cookie: string) => `GET /console/api/events HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: ${cookie}\r\n\r\n`;
    sock.write(ask(a.cookie) + ask(b.cookie));
    await new Promise((r) => setTimeout(r, 300));
    assert.match(got, /^HTTP\/1\.1 200 /);
    // The second stream ends (its session does) while the first holds the connection.
    const out = await request(`${url}/console/api/logout`, { method: 'POST', headers: { cookie: b.cookie, 'x-csrf-token': b.csrf } });
    assert.equal(out.status, 204);
    // Past the next ticks of the stats stream (every second).
    await new Promise((r) => setTimeout(r, 2200));
    assert.equal((await request(`${url}/console/api/session`, { headers: { cookie: a.cookie } })).status, 200);
    assert.ok(/event: stats/.test(got), 'the first stream still gets its frames');
  } finally {
    sock.destroy();
    await g.close();
  }
});
