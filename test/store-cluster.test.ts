/**
 * Cluster mode end to end (issue 9): three `turnpike start` processes on one real PostgreSQL
 * (test/postgres-server.ts), each with its own --config file (node-local keys) and
 * `store: postgres://...`. Admin writes on one node are served by the others (propagation
 * measured), a killed LISTEN connection converges, PostgreSQL stopped keeps every node serving
 * (writes 503, a restarted node serves its disk snapshot, a node without one stays not ready),
 * and the nodes catch up when it returns. Plus a sqlite node: seeding, restart, round trip.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, mkdirSync, writeFileSync, rmSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { Agent, request as undiciRequest } from 'undici';
import { freePort, request, sleep, startCli, startUpstream, type Running, type TestUpstream } from './helpers.js';
import { startPostgres, type PostgresServer } from './postgres-server.js';
import { PostgresStore } from '../src/config/stores/postgres.js';

const TOKEN = 'cluster-admin-token-0123456789';
const auth = { authorization: `Bearer ${TOKEN}` };
const work = mkdtempSync(join(tmpdir(), 'turnpike-cluster-'));
let pg: PostgresServer;
let up: TestUpstream;
let db: string;
const agent = new Agent({ connections: 8 });

interface Node {
  name: string;
  proxy: number;
  admin: number;
  file: string;
  run: Running;
}
const nodes: Node[] = [];

before(async () => {
  [pg, up] = await Promise.all([startPostgres(), startUpstream()]);
  db = await pg.createDatabase('cluster');
});
after(async () => {
  pg?.resume();
  await Promise.all(nodes.map(async (n) => {
    n.run.child.kill('SIGTERM');
    await n.run.exit;
  }));
  await agent.close();
  await up?.close();
  await pg?.stop();
  rmSync(work, { recursive: true, force: true });
});

const status = async (n: Node) => JSON.parse((await request(`http://127.0.0.1:${n.admin}/status`, { headers: auth })).body);

/** GET on a node's proxy: the status (0 when it does not answer). */
async function get(n: Node, path: string): Promise<number> {
  try {
    const r = await undiciRequest(`http://127.0.0.1:${n.proxy}${path}`, { dispatcher: agent, headersTimeout: 2000, bodyTimeout: 2000 });
    await r.body.dump();
    return r.statusCode;
  } catch {
    return 0;
  }
}

async function api(n: Node, method: string, path: string, body?: unknown, headers: Record<string, string> = {}) {
  const r = await undiciRequest(`http://127.0.0.1:${n.admin}${path}`, {
    dispatcher: agent, method: method as 'GET', headers: { ...auth, ...(body !== undefined ? { 'content-type': 'application/json' } : {}), ...headers },
    body: body === undefined ? undefined : JSON.stringify(body), headersTimeout: 10_000, bodyTimeout: 10_000,
  });
  const text = await r.body.text();
  return { status: r.statusCode, headers: r.headers, text, json: () => JSON.parse(text) };
}

async function until(what: string, ms: number, probe: () => Promise<boolean>, every = 2): Promise<number> {
  const t0 = performance.now();
  for (;;) {
    if (await probe()) return performance.now() - t0;
    if (performance.now() - t0 > ms) throw new Error(`${what}: not within ${ms} ms`);
    await sleep(every);
  }
}

/** Writes a node's --config file (the seed only on the first node) and starts it. */
async function startNode(name: string, opts: { store?: string; seed?: string; port?: { proxy: number; admin: number } } = {}): Promise<Node> {
  const dir = join(work, name);
  mkdirSync(dir, { recursive: true });
  const proxy = opts.port?.proxy ?? await freePort();
  const admin = opts.port?.admin ?? await freePort();
  const file = join(dir, 'turnpike.yaml');
  writeFileSync(file, `listen: 127.0.0.1:${proxy}
admin: {listen: 127.0.0.1:${admin}, token: ${TOKEN}}
store: ${opts.store ?? db}
access_log: {enabled: false}
${opts.seed ?? ''}`);
  const run = startCli(['start', '--config', file], { TURNPIKE_NODE_ID: name });
  const n = { name, proxy, admin, file, run };
  nodes.push(n);
  return n;
}

async function ready(n: Node, ms = 15_000): Promise<void> {
  await until(`${n.name} ready`, ms, async () => {
    const r = await request(`http://127.0.0.1:${n.admin}/status`).catch(() => null);
    return r?.status === 200;
  }, 50).catch((err) => {
    throw new Error(`${(err as Error).message}\n${n.run.stderr().slice(-3000)}`);
  });
}

async function stopNode(n: Node): Promise<void> {
  n.run.child.kill('SIGTERM');
  await n.run.exit;
  nodes.splice(nodes.indexOf(n), 1);
}

const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)]!;
};

let A: Node, B: Node, C: Node;

test('three nodes on one PostgreSQL: the first seeds the store from its file, the others serve it; /status names the node, revision and age', async () => {
  A = await startNode('node-a', { seed: `services:\n  - name: api\n    url: ${up.url}\n    routes: [{name: seeded, paths: [/seeded]}]\n` });
  await ready(A);
  // B's file has a declarative part of its own: the store is the truth, it is ignored.
  [B, C] = await Promise.all([startNode('node-b', { seed: `services:\n  - name: other\n    url: ${up.url}\n    routes: [{paths: [/other]}]\n` }), startNode('node-c')]);
  await Promise.all([ready(B), ready(C)]);
  for (const n of [A, B, C]) {
    assert.equal(await get(n, '/seeded'), 200, n.name);
    assert.equal(await get(n, '/other'), 404, `${n.name}: only the seeding file counts`);
    const s = await status(n);
    assert.equal(s.node_id, n.name);
    assert.equal(s.config.store, 'postgres');
    assert.equal(s.config.revision, 1);
    assert.equal(s.config.written_by, 'seed');
    assert.equal(s.config.source, 'store');
    assert.equal(typeof s.config.age_seconds, 'number');
  }
  const history = (await api(B, 'GET', '/api/revisions')).json();
  assert.equal((history.data ?? history).length, 1, 'seeded once, however many nodes started');
});

test('an admin write on node A is served by nodes B and C within 1 s (p50/p99 over 20 writes); A serves it when its answer arrives', async () => {
  const spans: number[] = [];
  // One write first, not counted: the first write of a node's life compiles the code paths of
  // the write, the notification and the reload (about 250 ms on an idle machine, over 1 s on a
  // loaded CI runner); the figures are about steady propagation.
  assert.equal((await api(A, 'POST', '/api/routes', { name: 'warm', service: 'api', paths: ['/warm'] })).status, 201);
  await Promise.all([B, C].map((n) => until(`${n.name} serves /warm`, 5000, async () => (await get(n, '/warm')) === 200, 5)));
  for (let i = 0; i < 20; i++) {
    const t0 = performance.now();
    const r = await api(A, 'POST', '/api/routes', { name: `w${i}`, service: 'api', paths: [`/w${i}`] });
    assert.equal(r.status, 201, r.text);
    assert.equal(await get(A, `/w${i}`), 200, 'read your writes on the node written to');
    await Promise.all([B, C].map(async (n) => {
      await until(`${n.name} serves /w${i}`, 1000, async () => (await get(n, `/w${i}`)) === 200, 1);
      spans.push(performance.now() - t0);
    }));
  }
  const p50 = pct(spans, 50);
  const p99 = pct(spans, 99);
  console.log(`# propagation admin write on A -> served by B and C (${spans.length} samples): p50 ${p50.toFixed(1)} ms, p99 ${p99.toFixed(1)} ms, max ${Math.max(...spans).toFixed(1)} ms`);
  assert.ok(p99 < 1000, `p99 ${p99} ms`);
  const s = await status(C);
  assert.equal(s.config.revision, 22);
});

test('killing the LISTEN connections: the nodes reconnect (or resync) and converge within the resync bound', async () => {
  const killed = await pg.query<{ n: string }>(`SELECT count(pg_terminate_backend(pid))::text AS n FROM pg_stat_activity WHERE application_name LIKE 'turnpike:node-%:listen'`, [], 'cluster');
  assert.ok(Number(killed[0]!.n) >= 3, `LISTEN connections killed: ${killed[0]!.n}`);
  const t0 = performance.now();
  assert.equal((await api(A, 'POST', '/api/routes', { name: 'after-kill', service: 'api', paths: ['/after-kill'] })).status, 201);
  const took = await Promise.all([B, C].map((n) => until(`${n.name} after the kill`, 11_000, async () => (await get(n, '/after-kill')) === 200, 20)));
  console.log(`# after pg_terminate_backend of the LISTEN connections: converged in ${took.map((t) => t.toFixed(0)).join(' / ')} ms (bound: resync 10 s)`);
  assert.ok(performance.now() - t0 < 11_000);
});

test('stale ETags: concurrent PATCHes with the same If-Match — one wins, the rest get 412; 200 concurrent writes are all acknowledged and all present after a restart', async () => {
  const item = await api(A, 'GET', '/api/routes/seeded');
  const etag = item.headers['etag'] as string;
  const patches = await Promise.all(Array.from({ length: 10 }, (_, i) => api(i % 2 ? B : A, 'PATCH', '/api/routes/seeded', { tags: [`t${i}`] }, { 'if-match': etag, 'content-type': 'application/merge-patch+json' })));
  const codes = patches.map((p) => p.status).sort();
  assert.equal(codes.filter((c) => c === 200).length, 1, `codes: ${codes}`);
  assert.equal(codes.filter((c) => c === 412).length, 9, `codes: ${codes}`);
  assert.equal(patches.find((p) => p.status === 412)!.headers['content-type'], 'application/problem+json');

  const writes = await Promise.all(Array.from({ length: 200 }, (_, i) => api([A, B, C][i % 3]!, 'POST', '/api/consumers', { name: `c${i}` })));
  const acked = writes.map((w, i) => (w.status === 201 ? `c${i}` : null)).filter((x): x is string => x !== null);
  const others = writes.filter((w) => w.status !== 201);
  assert.deepEqual(others.map((w) => w.status), [], others.map((w) => w.text).slice(0, 3).join('\n'));
  // Restart node C: what it reads back is what the store kept.
  const port = { proxy: C.proxy, admin: C.admin };
  await stopNode(C);
  C = await startNode('node-c', { port });
  await ready(C);
  const list = (await api(C, 'GET', '/api/consumers?limit=1000')).json();
  const names = new Set((list.data as { name: string }[]).map((c) => c.name));
  assert.deepEqual(acked.filter((n) => !names.has(n)), [], 'every acknowledged write is present');
});

test('PostgreSQL stopped: every node keeps serving, admin writes answer 503; a restarted node serves its disk snapshot, a new one without a snapshot is not ready; all catch up when it returns', async () => {
  const revisionBefore = (await status(A)).config.revision;
  await pg.shutdown('fast');
  for (const n of [A, B, C]) assert.equal(await get(n, '/seeded'), 200, `${n.name} serves while PostgreSQL is down`);
  const w = await api(A, 'POST', '/api/routes', { name: 'while-down', service: 'api', paths: ['/while-down'] });
  assert.equal(w.status, 503, w.text);
  assert.equal(w.headers['content-type'], 'application/problem+json');
  // Node B restarts while the store is down: it serves its disk snapshot.
  const port = { proxy: B.proxy, admin: B.admin };
  await stopNode(B);
  B = await startNode('node-b', { port });
  // (node-d, which never reached the store, starts meanwhile: the two starts are independent)
  const D = await startNode('node-d');
  await ready(B);
  assert.equal(await get(B, '/w7'), 200, 'the snapshot has what B served');
  const sb = await status(B);
  assert.equal(sb.config.source, 'snapshot');
  assert.equal(sb.config.revision, revisionBefore);
  assert.equal(sb.config.store_reachable, false);
  // A node that never reached the store has nothing to serve: no listener, not ready.
  // (a slow machine may take seconds to start a node: wait for it to say so, not a fixed time)
  await until('node-d says it has no snapshot', 20_000, async () => /no disk snapshot: not ready/.test(D.run.stderr()), 100);
  assert.equal(await request(`http://127.0.0.1:${D.admin}/status`).then((r) => r.status, () => 0), 0, 'not ready while the store is down');

  await pg.restart();
  await ready(D, 20_000);
  assert.equal(await get(D, '/w3'), 200);
  // Writes work again (the pool reconnects) and reach every node, B included.
  await until('admin writes work again', 10_000, async () => (await api(A, 'POST', '/api/routes', { name: 'back', service: 'api', paths: ['/back'] })).status === 201, 200);
  for (const n of [A, B, C, D]) await until(`${n.name} catches up`, 12_000, async () => (await get(n, '/back')) === 200, 50);
  const sb2 = await status(B);
  assert.equal(sb2.config.source, 'store');
  assert.equal(sb2.config.store_reachable, true);
  await stopNode(D);
});

test('the store goes back (restored from an older backup, a failover to a replica that was behind): a write after it reaches every node at NOTIFY speed, also at numbers the nodes ran before', async () => {
  const head = (await status(A)).config.revision as number;
  const back = head - 3;
  for (const n of [A, B, C]) assert.equal((await status(n)).config.revision, head, n.name);
  assert.equal(await get(B, '/back'), 200, 'written in the last revisions (the previous test)');
  // What a restore in place does to the tables (the nodes keep their connections; no NOTIFY).
  await pg.query(`BEGIN; DELETE FROM turnpike_revisions WHERE revision > ${back}; UPDATE turnpike_head SET revision = ${back} WHERE id = 1; COMMIT`, [], 'cluster');
  const spans: number[] = [];
  for (let i = 1; i <= 3; i++) {
    const t0 = performance.now();
    const r = await api(A, 'POST', '/api/routes', { name: `rewound-${i}`, service: 'api', paths: [`/rewound-${i}`] });
    assert.equal(r.status, 201, r.text);
    assert.equal(r.headers['x-config-revision'], String(back + i), 'numbered after the restored head');
    assert.equal(await get(A, `/rewound-${i}`), 200, 'read your writes on the node written to');
    // Well under the 10 s resync: the NOTIFY of a number not above the last one has the head read.
    await Promise.all([B, C].map(async (n) => {
      await until(`${n.name} serves /rewound-${i} (revision ${back + i}, a number it ran before)`, 3000, async () => (await get(n, `/rewound-${i}`)) === 200, 5);
      spans.push(performance.now() - t0);
    }));
  }
  console.log(`# after the store went back ${head} -> ${back}: writes served by B and C in ${spans.map((t) => t.toFixed(0)).join(' / ')} ms`);
  for (const n of [A, B, C]) {
    const s = await status(n);
    assert.equal(s.config.revision, head, `${n.name}: the same number as before the rewind, another revision`);
    assert.equal(await get(n, '/back'), 404, `${n.name}: what the restore took back is not served`);
    for (let i = 1; i <= 3; i++) assert.equal(await get(n, `/rewound-${i}`), 200, `${n.name} /rewound-${i}`);
  }
});

test('sqlite store: seeded from the file, the store is the truth after a restart; export -> apply on an empty store -> export is the same document; bad input changes nothing', async () => {
  const S = await startNode('sqlite-1', { store: 'sqlite:./turnpike.db', seed: `services:\n  - name: api\n    url: ${up.url}\n    routes: [{name: one, paths: [/one]}]\nconsumers:\n  - {name: acme, credentials: [{type: key-auth, key: "\${ACME_KEY:-acme-secret-key-1}"}]}\n` });
  await ready(S);
  assert.equal((await api(S, 'POST', '/api/routes', { name: 'two', service: 'api', paths: ['/two'] })).status, 201);
  const port = { proxy: S.proxy, admin: S.admin };
  await stopNode(S);
  const S2 = await startNode('sqlite-1', { store: 'sqlite:./turnpike.db', port, seed: `services: []\n` });
  // (E, a node on an empty store of its own, starts meanwhile: it is used once S2 has exported)
  const E = await startNode('sqlite-2', { store: 'sqlite:./turnpike.db' });
  await ready(S2);
  assert.equal(await get(S2, '/two'), 200, 'the store, not the file, after a restart');
  assert.match(S2.run.stderr(), /differ from the config store and are NOT served/, 'the operator is told the file is not served');
  assert.doesNotMatch(S.run.stderr(), /NOT served/, 'no warning when the file seeded the store');
  const exported = (await api(S2, 'GET', '/api/config?secrets=true', undefined, { accept: 'application/yaml' })).text;
  assert.match(exported, /\$\{ACME_KEY:-acme-secret-key-1\}/, 'a reference stays a reference');
  assert.doesNotMatch(readFileSync(join(work, 'sqlite-1', 'turnpike.db')).toString('latin1'), /acme-secret-key-1"/);

  await ready(E);
  const put = await api(E, 'PUT', '/api/config', undefined, { 'content-type': 'application/yaml' }).catch(() => null);
  assert.ok(put === null || put.status >= 400, 'an empty body is refused');
  const applied = await undiciRequest(`http://127.0.0.1:${E.admin}/api/config`, { dispatcher: agent, method: 'PUT', headers: { ...auth, 'content-type': 'application/yaml' }, body: exported });
  assert.equal(applied.statusCode, 200, await applied.body.text());
  const again = (await api(E, 'GET', '/api/config?secrets=true', undefined, { accept: 'application/yaml' })).text;
  assert.equal(again, exported, 'export -> apply -> export round trip');
  assert.equal(await get(E, '/two'), 200);

  const revision = (await status(E)).config.revision;
  for (const bad of [
    { body: '{"services": [{"name": "x", "url": 5}]}', type: 'application/json' },
    { body: '{"services": ', type: 'application/json' },
    { body: 'services: [{name: x, url: "http://127.0.0.1:1", bogus: 1}]', type: 'application/yaml' },
    { body: 'x'.repeat(9 * 1024 * 1024), type: 'application/yaml' },
  ]) {
    const r = await undiciRequest(`http://127.0.0.1:${E.admin}/api/config`, { dispatcher: agent, method: 'PUT', headers: { ...auth, 'content-type': bad.type }, body: bad.body }).catch((err: NodeJS.ErrnoException) => err);
    // A body past the limit may be cut off by the 413 (the server answers and closes before the upload ends).
    if (r instanceof Error) {
      assert.ok(bad.body.length > 8 * 1024 * 1024 && /EPIPE|ECONNRESET|other side closed/.test(`${r.code} ${r.message}`), String(r));
      continue;
    }
    const text = await r.body.text();
    assert.ok(r.statusCode >= 400 && r.statusCode < 500, `${r.statusCode} ${text.slice(0, 200)}`);
    assert.equal(r.headers['content-type'], 'application/problem+json');
  }
  assert.equal((await status(E)).config.revision, revision, 'nothing was applied');
  assert.equal(await get(E, '/two'), 200);
  await stopNode(S2);
  await stopNode(E);
});

test('--store names the store instead of the file (which then only seeds it); a bad setting exits 2', async () => {
  const dir = join(work, 'flag');
  mkdirSync(dir, { recursive: true });
  const [proxy, admin] = [await freePort(), await freePort()];
  const file = join(dir, 'turnpike.yaml');
  writeFileSync(file, `listen: 127.0.0.1:${proxy}\nadmin: {listen: 127.0.0.1:${admin}}\naccess_log: {enabled: false}\nservices: [{name: api, url: "${up.url}", routes: [{paths: [/flag]}]}]\n`);
  // (both at once: the bad setting is refused before anything listens or opens a store)
  const bad = startCli(['start', '--config', file, '--store', 'mysql://x'], {});
  const run = startCli(['start', '--config', file, '--store', `sqlite:${join(dir, 'flag.db')}`], {});
  const n = { name: 'flag', proxy, admin, file, run };
  nodes.push(n);
  assert.equal(await bad.exit, 2);
  assert.match(bad.stderr(), /give sqlite:PATH or postgres/);
  await ready(n);
  const s = await status(n);
  assert.equal(s.config.store, 'sqlite');
  assert.equal(s.config.written_by, 'seed');
  assert.equal(await get(n, '/flag'), 200);
  await stopNode(n);
});

test('the store\'s head does not compile on this node (a plugin only a newer node knows): a restarted node serves its disk snapshot and reports the head as rejected, rather than exiting (a crash loop)', async () => {
  const url = await pg.createDatabase('newer');
  const seed = `services: [{name: api, url: "${up.url}", routes: [{paths: [/older]}]}]\n`;
  let n = await startNode('node-older', { store: url, seed });
  await ready(n);
  assert.equal(await get(n, '/older'), 200);
  const snapshot = join(work, 'node-older', '.turnpike', 'config-snapshot.json');
  await until('the disk snapshot is written', 5000, async () => { try { return JSON.parse(readFileSync(snapshot, 'utf8')).config.revision === 1; } catch { return false; } }, 20);
  const port = { proxy: n.proxy, admin: n.admin };
  await stopNode(n);
  // A newer node writes a revision with a plugin this version does not know (it parses; it does not compile here).
  const newer = new PostgresStore({ url });
  try {
    await newer.write({ actor: 'newer-node', action: 'PATCH /api/services/api' }, (doc) => ({
      ...doc,
      services: [{ name: 'api', url: up.url, plugins: [{ name: 'plugin-of-a-later-version', config: {} }], routes: [{ paths: ['/older'] }] }],
    }));
  } finally {
    await newer.close();
  }
  n = await startNode('node-older', { store: url, seed, port });
  await ready(n);
  assert.equal(await get(n, '/older'), 200, 'the snapshot is served');
  const s = await status(n);
  assert.equal(s.config.source, 'snapshot');
  assert.equal(s.config.revision, 1);
  assert.equal(s.config.rejected_revision, 2);
  assert.match(n.run.stderr(), /cannot run on this node: serving the disk snapshot/);
  await stopNode(n);
});
