import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startGateway, startUpstream, request, sleep } from './helpers.js';

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
