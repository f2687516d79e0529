/**
 * The developer portal in real headless Chromium (Debian `chromium` + playwright-core) against a
 * real `turnpike start` (sqlite store, two workers, so account requests cross the IPC to the
 * primary): sign up, get a key, call the published API with it, watch the usage count grow, use
 * the quota up and see it reported; rotate and revoke the key; sign out. Screenshots go to
 * docs/screenshots/.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, mkdirSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Browser, Page } from 'playwright-core';
import { launchChromium } from './browser.js';
import { freePort, request, sleep, startCli, startUpstream, type Running, type TestUpstream } from './helpers.js';

const SHOTS = join(process.cwd(), 'docs/screenshots/');
const work = mkdtempSync(join(tmpdir(), 'turnpike-portal-'));
const EMAIL = 'Ada.Lovelace@example.com';
const PASSWORD = 'analytical-engine-1843';
let up: TestUpstream;
let run: Running;
let browser: Browser;
let page: Page;
let proxy: string;
let key = '';

const call = (k: string) => request(`${proxy}/orders`, { headers: { apikey: k } });

before(async () => {
  up = await startUpstream();
  const [p, a] = [await freePort(), await freePort()];
  proxy = `http://127.0.0.1:${p}`;
  const file = join(work, 'turnpike.yaml');
  writeFileSync(file, `workers: 2
listen: 127.0.0.1:${p}
admin: {listen: 127.0.0.1:${a}}
store: sqlite:./turnpike.db
access_log: {enabled: false}
analytics: {enabled: true}
portal:
  enabled: true
  title: Acme APIs
  accounts: {enabled: true, default_plan: free, plans: [free, pro], plan_approval: manual}
plans:
  free: {description: 3 calls a day, plugins: [{name: quota, config: {name: daily, limit: 3, period: day}}]}
  pro: {plugins: [{name: quota, config: {name: daily-pro, limit: 10000, period: day}}]}
services:
  - name: orders
    url: ${up.url}
    published: true
    description: The shop's orders
    plugins: [{name: key-auth}]
    routes: [{name: orders-list, paths: [/orders], methods: [GET], description: List the orders}]
`);
  run = startCli(['start', '--config', file], {});
  const end = Date.now() + 20_000;
  // (with workers the admin listener is up first: wait for the proxy's portal)
  while ((await request(`${proxy}/portal/`).catch(() => null))?.status !== 200) {
    if (Date.now() > end) throw new Error(`turnpike did not start: ${run.stderr()}`);
    await sleep(50);
  }
  browser = await launchChromium();
  page = await browser.newPage({ viewport: { width: 1100, height: 900 } });
  page.setDefaultTimeout(10_000);
  mkdirSync(SHOTS, { recursive: true });
});
after(async () => {
  await browser?.close();
  run?.child.kill('SIGTERM');
  await run?.exit;
  await up?.close();
  rmSync(work, { recursive: true, force: true });
});

test('sign up from the catalog: the session cookie is HttpOnly and SameSite=Strict, the account is on the default plan', async () => {
  const blocked: string[] = [];
  page.on('console', (m) => { if (/Content Security Policy/i.test(m.text())) blocked.push(m.text()); });
  await page.goto(`${proxy}/portal/`);
  // the style block is allowed by its CSP hash (no 'unsafe-inline'): it applies, nothing is refused
  assert.equal(await page.locator('body').evaluate((el) => (globalThis as unknown as { getComputedStyle(e: unknown): { maxWidth: string } }).getComputedStyle(el).maxWidth), '960px');
  assert.deepEqual(blocked, []);
  await page.getByRole('link', { name: 'Sign up' }).click();
  await page.getByRole('heading', { name: 'Sign up' }).waitFor();
  // a short password is refused at the server too (the form's minlength aside)
  await page.getByLabel('Email').fill(EMAIL);
  await page.getByLabel('Password').evaluate((el) => (el as unknown as { removeAttribute(n: string): void }).removeAttribute('minlength'));
  await page.getByLabel('Password').fill('short');
  await page.getByRole('button', { name: 'Sign up' }).click();
  await page.getByRole('alert').waitFor();
  assert.match(await page.getByRole('alert').innerText(), /10 to 256 characters/);
  await page.screenshot({ path: join(SHOTS, 'portal-signup.png') });
  await page.getByLabel('Password').fill(PASSWORD);
  await page.getByRole('button', { name: 'Sign up' }).click();
  await page.getByRole('heading', { name: 'Your account' }).waitFor();
  assert.match(await page.locator('main').innerText(), /Signed in as ada\.lovelace@example\.com/);
  assert.equal(await page.locator('#plan').innerText(), 'free');
  const c = (await page.context().cookies()).find((x) => x.name === 'tp_portal')!;
  assert.equal(c.httpOnly, true);
  assert.equal(c.sameSite, 'Strict');
  assert.equal(c.path, '/portal/');
  assert.equal(up.requests.length, 0, 'the portal never reaches an upstream');
});

test('get a key, call the published API with it, and see the usage count increase', async () => {
  await page.getByRole('button', { name: 'Create a key' }).click();
  await page.locator('#new-key').waitFor();
  key = (await page.locator('#new-key').innerText()).trim();
  assert.match(key, /^tpk_[A-Za-z0-9_-]{32}$/);
  assert.equal((await call('not-a-key-000000')).status, 401);
  await page.getByRole('link', { name: 'Refresh' }).click();
  const before = Number(await page.locator('#requests-1h').innerText());
  assert.equal(before, 0, 'the refused call above carried no valid key: it is not this developer\'s');
  assert.equal((await call(key)).status, 200);
  assert.equal((await call(key)).status, 200);
  assert.equal(up.requests.length, 2);
  await page.getByRole('link', { name: 'Refresh' }).click();
  assert.equal(Number(await page.locator('#requests-1h').innerText()), before + 2);
  assert.equal(await page.locator('[data-quota-used="daily"]').innerText(), '2');
  assert.doesNotMatch(await page.content(), new RegExp(key), 'a key is shown only once');
});

test('hit the quota: the API answers 429 and the account page reports the quota used up', async () => {
  assert.equal((await call(key)).status, 200);
  const refused = await call(key);
  assert.equal(refused.status, 429);
  assert.match(String(refused.headers['content-type']), /problem\+json/);
  await page.getByRole('link', { name: 'Refresh' }).click();
  const alert = page.locator('#quota-exhausted');
  await alert.waitFor();
  assert.match(await alert.innerText(), /Quota used up: daily \(3 per day/);
  assert.equal(await page.locator('[data-quota-used="daily"]').innerText(), '3');
  assert.equal(Number(await page.locator('#requests-1h').innerText()), 4, 'the refused call counts as a request too');
  await page.screenshot({ path: join(SHOTS, 'portal-account.png'), fullPage: true });
});

test('ask for another plan: it awaits approval (plan_approval: manual)', async () => {
  await page.getByLabel('Change plan').selectOption('pro');
  await page.getByRole('button', { name: 'Ask for this plan' }).click();
  await page.getByRole('heading', { name: 'Your account' }).waitFor();
  assert.match(await page.locator('main').innerText(), /you asked for pro, awaiting approval/);
  assert.equal(await page.locator('#plan').innerText(), 'free');
});

test('rotate the key: the old one stops working at once, the new one works; revoke it: gone', async () => {
  await page.getByRole('button', { name: /^Rotate key/ }).click();
  await page.locator('#new-key').waitFor();
  const fresh = (await page.locator('#new-key').innerText()).trim();
  assert.notEqual(fresh, key);
  assert.equal((await call(key)).status, 401);
  assert.equal((await call(fresh)).status, 429, 'the same developer: their quota is still used up');
  await page.getByRole('button', { name: /^Revoke key/ }).click();
  await page.getByText('You have no key yet.').waitFor();
  assert.equal((await call(fresh)).status, 401);
});

test('sign out: the account page asks to sign in again; signing in with the password works', async () => {
  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.getByRole('heading', { name: 'Sign in' }).waitFor();
  await page.goto(`${proxy}/portal/account`);
  await page.getByRole('heading', { name: 'Sign in' }).waitFor();
  await page.getByLabel('Email').fill(EMAIL.toUpperCase());
  await page.getByLabel('Password').fill(`${PASSWORD}x`);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('alert').waitFor();
  assert.match(await page.getByRole('alert').innerText(), /Wrong email or password/);
  await page.getByLabel('Password').fill(PASSWORD);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('heading', { name: 'Your account' }).waitFor();
});

test('keyboard only: the sign-in form is reachable and labelled', async () => {
  const p2 = await browser.newPage();
  try {
    await p2.goto(`${proxy}/portal/login`);
    await p2.keyboard.press('Tab'); // the title link
    let focused = '';
    for (let i = 0; i < 6 && focused !== 'email'; i++) {
      await p2.keyboard.press('Tab');
      focused = await p2.evaluate(() => (globalThis as unknown as { document: { activeElement: { id: string } | null } }).document.activeElement?.id ?? '');
    }
    assert.equal(focused, 'email');
    await p2.keyboard.type(EMAIL);
    await p2.keyboard.press('Tab');
    await p2.keyboard.type(PASSWORD);
    await p2.keyboard.press('Enter');
    await p2.getByRole('heading', { name: 'Your account' }).waitFor();
  } finally {
    await p2.close();
  }
});
