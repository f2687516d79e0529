/** The in-flight gauge through a real gateway: a request counts from routing until it ends (an SSE stream while it runs). */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { request as httpRequest } from 'node:http';
import { startGateway, startUpstream, sleep, eventually } from './helpers.js';

test('an SSE stream is in flight for the scaling meter while it runs, and no longer once the client leaves', async () => {
  const up = await startUpstream((_req, res) => {
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    res.write('data: hello\n\n'); // and never ends
  });
  const tp = await startGateway(`scaling: {interval: 60s}
services:
  - name: orders
    url: ${up.url}
    scaling: {target_concurrency: 2, min_replicas: 0}
    routes: [{paths: [/events]}]
`);
  try {
    const req = httpRequest(`${tp.url}/events`);
    const got = new Promise<void>((ok) => req.on('response', (res) => res.once('data', () => ok())));
    req.on('error', () => undefined);
    req.end();
    await got;
    tp.gw.demand.drain();
    await sleep(400); // a few samples of the gauge (every 100 ms)
    const running = tp.gw.demand.drain().services['orders'];
    assert.equal(running?.inflight, 1, JSON.stringify(running));
    assert.equal(running?.n, 0, 'not ended: no request counted yet');
    req.destroy();
    await eventually(() => { const d = tp.gw.demand.drain().services['orders']; return d !== undefined && d.n === 1; });
    await sleep(300);
    assert.equal(tp.gw.demand.drain().services['orders']?.inflight, 0);
  } finally {
    await tp.close();
    await up.close();
  }
});
