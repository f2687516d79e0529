/** The webhook trigger against a real receiver on loopback: signed, verified, replays and tampering refused, retried. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import { silentLogger } from '../core/log.js';
import { SIGNATURE_HEADER, WebhookTrigger, signature, verifyWebhook } from './webhook.js';
import { DemandMeter, quantile } from './meter.js';
import { WebhookDestinations } from './destination.js';
import { performance } from 'node:perf_hooks';

const SECRET = 'whsec-0123456789abcdef';
/** The receivers here are on loopback, which a webhook may reach only when it is allowed (scaling.webhook_allowed_networks). */
const LOCAL = ['127.0.0.1/32'];

async function receiver(answer: (n: number) => number) {
  const seen = new Map<string, number>();
  const got: { header: string; body: string; verdict: ReturnType<typeof verifyWebhook> }[] = [];
  let n = 0;
  const server = createServer((req: IncomingMessage, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString();
      const header = String(req.headers[SIGNATURE_HEADER] ?? '');
      const verdict = verifyWebhook(SECRET, header, body, { seen });
      got.push({ header, body, verdict });
      res.statusCode = verdict.ok ? answer(n++) : 401;
      res.end();
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook`;
  return { url, got, seen, close: () => new Promise((r) => server.close(r)) };
}

test('a decision arrives signed; the receiver verifies it; the same delivery replayed, a tampered body, an old timestamp and a wrong secret are refused', async () => {
  const r = await receiver(() => 204);
  const t = new WebhookTrigger({ type: 'webhook', url: r.url, secret: SECRET }, silentLogger, '/', undefined, LOCAL);
  try {
    await t.push({ service: 'orders', desired: 4, current: 2 });
    assert.equal(r.got.length, 1);
    const first = r.got[0]!;
    assert.ok(first.verdict.ok, JSON.stringify(first.verdict));
    assert.equal((first.verdict as { payload: Record<string, unknown> }).payload["desired"], 4);
    assert.equal(t.last?.ok, true);
    // The same bytes again (a replay): refused, the id was seen.
    assert.deepEqual(verifyWebhook(SECRET, first.header, first.body, { seen: r.seen }), { ok: false, reason: `replayed delivery ${JSON.parse(first.body).id}` });
    // Tampered: one digit changed.
    assert.equal(verifyWebhook(SECRET, first.header, first.body.replace('"desired":4', '"desired":9'), { seen: new Map() }).ok, false);
    // Signed correctly but long ago.
    const old = Math.floor(Date.now() / 1000) - 3600;
    const oldBody = JSON.stringify({ id: 'x1', desired: 1 });
    assert.match((verifyWebhook(SECRET, signature(SECRET, old, oldBody), oldBody) as { reason: string }).reason, /outside the 300 s tolerance/);
    assert.equal(verifyWebhook('another-secret-123456', first.header, first.body, { seen: new Map() }).ok, false);
    assert.equal(verifyWebhook(SECRET, 'garbage', first.body).ok, false);
    assert.equal(verifyWebhook(SECRET, undefined, first.body).ok, false);
  } finally {
    await t.close();
    await r.close();
  }
});

test('delivery is retried on 503 with backoff and succeeds; a 400 is not retried; dry_run is marked in the body', async () => {
  const r = await receiver((n) => (n < 2 ? 503 : 200));
  const t = new WebhookTrigger({ type: 'webhook', url: r.url, secret: SECRET, retries: 3, dry_run: true }, silentLogger, '/', undefined, LOCAL);
  try {
    await t.push({ service: 'orders', desired: 3 });
    assert.equal(r.got.length, 3);
    assert.equal(t.last?.ok, true);
    assert.equal(JSON.parse(r.got[2]!.body).dry_run, true);
    assert.notEqual(JSON.parse(r.got[0]!.body).id, undefined);
  } finally {
    await t.close();
    await r.close();
  }
  const bad = await receiver(() => 400);
  const t2 = new WebhookTrigger({ type: 'webhook', url: bad.url, secret: SECRET, retries: 3 }, silentLogger, '/', undefined, LOCAL);
  try {
    await t2.push({ service: 'orders', desired: 3 });
    assert.equal(bad.got.length, 1);
    assert.equal(t2.last?.ok, false);
    assert.equal(t2.last?.status, 400);
  } finally {
    await t2.close();
    await bad.close();
  }
});

test('an unreachable receiver: bounded retries, reported, never thrown', async () => {
  const t = new WebhookTrigger({ type: 'webhook', url: 'http://127.0.0.1:1/hook', secret: SECRET, retries: 1 }, silentLogger, '/', undefined, LOCAL);
  try {
    await t.push({ service: 'orders', desired: 3 });
    assert.equal(t.last?.ok, false);
    assert.ok(t.last?.error);
  } finally {
    await t.close();
  }
});

test('demand meter: counts, errors, busy time, p95 within 5%, merged across processes', () => {
  const a = new DemandMeter();
  const b = new DemandMeter();
  for (let i = 1; i <= 100; i++) a.record('orders', 'list', i === 100 ? 504 : 200, i);
  for (let i = 1; i <= 100; i++) b.record('orders', i % 2 ? 'list' : 'get', 200, i);
  a.merge(b.drain());
  const d = a.drain();
  const c = d.services['orders']!;
  assert.equal(c.n, 200);
  assert.equal(c.errors, 1);
  assert.equal(c.timeouts, 1);
  assert.equal(d.routes['list']!.n, 150);
  assert.equal(d.routes['get']!.n, 50);
  assert.equal(c.busyMs, 2 * 5050);
  const p95 = quantile(c.hist, 0.95);
  assert.ok(p95 >= 95 && p95 <= 95 * 1.05 + 1, `p95 ${p95}`);
  assert.deepEqual(a.drain(), { services: {}, routes: {} }, 'drained');
  assert.equal(quantile({}, 0.95), 0);
});

test('a receiver that trickles its answer body does not wedge the trigger: the status counts, the body is cut', async () => {
  const timers = new Set<NodeJS.Timeout>();
  let n = 0;
  const server = createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      n++;
      res.writeHead(200, { 'content-type': 'text/plain' });
      const t = setInterval(() => res.write('x'), 200); // a byte every 200 ms, never ending
      timers.add(t);
      res.on('close', () => { clearInterval(t); timers.delete(t); });
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook`;
  const t = new WebhookTrigger({ type: 'webhook', url, secret: SECRET, timeout: '3s' }, silentLogger, '/', undefined, LOCAL);
  try {
    const started = performance.now();
    // Three decisions in a row (the agent has two connections): each delivered within a second or so.
    for (let i = 0; i < 3; i++) {
      const ok = await Promise.race([t.push({ service: 'orders', desired: i + 1 }), new Promise((r) => setTimeout(() => r('stuck'), 4000))]);
      assert.equal(ok, true, `push ${i + 1}`);
    }
    assert.equal(n, 3);
    assert.ok(performance.now() - started < 4000, `${performance.now() - started} ms`);
  } finally {
    for (const x of timers) clearInterval(x);
    server.closeAllConnections();
    await t.close();
    await new Promise((r) => server.close(r));
  }
});

test('a user and password in the URL go to the receiver as Basic credentials (percent-decoded), not in the URL', async () => {
  const auth: (string | undefined)[] = [];
  const server = createServer((req, res) => {
    auth.push(req.headers.authorization);
    req.resume();
    req.on('end', () => res.writeHead(204).end());
  });
  await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
  const port = (server.address() as AddressInfo).port;
  const t = new WebhookTrigger({ type: 'webhook', url: `http://hookuser:Hook%40Url%3APassword@127.0.0.1:${port}/hook`, secret: SECRET }, silentLogger, '/', undefined, LOCAL);
  try {
    assert.equal(await t.push({ service: 'orders', desired: 3 }), true);
    assert.deepEqual(auth, [`Basic ${Buffer.from('hookuser:Hook@Url:Password').toString('base64')}`]);
    assert.doesNotMatch(JSON.stringify(t.last), /hookuser|Password/);
  } finally {
    await t.close();
    await new Promise((ok) => server.close(ok));
  }
});

test('the log names the receiver by origin and path: no password, query or fragment of its URL', async () => {
  const lines: unknown[] = [];
  const log = { info: (o: unknown) => lines.push(o), warn: (o: unknown) => lines.push(o) };
  const t = new WebhookTrigger({ type: 'webhook', url: 'http://admin:hunter2pass@127.0.0.1:1/hook?token=qs-secret#frag', secret: SECRET, retries: 0 }, log, '/', undefined, LOCAL);
  try {
    assert.equal(await t.push({ service: 'orders', desired: 2 }), false);
    const text = JSON.stringify(lines);
    assert.match(text, /"url":"http:\/\/127\.0\.0\.1:1\/hook"/);
    assert.doesNotMatch(text, /hunter2pass|admin:|qs-secret|frag/);
  } finally {
    await t.close();
  }
});

test('close() ends a delivery waiting on a receiver that never answers at once (a shutdown is not held for the timeout)', async () => {
  let arrived!: () => void;
  const reached = new Promise<void>((r) => { arrived = r; });
  const server = createServer(() => arrived()); // reads the request, never answers
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const t = new WebhookTrigger({ type: 'webhook', url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook`, secret: SECRET, timeout: '20s' }, silentLogger, '/', undefined, LOCAL);
  try {
    const pushed = t.push({ service: 'orders', desired: 3 });
    await reached;
    const started = performance.now();
    await t.close();
    assert.ok(performance.now() - started < 2000, `close took ${Math.round(performance.now() - started)} ms`);
    assert.equal(await pushed, false);
  } finally {
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  }
});

test('a 429 or 503 with Retry-After is retried no sooner than it says, and a newer decision waits for it too', async () => {
  const at: number[] = [];
  let answers = [429, 204, 503, 204];
  const server = createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      at.push(performance.now());
      const code = answers.shift() ?? 204;
      res.writeHead(code, code === 204 ? {} : { 'retry-after': '1' }).end();
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const t = new WebhookTrigger({ type: 'webhook', url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook`, secret: SECRET, retries: 3 }, silentLogger, '/', undefined, LOCAL);
  try {
    assert.equal(await t.push({ service: 'orders', desired: 3 }), true);
    assert.equal(at.length, 2);
    assert.ok(at[1]! - at[0]! >= 950, `retried after ${Math.round(at[1]! - at[0]!)} ms (Retry-After: 1)`);
    // A 503 with Retry-After: 1 given up (no retries), then the next decision at once: it waits.
    const t0 = new WebhookTrigger({ type: 'webhook', url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook`, secret: SECRET, retries: 0 }, silentLogger, '/', undefined, LOCAL);
    try {
      assert.equal(await t0.push({ service: 'orders', desired: 4 }), false);
      assert.equal(await t0.push({ service: 'orders', desired: 5 }), true);
      assert.ok(at[3]! - at[2]! >= 950, `the next decision sent after ${Math.round(at[3]! - at[2]!)} ms`);
    } finally {
      await t0.close();
    }
    // An HTTP-date in the past: no wait beyond the backoff.
    answers = [503, 204];
    server.removeAllListeners('request');
    server.on('request', (req, res) => { req.resume(); req.on('end', () => { at.push(performance.now()); const code = answers.shift() ?? 204; res.writeHead(code, code === 204 ? {} : { 'retry-after': new Date(Date.now() - 60_000).toUTCString() }).end(); }); });
    assert.equal(await t.push({ service: 'orders', desired: 6 }), true);
    assert.ok(at[5]! - at[4]! < 900, `a past date: ${Math.round(at[5]! - at[4]!)} ms`);
  } finally {
    await t.close();
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  }
});

/** A receiver that counts what reaches it and answers `answer`. */
async function counting(answer: (res: import('node:http').ServerResponse) => void = (res) => res.writeHead(204).end()) {
  const hits: string[] = [];
  const server = createServer((req, res) => { hits.push(`${req.method} ${req.url}`); req.resume(); req.on('end', () => answer(res)); });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  return { port, hits, close: () => new Promise((r) => { server.closeAllConnections(); server.close(r); }) };
}

test('SSRF guard: loopback (by address or by a name resolving to it), link-local / cloud metadata and "this host" are refused without a connection unless allowed; a redirect is not followed', async () => {
  const r = await counting();
  const other = await counting();
  const redirecting = await counting((res) => res.writeHead(302, { location: `http://127.0.0.1:${other.port}/stolen` }).end());
  const push = async (url: string, allowed: string[] = []) => {
    const t = new WebhookTrigger({ type: 'webhook', url, secret: SECRET, retries: 0, timeout: '2s' }, silentLogger, '/', undefined, allowed);
    const t0 = performance.now();
    const ok = await t.push({ service: 'orders', desired: 3 });
    const ms = performance.now() - t0;
    await t.close();
    return { ok, last: t.last!, ms };
  };
  try {
    for (const url of [`http://127.0.0.1:${r.port}/hook`, `http://127.1.2.3:${r.port}/hook`, `http://localhost:${r.port}/hook`, `http://[::ffff:127.0.0.1]:${r.port}/hook`, `http://0.0.0.0:${r.port}/hook`]) {
      const got = await push(url);
      assert.equal(got.ok, false, url);
      assert.match(String(got.last.error), /^webhook destination refused: .*(loopback|"this host")/, url);
    }
    // The metadata service: refused before any connection (no wait for a connect timeout).
    // Also written as IPv6: IPv4-mapped, IPv4-compatible, NAT64 (RFC 6052) and 6to4 forms of 169.254.169.254.
    for (const url of ['http://169.254.169.254/latest/meta-data/iam/security-credentials/', 'http://[fe80::1]/x', 'http://[fd00:ec2::254]/x', 'http://100.100.100.200/x',
      'http://[::ffff:a9fe:a9fe]/x', 'http://[::169.254.169.254]/x', 'http://[64:ff9b::169.254.169.254]/x', 'http://[64:ff9b::a9fe:a9fe]/x', 'http://[2002:a9fe:a9fe::1]/x']) {
      const got = await push(url);
      assert.equal(got.ok, false, url);
      assert.match(String(got.last.error), /^webhook destination refused: .*(link-local|metadata)/, url);
      assert.ok(got.ms < 1000, `${url}: ${got.ms} ms`);
    }
    assert.deepEqual(r.hits, [], 'nothing reached the loopback receiver');
    // Allowed explicitly: by address, and a name whose allowed addresses are kept (::1 is not in the list).
    assert.equal((await push(`http://127.0.0.1:${r.port}/hook`, LOCAL)).ok, true);
    assert.equal((await push(`http://localhost:${r.port}/hook`, LOCAL)).ok, true);
    assert.equal((await push(`http://127.1.2.3:${r.port}/hook`, LOCAL)).ok, false, '127.0.0.1/32 allows that address only');
    assert.deepEqual(r.hits, ['POST /hook', 'POST /hook']);
    // A redirect (to an allowed address even) is not followed: the 302 is the answer, not delivered.
    const red = await push(`http://127.0.0.1:${redirecting.port}/hook`, ['127.0.0.0/8']);
    assert.equal(red.ok, false);
    assert.equal(red.last.status, 302);
    assert.deepEqual(other.hits, []);
  } finally {
    await r.close();
    await other.close();
    await redirecting.close();
  }
});

test('SSRF guard, IPv6 spellings of IPv4 addresses: checked as the IPv4 address they carry; Teredo and local-use NAT64 (IPv4 part hidden) refused unless allowed', () => {
  const d = new WebhookDestinations();
  for (const ip of ['::ffff:127.0.0.1', '::ffff:7f00:1', '::7f00:1', '::127.0.0.1', '64:ff9b::7f00:1', '64:ff9b::127.0.0.1', '2002:7f00:1::', '2002:7f00:0001:0:0:0:0:1']) {
    assert.match(String(d.refusal(ip)), /loopback/, ip);
  }
  assert.match(String(d.refusal('64:FF9B::A9FE:A9FE')), /link-local/);
  assert.match(String(d.refusal('2001:0:4136:e378:8000:63bf:3fff:fdd2')), /Teredo/);
  assert.match(String(d.refusal('64:ff9b:1::a9fe:a9fe')), /NAT64/);
  // Public addresses in the same spellings pass (an IPv6-only cluster reaching a public receiver through DNS64 / NAT64).
  for (const ip of ['64:ff9b::808:808', '64:ff9b::8.8.8.8', '::ffff:8.8.8.8', '2002:808:808::1', '2001:db8::1', '::1:0:0:0']) assert.equal(d.refusal(ip), null, ip);
  // ::1 and :: keep their own names.
  assert.match(String(d.refusal('::1')), /loopback/);
  assert.match(String(d.refusal('::')), /unspecified/);
  // Allowed by its IPv6 spelling or by the IPv4 network it carries.
  assert.equal(new WebhookDestinations(['64:ff9b::a9fe:a9fe/128']).refusal('64:ff9b::a9fe:a9fe'), null);
  assert.equal(new WebhookDestinations(['127.0.0.0/8']).refusal('64:ff9b::7f00:1'), null);
});
