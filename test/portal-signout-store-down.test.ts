/**
 * A portal sign-out while the config store (PostgreSQL) is down: the store cannot take the new
 * session epoch, but the browser that asked is signed out all the same (a real `turnpike start`).
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort, request, sleep, startCli, startUpstream, type Running, type TestUpstream } from './helpers.js';
import { startPostgres, type PostgresServer } from './postgres-server.js';

const FORM = 'application/x-www-form-urlencoded';
const work = mkdtempSync(join(tmpdir(), 'turnpike-signout-'));
let pg: PostgresServer | undefined;
let run: Running | undefined;
let up: TestUpstream | undefined;

after(async () => {
  run?.child.kill('SIGTERM');
  await run?.exit;
  await up?.close();
  await pg?.stop();
  rmSync(work, { recursive: true, force: true });
});

test('sign-out while the config store is down: the cookie is cleared (the page says the other sessions are not ended), not a 503 that leaves the browser signed in', async () => {
  pg = await startPostgres();
  up = await startUpstream();
  const [p, a] = [await freePort(), await freePort()];
  const proxy = `http://127.0.0.1:${p}`;
  const file = join(work, 'turnpike.yaml');
  writeFileSync(file, `listen: 127.0.0.1:${p}
admin: {listen: 127.0.0.1:${a}, token: signout-admin-token-0123}
store: ${await pg.createDatabase('signout')}
access_log: {enabled: false}
portal: {enabled: true, accounts: {enabled: true}}
services: [{name: echo, url: "${up.url}", published: true, routes: [{paths: [/echo]}]}]
`);
  run = startCli(['start', '--config', file], {});
  const end = Date.now() + 30_000;
  while ((await request(`${proxy}/portal/login`).catch(() => null))?.status !== 200) {
    if (Date.now() > end) throw new Error(`turnpike did not start: ${run.stderr()}`);
    await sleep(50);
  }
  const form = (fields: Record<string, string>) => new URLSearchParams(fields).toString();
  const signup = await request(`${proxy}/portal/signup`, { method: 'POST', headers: { 'content-type': FORM }, body: form({ email: 'down@example.com', password: 'down-password-0001' }) });
  assert.equal(signup.status, 303, signup.body);
  const cookie = String(signup.headers['set-cookie']).split(';')[0]!;
  const page = await request(`${proxy}/portal/account`, { headers: { cookie } });
  assert.equal(page.status, 200);
  const csrf = /name="csrf" value="([^"]+)"/.exec(page.body)![1]!;

  await pg.shutdown('fast');
  const out = await request(`${proxy}/portal/logout`, { method: 'POST', headers: { cookie, 'content-type': FORM }, body: form({ csrf }) });
  assert.equal(out.status, 503, out.body);
  assert.match(String(out.headers['set-cookie']), /^tp_portal=;.*Max-Age=0/, 'this browser is signed out');
  assert.match(out.body, /signed out in this browser/);
  assert.equal(out.headers['retry-after'], '60');
  assert.equal(out.headers['cache-control'], 'no-store');
});
