import { test } from 'node:test';
import assert from 'node:assert/strict';
import { configIssues, startGateway, startUpstream, request, rawRequest, sleep, eventually } from './helpers.js';
import { makeCa } from './certs.js';

test('/status: 200 with the revision while serving, 503 once draining; other admin paths 404 problem+json', async () => {
  const up = await startUpstream((_req, res) => setTimeout(() => res.end('slow'), 600));
  const t = await startGateway(`admin: {listen: 127.0.0.1:0}\nservices:\n  - name: s\n    url: ${up.url}\n    routes: [{paths: [/]}]\n`);
  try {
    const ok = await request(`${t.adminUrl}/status`);
    assert.equal(ok.status, 200);
    const body = JSON.parse(ok.body);
    assert.equal(body.status, 'ok');
    assert.equal(body.revision, 1);
    assert.equal(body.routes, 1);
    const head = await request(`${t.adminUrl}/status`, { method: 'HEAD' });
    assert.equal(head.status, 200);
    assert.equal(head.body, '');
    const nf = await request(`${t.adminUrl}/nope`);
    assert.equal(nf.status, 404);
    assert.equal(nf.headers['content-type'], 'application/problem+json');

    const inflight = request(`${t.url}/slow`);
    await sleep(100);
    const stopping = t.gw.stop();
    const draining = await request(`${t.adminUrl}/status`);
    assert.equal(draining.status, 503);
    assert.equal(JSON.parse(draining.body).status, 'draining');
    assert.equal((await inflight).body, 'slow');
    await stopping;
  } finally {
    await t.close();
    await up.close();
  }
});

test('with admin.token: /health needs the bearer token; /status tells anyone only its status', async () => {
  const up = await startUpstream();
  const t = await startGateway(`admin: {listen: 127.0.0.1:0, token: s3cret-token-0123456}\nservices:\n  - name: s\n    upstream: {targets: [{url: "${up.url}"}], healthcheck: {passive: {failures: 2}}}\n    routes: [{paths: [/]}]\n`);
  try {
    for (const headers of [{}, { authorization: 'Bearer wrong' }, { authorization: 'Basic czNjcmV0LXRva2Vu' }, { authorization: 'Bearer s3cret-token-0123456-longer' }] as Record<string, string>[]) {
      const r = await request(`${t.adminUrl}/health`, { headers });
      assert.equal(r.status, 401, JSON.stringify(headers));
      assert.equal(r.headers['content-type'], 'application/problem+json');
      assert.match(String(r.headers['www-authenticate']), /^Bearer /);
      assert.doesNotMatch(r.body, /127\.0\.0\.1/);
    }
    const h = await request(`${t.adminUrl}/health`, { headers: { authorization: 'Bearer s3cret-token-0123456' } });
    assert.equal(h.status, 200);
    assert.deepEqual(JSON.parse(h.body).targets[`s|${up.url}`], { down: false, ejected: false, failing_probes: false, failures: 0 });
    const anon = JSON.parse((await request(`${t.adminUrl}/status`)).body);
    assert.deepEqual(anon, { status: 'ok' });
    const full = JSON.parse((await request(`${t.adminUrl}/status`, { headers: { authorization: 'bearer s3cret-token-0123456' } })).body);
    assert.equal(full.revision, 1);
    assert.equal((await request(`${t.adminUrl}/nope`)).status, 401);
  } finally {
    await t.close();
    await up.close();
  }
});

test('probes: /status/live and /status/ready on the admin listener without the token, and on status_listen (the probes alone, 404 for the rest); live stays 200 while draining, ready turns 503', async () => {
  const up = await startUpstream((_req, res) => setTimeout(() => res.end('slow'), 800));
  const t = await startGateway(`admin: {listen: 127.0.0.1:0, token: s3cret-token-0123456}\nstatus_listen: 127.0.0.1:0\nservices:\n  - name: s\n    url: ${up.url}\n    routes: [{paths: [/]}]\n`);
  const st = `http://127.0.0.1:${t.gw.statusAddress!.port}`;
  const json = async (url: string, opts: Parameters<typeof request>[1] = {}) => {
    const r = await request(url, opts);
    return { code: r.status, body: r.body === '' ? '' : JSON.parse(r.body) as unknown };
  };
  const authed = { authorization: 'Bearer s3cret-token-0123456' };
  try {
    for (const base of [t.adminUrl!, st]) {
      assert.deepEqual(await json(`${base}/status/live`), { code: 200, body: { status: 'ok' } }, base);
      assert.deepEqual(await json(`${base}/status/ready`), { code: 200, body: { status: 'ok' } }, base);
      assert.deepEqual(await json(`${base}/status`), { code: 200, body: { status: 'ok' } }, base);
      assert.deepEqual(await json(`${base}/status/ready`, { method: 'HEAD' }), { code: 200, body: '' }, base);
      // (a token, even a wrong one, changes nothing for the probes)
      assert.deepEqual(await json(`${base}/status/ready`, { headers: { authorization: 'Bearer wrong' } }), { code: 200, body: { status: 'ok' } }, base);
      assert.deepEqual(await json(`${base}/status/live?x=1`, { headers: authed }), { code: 200, body: { status: 'ok' } }, base);
    }
    // The admin listener: the rest still needs the token; /status with it is the whole report.
    assert.equal((await request(`${t.adminUrl}/health`)).status, 401);
    assert.equal((await request(`${t.adminUrl}/status/ready`, { method: 'POST' })).status, 401);
    assert.equal((await request(`${t.adminUrl}/status/other`)).status, 401);
    assert.equal(((await json(`${t.adminUrl}/status`, { headers: authed })).body as { revision: number }).revision, 1);
    // The status listener: nothing but the probes, whatever the token.
    for (const [path, method] of [['/health', 'GET'], ['/metrics', 'GET'], ['/api/services', 'GET'], ['/console/', 'GET'], ['/status/other', 'GET'], ['/status/ready', 'POST'], ['/cache', 'DELETE']] as const) {
      const r = await request(`${st}${path}`, { method, headers: authed });
      assert.equal(r.status, 404, `${method} ${path}`);
      assert.equal(r.headers['content-type'], 'application/problem+json');
    }

    const inflight = request(`${t.url}/slow`);
    await sleep(100);
    const stopping = t.gw.stop();
    for (const base of [t.adminUrl!, st]) {
      assert.deepEqual(await json(`${base}/status/live`), { code: 200, body: { status: 'ok', phase: 'draining' } }, base);
      assert.deepEqual(await json(`${base}/status/ready`), { code: 503, body: { status: 'draining' } }, base);
      assert.deepEqual(await json(`${base}/status`), { code: 503, body: { status: 'draining' } }, base);
    }
    assert.equal((await inflight).body, 'slow');
    await stopping;
    await assert.rejects(request(`${st}/status/live`), 'the status listener closes with the rest');
  } finally {
    await t.close();
    await up.close();
  }
});

test('admin.tokens: a read-only token reads, only an admin token changes (DELETE /cache); names and tokens are unique; beyond loopback an admin token is needed', async () => {
  const up = await startUpstream();
  const t = await startGateway(`admin:
  listen: 127.0.0.1:0
  tokens:
    - {name: ops, token: ops-token-0123456789, role: admin}
    - {name: dashboard, token: ro-token-0123456789, role: read-only}
services:
  - name: s
    url: ${up.url}
    plugins: [{name: cache}]
    routes: [{paths: [/]}]
`);
  try {
    const ro = { authorization: 'Bearer ro-token-0123456789' };
    const rw = { authorization: 'Bearer ops-token-0123456789' };
    assert.equal((await request(`${t.adminUrl}/health`)).status, 401);
    assert.equal((await request(`${t.adminUrl}/health`, { headers: ro })).status, 200);
    assert.equal((await request(`${t.adminUrl}/metrics`, { headers: ro })).status, 200);
    const denied = await request(`${t.adminUrl}/cache`, { method: 'DELETE', headers: ro });
    assert.equal(denied.status, 403);
    assert.match(JSON.parse(denied.body).detail, /dashboard.*read-only/);
    assert.equal((await request(`${t.adminUrl}/cache`, { method: 'DELETE', headers: rw })).status, 200);
    // OPTIONS changes nothing: a read-only token gets the Allow (as /api/ answers it), and still may not DELETE
    for (const path of ['/metrics', '/cache']) {
      const opts = await request(`${t.adminUrl}${path}`, { method: 'OPTIONS', headers: ro });
      assert.equal(opts.status, 204, `OPTIONS ${path}: ${opts.body}`);
      assert.match(String(opts.headers['allow']), /OPTIONS/);
    }
    assert.equal((await request(`${t.adminUrl}/cache`, { method: 'DELETE', headers: { ...ro, 'x-http-method-override': 'GET' } })).status, 403);
  } finally {
    await t.close();
    await up.close();
  }
  const dup = configIssues(`admin:
  listen: 127.0.0.1:9
  token: first-token-0123456789
  tokens:
    - {name: admin, token: other-token-0123456789, role: admin}
    - {name: b, token: first-token-0123456789, role: read-only}
`);
  assert.ok(dup.some((i) => i.path === 'admin.tokens[0].name' && /twice/.test(i.message)), JSON.stringify(dup));
  assert.ok(dup.some((i) => i.path === 'admin.tokens[1].token' && /twice/.test(i.message)), JSON.stringify(dup));
  const open = configIssues(`admin:
  listen: 0.0.0.0:9
  tokens: [{name: ro, token: ro-token-0123456789, role: read-only}]
`);
  assert.ok(open.some((i) => i.path === 'admin.token' && /required/.test(i.message)), JSON.stringify(open));
});

test('wrong admin tokens are throttled per client on the whole admin listener (bearer on /metrics and /api/, the console sign-in): 429 problem+json with Retry-After; a right token is never counted', async () => {
  const { mkdtempSync, writeFileSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const { join } = await import('node:path');
  const { parseConfigText } = await import('../src/config/load.js');
  const { Gateway } = await import('../src/server/gateway.js');
  const { fileControl } = await import('../src/server/control-plane.js');
  const { silentLogger } = await import('../src/core/log.js');
  const TOKEN = 'throttle-admin-token-0123456789';
  const text = `listen: 127.0.0.1:0\nadmin: {listen: 127.0.0.1:0, token: ${TOKEN}}\naccess_log: {enabled: false}\nservices: []\n`;
  const file = join(mkdtempSync(join(tmpdir(), 'tp-throttle-')), 'turnpike.yaml');
  writeFileSync(file, text);
  const loaded = parseConfigText(text, { file });
  const gw = await Gateway.start(loaded, { control: fileControl(file, loaded, silentLogger) });
  const admin = `http://127.0.0.1:${gw.adminAddress!.port}`;
  const good = { authorization: `Bearer ${TOKEN}` };
  try {
    // A busy client with the right token (many at once) is never refused.
    const many = await Promise.all(Array.from({ length: 200 }, () => request(`${admin}/metrics`, { headers: good })));
    assert.deepEqual([...new Set(many.map((r) => r.status))], [200]);
    // 9 wrong ones, then right ones (refunded: they do not add up), then the 10th wrong one.
    for (let i = 0; i < 9; i++) assert.equal((await request(`${admin}/metrics`, { headers: { authorization: `Bearer wrong-${i}` } })).status, 401);
    for (let i = 0; i < 20; i++) assert.equal((await request(`${admin}/api/services`, { headers: good })).status, 200);
    assert.equal((await request(`${admin}/api/services`, { headers: { authorization: 'Bearer wrong-9' } })).status, 401);
    // Over the limit: every attempt from this client is 429 (the token is not looked at), on every path.
    for (const [path, headers] of [['/metrics', { authorization: 'Bearer wrong-10' }], ['/api/services', { authorization: 'Bearer wrong-11' }], ['/health', good]] as const) {
      const r = await request(`${admin}${path}`, { headers });
      assert.equal(r.status, 429, path);
      assert.equal(r.headers['content-type'], 'application/problem+json');
      assert.equal(JSON.parse(r.body).type, 'urn:turnpike:problem:too-many-requests');
      assert.ok(Number(r.headers['retry-after']) >= 1 && Number(r.headers['retry-after']) <= 60, String(r.headers['retry-after']));
      assert.doesNotMatch(r.body, new RegExp(TOKEN));
    }
    const login = await request(`${admin}/console/api/login`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ token: TOKEN }) });
    assert.equal(login.status, 429, 'the console sign-in shares the limit');
    assert.ok(Number(login.headers['retry-after']) >= 1);
    // Probes without a token are not attempts.
    assert.equal((await request(`${admin}/status`)).status, 200);
  } finally {
    await gw.stop();
  }
});

test('behind a trusted proxy (an ingress in front of the admin listener) wrong admin tokens count for the client it names (X-Forwarded-For, or Forwarded alone), not for the proxy: one guesser does not lock every admin out', async () => {
  const { mkdtempSync, writeFileSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const { join } = await import('node:path');
  const { parseConfigText } = await import('../src/config/load.js');
  const { Gateway } = await import('../src/server/gateway.js');
  const { fileControl } = await import('../src/server/control-plane.js');
  const { silentLogger } = await import('../src/core/log.js');
  const TOKEN = 'proxied-admin-token-0123456789';
  const text = `listen: 127.0.0.1:0\nadmin: {listen: 127.0.0.1:0, token: ${TOKEN}}\ntrusted_proxies: [127.0.0.0/8]\naccess_log: {enabled: false}\nservices: []\n`;
  const file = join(mkdtempSync(join(tmpdir(), 'tp-throttle-proxy-')), 'turnpike.yaml');
  writeFileSync(file, text);
  const loaded = parseConfigText(text, { file });
  const gw = await Gateway.start(loaded, { control: fileControl(file, loaded, silentLogger) });
  const admin = `http://127.0.0.1:${gw.adminAddress!.port}`;
  const from = (ip: string, token: string) => ({ 'x-forwarded-for': ip, authorization: `Bearer ${token}` });
  try {
    for (let i = 0; i < 10; i++) assert.equal((await request(`${admin}/metrics`, { headers: from('203.0.113.66', `wrong-${i}`) })).status, 401);
    assert.equal((await request(`${admin}/metrics`, { headers: from('203.0.113.66', 'wrong-x') })).status, 429, 'the guesser is limited');
    assert.equal((await request(`${admin}/metrics`, { headers: from('198.51.100.7', TOKEN) })).status, 200, 'another admin behind the same proxy is not');
    assert.equal((await request(`${admin}/api/services`, { headers: from('198.51.100.7', 'typo') })).status, 401);
    const login = await request(`${admin}/console/api/login`, { method: 'POST', headers: { 'content-type': 'application/json', 'x-forwarded-for': '203.0.113.66' }, body: JSON.stringify({ token: TOKEN }) });
    assert.equal(login.status, 429, 'the console sign-in counts the named client too');
    // an ingress that names its client in Forwarded only (RFC 7239: HAProxy's option forwarded)
    const fwd = (ip: string, token: string) => ({ forwarded: `for=${ip};proto=https`, authorization: `Bearer ${token}` });
    for (let i = 0; i < 10; i++) assert.equal((await request(`${admin}/metrics`, { headers: fwd('192.0.2.66', `wrong-${i}`) })).status, 401);
    assert.equal((await request(`${admin}/metrics`, { headers: fwd('192.0.2.66', 'wrong-x') })).status, 429, 'the guesser named in Forwarded is limited');
    assert.equal((await request(`${admin}/metrics`, { headers: fwd('192.0.2.7', TOKEN) })).status, 200, 'another admin behind that proxy is not');
  } finally {
    await gw.stop();
  }
});

test('the console sign-in cannot be raced: 300 concurrent wrong sign-ins from one client are at most 10 × 401, the rest 429', async () => {
  const TOKEN = 'race-admin-token-0123456789';
  const t = await startGateway(`admin: {listen: 127.0.0.1:0, token: ${TOKEN}}\nservices: []\n`);
  try {
    // Every sign-in's headers first (each waits for its body), then every body.
    const { request: httpRequest } = await import('node:http');
    const sent: (() => void)[] = [];
    const all = Array.from({ length: 300 }, (_, i) => new Promise<number>((resolve, reject) => {
      const body = JSON.stringify({ token: `wrong-token-${i}` });
      const req = httpRequest(`${t.adminUrl}/console/api/login`, { method: 'POST', agent: false, headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) } }, (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode!));
      });
      req.on('error', reject);
      req.flushHeaders();
      sent.push(() => req.end(body));
    }));
    await sleep(500);
    for (const send of sent) send();
    const statuses = await Promise.all(all);
    const n401 = statuses.filter((s) => s === 401).length;
    const n429 = statuses.filter((s) => s === 429).length;
    assert.ok(n401 <= 10, `${n401} × 401`);
    assert.equal(n401 + n429, 300);
  } finally {
    await t.close();
  }
});

test('AuthFailures: per network (an IPv6 /64 is one client), the least recently seen go past the cap (the others are kept, not wiped)', async () => {
  const { AuthFailures } = await import('../src/admin/auth.js');
  const f = new AuthFailures(2, 60_000, 3);
  const over = (ip: string) => { try { f.take(ip); return false; } catch (err) { return (err as { code?: string }).code === 'too-many-requests'; } };
  assert.equal(over('10.0.0.1'), false);
  assert.equal(over('10.0.0.1'), false);
  assert.equal(over('10.0.0.1'), true);
  assert.equal(over('2001:db8:1:2::1'), false);
  assert.equal(over('2001:db8:1:2:ffff::9'), false);
  assert.equal(over('2001:db8:1:2:0:0:0:5'), true, 'the same /64');
  assert.equal(over('10.0.0.2'), false); // a third network: within the cap
  assert.equal(over('10.0.0.1'), true, 'still blocked: nothing was wiped');
  f.refund('10.0.0.1');
  assert.equal(over('10.0.0.1'), false, 'a refund gives one attempt back');
});

test('an admin token no Authorization header can carry (a trailing newline from a Secret made --from-file, a space, a control character) is refused at load, naming path and line, ${ENV} included', () => {
  const at = (yaml: string, env: NodeJS.ProcessEnv = {}) => configIssues(`services: []\nadmin:\n  listen: 127.0.0.1:0\n${yaml}`, env);
  const bearer = 'an Authorization: Bearer header cannot carry it';
  for (const [value, why] of [
    ['0123456789abcdefXYZ\n', `ends with a newline: ${bearer}; trim the secret`],
    ['0123456789abcdefXYZ\r\n', `ends with a newline: ${bearer}; trim the secret`],
    [' 0123456789abcdefXYZ', `starts with a space: ${bearer}; trim the secret`],
    ['0123456789 abcdefXYZ', `contains a space: ${bearer}`],
    ['0123456789\tabcdefXYZ', `contains a tab: ${bearer}`],
    ['0123456789abcdéfXYZ', `contains the character U+00E9: ${bearer}`],
  ] as const) {
    // from the environment (the usual way in) and written in the file (double-quoted YAML)
    assert.deepEqual(at('  token: ${TOKEN}\n', { TOKEN: value }), [{ path: 'admin.token', line: 4, message: why }], JSON.stringify(value));
    assert.deepEqual(at(`  token: ${JSON.stringify(value)}\n`), [{ path: 'admin.token', line: 4, message: why }], JSON.stringify(value));
    assert.deepEqual(at('  tokens:\n    - {name: ci, role: read-only, token: "${TOKEN}"}\n', { TOKEN: value }), [{ path: 'admin.tokens[0].token', line: 5, message: why }], JSON.stringify(value));
  }
  assert.deepEqual(at('  token: ${TOKEN}\n', { TOKEN: '0123456789abcdef-._~+/=' }), []);
});

test('admin.token needs 16 characters (as admin.tokens do); an empty one means none; the error names the path and line and never quotes the token', () => {
  const issues = configIssues('services: []\nadmin:\n  listen: 127.0.0.1:0\n  token: short-secret\n');
  assert.equal(issues.length, 1);
  assert.equal(issues[0]!.path, 'admin.token');
  assert.equal(issues[0]!.line, 4);
  assert.match(issues[0]!.message, /at least 16 characters/);
  assert.doesNotMatch(issues[0]!.message, /short-secret/);
  assert.deepEqual(configIssues('services: []\nadmin: {listen: 127.0.0.1:0, token: ""}\n'), []);
  assert.deepEqual(configIssues('services: []\nadmin: {listen: 127.0.0.1:0, token: sixteen-chars-ok}\n'), []);
});

test('an admin listener path asked with a method it does not take is a 405 problem+json with Allow (not a 404); OPTIONS lists the methods', async () => {
  const t = await startGateway(`admin: {listen: 127.0.0.1:0, token: s3cret-token-0123456}\nservices: []\n`);
  try {
    const auth = { authorization: 'Bearer s3cret-token-0123456' };
    for (const path of ['/metrics', '/health', '/status', '/analytics']) {
      const r = await request(`${t.adminUrl}${path}`, { method: 'POST', headers: auth });
      assert.equal(r.status, 405, `${path}: ${r.body}`);
      assert.equal(r.headers['content-type'], 'application/problem+json');
      assert.equal(r.headers['allow'], 'GET, HEAD');
      assert.equal(JSON.parse(r.body).status, 405);
    }
    const opts = await request(`${t.adminUrl}/metrics`, { method: 'OPTIONS', headers: auth });
    assert.equal(opts.status, 204);
    assert.equal(opts.headers['allow'], 'GET, HEAD, OPTIONS');
    // without the token it is still a 401 (nothing said about the listener's paths first)
    assert.equal((await request(`${t.adminUrl}/metrics`, { method: 'POST' })).status, 401);
    assert.equal((await request(`${t.adminUrl}/nope`, { method: 'POST', headers: auth })).status, 404);
  } finally {
    await t.close();
  }
});

test('store: file — an edit the gateway would not reload (a duplicate service name, an unknown plan) is not what the admin API shows: /api/config and /api/revisions keep the running document', async () => {
  const { mkdtempSync, writeFileSync, rmSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const { join } = await import('node:path');
  const { createServer } = await import('node:http');
  const { loadConfigFile } = await import('../src/config/load.js');
  const { fileControl } = await import('../src/server/control-plane.js');
  const { silentLogger } = await import('../src/core/log.js');
  const dir = mkdtempSync(join(tmpdir(), 'tp-file-admin-'));
  const file = join(dir, 'turnpike.yaml');
  const good = 'services:\n  - name: orders\n    url: http://127.0.0.1:9001\n    routes: [{name: o, paths: [/o]}]\n';
  writeFileSync(file, good);
  const api = fileControl(file, loadConfigFile(file), silentLogger).api(() => [], undefined, undefined);
  const server = createServer((req, res) => void api(req, res));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${(server.address() as import('node:net').AddressInfo).port}`;
  try {
    const first = await request(`${url}/api/config?format=json`);
    assert.equal(first.status, 200, first.body);
    assert.equal(first.headers['etag'], '"r1"');
    for (const bad of [
      good + '  - name: orders\n    url: http://127.0.0.1:9002\n',
      good + 'plans: {gold: {services: [orders]}}\nconsumers: [{name: acme, plan: silver}]\n',
    ]) {
      writeFileSync(file, bad);
      const now = await request(`${url}/api/config?format=json`);
      assert.equal(now.headers['etag'], '"r1"', bad);
      assert.equal(now.body, first.body);
      assert.equal(JSON.parse((await request(`${url}/api/services`)).body).total, 1);
      assert.deepEqual(JSON.parse((await request(`${url}/api/revisions`)).body).data.map((r: { revision: number }) => r.revision), [1]);
    }
    // a good edit is the next revision
    writeFileSync(file, good.replace('9001', '9003'));
    const next = await request(`${url}/api/config?format=json`);
    assert.equal(next.headers['etag'], '"r2"');
    assert.match(next.body, /9003/);
  } finally {
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
    rmSync(dir, { recursive: true, force: true });
  }
});

test('Authorization given twice (RFC 9110 §5.3: it is not a list) is a 400 problem on the whole admin listener and /api/, whichever comes first; node:http would keep the first one and take it', async () => {
  const { mkdtempSync, writeFileSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const { join } = await import('node:path');
  const { parseConfigText } = await import('../src/config/load.js');
  const { Gateway } = await import('../src/server/gateway.js');
  const { fileControl } = await import('../src/server/control-plane.js');
  const { silentLogger } = await import('../src/core/log.js');
  const OPS = 'dup-ops-token-0123456789';
  const RO = 'dup-ro-token-0123456789';
  const text = `listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\n  tokens:\n    - {name: ops, token: ${OPS}, role: admin}\n    - {name: ro, token: ${RO}, role: read-only}\naccess_log: {enabled: false}\nservices: []\n`;
  const file = join(mkdtempSync(join(tmpdir(), 'tp-dup-auth-')), 'turnpike.yaml');
  writeFileSync(file, text);
  const loaded = parseConfigText(text, { file });
  const gw = await Gateway.start(loaded, { control: fileControl(file, loaded, silentLogger) });
  const admin = `http://127.0.0.1:${gw.adminAddress!.port}`;
  try {
    for (const [method, path] of [['GET', '/health'], ['GET', '/metrics'], ['DELETE', '/cache'], ['GET', '/api/services'], ['GET', '/api/config']] as const) {
      for (const pair of [[OPS, 'wrong'], ['wrong', OPS], [OPS, RO], [RO, OPS], [OPS, OPS]]) {
        const { text: raw } = await rawRequest(gw.adminAddress!.port, `${method} ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${pair[0]}\r\nAuthorization: Bearer ${pair[1]}\r\nConnection: close\r\n\r\n`);
        const [head, body] = raw.split('\r\n\r\n') as [string, string];
        assert.match(head, /^HTTP\/1\.1 400 /, `${method} ${path} ${pair.join(' + ')}: ${raw}`);
        assert.match(head, /\r\ncontent-type: application\/problem\+json\r\n/i);
        assert.match(JSON.parse(body).detail, /Authorization.*more than once/);
        assert.doesNotMatch(raw, new RegExp(`${OPS}|${RO}`));
      }
      // once is as before
      assert.notEqual((await request(`${admin}${path}`, { method, headers: { authorization: `Bearer ${OPS}` } })).status, 400, path);
    }
    // a probe answers its short status to anyone, whatever Authorization says
    const { text: probe } = await rawRequest(gw.adminAddress!.port, `GET /status/ready HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${OPS}\r\nAuthorization: Bearer x\r\nConnection: close\r\n\r\n`);
    assert.match(probe, /^HTTP\/1\.1 200 [^]*\{"status":"ok"\}$/);
  } finally {
    await gw.stop();
  }
});

test('every answer of the admin listener, the status listener and the console echoes X-Request-Id (the client\'s, or one made up), and its problems carry it as request_id', async () => {
  const TOKEN = 's3cret-token-0123456';
  const t = await startGateway(`admin: {listen: 127.0.0.1:0, token: ${TOKEN}}\nstatus_listen: 127.0.0.1:0\nservices: []\n`);
  const st = `http://127.0.0.1:${t.gw.statusAddress!.port}`;
  const auth = { authorization: `Bearer ${TOKEN}` };
  try {
    const cases: [string, string, Record<string, string>][] = [
      ['GET', `${t.adminUrl}/status`, {}], ['GET', `${t.adminUrl}/status`, auth], ['HEAD', `${t.adminUrl}/status/ready`, {}],
      ['GET', `${t.adminUrl}/health`, {}], ['GET', `${t.adminUrl}/health`, auth], ['GET', `${t.adminUrl}/metrics`, auth],
      ['POST', `${t.adminUrl}/metrics`, auth], ['OPTIONS', `${t.adminUrl}/metrics`, auth], ['GET', `${t.adminUrl}/nope`, auth],
      ['GET', `${t.adminUrl}/analytics?window=2m`, auth], ['GET', `${t.adminUrl}/health`, { authorization: 'Bearer wrong-token-000000' }],
      ['GET', `${t.adminUrl}/console`, {}], ['GET', `${t.adminUrl}/console/api/session`, {}], ['GET', `${t.adminUrl}/console/api/nope`, {}],
      ['POST', `${t.adminUrl}/console/api/login`, { 'content-type': 'text/plain' }],
      ['GET', `${st}/status/live`, {}], ['GET', `${st}/nope`, {}],
    ];
    for (const [method, url, headers] of cases) {
      const mine = await request(url, { method, headers: { ...headers, 'x-request-id': 'trace-0123-abcd' } });
      assert.equal(mine.headers['x-request-id'], 'trace-0123-abcd', `${method} ${url} ${mine.status}`);
      if (mine.headers['content-type'] === 'application/problem+json' && method !== 'HEAD') assert.equal(JSON.parse(mine.body).request_id, 'trace-0123-abcd', `${method} ${url}`);
      const made = await request(url, { method, headers });
      assert.match(String(made.headers['x-request-id']), /^\S{8,}$/, `${method} ${url} ${made.status}`);
      if (made.headers['content-type'] === 'application/problem+json' && method !== 'HEAD') assert.equal(JSON.parse(made.body).request_id, made.headers['x-request-id']);
    }
  } finally {
    await t.close();
  }
});

test('every admin listener answer (the API\'s JSON, YAML and problems, /metrics, /status, 401s) says nosniff and may not be framed; the console page keeps its own CSP', async () => {
  const { mkdtempSync, writeFileSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const { join } = await import('node:path');
  const { parseConfigText } = await import('../src/config/load.js');
  const { Gateway } = await import('../src/server/gateway.js');
  const { fileControl } = await import('../src/server/control-plane.js');
  const { silentLogger } = await import('../src/core/log.js');
  const TOKEN = 'nosniff-admin-token-0123456789';
  const text = `listen: 127.0.0.1:0\nadmin: {listen: 127.0.0.1:0, token: ${TOKEN}}\nstatus_listen: 127.0.0.1:0\naccess_log: {enabled: false}\nservices:\n  - name: s\n    url: http://127.0.0.1:9\n    routes: [{name: r, description: "<img src=x onerror=alert(1)>", paths: [/r]}]\n`;
  const file = join(mkdtempSync(join(tmpdir(), 'tp-nosniff-')), 'turnpike.yaml');
  writeFileSync(file, text);
  const loaded = parseConfigText(text, { file });
  const gw = await Gateway.start(loaded, { control: fileControl(file, loaded, silentLogger) });
  const admin = `http://127.0.0.1:${gw.adminAddress!.port}`;
  const auth = { authorization: `Bearer ${TOKEN}` };
  try {
    for (const [method, path, headers] of [
      ['GET', '/api/routes', auth], ['GET', '/api/config', auth], ['GET', '/api/config?format=json', auth], ['GET', '/api/routes/nope', auth],
      ['GET', '/api/routes', {}], ['OPTIONS', '/api/routes', auth], ['GET', '/api/openapi.json', auth],
      ['GET', '/metrics', auth], ['GET', '/status', auth], ['GET', '/status/ready', {}], ['GET', '/health', {}], ['GET', '/nope', auth],
    ] as const) {
      const r = await request(`${admin}${path}`, { method, headers });
      assert.equal(r.headers['x-content-type-options'], 'nosniff', `${method} ${path} ${r.status}`);
      assert.match(String(r.headers['content-security-policy']), /frame-ancestors 'none'/, `${method} ${path}`);
      assert.equal(r.headers['x-frame-options'], 'DENY', `${method} ${path}`);
    }
    const st = await request(`http://127.0.0.1:${gw.statusAddress!.port}/status/ready`);
    assert.equal(st.headers['x-content-type-options'], 'nosniff');
    const page = await request(`${admin}/console/`);
    if (page.status === 200) assert.match(String(page.headers['content-security-policy']), /script-src 'self'/);
  } finally {
    await gw.stop();
  }
});

test('RFC 6750 §3: Bearer without one well-formed token is 400 invalid_request; another scheme (Basic) is 401 with a bare challenge; a wrong token 401 invalid_token — on /api/ and the rest of the admin listener alike', async () => {
  const { mkdtempSync, writeFileSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const { join } = await import('node:path');
  const { parseConfigText } = await import('../src/config/load.js');
  const { Gateway } = await import('../src/server/gateway.js');
  const { fileControl } = await import('../src/server/control-plane.js');
  const { silentLogger } = await import('../src/core/log.js');
  const TOKEN = 'rfc6750-admin-token-0123456789';
  const text = `listen: 127.0.0.1:0\nadmin: {listen: 127.0.0.1:0, token: ${TOKEN}}\naccess_log: {enabled: false}\nservices: []\n`;
  const file = join(mkdtempSync(join(tmpdir(), 'tp-rfc6750-')), 'turnpike.yaml');
  writeFileSync(file, text);
  const loaded = parseConfigText(text, { file });
  const gw = await Gateway.start(loaded, { control: fileControl(file, loaded, silentLogger) });
  const admin = `http://127.0.0.1:${gw.adminAddress!.port}`;
  try {
    for (const path of ['/api/services', '/metrics']) {
      // (first: the 10 wrong ones below reach the limit of wrong tokens)
      assert.equal((await request(`${admin}${path}`, { headers: { authorization: `Bearer ${TOKEN}` } })).status, 200);
      for (const authorization of ['Bearer', 'Bearer ', `Bearer ${TOKEN} extra`]) {
        const r = await request(`${admin}${path}`, { headers: { authorization } });
        assert.equal(r.status, 400, `${path} ${JSON.stringify(authorization)}: ${r.body}`);
        assert.equal(r.headers['content-type'], 'application/problem+json');
        assert.match(String(r.headers['www-authenticate']), /^Bearer realm="turnpike-admin", error="invalid_request"/);
      }
      const basic = await request(`${admin}${path}`, { headers: { authorization: 'Basic YWRtaW46cGFzc3dvcmQ=' } });
      assert.equal(basic.status, 401);
      assert.equal(basic.headers['www-authenticate'], 'Bearer realm="turnpike-admin"', 'no error code for another scheme (§3.1)');
      const wrong = await request(`${admin}${path}`, { headers: { authorization: 'Bearer wrong-token-but-well-formed' } });
      assert.equal(wrong.status, 401);
      assert.match(String(wrong.headers['www-authenticate']), /error="invalid_token"/);
    }
  } finally {
    await gw.stop();
  }
});

/**
 * A node on a sqlite config store (one service `a` on /a): the gateway, its control plane, and
 * /status's config part. `apply` runs each store revision through the gateway's reload (after
 * `before`, which may look at what clients see meanwhile); a reload that fails is a rejection.
 */
async function storeNode(name: string, opts: { rejectedRetryMs?: number; before?: () => Promise<void> } = {}) {
  const { mkdtempSync, writeFileSync, rmSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const { join } = await import('node:path');
  const { loadConfigFile, parseConfigText } = await import('../src/config/load.js');
  const { Gateway } = await import('../src/server/gateway.js');
  const { ControlPlane } = await import('../src/server/control-plane.js');
  const { silentLogger } = await import('../src/core/log.js');
  const up = await startUpstream();
  const dir = mkdtempSync(join(tmpdir(), `tp-${name}-`));
  const file = join(dir, 'turnpike.yaml');
  writeFileSync(file, `listen: 127.0.0.1:0\nadmin: {listen: 127.0.0.1:0}\nstore: sqlite:./config.db\naccess_log: {enabled: false}\nservices: [{name: a, url: "${up.url}", routes: [{name: a, paths: [/a]}]}]\n`);
  let gw: Awaited<ReturnType<typeof Gateway.start>> | undefined;
  const node = { tries: 0 };
  const cp = await ControlPlane.open({
    file, loaded: loadConfigFile(file), setting: 'sqlite:./config.db', log: silentLogger,
    ...(opts.rejectedRetryMs !== undefined ? { rejectedRetryMs: opts.rejectedRetryMs } : {}),
    apply: async (text) => {
      node.tries++;
      await opts.before?.();
      try {
        await gw!.reloadAsync(parseConfigText(text, { file }));
        return true;
      } catch {
        return false;
      }
    },
  });
  const close = async () => {
    await gw?.stop();
    await cp.close();
    await up.close();
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    gw = await Gateway.start(parseConfigText(cp.text(), { file }), { logger: silentLogger, control: cp });
  } catch (err) {
    await close();
    throw err;
  }
  cp.run();
  const proxy = `http://127.0.0.1:${gw.proxyAddress!.port}`;
  const admin = `http://127.0.0.1:${gw.adminAddress!.port}`;
  const status = async () => JSON.parse((await request(`${admin}/status`)).body).config as Record<string, unknown>;
  return Object.assign(node, { cp, up, dir, proxy, status, close });
}

test('/status names the config revision the node runs: while a store revision is being applied (or rejected) it still says the one serving, not the next', async () => {
  const seen: { revision: unknown; b: number }[] = [];
  // what a client sees while the reload of a revision is under way
  const n = await storeNode('status-applying', { before: async () => { seen.push({ revision: (await n.status()).revision, b: (await request(`${n.proxy}/b`)).status }); } });
  try {
    assert.equal((await n.status()).revision, 1);
    const doc = (extra: Record<string, unknown>) => ({ services: [{ name: 'a', url: n.up.url, routes: [{ name: 'a', paths: ['/a'] }, { name: 'b', paths: ['/b'], ...extra }] }] });
    await n.cp.store!.write({ actor: 't', action: 'add b' }, () => doc({}));
    await n.cp.refresh();
    assert.equal((await n.status()).revision, 2);
    assert.equal((await request(`${n.proxy}/b`)).status, 200);
    // a revision this node cannot run (a variable it lacks): rejected, revision 2 runs on
    await n.cp.store!.write({ actor: 't', action: 'bad' }, () => doc({ hosts: ['${TP_STATUS_APPLYING_UNSET}'] }));
    await n.cp.refresh();
    const after = await n.status();
    assert.equal(after.revision, 2);
    assert.equal(after.rejected_revision, 3);
    // while revision 2 was applied /b was not served yet: /status said 1; while 3 was tried, 2
    assert.deepEqual(seen, [{ revision: 1, b: 404 }, { revision: 2, b: 200 }]);
  } finally {
    await n.close();
  }
});

test('a store revision a node rejected for a passing reason (what it lacked comes later: a mounted file, an env) is tried again, backed off, and runs once it can', async () => {
  const { writeFileSync } = await import('node:fs');
  const { join } = await import('node:path');
  const n = await storeNode('rejected-retry', { rejectedRetryMs: 150 });
  try {
    // a revision naming a CA file that the node's mount has not brought yet
    const ca = join(n.dir, 'late-ca.pem');
    await n.cp.store!.write({ actor: 't', action: 'tls' }, () => ({ services: [{ name: 'a', url: n.up.url, routes: [{ name: 'a', paths: ['/a'] }] }, { name: 'b', url: 'https://127.0.0.1:1', tls: { ca }, routes: [{ name: 'b', paths: ['/b'] }] }] }));
    await n.cp.refresh();
    assert.equal((await n.status()).rejected_revision, 2);
    assert.equal((await request(`${n.proxy}/b`)).status, 404);
    // retried, backed off (150, 300, 600 ms...): still rejected while the file is missing
    const before = n.tries;
    await sleep(600);
    assert.ok(n.tries > before && n.tries <= before + 3, `${n.tries - before} tries in 600 ms`);
    const testCa = makeCa();
    writeFileSync(ca, testCa.cert);
    testCa.cleanup();
    await eventually(async () => (await n.status()).revision === 2, 5_000);
    assert.equal((await n.status()).rejected_revision, undefined);
    assert.equal((await request(`${n.proxy}/b`)).status, 502, 'route b runs (its target refuses connections)');
    const settled = n.tries;
    await sleep(1_500);
    assert.equal(n.tries, settled, 'no tries once it runs');
  } finally {
    await n.close();
  }
});

test('a stored revision whose document is not a JSON object (JSON null written into the store by hand or a tool) is a damaged store to the node — it keeps serving, /status says why — not a TypeError that ends the process', async () => {
  const { mkdtempSync, writeFileSync, rmSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const { join } = await import('node:path');
  const { default: Database } = await import('better-sqlite3');
  const { loadConfigFile, parseConfigText } = await import('../src/config/load.js');
  const { Gateway } = await import('../src/server/gateway.js');
  const { ControlPlane } = await import('../src/server/control-plane.js');
  const { silentLogger } = await import('../src/core/log.js');
  const up = await startUpstream();
  const dir = mkdtempSync(join(tmpdir(), 'tp-null-doc-'));
  const file = join(dir, 'turnpike.yaml');
  writeFileSync(file, `listen: 127.0.0.1:0\nadmin: {listen: 127.0.0.1:0}\nstore: sqlite:./config.db\naccess_log: {enabled: false}\nservices: [{name: a, url: "${up.url}", routes: [{name: a, paths: [/a]}]}]\n`);
  let gw: Awaited<ReturnType<typeof Gateway.start>> | undefined;
  const cp = await ControlPlane.open({
    file, loaded: loadConfigFile(file), setting: 'sqlite:./config.db', log: silentLogger,
    apply: async (text) => { await gw!.reloadAsync(parseConfigText(text, { file })); return true; },
  });
  const other = new Database(join(dir, 'config.db'));
  try {
    gw = await Gateway.start(parseConfigText(cp.text(), { file }), { logger: silentLogger, control: cp });
    cp.run();
    other.prepare('INSERT INTO revisions (revision, at, actor, action, document) VALUES (2, ?, ?, ?, ?)').run(new Date().toISOString(), 'tool', 'by hand', 'null');
    await cp.refresh(); // (the store's poll would run it within a second as well)
    const status = JSON.parse((await request(`http://127.0.0.1:${gw.adminAddress!.port}/status`)).body).config as Record<string, unknown>;
    assert.equal(status.revision, 1);
    assert.equal(status.store_reachable, false);
    assert.match(String(status.store_error), /revision 2.*not a JSON object/);
    assert.equal((await request(`http://127.0.0.1:${gw.proxyAddress!.port}/a`)).status, 200);
    // the admin API says so too (503), for writes as well: a write would build on nothing (every
    // route gone at the next portal sign-up)
    const api = `http://127.0.0.1:${gw.adminAddress!.port}/api`;
    assert.equal((await request(`${api}/services`)).status, 503);
    const post = await request(`${api}/consumers`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"name": "acme"}' });
    assert.equal(post.status, 503, post.body);
    assert.match(post.body, /not a JSON object/);
    await cp.refresh();
    assert.equal((await request(`http://127.0.0.1:${gw.proxyAddress!.port}/a`)).status, 200);
  } finally {
    other.close();
    await gw?.stop();
    await cp.close();
    await up.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
