/**
 * The web console in real headless Chromium (Debian `chromium` + playwright-core) against a
 * real `turnpike start` (sqlite store, admin token): sign in, watch the dashboard change when
 * traffic flows, edit a route and see it take effect on the proxy, see a validation error at
 * its field, roll back, approve and reject the developer portal's accounts; a forged CSRF
 * token and a missing session are refused. Screenshots go to docs/screenshots/.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, mkdirSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Browser, Page } from 'playwright-core';
import { launchChromium } from './browser.js';
import { freePort, request, sleep, startCli, startUpstream, type Running, type TestUpstream } from './helpers.js';

// (the page's globals, for the functions evaluated in Chromium; the test's tsconfig has no DOM lib)
declare const document: { cookie: string; activeElement: { id: string } | null; querySelector(s: string): { textContent: string | null; getAttribute(n: string): string | null } | null };

const TOKEN = 'console-e2e-admin-token-0123';
// (a developer's portal password: an scrypt hash, never checked here)
const HASH = 'scrypt$16384$8$1$c2FsdHNhbHRzYWx0c2FsdA==$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g=';
const SHOTS = join(process.cwd(), 'docs/screenshots/');
const work = mkdtempSync(join(tmpdir(), 'turnpike-console-'));
let up: TestUpstream;
let run: Running;
let browser: Browser;
let page: Page;
let proxy: string;
let admin: string;

before(async () => {
  up = await startUpstream();
  const [p, a] = [await freePort(), await freePort()];
  proxy = `http://127.0.0.1:${p}`;
  admin = `http://127.0.0.1:${a}`;
  const file = join(work, 'turnpike.yaml');
  writeFileSync(file, `listen: 127.0.0.1:${p}
admin: {listen: 127.0.0.1:${a}, token: ${TOKEN}}
store: sqlite:./turnpike.db
access_log: {enabled: false}
analytics: {enabled: true}
portal: {enabled: true, accounts: {enabled: true, approval: manual, default_plan: free, plans: [free, pro]}}
plans: {free: {}, pro: {}}
consumers:
  - {name: acme, credentials: [{type: key-auth, key: acme-key-0123456}]}
  - {name: dev-ann-1, plan: free, tags: [portal], credentials: [{type: portal, email: ann@example.com, password_hash: "${HASH}", approved: false, created_at: "2025-01-02T03:04:05.000Z"}]}
  - {name: dev-bob-1, plan: free, tags: [portal], credentials: [{type: portal, email: bob@example.com, password_hash: "${HASH}", requested_plan: pro, created_at: "2025-01-03T03:04:05.000Z"}, {type: key-auth, key: bob-key-0123456789}]}
  - {name: dev-cat-1, plan: free, tags: [portal], credentials: [{type: portal, email: cat@example.com, password_hash: "${HASH}", approved: false}]}
services:
  - name: orders
    url: ${up.url}
    routes:
      - {name: orders-list, paths: [/orders]}
      - {name: orders-keyed, paths: [/keyed], plugins: [{name: key-auth}, {name: rate-limit, config: {limit: 5, window: 1m}}]}
`);
  run = startCli(['start', '--config', file], {});
  const end = Date.now() + 15_000;
  while ((await request(`${admin}/status`).catch(() => null))?.status !== 200) {
    if (Date.now() > end) throw new Error(`turnpike did not start: ${run.stderr()}`);
    await sleep(50);
  }
  browser = await launchChromium();
  page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  mkdirSync(SHOTS, { recursive: true });
});
after(async () => {
  await browser?.close();
  run?.child.kill('SIGTERM');
  await run?.exit;
  await up?.close();
  rmSync(work, { recursive: true, force: true });
});

test('sign in: a wrong token is shown as an error; the right one opens the dashboard', async () => {
  await page.goto(`${admin}/console/`);
  await page.getByLabel('Admin token').fill('not-the-token-000000');
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByTestId('login-error').waitFor();
  assert.match(await page.getByTestId('login-error').innerText(), /unknown token/);
  await page.screenshot({ path: join(SHOTS, 'console-login.png') });
  await page.getByLabel('Admin token').fill(TOKEN);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('heading', { name: 'Dashboard' }).waitFor();
  const cookies = await page.context().cookies();
  const c = cookies.find((x) => x.name === 'tp_console')!;
  assert.equal(c.httpOnly, true);
  assert.equal(c.sameSite, 'Strict');
  assert.equal(await page.evaluate(() => document.cookie), '', 'the session cookie is not readable by scripts');
});

test('the dashboard charts change when traffic flows, without a reload', async () => {
  await page.waitForFunction(() => Number(document.querySelector('[data-testid=events-received]')?.textContent ?? 0) >= 1);
  const points0 = Number(await page.getByTestId('chart-rps').getAttribute('data-points'));
  // Traffic: 60 requests, some refused by the rate limit.
  for (let i = 0; i < 40; i++) await request(`${proxy}/orders`);
  for (let i = 0; i < 20; i++) await request(`${proxy}/keyed`, { headers: { apikey: 'acme-key-0123456' } });
  await page.waitForFunction(() => Number(document.querySelector('[data-testid=tile-rps]')?.textContent) > 0.5, undefined, { timeout: 10_000 });
  await page.waitForFunction((n) => Number(document.querySelector('[data-testid=chart-rps]')?.getAttribute('data-points')) > n + 1, points0, { timeout: 10_000 });
  assert.ok(Number(await page.getByTestId('chart-rps').getAttribute('data-last')) > 0);
  await page.getByTestId('service-row-orders').waitFor();
  await page.getByTestId('route-stats-row-orders-keyed').waitFor();
  assert.match(await page.getByTestId('top-consumers').innerText(), /acme/);
  await page.screenshot({ path: join(SHOTS, 'console-dashboard.png'), fullPage: true });
});

test('edit a route: a bad path is shown at its field; a good one is saved and served by the proxy; rollback restores it', async () => {
  assert.equal((await request(`${proxy}/orders`)).status, 200);
  assert.equal((await request(`${proxy}/shop`)).status, 404);
  await page.getByRole('link', { name: 'Routes' }).click();
  await page.getByTestId('edit-route-orders-list').click();
  await page.getByLabel('Paths').fill('/orders, no-slash');
  await page.getByRole('button', { name: 'Save' }).click();
  await page.getByTestId('error-paths').waitFor();
  assert.match(await page.getByTestId('error-paths').innerText(), /paths\[1\]/);
  assert.equal(await page.getByLabel('Paths').getAttribute('aria-invalid'), 'true');
  await page.getByLabel('Paths').fill('/shop');
  await page.getByRole('button', { name: 'Save' }).click();
  await saveResult();
  const saved = await page.getByTestId('save-result').innerText();
  const rev = Number(/revision (\d+)/.exec(saved)?.[1]);
  assert.ok(rev >= 2, saved);
  // Applied on the node before the answer: the proxy serves the new path now.
  assert.equal((await request(`${proxy}/shop`)).status, 200);
  assert.equal((await request(`${proxy}/orders`)).status, 404);
  await page.screenshot({ path: join(SHOTS, 'console-routes.png'), fullPage: true });

  await page.getByRole('link', { name: 'Revisions' }).click();
  await page.getByTestId(`show-revision-${rev - 1}`).click();
  await page.getByTestId('revision-diff').waitFor();
  assert.match(await page.getByTestId('revision-diff').innerText(), /\/shop|\/orders/);
  await page.getByTestId('rollback-button').click();
  await page.getByTestId('confirm-rollback').click();
  await page.getByTestId('rollback-result').waitFor();
  assert.match(await page.getByTestId('rollback-result').innerText(), new RegExp(`Rolled back to revision ${rev - 1}`));
  await page.screenshot({ path: join(SHOTS, 'console-revisions.png'), fullPage: true });
  assert.equal((await request(`${proxy}/orders`)).status, 200);
  assert.equal((await request(`${proxy}/shop`)).status, 404);
});

/** Waits for an edit form's save result; when it does not come, the failure says what the form shows instead (a problem, a conflict). */
async function saveResult(): Promise<void> {
  try {
    await page.getByTestId('save-result').waitFor({ timeout: 15_000 });
  } catch (err) {
    const shown = await page.locator('section.edit').innerText().catch((e: Error) => `(no form: ${e.message})`);
    throw new Error(`no save result; the form shows: ${shown}`, { cause: err });
  }
}

test('services, consumers and plugins: edit a service, create and delete a consumer, turn a plugin off and on', async () => {
  const api = async (path: string) => {
    const res = await request(`${admin}/api/${path}`, { headers: { authorization: `Bearer ${TOKEN}` } });
    return { status: res.status, body: res.status === 200 ? JSON.parse(res.body) : null };
  };
  // Services: a good change is saved (a new revision); a bad URL is shown at its field.
  await page.getByRole('link', { name: 'Services' }).click();
  await page.getByRole('heading', { name: 'Services', level: 2 }).waitFor();
  assert.match(await page.getByTestId('service-admin-row-orders').innerText(), /127\.0\.0\.1/);
  await page.getByTestId('edit-service-orders').click();
  await page.getByLabel('Retries').fill('2');
  await page.getByRole('button', { name: 'Save' }).click();
  await saveResult();
  assert.match(await page.getByTestId('save-result').innerText(), /revision \d+/);
  assert.equal((await api('services/orders')).body.retries, 2);
  await page.getByLabel('URL').fill('ftp://x');
  await page.getByRole('button', { name: 'Save' }).click();
  await page.getByTestId('error-url').waitFor();
  assert.match(await page.getByTestId('error-url').innerText(), /url: .*ftp:\/\/x/);
  assert.equal(await page.getByLabel('URL').getAttribute('aria-invalid'), 'true');
  assert.notEqual((await api('services/orders')).body.url, 'ftp://x');
  await page.screenshot({ path: join(SHOTS, 'console-services.png'), fullPage: true });

  // Consumers: create one, then delete it through the confirm dialog.
  await page.getByRole('link', { name: 'Consumers' }).click();
  await page.getByTestId('consumer-row-acme').waitFor();
  const form = page.getByTestId('new-consumer-form');
  await form.getByLabel('Name', { exact: true }).fill('newbie');
  await form.getByRole('button', { name: 'Create consumer' }).click();
  await page.getByTestId('consumer-row-newbie').waitFor();
  assert.equal((await api('consumers/newbie')).status, 200);
  await page.getByTestId('delete-consumer-newbie').click();
  await page.getByTestId('confirm-delete').click();
  await page.getByTestId('consumer-row-newbie').waitFor({ state: 'detached' });
  assert.equal((await api('consumers/newbie')).status, 404);

  // Plugins: turn rate-limit on orders-keyed off, then on again.
  const id = 'route:orders-keyed:rate-limit';
  await page.getByRole('link', { name: 'Plugins' }).click();
  await page.getByTestId(`plugin-row-${id.replace(/[^A-Za-z0-9_-]/g, '_')}`).waitFor();
  const box = page.getByLabel(`Enabled ${id}`);
  assert.equal(await box.isChecked(), true);
  for (const enabled of [false, true]) {
    await box.setChecked(enabled);
    await page.getByTestId('plugin-result').filter({ hasText: enabled ? 'enabled' : 'disabled' }).waitFor();
    assert.equal((await api(`plugins/${encodeURIComponent(id)}`)).body.enabled, enabled);
  }
});

test('developers: the portal\'s accounts are listed; approve a pending sign-up and a requested plan', async () => {
  const api = async (path: string) => {
    const res = await request(`${admin}/api/${path}`, { headers: { authorization: `Bearer ${TOKEN}` } });
    return { status: res.status, body: res.status === 200 ? JSON.parse(res.body) : null };
  };
  const dev = async (name: string) => ((await api('developers')).body.data as { consumer: string; status: string; plan: string | null; requested_plan?: string }[]).find((d) => d.consumer === name);
  assert.equal((await dev('dev-ann-1'))?.status, 'pending-approval');
  assert.equal((await dev('dev-bob-1'))?.requested_plan, 'pro');

  await page.getByRole('link', { name: 'Developers' }).click();
  await page.getByRole('heading', { name: 'Developers', level: 2 }).waitFor();
  assert.match(page.url(), /#\/developers$/);
  await page.getByTestId('developer-row-dev-ann-1').waitFor();
  const rows = page.getByTestId('developers-table').locator('tbody tr');
  assert.equal(await rows.count(), 3, 'only the developers (consumers with a portal credential), not acme');
  assert.match(await page.getByTestId('developer-row-dev-ann-1').innerText(), /ann@example\.com[\s\S]*Awaiting approval[\s\S]*free/);
  assert.match(await page.getByTestId('developer-row-dev-bob-1').innerText(), /bob@example\.com[\s\S]*Active[\s\S]*free[\s\S]*pro/);
  // The buttons are named for the developer and what awaits.
  await page.getByRole('button', { name: 'Approve sign-up for ann@example.com (dev-ann-1)' }).waitFor();
  await page.getByRole('button', { name: 'Reject plan pro for bob@example.com (dev-bob-1)' }).waitFor();
  // The filter: all three await an admin.
  await page.getByLabel('Only awaiting approval').check();
  await page.getByRole('heading', { name: /Developers awaiting approval \(3\)/ }).waitFor();
  await page.screenshot({ path: join(SHOTS, 'console-developers.png'), fullPage: true });

  // Reject is confirmed first; cancelling changes nothing.
  await page.getByTestId('reject-developer-dev-ann-1').click();
  await page.getByTestId('reject-dialog').waitFor();
  assert.match(await page.getByTestId('reject-dialog').innerText(), /dev-ann-1 is deleted/);
  await page.getByTestId('reject-dialog').getByRole('button', { name: 'Cancel' }).click();
  await page.getByTestId('reject-dialog').waitFor({ state: 'hidden' });
  assert.equal((await dev('dev-ann-1'))?.status, 'pending-approval');
  // Rejecting cat's sign-up (confirmed) deletes her consumer.
  await page.getByTestId('reject-developer-dev-cat-1').click();
  await page.getByTestId('confirm-reject').click();
  await page.getByTestId('developer-result').filter({ hasText: 'cat@example.com' }).waitFor();
  assert.match(await page.getByTestId('developer-result').innerText(), /Rejected sign-up for cat@example\.com \(dev-cat-1\)\. Consumer dev-cat-1 deleted\. Configuration revision \d+/);
  await page.getByTestId('developer-row-dev-cat-1').waitFor({ state: 'detached' });
  assert.equal((await api('consumers/dev-cat-1')).status, 404);

  // Approve ann's sign-up: she is active (and, with the filter on, leaves the list).
  await page.getByTestId('approve-developer-dev-ann-1').click();
  await page.getByTestId('developer-result').filter({ hasText: 'ann@example.com' }).waitFor();
  assert.match(await page.getByTestId('developer-result').innerText(), /Approved sign-up for ann@example\.com \(dev-ann-1\)\. Configuration revision \d+/);
  await page.getByTestId('developer-row-dev-ann-1').waitFor({ state: 'detached' });
  assert.equal((await dev('dev-ann-1'))?.status, 'active');
  await page.getByLabel('Only awaiting approval').uncheck();
  await page.getByTestId('developer-row-dev-ann-1').waitFor();
  assert.equal(await page.getByTestId('developer-status-dev-ann-1').innerText(), 'Active');
  assert.equal(await page.getByTestId('approve-developer-dev-ann-1').count(), 0, 'nothing awaits: no buttons');

  // Approve bob's plan: the consumer is on plan pro.
  await page.getByTestId('approve-developer-dev-bob-1').click();
  await page.getByTestId('developer-result').filter({ hasText: 'bob@example.com' }).waitFor();
  assert.match(await page.getByTestId('developer-result').innerText(), /Approved plan pro for bob@example\.com/);
  await page.getByTestId('developer-plan-dev-bob-1').filter({ hasText: 'pro' }).waitFor();
  assert.equal((await api('consumers/dev-bob-1')).body.plan, 'pro');
  assert.equal((await dev('dev-bob-1'))?.requested_plan, undefined);
  assert.equal(await page.getByTestId('approve-developer-dev-bob-1').count(), 0);
  // Its buttons are gone: the focus is on the list's heading, not lost.
  await page.waitForFunction(() => document.activeElement?.id === 'h-developer-list');
});

test('a sign-out that does not reach the gateway says so and stays signed in (the session is still open there)', async () => {
  const cookie = (await page.context().cookies()).find((x) => x.name === 'tp_console')!;
  // The connection drops (a proxy in front going away, the network): the gateway never ends the session.
  await page.route('**/console/api/logout', (r) => r.abort('connectionreset'));
  try {
    await page.getByRole('button', { name: 'Sign out' }).click();
    const alert = page.getByTestId('signout-error');
    await alert.waitFor({ timeout: 5_000 });
    assert.match(await alert.innerText(), /still signed in/);
    assert.equal(await page.getByLabel('Admin token').count(), 0, 'no sign-in form claiming "You have signed out."');
    assert.equal((await request(`${admin}/api/routes`, { headers: { cookie: `tp_console=${cookie.value}` } })).status, 200, 'the session is indeed still open');
  } finally {
    await page.unroute('**/console/api/logout');
  }
});

test('security: the console API without the session cookie, or with a forged CSRF token, is refused — also from inside the page', async () => {
  const cookie = (await page.context().cookies()).find((x) => x.name === 'tp_console')!;
  // Without the cookie.
  assert.equal((await request(`${admin}/api/routes`)).status, 401);
  assert.equal((await request(`${admin}/console/api/events`)).status, 401);
  // With the cookie but a forged / missing CSRF token.
  const patch = (csrf: string | null) => request(`${admin}/api/routes/orders-list`, {
    method: 'PATCH', body: JSON.stringify({ paths: ['/evil'] }),
    headers: { cookie: `tp_console=${cookie.value}`, 'content-type': 'application/merge-patch+json', ...(csrf ? { 'x-csrf-token': csrf } : {}) },
  });
  assert.equal((await patch(null)).status, 403);
  assert.equal((await patch('forged-forged-forged-forged-forged-forged-000')).status, 403);
  // A script in the page (same origin, cookie sent) without the token it keeps in memory is refused too.
  const status = await page.evaluate(async () => (await fetch('/api/routes/orders-list', { method: 'PATCH', headers: { 'content-type': 'application/merge-patch+json' }, body: '{"paths":["/evil"]}' })).status);
  assert.equal(status, 403);
  assert.equal((await request(`${proxy}/evil`)).status, 404);
  // Sign out: the cookie no longer works.
  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.getByLabel('Admin token').waitFor();
  assert.equal((await request(`${admin}/api/routes`, { headers: { cookie: `tp_console=${cookie.value}` } })).status, 401);
});
