/**
 * runComposition against real loopback upstreams (and an HTTPS provider with a self-signed
 * CA), with configs compiled from YAML the way the gateway compiles them.
 */
import test, { after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { gzipSync } from 'node:zlib';
import { pino } from 'pino';
import { parseConfigText } from '../config/load.js';
import { compile, type CompiledRoute, type Snapshot } from '../config/compile.js';
import { PoolRegistry } from '../upstream/pools.js';
import { PROBLEMS, ProblemError } from '../core/problem.js';
import { runComposition, type CompositionInput } from './run.js';
import { startUpstream, type TestUpstream } from '../../test/helpers.js';
import { makeCa } from '../../test/certs.js';

const cleanups: (() => Promise<void> | void)[] = [];
after(async () => {
  for (const c of cleanups.reverse()) await c();
});

const json = (res: ServerResponse, body: unknown, status = 200, headers: Record<string, string> = {}) => {
  if (res.destroyed) return;
  res.writeHead(status, { 'content-type': 'application/json', ...headers }).end(JSON.stringify(body));
};

async function upstream(handler: (req: IncomingMessage, res: ServerResponse, body: Buffer) => void): Promise<TestUpstream> {
  const u = await startUpstream(handler);
  cleanups.push(() => u.close());
  return u;
}

interface Setup {
  snap: Snapshot;
  route(name: string): CompiledRoute;
}

function setup(yaml: string, env: NodeJS.ProcessEnv = {}): Setup {
  const pools = new PoolRegistry();
  const snap = compile(parseConfigText(yaml, { env }), { pools });
  cleanups.push(async () => {
    snap.dispose();
    await pools.closeAll();
  });
  return { snap, route: (name) => snap.routes.find((r) => r.name === name)! };
}

function run(route: CompiledRoute, over: Partial<CompositionInput> = {}) {
  const headers: Record<string, string> = { authorization: 'Bearer client-secret', cookie: 'session=client', 'x-user': 'ann' };
  return runComposition({
    route, method: 'GET', path: '/', query: '', params: {}, headers: (n) => headers[n], body: null, requestId: 'req-1',
    signal: new AbortController().signal, ...over,
  });
}

const bodyOf = (r: { body: Buffer }) => JSON.parse(r.body.toString()) as Record<string, unknown>;
const header = (r: { headers: string[] }, name: string) => {
  for (let i = 0; i < r.headers.length; i += 2) if (r.headers[i]!.toLowerCase() === name) return r.headers[i + 1];
  return undefined;
};

/** Resolves with the ProblemError the promise rejects with (fails the test if it resolves). */
async function problem(p: Promise<unknown>): Promise<ProblemError> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof ProblemError, `expected a ProblemError, got ${String(err)}`);
    return err;
  }
  assert.fail('expected the composition to fail');
}

test('independent steps run in parallel and merge under their names; client credentials never leak', async () => {
  const users = await upstream((req, res) => setTimeout(() => json(res, { id: 7, name: 'Ann', tier: 'gold' }), 300));
  const orders = await upstream((req, res) => setTimeout(() => json(res, [{ id: 1 }, { id: 2 }]), 300));
  const s = setup(`services:
  - {name: users, url: "${users.url}"}
  - {name: orders, url: "${orders.url}"}
routes:
  - name: profile
    paths: ["/profile/{id}"]
    compose:
      steps:
        - {name: user, service: users, path: "/users/{id}"}
        - name: orders
          service: orders
          path: /orders
          query: {user: "{id}", who: "{header.x-user}"}
          headers: {authorization: "{header.authorization}", x-empty: "{header.x-none:-}"}
`);
  const t0 = Date.now();
  const r = await run(s.route('profile'), { params: { id: '7' } });
  const took = Date.now() - t0;
  assert.equal(r.status, 200);
  assert.equal(r.origin, 'gateway');
  assert.equal(header(r, 'content-type'), 'application/json');
  assert.equal(header(r, 'turnpike-partial'), undefined);
  assert.deepEqual(bodyOf(r), { user: { id: 7, name: 'Ann', tier: 'gold' }, orders: [{ id: 1 }, { id: 2 }] });
  assert.ok(took < 550, `parallel steps took ${took} ms (sequential would be 600+)`);
  assert.equal(users.requests[0]!.url, '/users/7');
  assert.equal(orders.requests[0]!.url, '/orders?user=7&who=ann');
  // the client's Authorization and Cookie reach a step only when its headers template them
  assert.equal(users.requests[0]!.headers.authorization, undefined);
  assert.equal(users.requests[0]!.headers.cookie, undefined);
  assert.equal(orders.requests[0]!.headers.authorization, 'Bearer client-secret');
  assert.equal(orders.requests[0]!.headers.cookie, undefined);
  assert.equal(orders.requests[0]!.headers['x-empty'], undefined, 'a header that renders empty is left out');
  assert.equal(users.requests[0]!.headers['x-request-id'], 'req-1');
  assert.equal(users.requests[0]!.headers.host, `127.0.0.1:${users.port}`);
});

test('a three-step chain: each step uses the previous step\'s body', async () => {
  const seen: string[] = [];
  const svc = await upstream((req, res) => {
    seen.push(req.url!);
    setTimeout(() => {
      if (req.url === '/accounts/a%2F1') json(res, { owner: { id: 'u 9' } });
      else if (req.url === '/users/u%209') json(res, { id: 'u 9', team: 42 }, 200, { etag: '"v1"' });
      else if (req.url === '/teams/42?etag=%22v1%22') json(res, { team: 'blue' });
      else json(res, { unexpected: req.url }, 404);
    }, 50);
  });
  const s = setup(`services:
  - {name: svc, url: "${svc.url}"}
routes:
  - name: chain
    paths: ["/chain/{acct}"]
    compose:
      steps:
        - {name: team, service: svc, path: "/teams/{user.body.team}", query: {etag: "{user.headers.etag}"}}
        - {name: account, service: svc, path: "/accounts/{acct}"}
        - {name: user, service: svc, path: "/users/{account.body.owner.id}"}
`);
  const r = await run(s.route('chain'), { params: { acct: 'a%2F1' } });
  assert.deepEqual(bodyOf(r), { team: { team: 'blue' }, account: { owner: { id: 'u 9' } }, user: { id: 'u 9', team: 42 } });
  assert.deepEqual(seen, ['/accounts/a%2F1', '/users/u%209', '/teams/42?etag=%22v1%22']);
});

test('a step that times out: required -> 504 step-timeout naming it; optional -> 200 partial', async () => {
  const slow = await upstream((req, res) => setTimeout(() => json(res, { late: true }), 1500));
  const fast = await upstream((req, res) => json(res, { ok: true }));
  const yaml = (optional: boolean) => `services:
  - {name: slow, url: "${slow.url}"}
  - {name: fast, url: "${fast.url}"}
routes:
  - name: r
    paths: [/r]
    compose:
      steps:
        - {name: quick, service: fast, path: /q}
        - {name: laggard, service: slow, path: /s, timeout: 200ms, optional: ${optional}}
`;
  const req = setup(yaml(false));
  const t0 = Date.now();
  const p = await problem(run(req.route('r')));
  assert.ok(Date.now() - t0 < 1000, 'answered at the step timeout, not when the upstream answered');
  assert.equal(p.code, 'step-timeout');
  assert.equal(PROBLEMS[p.code].status, 504);
  assert.deepEqual(p.extra, { step: 'laggard', step_status: null });
  assert.match(p.detail, /step "laggard" timed out: did not answer within 200 ms/);

  const opt = setup(yaml(true));
  const r = await run(opt.route('r'));
  assert.equal(r.status, 200);
  assert.equal(header(r, 'turnpike-partial'), 'laggard');
  const body = bodyOf(r);
  assert.deepEqual(body.quick, { ok: true });
  assert.equal('laggard' in body, false);
  assert.deepEqual(body.errors, [{ step: 'laggard', status: null, error: 'did not answer within 200 ms' }]);
});

test('the composition deadline: a required step still running -> 504 naming it', async () => {
  const slow = await upstream((req, res) => setTimeout(() => json(res, {}), 1500));
  const s = setup(`services:
  - {name: slow, url: "${slow.url}"}
routes:
  - name: r
    paths: [/r]
    compose:
      timeout: 250ms
      steps:
        - {name: first, service: slow, path: /a}
        - {name: second, service: slow, path: "/b/{first.status}"}
`);
  const t0 = Date.now();
  const p = await problem(run(s.route('r')));
  assert.ok(Date.now() - t0 < 1000);
  assert.equal(p.code, 'step-timeout');
  assert.deepEqual(p.extra, { step: 'first', step_status: null });
  assert.match(p.detail, /250 ms deadline/);
});

test('an external provider over HTTPS with a self-signed CA, bearer auth from the environment', async () => {
  const ca = makeCa();
  cleanups.push(() => ca.cleanup());
  const leaf = ca.issue('localhost', { dns: ['localhost', '127.0.0.1'] });
  const seen: { url: string; auth: string | undefined; host: string | undefined }[] = [];
  const server = createHttpsServer({ cert: leaf.cert, key: leaf.key }, (req, res) => {
    seen.push({ url: req.url!, auth: req.headers.authorization, host: req.headers.host });
    if (req.headers.authorization !== 'Bearer fx-token') return json(res, { error: 'no token' }, 401);
    json(res, { base: 'EUR', rates: { USD: 1.1 } });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  cleanups.push(() => new Promise<void>((r) => { server.closeAllConnections(); server.close(() => r()); }));
  const port = (server.address() as AddressInfo).port;
  const s = setup(`routes:
  - name: fx
    paths: [/fx]
    compose:
      steps:
        - name: rates
          url: https://127.0.0.1:${port}/v1/latest?base=EUR
          query: {symbols: "{query.sym}"}
          tls: {ca: "${ca.certFile}"}
          auth:
            bearer: \${FX_TOKEN}
        - name: untrusted
          url: https://127.0.0.1:${port}/v1/latest
          optional: true
        - name: basic
          url: https://127.0.0.1:${port}/v1/latest
          tls: {ca: "${ca.certFile}"}
          auth: {basic: {username: u, password: p}}
          optional: true
`, { FX_TOKEN: 'fx-token' });
  const r = await run(s.route('fx'), { query: '?sym=USD' });
  const body = bodyOf(r);
  assert.deepEqual(body.rates, { base: 'EUR', rates: { USD: 1.1 } });
  assert.equal(seen.find((x) => x.auth === 'Bearer fx-token')!.url, '/v1/latest?base=EUR&symbols=USD');
  assert.equal(seen[0]!.host, `127.0.0.1:${port}`);
  // without the CA the provider's certificate is refused; with basic auth it answers 401
  assert.equal(header(r, 'turnpike-partial'), 'untrusted, basic');
  const errors = body.errors as { step: string; status: number | null; error: string }[];
  assert.equal(errors[0]!.step, 'untrusted');
  assert.equal(errors[0]!.status, null);
  assert.match(errors[0]!.error, /TLS failed|certificate/i);
  assert.deepEqual(errors[1], { step: 'basic', status: 401, error: 'answered 401' });
  assert.ok(seen.some((x) => x.auth === `Basic ${Buffer.from('u:p').toString('base64')}`));
});

test('a required step answering 500 -> 502 step-failed naming the step and its status', async () => {
  const broken = await upstream((req, res) => json(res, { error: 'boom' }, 500));
  const fine = await upstream((req, res) => setTimeout(() => json(res, {}), 1000));
  const s = setup(`services:
  - {name: broken, url: "${broken.url}"}
  - {name: fine, url: "${fine.url}"}
routes:
  - name: r
    paths: [/r]
    compose:
      steps:
        - {name: other, service: fine}
        - {name: inventory, service: broken, path: /stock}
`);
  const t0 = Date.now();
  const p = await problem(run(s.route('r')));
  assert.equal(p.code, 'step-failed');
  assert.equal(PROBLEMS[p.code].status, 502);
  assert.deepEqual(p.extra, { step: 'inventory', step_status: 500 });
  assert.equal(p.detail, 'step "inventory" failed: answered 500');
  assert.ok(Date.now() - t0 < 800, 'a required failure stops the composition without waiting for the others');
});

test('non-JSON and oversized step bodies are step failures', async () => {
  const big = JSON.stringify({ data: 'x'.repeat(4000) });
  const svc = await upstream((req, res) => {
    switch (req.url) {
      case '/html': res.writeHead(200, { 'content-type': 'text/html' }).end('<html>hi</html>'); return;
      case '/broken': res.writeHead(200, { 'content-type': 'application/json' }).end('{"nope'); return;
      case '/huge-number': res.writeHead(200, { 'content-type': 'application/json' }).end('{"n":1e400}'); return;
      case '/big': res.writeHead(200, { 'content-type': 'application/json', 'content-length': String(big.length) }).end(big); return;
      case '/chunked': {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.write(big.slice(0, 2000));
        setTimeout(() => res.end(big.slice(2000)), 20);
        return;
      }
      case '/gzip-bomb': res.writeHead(200, { 'content-type': 'application/json', 'content-encoding': 'gzip' }).end(gzipSync(JSON.stringify({ d: '0'.repeat(100_000) }))); return;
      case '/gzip': res.writeHead(200, { 'content-type': 'application/json; charset=utf-8', 'content-encoding': 'gzip' }).end(gzipSync('{"small":true}')); return;
      default: json(res, { fine: true });
    }
  });
  const s = setup(`services:
  - {name: svc, url: "${svc.url}"}
routes:
  - name: r
    paths: [/r]
    compose:
      max_body: 3kb
      steps:
        - {name: html, service: svc, path: /html, optional: true}
        - {name: broken, service: svc, path: /broken, optional: true}
        - {name: huge, service: svc, path: /huge-number, optional: true}
        - {name: big, service: svc, path: /big, optional: true}
        - {name: chunked, service: svc, path: /chunked, optional: true}
        - {name: bomb, service: svc, path: /gzip-bomb, optional: true}
        - {name: zipped, service: svc, path: /gzip}
        - {name: fine, service: svc, path: /fine, max_body: 100b}
  - name: strict
    paths: [/strict]
    compose:
      steps:
        - {name: html, service: svc, path: /html}
`);
  const r = await run(s.route('r'));
  const body = bodyOf(r);
  assert.equal(header(r, 'turnpike-partial'), 'html, broken, huge, big, chunked, bomb');
  assert.deepEqual(body.fine, { fine: true });
  assert.deepEqual(body.zipped, { small: true });
  const errors = Object.fromEntries((body.errors as { step: string; status: number; error: string }[]).map((e) => [e.step, `${e.status} ${e.error}`]));
  assert.equal(errors.html, '200 not JSON (content-type text/html)');
  assert.match(errors.broken!, /^200 not JSON \(/);
  // (a number past a double's range would go on as null: the value silently changed)
  assert.match(errors.huge!, /^200 not JSON \(a number is beyond the range of a double/);
  assert.equal(errors.big, `200 response too large (${big.length} bytes, over max_body 3072)`);
  assert.equal(errors.chunked, '200 response too large (over max_body 3072 bytes)');
  assert.match(errors.bomb!, /^200 response too large \(over max_body 3072 bytes once decoded\)/);
  const p = await problem(run(s.route('strict')));
  assert.deepEqual([p.code, p.extra], ['step-failed', { step: 'html', step_status: 200 }]);
  assert.match(p.detail, /not JSON/);
});

test('hostile templates: client values are encoded and never change the path or query structure', async () => {
  const svc = await upstream((req, res) => json(res, { url: req.url }));
  const s = setup(`services:
  - {name: svc, url: "${svc.url}/base"}
routes:
  - name: r
    paths: ["/r/{id}"]
    compose:
      steps:
        - {name: user, service: svc, path: "/users/{id}/profile", query: {q: "{query.q}"}}
  - name: dots
    paths: ["/d/{id}"]
    compose:
      steps:
        - {name: user, service: svc, path: "/users/{id}"}
  - name: hdr
    paths: [/h]
    compose:
      steps:
        - {name: user, service: svc, headers: {x-name: "{query.name}"}}
`);
  // the router hands parameters over still percent-encoded: they are decoded once, then encoded
  const r = await run(s.route('r'), { params: { id: 'a%2Fb%3Fx%3D1%23' }, query: '?q=a%26b%3Dc%23d&q=second' });
  assert.equal((bodyOf(r).user as { url: string }).url, '/base/users/a%2Fb%3Fx%3D1%23/profile?q=a%26b%3Dc%23d');
  const raw = await run(s.route('r'), { params: { id: 'a/b?x' }, query: '?q=1' });
  assert.equal((bodyOf(raw).user as { url: string }).url, '/base/users/a%2Fb%3Fx/profile?q=1');
  // query values are form text: '+' a space, UTF-8 escapes, a stray '%' kept as it is
  for (const [q, sent] of [['a+b', 'a%20b'], ['caf%C3%A9', 'caf%C3%A9'], ['100%25%20off', '100%25%20off'], ['%zz%', '%25zz%25'], ['', '']]) {
    const got = await run(s.route('r'), { params: { id: '1' }, query: `?x=1&q=${q}&q=second` });
    assert.equal((bodyOf(got).user as { url: string }).url, `/base/users/1/profile?q=${sent}`, q);
  }
  const before = svc.requests.length;
  // escapes that are not UTF-8 (%FF, an overlong %C0%AF) would go on as U+FFFD, another value: a 400
  for (const q of ['%FF', 'a%C0%AFb', '%ED%A0%80']) {
    const p = await problem(run(s.route('r'), { params: { id: '1' }, query: `?q=${q}` }));
    assert.equal(p.code, 'bad-request', q);
    assert.match(p.detail, /the query parameter "q" is not valid UTF-8 once percent-decoded/);
  }
  // dot segments hidden behind an encoded slash (/admin to an upstream that decodes %2F, then
  // normalizes): the client's value, so a 400, and nothing is sent
  for (const id of ['..%2F..%2Fadmin%3Fx%3D1%23', '../admin?x', '..%5Cadmin']) {
    const p = await problem(run(s.route('r'), { params: { id }, query: '?q=1' }));
    assert.equal(p.code, 'bad-request', id);
  }
  // a value that would be a whole dot segment fails the step (it never reaches the upstream):
  // the client's value, so a 400
  for (const id of ['..', '%2e%2e', '.']) {
    const p = await problem(run(s.route('dots'), { params: { id } }));
    assert.equal(p.code, 'bad-request');
    assert.match(p.detail, /path segment/);
  }
  // a header value with a line break fails the step
  const h = await problem(run(s.route('hdr'), { query: '?name=a%0d%0ax-injected:%201' }));
  assert.match(h.detail, /line break/);
  assert.equal(svc.requests.length, before);
});

test('a missing template value fails the step (required: 400 naming it when the client\'s request lacks it); a default stands in', async () => {
  const svc = await upstream((req, res) => json(res, { url: req.url }));
  const s = setup(`services:
  - {name: svc, url: "${svc.url}"}
routes:
  - name: r
    paths: [/r]
    compose:
      steps:
        - {name: a, service: svc, query: {page: "{query.page:-1}"}}
        - {name: b, service: svc, path: "/b/{query.id}"}
`);
  const p = await problem(run(s.route('r')));
  assert.deepEqual([p.code, p.extra], ['bad-request', { step: 'b' }]);
  assert.match(p.detail, /template \{query\.id\} has no value/);
  const r = await run(s.route('r'), { query: '?id=5' });
  assert.deepEqual(bodyOf(r), { a: { url: '/?page=1' }, b: { url: '/b/5' } });
});

test('fallbacks stand in for a failed step and are still reported', async () => {
  const bad = await upstream((req, res) => json(res, {}, 503));
  const s = setup(`services:
  - {name: bad, url: "${bad.url}"}
routes:
  - name: r
    paths: [/r]
    compose:
      steps:
        - {name: recs, service: bad, fallback: {items: []}}
        - {name: count, service: bad, path: "/n", fallback: 0, optional: true}
        - {name: uses, service: bad, path: "/u/{recs.body.items.0}", optional: true}
`);
  const r = await run(s.route('r'));
  assert.equal(r.status, 200);
  const body = bodyOf(r);
  assert.deepEqual(body.recs, { items: [] });
  assert.equal(body.count, 0);
  assert.equal(header(r, 'turnpike-partial'), 'recs, count, uses');
  assert.deepEqual(body.errors, [
    { step: 'recs', status: 503, error: 'answered 503', fallback: true },
    { step: 'count', status: 503, error: 'answered 503', fallback: true },
    { step: 'uses', status: null, error: 'template {recs.body.items.0} has no value' },
  ]);
});

test('a step needing a failed optional step fails too, and says why', async () => {
  const svc = await upstream((req, res) => (req.url === '/a' ? json(res, {}, 404) : json(res, { ok: true })));
  const s = setup(`services:
  - {name: svc, url: "${svc.url}"}
routes:
  - name: r
    paths: [/r]
    compose:
      steps:
        - {name: a, service: svc, path: /a, optional: true}
        - {name: b, service: svc, path: /b, depends_on: [a], optional: true}
        - {name: c, service: svc, path: /c}
        - {name: d, service: svc, path: /d, depends_on: [a]}
`);
  const p = await problem(run(s.route('r')));
  assert.deepEqual(p.extra, { step: 'd', step_status: null });
  assert.equal(p.detail, 'step "d" failed: needs step "a", which failed');
  assert.equal(svc.requests.some((x) => x.url === '/b' || x.url === '/d'), false);
});

test('merge modes: flat, as + select + hidden, by_key', async () => {
  const svc = await upstream((req, res) => {
    if (req.url === '/user') return json(res, { id: 1, name: 'Ann', meta: { plan: 'pro' } });
    if (req.url === '/prefs') return json(res, { name: 'Annie', theme: 'dark' });
    if (req.url === '/prefs?t=dark') return json(res, { theme: 'dark (confirmed)' });
    if (req.url === '/products') return json(res, { data: [{ id: 1, name: 'pen' }, { id: 2, name: 'ink' }] });
    if (req.url === '/prices') return json(res, [{ id: 2, price: 5 }, { id: 1, price: 3 }]);
    json(res, {}, 404);
  });
  const s = setup(`services:
  - {name: svc, url: "${svc.url}"}
routes:
  - name: flat
    paths: [/flat]
    compose:
      merge: {mode: flat}
      steps:
        - {name: user, service: svc, path: /user}
        - {name: prefs, service: svc, path: /prefs}
  - name: grouped
    paths: [/grouped]
    compose:
      steps:
        - {name: user, service: svc, path: /user, select: meta.plan, as: plan}
        - {name: prefs, service: svc, path: /prefs, hidden: true}
        - {name: theme, service: svc, path: "/prefs?t={prefs.body.theme}", select: theme}
        - {name: missing, service: svc, path: /user, select: meta.nothing, optional: true}
  - name: keyed
    paths: [/keyed]
    compose:
      merge: {mode: by_key, key: id, into: catalog}
      steps:
        - {name: products, service: svc, path: /products, select: data}
        - {name: prices, service: svc, path: /prices}
`);
  assert.deepEqual(bodyOf(await run(s.route('flat'))), { id: 1, name: 'Annie', meta: { plan: 'pro' }, theme: 'dark' });
  const g = await run(s.route('grouped'));
  assert.deepEqual(bodyOf(g), { plan: 'pro', theme: 'dark (confirmed)', errors: [{ step: 'missing', status: 200, error: 'the response has no member meta.nothing (select)' }] });
  assert.deepEqual(bodyOf(await run(s.route('keyed'))), { catalog: [{ id: 1, name: 'pen', price: 3 }, { id: 2, name: 'ink', price: 5 }] });
});

test('the client body feeds templates with its types; a body that is not JSON is a 400', async () => {
  const svc = await upstream((req, res, body) => json(res, { got: JSON.parse(body.toString()), type: req.headers['content-type'], method: req.method }));
  const s = setup(`services:
  - {name: svc, url: "${svc.url}"}
routes:
  - name: r
    paths: [/r]
    methods: [POST]
    compose:
      steps:
        - name: create
          service: svc
          method: POST
          body: {id: "{body.user.id}", label: "user-{body.user.id}", tags: "{body.tags}", fixed: [1, 2]}
`);
  assert.equal(s.route('r').compose!.readsBody, true);
  const r = await run(s.route('r'), { method: 'POST', body: Buffer.from(JSON.stringify({ user: { id: 7 }, tags: ['a', 'b'] })) });
  assert.deepEqual(bodyOf(r), { create: { got: { id: 7, label: 'user-7', tags: ['a', 'b'], fixed: [1, 2] }, type: 'application/json', method: 'POST' } });
  const p = await problem(run(s.route('r'), { method: 'POST', body: Buffer.from('{not json') }));
  assert.equal(p.code, 'bad-request');
  const huge = await problem(run(s.route('r'), { method: 'POST', body: Buffer.from('{"user":{"id":1e400}}') }));
  assert.equal(huge.code, 'bad-request');
});

test('a cached step is served from memory for its ttl, keyed by its final URL and headers', async () => {
  let n = 0;
  const svc = await upstream((req, res) => json(res, { n: ++n, url: req.url }));
  const s = setup(`services:
  - {name: svc, url: "${svc.url}"}
routes:
  - name: r
    paths: ["/r/{id}"]
    compose:
      steps:
        - {name: item, service: svc, path: "/items/{id}", headers: {x-user: "{header.x-user}"}, cache: {ttl: 300ms}}
`);
  const a1 = bodyOf(await run(s.route('r'), { params: { id: '1' } }));
  const a2 = bodyOf(await run(s.route('r'), { params: { id: '1' } }));
  const b = bodyOf(await run(s.route('r'), { params: { id: '2' } }));
  const other = bodyOf(await run(s.route('r'), { params: { id: '1' }, headers: (h) => (h === 'x-user' ? 'bob' : undefined) }));
  assert.deepEqual([a1.item, a2.item, b.item, other.item], [{ n: 1, url: '/items/1' }, { n: 1, url: '/items/1' }, { n: 2, url: '/items/2' }, { n: 3, url: '/items/1' }]);
  await new Promise((r) => setTimeout(r, 400));
  assert.deepEqual(bodyOf(await run(s.route('r'), { params: { id: '1' } })).item, { n: 4, url: '/items/1' });
});

test('a step cache keeps no answer whose Cache-Control says no-store, private or no-cache (a personal answer was handed to every client for the ttl), nor one past its max-age', async () => {
  let n = 0;
  const svc = await upstream((req, res) => {
    const cc = req.url!.slice('/items/'.length);
    json(res, { n: ++n }, 200, cc === 'none' ? {} : { 'cache-control': decodeURIComponent(cc) });
  });
  const s = setup(`services:
  - {name: svc, url: "${svc.url}"}
routes:
  - name: r
    paths: ["/r/{cc}"]
    compose:
      steps:
        - {name: item, service: svc, path: "/items/{cc}", cache: {ttl: 60s}}
`);
  for (const cc of ['no-store', 'private', 'max-age=60, Private', 'no-cache', 'private="set-cookie"', 'max-age=0', 's-maxage=0, max-age=60']) {
    const first = bodyOf(await run(s.route('r'), { params: { cc: encodeURIComponent(cc) } })).item as { n: number };
    const second = bodyOf(await run(s.route('r'), { params: { cc: encodeURIComponent(cc) } })).item as { n: number };
    assert.equal(second.n, first.n + 1, cc);
  }
  const kept = bodyOf(await run(s.route('r'), { params: { cc: 'none' } })).item as { n: number };
  assert.equal((bodyOf(await run(s.route('r'), { params: { cc: 'none' } })).item as { n: number }).n, kept.n);
});

test('a step cache\'s max_bytes counts a body decoded, not its gzip bytes on the wire', async () => {
  // 20 KB of JSON that gzip makes about 100 bytes
  const svc = await upstream((req, res) => {
    res.writeHead(200, { 'content-type': 'application/json', 'content-encoding': 'gzip' }).end(gzipSync(JSON.stringify({ url: req.url, pad: 'x'.repeat(20_000) })));
  });
  const s = setup(`services:
  - {name: svc, url: "${svc.url}"}
routes:
  - name: r
    paths: ["/r/{id}"]
    compose:
      steps:
        - {name: item, service: svc, path: "/items/{id}", cache: {ttl: 60s, max_bytes: 50kb}}
`);
  for (let id = 0; id < 6; id++) assert.equal((bodyOf(await run(s.route('r'), { params: { id: String(id) } })).item as { url: string }).url, `/items/${id}`);
  const cache = s.route('r').compose!.steps[0]!.cache!;
  assert.equal(cache.size, 2, 'two 20 KB values fit in 50 KB');
  // the newest are kept
  const before = svc.requests.length;
  await run(s.route('r'), { params: { id: '5' } });
  assert.equal(svc.requests.length, before);
});

test('a HEAD step of a resource larger than max_body succeeds (its Content-Length is the GET\'s); a GET of it fails at once', async () => {
  const svc = await upstream((req, res) => {
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': '5000000', etag: '"big-1"' });
    if (req.method === 'HEAD') res.end();
    else res.end('['.padEnd(5_000_000 - 1, ' ') + ']');
  });
  const s = setup(`services:
  - {name: svc, url: "${svc.url}"}
routes:
  - name: r
    paths: [/r]
    compose:
      max_body: 1mb
      steps:
        - {name: probe, service: svc, method: HEAD, path: /big}
        - {name: tag, service: svc, method: HEAD, path: "/tags/{probe.headers.etag}"}
        - {name: get, service: svc, path: /big, optional: true}
`);
  const r = await run(s.route('r'));
  const b = bodyOf(r);
  assert.equal(b.probe, null);
  assert.equal(b.tag, null);
  assert.equal(svc.requests.find((x) => x.url.startsWith('/tags/'))?.url, '/tags/%22big-1%22', 'its headers read by a later step');
  assert.deepEqual(b.errors, [{ step: 'get', status: 200, error: 'response too large (5000000 bytes, over max_body 1048576)' }]);
});

test('service steps use the balancer, skip down targets and retry on another target', async () => {
  const bad = await upstream((req, res) => json(res, { from: 'bad' }, 503));
  const good = await upstream((req, res) => json(res, { from: 'good' }));
  // (a second step that always answers: with every step failed the composition is a 502)
  const yaml = (retries: number) => `services:
  - name: svc
    upstream: {targets: [{url: "${bad.url}"}, {url: "${good.url}"}]}
  - {name: steady, url: "${good.url}"}
routes:
  - name: r
    paths: [/r]
    compose:
      steps:
        - {name: x, service: svc, retries: ${retries}, optional: true}
        - {name: y, service: steady}
`;
  const noRetry = setup(yaml(0));
  const outcomes = [];
  for (let i = 0; i < 4; i++) outcomes.push(header(await run(noRetry.route('r')), 'turnpike-partial') ?? 'ok');
  assert.deepEqual(outcomes.sort(), ['ok', 'ok', 'x', 'x'], 'round-robin reaches both targets');
  const withRetry = setup(yaml(1));
  for (let i = 0; i < 4; i++) assert.deepEqual(bodyOf(await run(withRetry.route('r'))).x, { from: 'good' });
  // a target the health authority took out gets no step traffic
  const svc = withRetry.snap.services.find((x) => x.name === 'svc')!;
  const badHits = bad.requests.length;
  svc.targets[0]!.state.down = true;
  for (let i = 0; i < 3; i++) await run(withRetry.route('r'));
  assert.equal(bad.requests.length, badHits);
  svc.targets[1]!.state.down = true;
  const r = await run(withRetry.route('r'));
  assert.deepEqual(bodyOf(r).errors, [{ step: 'x', status: null, error: 'service "svc" has no healthy target' }]);
  svc.targets[0]!.state.down = svc.targets[1]!.state.down = false;
});

test('the client going away aborts every running step', async () => {
  const closed: string[] = [];
  const svc = await upstream((req, res) => {
    res.on('close', () => closed.push(req.url!));
    setTimeout(() => json(res, {}), 3000);
  });
  const s = setup(`services:
  - {name: svc, url: "${svc.url}"}
routes:
  - name: r
    paths: [/r]
    compose:
      steps:
        - {name: a, service: svc, path: /a}
        - {name: b, service: svc, path: /b, optional: true}
`);
  const ac = new AbortController();
  setTimeout(() => ac.abort(), 150);
  const t0 = Date.now();
  await assert.rejects(run(s.route('r'), { signal: ac.signal }), (err: Error) => err.name === 'AbortError');
  assert.ok(Date.now() - t0 < 1000);
  await new Promise((r) => setTimeout(r, 200));
  assert.deepEqual(closed.sort(), ['/a', '/b'], 'the upstream exchanges were cut');
});

test('{consumer.*} templates carry who the auth plugins said is calling', async () => {
  const svc = await upstream((req, res) => json(res, { url: req.url, who: req.headers['x-consumer'] ?? null }));
  const s = setup(`services:
  - {name: svc, url: "${svc.url}"}
routes:
  - name: r
    paths: [/r]
    compose:
      steps:
        - {name: me, service: svc, path: "/accounts/{consumer.id}", query: {groups: "{consumer.groups:-none}"}, headers: {x-consumer: "{consumer.name}"}}
        - {name: sub, service: svc, path: "/subjects/{consumer.identity}", optional: true}
`);
  const r = await run(s.route('r'), { auth: { consumer: { id: 'c-1', name: 'acme', groups: ['a', 'b'] }, identity: 'acme' } });
  assert.deepEqual(bodyOf(r), { me: { url: '/accounts/c-1?groups=a%2Cb', who: 'acme' }, sub: { url: '/subjects/acme', who: null } });
  // no consumer (the route has no auth plugin, or it let an anonymous request through): no value
  const p = await problem(run(s.route('r')));
  assert.deepEqual(p.extra, { step: 'me', step_status: null });
  assert.match(p.detail, /template \{consumer\.id\} has no value/);
});

test('a step that fails by a bug: the client learns "internal error", the message (which may name internals) goes to the log only', async () => {
  const up = await upstream((_req, res) => json(res, { ok: true }));
  const s = setup(`services:
  - {name: a, url: "${up.url}"}
routes:
  - name: r
    paths: [/r]
    compose:
      steps:
        - {name: one, service: a, path: /x, query: {who: "{header.x-user}"}}
`);
  const lines: Record<string, unknown>[] = [];
  const log = pino({ level: 'info' }, { write: (l: string) => void lines.push(JSON.parse(l) as Record<string, unknown>) });
  const p = await problem(run(s.route('r'), {
    log,
    headers: () => {
      throw new Error('lookup failed: postgres://admin:hunter2@10.0.0.5/db');
    },
  }));
  assert.equal(p.code, 'step-failed');
  assert.ok(!JSON.stringify([p.detail, p.extra]).includes('hunter2'), JSON.stringify([p.detail, p.extra]));
  assert.match(String(p.detail), /internal error/);
  assert.equal(lines.length, 1);
  assert.equal(lines[0]!.step, 'one');
  assert.match(JSON.stringify(lines[0]!.err), /lookup failed/);
});
