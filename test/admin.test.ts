import { test } from 'node:test';
import assert from 'node:assert/strict';
import { configIssues, startGateway, startUpstream, request, sleep } from './helpers.js';

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
  const t = await startGateway(`admin: {listen: 127.0.0.1:0, token: s3cret-token}\nservices:\n  - name: s\n    upstream: {targets: [{url: "${up.url}"}], healthcheck: {passive: {failures: 2}}}\n    routes: [{paths: [/]}]\n`);
  try {
    for (const headers of [{}, { authorization: 'Bearer wrong' }, { authorization: 'Basic czNjcmV0LXRva2Vu' }, { authorization: 'Bearer s3cret-token-longer' }] as Record<string, string>[]) {
      const r = await request(`${t.adminUrl}/health`, { headers });
      assert.equal(r.status, 401, JSON.stringify(headers));
      assert.equal(r.headers['content-type'], 'application/problem+json');
      assert.match(String(r.headers['www-authenticate']), /^Bearer /);
      assert.doesNotMatch(r.body, /127\.0\.0\.1/);
    }
    const h = await request(`${t.adminUrl}/health`, { headers: { authorization: 'Bearer s3cret-token' } });
    assert.equal(h.status, 200);
    assert.deepEqual(JSON.parse(h.body).targets[`s|${up.url}`], { down: false, ejected: false, failing_probes: false, failures: 0 });
    const anon = JSON.parse((await request(`${t.adminUrl}/status`)).body);
    assert.deepEqual(anon, { status: 'ok' });
    const full = JSON.parse((await request(`${t.adminUrl}/status`, { headers: { authorization: 'bearer s3cret-token' } })).body);
    assert.equal(full.revision, 1);
    assert.equal((await request(`${t.adminUrl}/nope`)).status, 401);
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
