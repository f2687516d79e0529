/**
 * Payload edge cases of compose, request-transform, response-transform and request-validator:
 * client values in upstream paths and headers, deep and broken JSON, media types and content
 * codings, where a fault is blamed (client 4xx, upstream 502). Real loopback servers.
 */
import test, { after, before } from 'node:test';
import assert from 'node:assert/strict';
import { request, startGateway, startUpstream, type TestGateway, type TestUpstream } from './helpers.js';

let echo: TestUpstream;
let gw: TestGateway;

before(async () => {
  echo = await startUpstream();
  gw = await startGateway(`
services:
  - name: echo
    url: ${echo.url}
    routes:
      - name: rt-path
        paths: [/rt/path]
        plugins:
          - {name: request-transform, config: {path: "/api/v1/users/{query.p}"}}
      - name: rt-param
        paths: ["/rt/param/{id}"]
        plugins:
          - {name: request-transform, config: {path: "/things/{path.id}"}}
`);
});

after(async () => {
  await gw?.close();
  await echo?.close();
});

const last = () => echo.requests[echo.requests.length - 1]!;

test('request-transform path templates: client values are percent-encoded data in one segment; dot segments and bad bytes are 400', async () => {
  const ok: [string, string][] = [
    ['/rt/path?p=abc', '/api/v1/users/abc'],
    ['/rt/path?p=..%2F..%2Fadmin', '/api/v1/users/..%2F..%2Fadmin'],
    ['/rt/path?p=a%3Fb%23c', '/api/v1/users/a%3Fb%23c'],
    ['/rt/path?p=%C3%A9', '/api/v1/users/%C3%A9'],
    ['/rt/path?p=%01', '/api/v1/users/%01'],
    ['/rt/param/a%2Fb', '/things/a%2Fb'],
    ['/rt/param/a%20b', '/things/a%20b'],
  ];
  for (const [path, expected] of ok) {
    const r = await request(`${gw.url}${path}`);
    assert.equal(r.status, 200, `${path}: ${r.body}`);
    assert.equal(last().url.split('?')[0], expected, path);
  }
  for (const path of ['/rt/path?p=..', '/rt/path?p=%2e%2e', '/rt/path?p=.', '/rt/param/%ff']) {
    const before = echo.requests.length;
    const r = await request(`${gw.url}${path}`);
    assert.equal(r.status, 400, `${path}: ${r.body}`);
    assert.equal(r.headers['content-type'], 'application/problem+json');
    assert.equal(echo.requests.length, before, `${path} never reaches the upstream`);
  }
});
