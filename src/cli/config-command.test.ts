/**
 * `turnpike config export|diff|apply`, in-process, against real node:http servers running the
 * admin API (createApiHandler over a MemoryStore, validated like the file).
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parse } from 'yaml';
import { silentLogger } from '../core/log.js';
import { createApiHandler } from '../admin/api.js';
import { MemoryStore, documentValidator, sampleDocument } from '../admin/testing.js';
import { configCommand, redactingWriter } from './config-command.js';
import { hashPlainPasswords } from '../admin/secrets.js';

const TOKEN = 'ops-token-0123456789abcdef';
const dir = mkdtempSync(join(tmpdir(), 'tp-config-cli-'));
after(() => rmSync(dir, { recursive: true, force: true }));

async function admin(seed?: Record<string, unknown>): Promise<{ url: string; store: MemoryStore; close(): Promise<void> }> {
  const store = new MemoryStore();
  // (seeded as the admin API stores a document: its plain basic-auth password as a hash)
  if (seed) await store.write({ actor: 'seed', action: 'seed' }, async () => {
    const doc = structuredClone(seed);
    await hashPlainPasswords(doc, null);
    return doc;
  });
  const handler = createApiHandler({ store, validate: documentValidator(), tokens: [{ name: 'ops', token: TOKEN, role: 'admin' }], log: silentLogger });
  const server: Server = createServer((req, res) => void handler(req, res));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    store,
    close: () => new Promise<void>((r) => {
      server.closeAllConnections();
      server.close(() => r());
    }),
  };
}

async function run(args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const code = await configCommand(args, { stdout: (s) => void (out += s), stderr: (s) => void (err += s), cwd: dir, env });
  return { code, out, err };
}

const revision = async (store: MemoryStore) => (await store.current())?.revision ?? 0;

test('export -> apply to an empty store -> export: the same YAML, byte for byte', async () => {
  const a = await admin(sampleDocument());
  const b = await admin();
  try {
    const first = await run(['export', '--admin', a.url, '--token', TOKEN, '--secrets', '--out', 'backup.yaml']);
    assert.equal(first.code, 0, first.err);
    assert.match(first.err, /backup\.yaml: revision 1/);
    const exported = readFileSync(join(dir, 'backup.yaml'), 'utf8');
    assert.deepEqual(Object.keys(parse(exported)), ['services', 'routes', 'consumers', 'plans', 'plugins']);
    assert.match(exported, /acme-secret-key-0001/);

    const applied = await run(['apply', 'backup.yaml', '--admin', b.url], { TURNPIKE_ADMIN_TOKEN: TOKEN });
    assert.equal(applied.code, 0, applied.err);
    assert.match(applied.out, /applied backup\.yaml: revision 1\n/);
    assert.match(applied.out, /services: \+orders \+users/);
    assert.equal(await revision(b.store), 1);

    const second = await run(['export', '--secrets'], { TURNPIKE_ADMIN_URL: b.url, TURNPIKE_ADMIN_TOKEN: TOKEN });
    assert.equal(second.code, 0, second.err);
    assert.equal(second.out, exported);
    // and without secrets, both sides agree too
    const plainA = await run(['export', '--admin', a.url, '--token', TOKEN]);
    const plainB = await run(['export', '--admin', b.url, '--token', TOKEN]);
    assert.equal(plainA.out, plainB.out);
    assert.doesNotMatch(plainA.out, /acme-secret-key-0001/);

    // applying the same file again changes nothing
    const again = await run(['apply', 'backup.yaml', '--admin', b.url, '--token', TOKEN]);
    assert.equal(again.code, 0);
    assert.match(again.out, /no changes: backup\.yaml matches revision 1/);
    assert.equal(await revision(b.store), 1);
  } finally {
    await a.close();
    await b.close();
  }
});

test('diff: the unified diff and a summary, exit 3; no changes, exit 0; nothing written', async () => {
  const a = await admin(sampleDocument());
  try {
    const exp = await run(['export', '--admin', a.url, '--token', TOKEN]);
    writeFileSync(join(dir, 'same.yaml'), exp.out);
    const same = await run(['diff', 'same.yaml', '--admin', a.url, '--token', TOKEN]);
    assert.equal(same.code, 0, same.err);
    assert.match(same.out, /no changes: same\.yaml matches revision 1/);

    writeFileSync(join(dir, 'changed.yaml'), exp.out.replace('http://127.0.0.1:9001', 'http://127.0.0.1:9009'));
    const changed = await run(['diff', 'changed.yaml', '--admin', a.url, '--token', TOKEN]);
    assert.equal(changed.code, 3, changed.err);
    assert.match(changed.out, /^--- revision 1\n\+\+\+ proposed\n/);
    assert.match(changed.out, /^-    url: http:\/\/127\.0\.0\.1:9001$/m);
    assert.match(changed.out, /^\+    url: http:\/\/127\.0\.0\.1:9009$/m);
    assert.match(changed.out, /services: ~orders/);
    assert.equal(await revision(a.store), 1, 'a diff writes nothing');
  } finally {
    await a.close();
  }
});

test('apply: an invalid document exits 1 with the field path; nothing written', async () => {
  const a = await admin(sampleDocument());
  try {
    writeFileSync(join(dir, 'bad.yaml'), 'services:\n  - name: orders\n    url: not-a-url\n    routes: [{name: r, paths: [/x]}]\n');
    const r = await run(['apply', 'bad.yaml', '--admin', a.url, '--token', TOKEN]);
    assert.equal(r.code, 1);
    assert.equal(r.out, '');
    assert.match(r.err, /turnpike config apply: 400 Request Validation Failed: /);
    assert.match(r.err, /^ {2}services\[0\]\.url \(line 3\): /m);
    assert.equal(await revision(a.store), 1);

    const d = await run(['diff', 'bad.yaml', '--admin', a.url, '--token', TOKEN]);
    assert.equal(d.code, 1, 'an invalid file is an error for diff too');
    assert.match(d.err, /services\[0\]\.url/);
  } finally {
    await a.close();
  }
});

test('diff/apply: a field error names its line in FILE, as validate does (node-local keys left out too)', async () => {
  const a = await admin(sampleDocument());
  try {
    // line 6 is the bad path; the listen/admin lines before it are left out of what is sent
    writeFileSync(join(dir, 'bad-line.yaml'), 'listen: 127.0.0.1:0\nadmin: {listen: 127.0.0.1:0}\nservices:\n  - name: orders\n    url: http://127.0.0.1:1\n    routes: [{name: r, paths: [orders]}]\n');
    for (const cmd of ['diff', 'apply']) {
      const r = await run([cmd, 'bad-line.yaml', '--admin', a.url, '--token', TOKEN]);
      assert.equal(r.code, 1);
      assert.match(r.err, /^ {2}services\[0\]\.routes\[0\]\.paths\[0\] \(line 6\): invalid value "orders"/m, cmd);
    }
    assert.equal(await revision(a.store), 1);
  } finally {
    await a.close();
  }
});

test('a wrong token: exit 1 with the 401, the token never printed', async () => {
  const a = await admin(sampleDocument());
  const wrong = 'wrong-token-secret-value-42';
  try {
    writeFileSync(join(dir, 'tok.yaml'), 'services: []\n');
    for (const args of [['export'], ['diff', 'tok.yaml'], ['apply', 'tok.yaml']]) {
      const r = await run([...args, '--admin', a.url, '--token', wrong]);
      assert.equal(r.code, 1);
      assert.match(r.err, /401 Unauthorized: the bearer token is not an admin token/);
      assert.match(r.err, /--token/);
      assert.ok(!r.err.includes(wrong) && !r.out.includes(wrong));
    }
    const none = await run(['export', '--admin', a.url]);
    assert.equal(none.code, 1);
    assert.match(none.err, /401 Unauthorized/);
  } finally {
    await a.close();
  }
});

test('an unreachable admin URL: exit 1 with a clear message, quickly', async () => {
  const a = await admin();
  const url = a.url;
  await a.close(); // nothing listens there now
  const t0 = Date.now();
  const r = await run(['export', '--admin', url, '--token', TOKEN]);
  assert.equal(r.code, 1);
  assert.match(r.err, new RegExp(`cannot reach the admin API at ${url.replace(/\./g, '\\.')}: connection refused`));
  assert.ok(!r.err.includes(TOKEN));
  assert.ok(Date.now() - t0 < 5000);
  const bad = await run(['export', '--admin', 'ftp://x']);
  assert.equal(bad.code, 2);
});

test('node-local keys of a --config file are left out and named; ${VAR} is sent as written', async () => {
  const a = await admin();
  try {
    writeFileSync(join(dir, 'node.yaml'), [
      '$schema: ./schema/turnpike.schema.json',
      'listen: 127.0.0.1:8080',
      'admin: {listen: 127.0.0.1:8081, token: "${TURNPIKE_ADMIN_TOKEN}"}',
      'store: sqlite:./turnpike.db',
      'services:',
      '  - name: orders',
      '    url: http://127.0.0.1:9001',
      '    routes: [{name: orders-api, paths: [/orders]}]',
      'consumers:',
      '  - name: acme',
      '    credentials: [{type: key-auth, key: "${ACME_KEY:-acme-default-key-0001}"}]',
      '',
    ].join('\n'));
    const r = await run(['apply', 'node.yaml', '--admin', a.url, '--token', TOKEN]);
    assert.equal(r.code, 0, r.err);
    assert.match(r.err, /node\.yaml: left out node-local keys \(set in each node's --config file\): listen, admin, store\n/);
    assert.doesNotMatch(r.err, /\$schema/);
    const doc = (await a.store.current())!.document as { consumers: { credentials: { key: string }[] }[] };
    assert.deepEqual(Object.keys(doc), ['services', 'consumers']);
    assert.equal(doc.consumers[0]!.credentials[0]!.key, '${ACME_KEY:-acme-default-key-0001}');
  } finally {
    await a.close();
  }
});

test('apply --if-revision: a stale revision is a 412, nothing written; the current one applies', async () => {
  const a = await admin(sampleDocument());
  try {
    const exp = await run(['export', '--admin', a.url, '--token', TOKEN]);
    writeFileSync(join(dir, 'next.yaml'), exp.out.replace('retries: 1', 'retries: 2'));
    const stale = await run(['apply', 'next.yaml', '--if-revision', '0', '--admin', a.url, '--token', TOKEN]);
    assert.equal(stale.code, 1);
    assert.match(stale.err, /412 Precondition Failed: the config changed: it is at revision 1, not 0/);
    assert.equal(await revision(a.store), 1);
    const ok = await run(['apply', 'next.yaml', '--if-revision', '1', '--admin', a.url, '--token', TOKEN]);
    assert.equal(ok.code, 0, ok.err);
    assert.match(ok.out, /revision 2\n {2}services: ~orders/);
  } finally {
    await a.close();
  }
});

test('usage errors exit 2', async () => {
  assert.equal((await run([])).code, 2);
  assert.equal((await run(['sync'])).code, 2);
  assert.equal((await run(['apply'])).code, 2);
  assert.equal((await run(['export', 'file.yaml'])).code, 2);
  assert.equal((await run(['diff', 'x.yaml', '--if-revision', '3'])).code, 2);
  assert.equal((await run(['apply', 'x.yaml', '--if-revision', 'r3'])).code, 2);
  const help = await run(['--help']);
  assert.equal(help.code, 0);
  assert.match(help.out, /Exit status: 0 success/);
  const missing = await run(['apply', 'nope.yaml', '--admin', 'http://127.0.0.1:1']);
  assert.equal(missing.code, 1);
  assert.match(missing.err, /cannot read nope\.yaml: ENOENT/);
});

test('diff/apply: an alias-heavy FILE is a clean error (exit 1, no stack trace), nothing sent', async () => {
  let bomb = 'x-a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n';
  for (let i = 1; i < 9; i++) bomb += `x-a${i}: &a${i} [${Array(9).fill(`*a${i - 1}`).join(', ')}]\n`;
  writeFileSync(join(dir, 'bomb.yaml'), `${bomb}services: []\n`);
  for (const sub of ['diff', 'apply']) {
    // nothing listens at this address: the file is refused before any request
    const r = await run([sub, 'bomb.yaml', '--admin', 'http://127.0.0.1:9', '--token', TOKEN]);
    assert.equal(r.code, 1);
    assert.equal(r.out, '');
    assert.equal(r.err, `turnpike config ${sub}: bomb.yaml: too many YAML aliases (more than 100 expansions): write the values out\n`);
  }
});

test('diff/apply: a 200 answer that is not the admin API\'s is an error (exit 1), not a success', async () => {
  let answer = '{}';
  const server: Server = createServer((_req, res) => {
    _req.resume();
    _req.on('end', () => res.writeHead(200, { 'content-type': 'application/json' }).end(answer));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  try {
    writeFileSync(join(dir, 'shape.yaml'), 'services: []\n');
    const cases: [string, RegExp][] = [
      ['{}', /no revision number/],
      ['[]', /not a JSON object/],
      ['null', /not a JSON object/],
      ['{"revision":"3","changed":false}', /no revision number/],
      ['{"revision":3}', /no "changed" flag/],
      ['{"revision":3,"changed":true}', /no (diff|list of changes)/],
      ['{"revision":3,"changed":true,"diff":"","changes":{"services":{"added":"x"}}}', /a malformed list of changes/],
    ];
    for (const [body, why] of cases) {
      answer = body;
      for (const sub of ['diff', 'apply']) {
        const r = await run([sub, 'shape.yaml', '--admin', url, '--token', TOKEN]);
        assert.equal(r.code, 1, `${sub} ${body}: ${r.out}`);
        assert.equal(r.out, '');
        assert.match(r.err, new RegExp(`^turnpike config ${sub}: the answer from ${url.replace(/\./g, '\\.')} is not the admin API's \\(`));
        assert.match(r.err, why, `${sub} ${body}`);
        assert.doesNotMatch(r.err, /\n\s+at /);
      }
    }
    // the real shapes still pass
    answer = '{"dry_run":true,"valid":true,"revision":4,"changed":false,"changes":{},"diff":""}';
    assert.match((await run(['diff', 'shape.yaml', '--admin', url, '--token', TOKEN])).out, /no changes: shape\.yaml matches revision 4/);
    answer = '{"revision":5,"changed":true,"changes":{"services":{"added":["a"]}}}';
    const ok = await run(['apply', 'shape.yaml', '--admin', url, '--token', TOKEN]);
    assert.equal(ok.code, 0, ok.err);
    assert.equal(ok.out, 'applied shape.yaml: revision 5\n  services: +a\n');
  } finally {
    server.closeAllConnections();
    await new Promise<void>((r) => server.close(() => r()));
  }
});

test('export --out: the file is owner-only (0600), an existing one too with --secrets', async () => {
  const a = await admin(sampleDocument());
  const old = process.umask(0o022);
  try {
    for (const name of ['secrets-new.yaml', 'secrets-old.yaml']) {
      if (name === 'secrets-old.yaml') writeFileSync(join(dir, name), 'old\n', { mode: 0o644 });
      const r = await run(['export', '--secrets', '--out', name, '--admin', a.url, '--token', TOKEN]);
      assert.equal(r.code, 0, r.err);
      assert.match(readFileSync(join(dir, name), 'utf8'), /acme-secret-key-0001/);
      assert.equal(statSync(join(dir, name)).mode & 0o777, 0o600, name);
    }
    const plain = await run(['export', '--out', 'plain.yaml', '--admin', a.url, '--token', TOKEN]);
    assert.equal(plain.code, 0, plain.err);
    assert.equal(statSync(join(dir, 'plain.yaml')).mode & 0o777, 0o600);
  } finally {
    process.umask(old);
    await a.close();
  }
});

test('a short token does not damage messages; a standalone one is still redacted', async () => {
  const a = await admin();
  const url = a.url;
  await a.close(); // nothing listens there now
  for (const token of ['x', 'e', '1', 'ab.c']) {
    const r = await run(['export', '--admin', url, '--token', token]);
    assert.equal(r.code, 1);
    assert.match(r.err, new RegExp(`^turnpike config export: cannot reach the admin API at ${url.replace(/\./g, '\\.')}: connection refused`), token);
    assert.doesNotMatch(r.err, /<token>/, token);
  }
  let out = '';
  const w = redactingWriter((s) => void (out += s), 'x$1.');
  w('Bearer x$1. was refused; ax$1. stays\n');
  assert.equal(out, 'Bearer <token> was refused; ax$1. stays\n');
  out = '';
  redactingWriter((s) => void (out += s), TOKEN)(`a${TOKEN}b ${TOKEN}\n`);
  assert.equal(out, 'a<token>b <token>\n', 'a long token: every occurrence');
  const bad = await run(['export', '--admin', url, '--token', 'has space']);
  assert.equal(bad.code, 1);
  assert.equal(bad.err, 'the admin token has characters a bearer token cannot have (spaces, line breaks, non-ASCII)\n');
});

test('diff/apply: a FILE with a key given twice or a syntax error names the line (and the key\'s path), exit 1, nothing sent', async () => {
  writeFileSync(join(dir, 'dup.yaml'), 'services:\n  - name: a\n    url: http://127.0.0.1:1\nservices: []\n');
  writeFileSync(join(dir, 'broken.yaml'), 'services:\n  - name: a\n    url: [unclosed\n');
  for (const sub of ['diff', 'apply']) {
    const dup = await run([sub, 'dup.yaml', '--admin', 'http://127.0.0.1:9', '--token', TOKEN]);
    assert.equal(dup.code, 1);
    assert.equal(dup.err, `turnpike config ${sub}: dup.yaml: services (line 4): duplicate key "services" (column 1): a key may appear once in a mapping\n`);
    const broken = await run([sub, 'broken.yaml', '--admin', 'http://127.0.0.1:9', '--token', TOKEN]);
    assert.equal(broken.code, 1);
    assert.match(broken.err, /^turnpike config \w+: broken\.yaml \(line [34]\): invalid YAML: /);
  }
});

test('diff/apply: a FILE that is not UTF-8 (saved as Latin-1) names the line and column, exit 1, nothing sent', async () => {
  writeFileSync(join(dir, 'latin1.yaml'), Buffer.concat([Buffer.from('services:\n  - name: caf'), Buffer.from([0xe9]), Buffer.from('\n    url: http://127.0.0.1:1\n')]));
  for (const sub of ['diff', 'apply']) {
    const r = await run([sub, 'latin1.yaml', '--admin', 'http://127.0.0.1:9', '--token', TOKEN]);
    assert.equal(r.code, 1);
    assert.equal(r.err, `turnpike config ${sub}: latin1.yaml: byte 0xe9 at line 2, column 14 is not valid UTF-8 (was the file saved as Latin-1 or Windows-1252?): save it as UTF-8\n`);
  }
});

test('an --admin URL that is refused (a mistyped scheme) is quoted without its password', async () => {
  for (const admin of ['htps://ops:AdminPr0xyPw@admin.example:8081', 'ftp://ops:AdminPr0xyPw@admin.example']) {
    const r = await run(['export', '--admin', admin]);
    assert.equal(r.code, 2, admin);
    assert.match(r.err, /is not an http:\/\/ or https:\/\/ URL/);
    assert.ok(!r.err.includes('AdminPr0xyPw'), r.err);
  }
});
