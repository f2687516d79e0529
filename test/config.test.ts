import { test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, existsSync, readFileSync, readdirSync, writeFileSync, mkdtempSync } from 'node:fs';
import { makeCa } from './certs.js';
import { configIssues, eventually, freePort, request, startCli } from './helpers.js';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { spawn, spawnSync } from 'node:child_process';
import { createServer as createNetServer, type AddressInfo } from 'node:net';
import { documentValidator } from '../src/admin/validate.js';
import { fastValidConfig, parseConfigText } from '../src/config/load.js';
import { compile } from '../src/config/compile.js';
import { ConfigError } from '../src/config/errors.js';
import { parseYaml } from '../src/admin/body.js';
import { ApiError } from '../src/admin/errors.js';
import { PoolRegistry } from '../src/upstream/pools.js';
import { parseDuration, parseSize } from '../src/config/units.js';
import { schemaJson } from '../src/config/json-schema.js';
import { pluginsMarkdown } from '../src/plugins/docs.js';

function issuesOf(text: string, env: NodeJS.ProcessEnv = {}) {
  const pools = new PoolRegistry();
  try {
    compile(parseConfigText(text, { env }), { pools }).dispose();
    return [];
  } catch (err) {
    assert.ok(err instanceof ConfigError, String(err));
    return err.issues;
  } finally {
    void pools.closeAll();
  }
}

/** What a CLI run gave (as spawnSync's result). */
interface CliResult { status: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }

/**
 * Runs bin/turnpike.js once per argument list, all at the same time (each run is mostly ~0.8 s
 * of process start; one after the other they were most of this file's time), each with stdin
 * closed (or given `input`) and SIGKILLed past 20 s (a hung run shows as its signal).
 */
function cliAll(runs: { args: string[]; env?: NodeJS.ProcessEnv; input?: string; cwd?: string }[]): Promise<CliResult[]> {
  return Promise.all(runs.map(({ args, env, input, cwd }) => new Promise<CliResult>((resolve, reject) => {
    const c = spawn(process.execPath, [join(process.cwd(), 'bin/turnpike.js'), ...args], { env: env ?? process.env, cwd: cwd ?? process.cwd() });
    let stdout = '';
    let stderr = '';
    c.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    c.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    c.stdin.on('error', () => {});
    c.stdin.end(input ?? '');
    const kill = setTimeout(() => c.kill('SIGKILL'), 20_000);
    c.on('error', reject);
    c.on('close', (status, signal) => { clearTimeout(kill); resolve({ status, signal, stdout, stderr }); });
  })));
}

const base = `services:
  - name: orders
    url: http://127.0.0.1:9001
    routes:
      - name: a
        paths: [/orders]
      - name: b
        paths: [/x]
`;

test('the contract example without plugins loads', () => {
  const text = `listen: 127.0.0.1:8080
admin:
  listen: 127.0.0.1:8081
  token: \${TURNPIKE_ADMIN_TOKEN:-}
services:
  - name: orders
    url: http://127.0.0.1:9001
    timeouts: {connect: 2s, response: 30s}
    retries: 1
    routes:
      - name: orders-api
        paths: [/orders]
        methods: [GET, POST]
        hosts: [api.example.com]
        strip_path: false
        plugins: []
plugins: []
`;
  assert.deepEqual(issuesOf(text), []);
});

test('unknown keys are errors naming their path and line', () => {
  const issues = issuesOf(base.replace('paths: [/x]', 'paths: [/x]\n        bogus: 1'));
  assert.deepEqual(issues, [{ path: 'services[0].routes[1].bogus', line: 9, message: 'unknown key "bogus"' }]);
  const top = issuesOf('listen: 127.0.0.1:1\nlisten_port: 2\n');
  assert.equal(top[0]!.path, 'listen_port');
  assert.equal(top[0]!.line, 2);
});

test('schema errors carry path and line', () => {
  const issues = issuesOf(base.replace('paths: [/x]', 'paths: [x]'));
  assert.equal(issues.length, 1);
  assert.equal(issues[0]!.path, 'services[0].routes[1].paths[0]');
  assert.equal(issues[0]!.line, 8);
  const missing = issuesOf('services:\n  - url: http://a\n');
  assert.equal(missing[0]!.path, 'services[0].name');
  assert.equal(missing[0]!.line, 2);
  assert.match(missing[0]!.message, /required/);
});

test('semantic errors carry path and line', () => {
  const dup = issuesOf(base + `  - name: orders\n    url: http://127.0.0.1:9002\n`);
  assert.equal(dup[0]!.path, 'services[1].name');
  assert.equal(dup[0]!.line, 9);
  const conflict = issuesOf(base.replace('paths: [/x]', 'paths: [/orders/]'));
  assert.equal(conflict[0]!.path, 'services[0].routes[1]');
  assert.match(conflict[0]!.message, /same requests as services\[0\]\.routes\[0\]/);
  const plugin = issuesOf(base + 'plugins:\n  - name: no-such-plugin\n');
  assert.equal(plugin.length, 1);
  assert.deepEqual([plugin[0]!.path, plugin[0]!.line], ['plugins[0].name', 10]);
  assert.match(plugin[0]!.message, /^unknown plugin "no-such-plugin" \(known: .*key-auth/);
  const badUrl = issuesOf(base.replace('http://127.0.0.1:9001', 'http://user:pw@127.0.0.1:9001'));
  assert.equal(badUrl[0]!.path, 'services[0].url');
  const badParam = issuesOf(base.replace('[/x]', '["/x/{a}{b}"]'));
  assert.equal(badParam[0]!.path, 'services[0].routes[1].paths[0]');
  const dotted = issuesOf(base.replace('[/x]', '[/x/../y]'));
  assert.match(dotted[0]!.message, /normal form/);
  const noTarget = issuesOf('services:\n  - name: s\n');
  assert.equal(noTarget[0]!.path, 'services[0]');
  const cidr = issuesOf('trusted_proxies: [10.0.0.0/8, 10.0.0.0/99, nope]\n');
  assert.deepEqual(cidr.map((i) => i.path), ['trusted_proxies[1]', 'trusted_proxies[2]']);
});

test("route errors in a later service name that service's route, with its line", () => {
  const two = base + `  - name: billing
    url: http://127.0.0.1:9002
    routes:
      - name: c
        paths: [/bills]
      - name: d
        paths: ["/bills/{id}/{id}", "/b?x", /b/./c]
      - name: a
        paths: [/orders/]
`;
  const issues = issuesOf(two);
  assert.deepEqual(issues.map((i) => [i.path, i.line]), [
    ['services[1].routes[1].paths[0]', 15],
    ['services[1].routes[1].paths[1]', 15],
    ['services[1].routes[1].paths[2]', 15],
    ['services[1].routes[2].name', 16],
    ['services[1].routes[2]', 16],
  ]);
  assert.match(issues[0]!.message, /parameter \{id\} appears twice/);
  assert.match(issues[1]!.message, /may not contain \?/);
  assert.match(issues[2]!.message, /normal form/);
  assert.match(issues[3]!.message, /duplicate route name "a"/);
  assert.match(issues[4]!.message, /same requests as services\[0\]\.routes\[0\]/);
});

test('routes without plugins of their own share their service chain; plans still decide per route', () => {
  const pools = new PoolRegistry();
  const text = `consumers:
  - {name: ann, plan: basic}
plans:
  basic: {routes: [a]}
services:
  - name: orders
    url: http://127.0.0.1:9001
    plugins: [{name: request-size-limit, config: {max: 1kb}}]
    routes:
      - {name: a, paths: [/a]}
      - {name: b, paths: [/b]}
      - {name: c, paths: [/c], plugins: [{name: cors, config: {origins: ['https://app.example']}}]}
`;
  const snap = compile(parseConfigText(text), { pools });
  try {
    const [a, b, c] = snap.routes;
    assert.equal(a!.chains.base, b!.chains.base, 'one base chain for a and b');
    assert.notEqual(a!.chains.base, c!.chains.base);
    const names = (ch: (typeof snap.routes)[number]["chains"]["base"]) => [...new Set([...ch.onRequest, ...ch.access, ...ch.responseHeaders].map((x) => x.name))].sort();
    assert.deepEqual(names(c!.chains.base), ['cors', 'request-size-limit']);
    assert.deepEqual(names(a!.chains.base), ['request-size-limit']);
    const ann = snap.consumers.get('ann')!;
    assert.equal(a!.chains.forConsumer(ann).denied, undefined);
    assert.match(b!.chains.forConsumer(ann).denied ?? '', /basic plan does not include/);
    assert.match(c!.chains.forConsumer(ann).denied ?? '', /basic plan does not include/);
  } finally {
    snap.dispose();
    void pools.closeAll();
  }
});

test('admin beyond loopback requires a token', () => {
  const issues = issuesOf('admin:\n  listen: 0.0.0.0:8081\n');
  assert.equal(issues[0]!.path, 'admin.token');
  assert.deepEqual(issuesOf('admin:\n  listen: 0.0.0.0:8081\n  token: s3cret-0123456789ab\n'), []);
  assert.deepEqual(issuesOf('admin:\n  listen: 127.0.0.1:8081\n'), []);
});

test('${VAR} and ${VAR:-default} substitution, typed when unquoted', () => {
  const text = `listen: 127.0.0.1:\${PORT:-8080}
services:
  - name: s
    url: http://\${HOST}:9001
    retries: \${RETRIES}
    routes:
      - paths: ["/\${PREFIX:-api}"]
        strip_path: \${STRIP:-true}
        tags: ["$\${literal}"]
`;
  const { config } = parseConfigText(text, { env: { HOST: 'backend', RETRIES: '3' } });
  assert.equal(config.listen, '127.0.0.1:8080');
  const s = config.services![0]!;
  assert.equal(s.url, 'http://backend:9001');
  assert.equal(s.retries, 3);
  assert.deepEqual(s.routes![0]!.paths, ['/api']);
  assert.equal(s.routes![0]!.strip_path, true);
  assert.deepEqual(s.routes![0]!.tags, ['${literal}']);
  // an unset variable without a default is an error at its path and line
  const issues = issuesOf(text, { RETRIES: '1' });
  assert.deepEqual(issues, [{
    path: 'services[0].url', line: 4,
    message: 'environment variable HOST is not set (use ${HOST:-default} for a default)',
  }]);
  // a value from the environment is data, not YAML: it cannot inject structure
  const inj = parseConfigText('services:\n  - name: s\n    url: "${U}"\n', { env: { U: 'http://a\n    retries: 9' } });
  assert.equal(inj.config.services![0]!.retries, undefined);
});

test('durations and sizes', () => {
  assert.equal(parseDuration('250ms'), 250);
  assert.equal(parseDuration('30s'), 30_000);
  assert.equal(parseDuration('5m'), 300_000);
  assert.equal(parseDuration('1h'), 3_600_000);
  assert.equal(parseDuration('1d'), 86_400_000);
  assert.equal(parseDuration('1.5s'), 1500);
  assert.equal(parseDuration(42), 42);
  assert.equal(parseSize('10kb'), 10_240);
  assert.equal(parseSize('8mb'), 8 * 1024 * 1024);
  assert.equal(parseSize('512b'), 512);
  assert.throws(() => parseDuration('5 parsecs'));
  const bad = issuesOf('timeouts: {client_header: 10x}\nlimits: {max_header_size: 1tb}\n');
  assert.deepEqual(bad.map((i) => [i.path, i.line]), [['timeouts.client_header', 1], ['limits.max_header_size', 2]]);
});

test('JSON config files work, with lines', () => {
  const json = JSON.stringify({ listen: '127.0.0.1:8080', services: [{ name: 's', url: 'http://a:1', extra: true }] }, null, 2);
  const issues = issuesOf(json);
  assert.equal(issues[0]!.path, 'services[0].extra');
  assert.equal(issues[0]!.line, 7);
});

test('YAML syntax errors and duplicate keys have lines', () => {
  const syntax = issuesOf('services:\n  - name: a\n    url: [unclosed\n');
  assert.ok(syntax[0]!.line! >= 3);
  const dupKey = issuesOf('listen: 127.0.0.1:1\nlisten: 127.0.0.1:2\n');
  assert.equal(dupKey[0]!.line, 2);
  assert.match(dupKey[0]!.message, /unique|duplicate/i);
});

test('an empty config (zero bytes, comments only, a null document) is an error naming the file; {} stays valid', async () => {
  for (const text of ['', '\n\n', '# only a comment\n  # and another\n', '---\n', '--- # x\n...\n', '~\n', 'null\n', '\ufeff']) {
    assert.throws(
      () => parseConfigText(text, { file: 'turnpike.yaml', env: {} }),
      (e: unknown) => e instanceof ConfigError && e.issues.length === 1 && e.issues[0]!.path === '(root)' && /the config file turnpike\.yaml is empty/.test(e.issues[0]!.message),
      JSON.stringify(text),
    );
  }
  assert.deepEqual(issuesOf('{}\n'), []);
  assert.deepEqual(issuesOf('# all defaults\n{}\n'), []);
  // turnpike validate exits 1 (and says so) for an empty or comments-only file
  const dir = mkdtempSync(join(tmpdir(), 'turnpike-empty-'));
  const empties = [['zero.yaml', ''], ['comments.yaml', '# nothing yet\n']] as const;
  for (const [name, text] of empties) writeFileSync(join(dir, name), text);
  const results = await cliAll(empties.map(([name]) => ({ args: ['validate', '--config', join(dir, name)] })));
  for (const [i, r] of results.entries()) {
    const f = join(dir, empties[i]![0]);
    assert.equal(r.status, 1, `${f}: ${r.stdout}${r.stderr}`);
    assert.ok(r.stderr.includes(`the config file ${f} is empty`), r.stderr);
  }
});

test('an unknown YAML tag (!env, !secret, !!map on a list) is an error naming path and line, not a value taken literally', () => {
  const text = `admin:
  listen: 127.0.0.1:1
  token: !env TURNPIKE_ADMIN_TOKEN
services:
  - name: s
    url: http://127.0.0.1:9001
    routes: !!map [{paths: [/a]}]
consumers:
  - name: c
    credentials:
      - {type: key-auth, key: !secret hunter2literal}
`;
  const issues = issuesOf(text, { TURNPIKE_ADMIN_TOKEN: 'real-token' });
  assert.deepEqual(issues.map((i) => [i.path, i.line]), [['admin.token', 3], ['services[0].routes', 7], ['consumers[0].credentials[0].key', 11]]);
  assert.match(issues[0]!.message, /unsupported YAML tag !env .*write \$\{TURNPIKE_ADMIN_TOKEN\} to read the environment variable/);
  assert.match(issues[1]!.message, /unsupported YAML tag !!map/);
  assert.match(issues[2]!.message, /unsupported YAML tag !secret .*write \$\{VAR\} or \$\{VAR:-default\}/);
  assert.ok(!issues[2]!.message.includes('hunter2literal'), 'the value is not quoted back');
  // the core schema's own tags still work
  assert.deepEqual(issuesOf('services:\n  - name: !!str s\n    url: http://127.0.0.1:9001\n    retries: !!int 1\n'), []);
  // turnpike validate says so (it said "valid")
  const dir = mkdtempSync(join(tmpdir(), 'turnpike-tag-'));
  const f = join(dir, 'c.yaml');
  writeFileSync(f, 'admin:\n  listen: 127.0.0.1:1\n  token: !env TURNPIKE_ADMIN_TOKEN\n');
  const r = spawnSync(process.execPath, ['bin/turnpike.js', 'validate', '--config', f], { encoding: 'utf8' });
  assert.equal(r.status, 1, r.stdout + r.stderr);
  assert.match(r.stderr, /admin\.token \(line 3\): unsupported YAML tag !env/);
  // nor does the admin API take a tagged YAML body literally
  assert.throws(() => parseYaml(Buffer.from('admin:\n  token: !env TURNPIKE_ADMIN_TOKEN\n')), (e: unknown) => e instanceof ApiError && /line 2: unsupported YAML tag !env/.test(e.message));
});

test('a password written in a URL is masked in every config error that quotes the URL', () => {
  const check = (issues: { path: string; message: string }[], path: string, shown: string) => {
    const i = issues.find((x) => x.path === path);
    assert.ok(i, `${path}: ${JSON.stringify(issues)}`);
    assert.ok(i.message.includes(shown), i.message);
    assert.ok(!i.message.includes('hunter2literal'), i.message);
  };
  // the URL does not parse (compile's "invalid URL")
  check(issuesOf('services:\n  - name: s\n    url: "http://u:hunter2literal@127.0.0.1:bad"\n'), 'services[0].url', '"http://u:***@127.0.0.1:bad"');
  check(issuesOf('services:\n  - name: s\n    upstream:\n      targets: [{url: "http://u:hunter2literal@127.0.0.1:bad"}]\n'), 'services[0].upstream.targets[0].url', 'http://u:***@127.0.0.1:bad');
  // a password with an @ in it, up to the host
  check(issuesOf('services:\n  - name: s\n    url: "http://u:hunter2literal@x@127.0.0.1:bad/p"\n'), 'services[0].url', '"http://u:***@127.0.0.1:bad/p"');
  // schema errors quote the value: a URL there too
  check(issuesOf('services:\n  - name: s\n    url: "ftp://u:hunter2literal@127.0.0.1/"\n'), 'services[0].url', '"ftp://u:***@127.0.0.1/"');
  check(issuesOf('redis: {url: "http://:hunter2literal@127.0.0.1:6379"}\n'), 'redis', 'http://:***@127.0.0.1:6379');
  // a password given as a query parameter (?password=, ?sslpassword=, ?token=...)
  check(issuesOf('redis: {url: "http://127.0.0.1:6379/?password=hunter2literal"}\n'), 'redis', 'http://127.0.0.1:6379/?password=***');
  check(issuesOf('services:\n  - name: s\n    url: "http://127.0.0.1:bad/?access_token=hunter2literal&q=1"\n'), 'services[0].url', '"http://127.0.0.1:bad/?access_token=***&q=1"');
  // an object quoted whole (a union's value) masks members named like secrets, known or not
  check(issuesOf('redis: {url: "redis:x", password: hunter2literal}\n'), 'redis', '"password":"***"');
  check(issuesOf('redis: {url: "redis://127.0.0.1:6379", auth: {token: hunter2literal}}\n'), 'redis', '"token":"***"');
  // a composition step's URL
  check(issuesOf('routes:\n  - name: r\n    paths: [/r]\n    compose:\n      steps:\n        - {name: a, url: "http://u:hunter2literal@127.0.0.1:bad/x"}\n'), 'routes[0].compose.steps[0].url', '"http://u:***@127.0.0.1:bad/x"');
  // and the whole message (what start, validate and a rejected reload print)
  try {
    compile(parseConfigText('services:\n  - name: s\n    url: "http://u:hunter2literal@127.0.0.1:bad"\n', { env: {} }), { pools: new PoolRegistry() });
    assert.fail('compiled');
  } catch (e) {
    assert.ok(e instanceof ConfigError);
    assert.ok(!e.message.includes('hunter2literal') && e.message.includes('http://u:***@127.0.0.1:bad'), e.message);
  }
});

test('turnpike validate judges policy: redis (rate-limit, quota) and backend: redis (cache) as start does, without connecting to Redis', async () => {
  // a listener where the config's Redis would be: validate must not connect to it
  let connections = 0;
  const fake = createNetServer((s) => { connections++; s.destroy(); });
  await new Promise<void>((r) => fake.listen(0, '127.0.0.1', r));
  const port = (fake.address() as AddressInfo).port;
  const dir = mkdtempSync(join(tmpdir(), 'turnpike-validate-redis-'));
  const cfg = (redis: string) => `${redis}services:
  - name: s
    url: http://127.0.0.1:9001
    plugins:
      - name: rate-limit
        config: {limit: 10, window: 1s, policy: redis}
      - name: quota
        config: {limit: 1000, period: day, policy: redis}
      - name: cache
        config: {backend: redis}
    routes: [{paths: [/a]}]
`;
  const file = (text: string) => {
    const f = join(dir, `c${Math.random().toString(36).slice(2)}.yaml`);
    writeFileSync(f, text);
    return { args: ['validate', '--config', f] };
  };
  try {
    const t0 = Date.now();
    // (the three at once)
    const [ok, cluster, none] = (await cliAll([
      file(cfg(`redis: redis://127.0.0.1:${port}\n`)),
      file(cfg(`redis: {cluster: ["redis://127.0.0.1:${port}"], prefix: "tp:"}\n`)),
      file(cfg('')),
    ])).map((r) => ({ status: r.status, out: r.stdout + r.stderr })) as [{ status: number | null; out: string }, { status: number | null; out: string }, { status: number | null; out: string }];
    assert.equal(ok.status, 0, ok.out);
    assert.match(ok.out, /: valid/);
    assert.ok(Date.now() - t0 < 20_000);
    assert.equal(cluster.status, 0, cluster.out);
    // without the setting it is still an error
    assert.equal(none.status, 1);
    assert.match(none.out, /policy redis needs the top-level redis setting/);
    assert.match(none.out, /backend redis needs the top-level redis setting/);
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(connections, 0, 'validate connected to Redis');
  } finally {
    fake.close();
  }
  // the admin API's document check (a node with a redis setting, a store) judges the same way
  const check = documentValidator({ redis: `redis://127.0.0.1:${port}` });
  const doc = parseConfigText(cfg(''), { env: {} }).config as Record<string, unknown>;
  assert.deepEqual(check(doc), { ok: true });
  assert.equal(documentValidator()(doc).ok, false);
});

test("a plugin's config errors are worded like the config's own: durations, sizes, unknown keys", () => {
  const text = `services:
  - name: s
    url: http://127.0.0.1:9001
    plugins:
      - name: rate-limit
        config:
          limit: 10
          window: 7parsecs
      - name: request-size-limit
        config:
          max: 1zb
          bogus: 1
    routes: [{paths: [/a]}]
`;
  const issues = issuesOf(text);
  const at = (path: string) => issues.find((i) => i.path === path) ?? assert.fail(`${path}: ${JSON.stringify(issues)}`);
  // (the config's own keys, for comparison)
  assert.equal(issuesOf('timeouts: {drain: 2x}\n')[0]!.message, 'invalid value "2x": expected a duration: 250ms, 30s, 5m, 1h, 1d (a bare number is milliseconds)');
  assert.deepEqual(at('services[0].plugins[0].config.window'), { path: 'services[0].plugins[0].config.window', line: 8, message: 'invalid value "7parsecs": expected a duration: 250ms, 30s, 5m, 1h, 1d (a bare number is milliseconds)' });
  assert.deepEqual(at('services[0].plugins[1].config.max'), { path: 'services[0].plugins[1].config.max', line: 11, message: 'invalid value "1zb": expected a size: 512b, 10kb, 8mb, 1gb (a bare number is bytes)' });
  assert.deepEqual(at('services[0].plugins[1].config.bogus'), { path: 'services[0].plugins[1].config.bogus', line: 12, message: 'unknown key "bogus"' });
  assert.equal(issuesOf('limits: {max_header_size: 1zb}\n')[0]!.message, 'invalid value "1zb": expected a size: 512b, 10kb, 8mb, 1gb (a bare number is bytes)');
  assert.ok(!issues.some((i) => /expected union value|unexpected property/i.test(i.message)), JSON.stringify(issues));
});

test('YAML alias errors (an unknown alias, an alias bomb) name the path and the line of the alias', () => {
  const unknown = issuesOf('services:\n  - name: s\n    url: http://127.0.0.1:9001\n    routes:\n      - *nope\n');
  assert.deepEqual(unknown, [{ path: 'services[0].routes[0]', line: 5, message: 'unresolved alias *nope: no anchor &nope before it (the anchor must be set before the alias)' }]);
  const bomb = 'a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n';
  const [issue] = issuesOf(bomb);
  assert.ok(issue && issue.line !== undefined && issue.line >= 2 && issue.line <= 4, JSON.stringify(issue));
  assert.match(issue.path, /^[bcd]\[\d\]$/);
  assert.match(issue.message, /^alias \*[abc]: too many YAML aliases \(more than 100 expansions\): write the values out$/);
  // an alias that resolves is fine, and the document parses the same again
  assert.deepEqual(issuesOf('services:\n  - &s {name: s, url: "http://127.0.0.1:9001"}\n  - {name: t, url: "http://127.0.0.1:9002"}\n'), []);
});

test('schema/turnpike.schema.json is current (npm run schema)', () => {
  const published = readFileSync('schema/turnpike.schema.json', 'utf8');
  assert.equal(published, schemaJson());
  const schema = JSON.parse(published);
  assert.equal(schema.additionalProperties, false);
  assert.ok(schema.properties.services.items.properties.routes);
});

test('turnpike hash-password prints a password_hash that basic-auth accepts', async () => {
  // (the two runs at once: a password, and none)
  const [r, empty] = await cliAll([{ args: ['hash-password'], input: 'pässword\n' }, { args: ['hash-password'], input: '' }]) as [CliResult, CliResult];
  assert.equal(r.status, 0, r.stderr);
  const hash = r.stdout.trim();
  assert.match(hash, /^scrypt\$16384\$8\$5\$/); // (OWASP's scrypt minimum, N=2^14 r=8 p=5)
  assert.ok(!hash.includes('pässword'));
  const { parseHash, verifyPassword } = await import('../src/plugins/basic-auth/hash.js');
  assert.equal(await verifyPassword('pässword', parseHash(hash)!), true);
  assert.equal(await verifyPassword('password', parseHash(hash)!), false);
  assert.equal(empty.status, 1);
});

test('docs/plugins.md is current (npm run schema)', () => {
  assert.equal(readFileSync('docs/plugins.md', 'utf8'), pluginsMarkdown());
});

test('turnpike validate: exit 0 for a valid file, 1 with path and line for errors', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'turnpike-validate-'));
  const good = join(dir, 'good.yaml');
  const bad = join(dir, 'bad.yaml');
  writeFileSync(good, base);
  writeFileSync(bad, base.replace('paths: [/x]', 'paths: [/x]\n        bogus: 1'));
  const [ok, ko, missing] = await cliAll([good, bad, join(dir, 'nope.yaml')].map((f) => ({ args: ['validate', '--config', f] }))) as [CliResult, CliResult, CliResult];
  assert.equal(ok.status, 0, ok.stderr);
  assert.match(ok.stdout, new RegExp(`${good}: valid`));
  assert.equal(ko.status, 1);
  assert.match(ko.stderr, /services\[0\]\.routes\[1\]\.bogus \(line 9\): unknown key "bogus"/);
  assert.equal(missing.status, 1);
  assert.match(missing.stderr, /cannot read/);
});

test('turnpike validate warns of a tls.client_crl past its nextUpdate (valid config that refuses every client certificate), with its path and line; exit 0', () => {
  const ca = makeCa('Validate CA');
  try {
    const server = ca.issue('api.test');
    const crl = ca.crl([], 'stale.pem', { nextUpdate: new Date(Math.floor(Date.now() / 1000) * 1000 - 3600_000) });
    const cfg = join(ca.dir, 'c.yaml');
    writeFileSync(cfg, `listen_tls: 127.0.0.1:0\ntls:\n  certificates: [{hosts: [api.test], cert: ${server.certFile}, key: ${server.keyFile}}]\n  client_ca: ${ca.certFile}\n  client_crl: ${crl}\nservices: []\n`);
    const r = spawnSync(process.execPath, ['bin/turnpike.js', 'validate', '--config', cfg], { encoding: 'utf8', timeout: 20_000 });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /valid/);
    assert.match(r.stderr, /warning: tls\.client_crl \(line 5\): .*stale\.pem has expired \(nextUpdate [0-9T:.-]+Z\): every client certificate of its issuer is refused \(CRL_HAS_EXPIRED\)/);
  } finally {
    ca.cleanup();
  }
});

test('a file the config names that is no regular file (a FIFO, /dev/zero, a directory) or is too large is a config error with its line, not a hung or exhausted process', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'turnpike-inputs-'));
  const fifo = join(dir, 'ca.fifo');
  assert.equal(spawnSync('mkfifo', [fifo]).status, 0, 'mkfifo');
  const big = join(dir, 'huge.yaml');
  writeFileSync(big, Buffer.alloc(65 * 1024 * 1024, 0x20));
  const cases: [string, RegExp][] = [
    [fifo, /is not a regular file/],
    ['/dev/zero', /is not a regular file/],
    [dir, /is not a regular file|EISDIR/],
    [big, /is larger than/],
  ];
  const cfgs = cases.map(([file], i) => {
    const cfg = join(dir, `c${i}.yaml`);
    writeFileSync(cfg, `services:\n  - name: s\n    url: https://127.0.0.1:9443\n    tls: {ca: ${file}}\n    routes: [{paths: [/]}]\n`);
    return cfg;
  });
  // The listener's own certificate and key too.
  const cfg = join(dir, 'l.yaml');
  writeFileSync(cfg, `listen_tls: 127.0.0.1:0\ntls:\n  certificates:\n    - {cert: ${fifo}, key: /dev/zero, hosts: [a.example]}\nservices: []\n`);
  // (in children, bounded, all at once: before, the FIFO's open waited for a writer for ever, /dev/zero was read until memory ran out)
  const results = await cliAll([...cfgs, cfg].map((f) => ({ args: ['validate', '--config', f] })));
  for (const [i, [file, why]] of cases.entries()) {
    const r = results[i]!;
    assert.equal(r.signal, null, `${file}: validate hung (${r.signal})`);
    assert.equal(r.status, 1, `${file}: ${r.stdout}${r.stderr}`);
    assert.match(r.stderr, /services\[0\]\.tls\.ca \(line 4\)/, file);
    assert.match(r.stderr, why, file);
  }
  const r = results[cases.length]!;
  assert.equal(r.signal, null, `listener certificate: validate hung (${r.signal})`);
  assert.equal(r.status, 1, r.stdout + r.stderr);
  assert.match(r.stderr, /tls\.certificates\[0\].*(line 4).*is not a regular file/);
});

test('every listen field takes a bare port (8080, "8080", an unquoted ${PORT}): 127.0.0.1, the default listen\'s host; anything else says host:port with examples', () => {
  const addresses = (yaml: string, env: NodeJS.ProcessEnv = {}) => {
    const snap = compile(parseConfigText(yaml, { env }), { pools: new PoolRegistry() });
    try {
      return { listen: snap.listen, admin: snap.admin?.listen, demo: snap.demo, tls: snap.tls?.listen, keda: snap.scaling?.keda && { host: snap.scaling.keda.host, port: snap.scaling.keda.port } };
    } finally {
      snap.dispose();
    }
  };
  const ca = makeCa();
  const leaf = ca.issue('localhost');
  const at = (port: number) => ({ host: '127.0.0.1', port });
  const all = (v: (n: number) => string, env: NodeJS.ProcessEnv = {}) => addresses(
    `listen: ${v(1)}\nlisten_tls: ${v(2)}\ntls: {certificates: [{hosts: [localhost], cert: ${leaf.certFile}, key: ${leaf.keyFile}}]}\nadmin:\n  listen: ${v(3)}\ndemo:\n  listen: ${v(4)}\nscaling:\n  keda:\n    listen: ${v(5)}\nservices: []\n`, env);
  const expected = { listen: at(18081), tls: at(18082), admin: at(18083), demo: at(18084), keda: at(18085) };
  assert.deepEqual(all((n) => String(18080 + n)), expected);
  assert.deepEqual(all((n) => `"${18080 + n}"`), expected);
  assert.deepEqual(all((n) => `\${P${n}}`, { P1: '18081', P2: '18082', P3: '18083', P4: '18084', P5: '18085' }), expected);
  assert.deepEqual(all((n) => `"\${P${n}}"`, { P1: '18081', P2: '18082', P3: '18083', P4: '18084', P5: '18085' }), expected);
  // (the other forms as before)
  assert.deepEqual(addresses('listen: "*:8080"\nadmin: {listen: "[::1]:8081"}\nservices: []\n'), { listen: { host: '0.0.0.0', port: 8080 }, admin: { host: '::1', port: 8081 }, demo: null, tls: undefined, keda: undefined });

  const expect = 'expected host:port to listen on, e.g. 127.0.0.1:8080, 0.0.0.0:8080 (every interface, as *:8080) or [::1]:8080; a bare port (8080) is 127.0.0.1:8080';
  for (const [yaml, path, shown] of [
    ['listen: true', 'listen', 'true'],
    ['listen: ":8080"', 'listen', '":8080"'],
    ['listen: 70000', 'listen', '70000'],
    ['listen: -1', 'listen', '-1'],
    ['listen: localhost', 'listen', '"localhost"'],
    ['admin: {listen: 80.5}', 'admin.listen', '80.5'],
    ['demo: {listen: [8080]}', 'demo.listen', '[8080]'],
    ['scaling: {keda: {listen: "9090x"}}', 'scaling.keda.listen', '"9090x"'],
  ] as const) {
    assert.deepEqual(configIssues(`${yaml}\nservices: []\n`), [{ path, line: 1, message: `invalid value ${shown}: ${expect}` }], yaml);
  }
  assert.deepEqual(configIssues('listen: "99999"\nservices: []\n'), [{ path: 'listen', line: 1, message: 'port 99999 is out of range' }]);
  assert.deepEqual(configIssues('demo: {listen: "99999"}\nservices: []\n'), [{ path: 'demo.listen', line: 1, message: 'port 99999 is out of range' }]);
});

test('turnpike start with `listen: ${PORT}` (unquoted, as a Kubernetes manifest has it) listens on 127.0.0.1:PORT', async () => {
  const [p, a] = [await freePort(), await freePort()];
  const dir = mkdtempSync(join(tmpdir(), 'turnpike-listen-port-'));
  const file = join(dir, 'c.yaml');
  writeFileSync(file, 'listen: ${PORT}\nadmin:\n  listen: ${ADMIN_PORT}\nservices: []\n');
  const run = startCli(['start', '--config', file], { PORT: String(p), ADMIN_PORT: String(a) });
  try {
    await eventually(() => / proxy on http:\/\//.test(run.stderr()) || run.child.exitCode !== null, 20_000, 20);
    assert.match(run.stderr(), new RegExp(` proxy on http://127\\.0\\.0\\.1:${p}, admin on http://127\\.0\\.0\\.1:${a}`));
    assert.equal((await request(`http://127.0.0.1:${a}/status`)).status, 200);
    assert.equal((await request(`http://127.0.0.1:${p}/nothing`)).status, 404);
    run.child.kill('SIGTERM');
    assert.equal(await run.exit, 0, run.stderr());
  } finally {
    run.child.kill('SIGKILL');
  }
});

test('consumer credentials no request can carry (a key or password with a trailing newline, from a Secret made --from-file) are refused at load, naming path and line; validate exits 1', () => {
  const cfg = (cred: string) => `services: []\nconsumers:\n  - name: alice\n    credentials:\n      - ${cred}\n`;
  const header = 'a header or query value cannot carry it';
  const basic = 'Basic credentials (RFC 7617) cannot carry it';
  for (const [cred, env, path, message] of [
    ['{type: key-auth, key: "${KEY}"}', { KEY: 'alice-key-0123\n' }, 'consumers[0].credentials[0].key', `ends with a newline: ${header}; trim the secret`],
    ['{type: key-auth, key: "alice-key-0123 "}', {}, 'consumers[0].credentials[0].key', `ends with a space: ${header}; trim the secret`],
    ['{type: key-auth, key: "\\talice-key-0123"}', {}, 'consumers[0].credentials[0].key', `starts with a tab: ${header}; trim the secret`],
    ['{type: key-auth, key: "alice\\u0000key-0123"}', {}, 'consumers[0].credentials[0].key', `contains the character U+0000: ${header}`],
    ['{type: basic-auth, username: alice, password: "${PASS}"}', { PASS: 'correct horse\n' }, 'consumers[0].credentials[0].password', `ends with a newline: ${basic}; trim the secret`],
    ['{type: basic-auth, username: "${USER}", password: pw}', { USER: 'alice\r\n' }, 'consumers[0].credentials[0].username', `ends with a newline: ${basic}; trim the secret`],
  ] as const) {
    assert.deepEqual(configIssues(cfg(cred), env), [{ path, line: 5, message }], cred);
  }
  // What a request can carry stays valid: a key with a space inside, a password with blanks at its ends (base64 carries them).
  assert.deepEqual(configIssues(cfg('{type: key-auth, key: "alice key 0123"}')), []);
  assert.deepEqual(configIssues(cfg('{type: basic-auth, username: alice, password: " pass word "}')), []);

  // The CLI: one line with path and line, the key itself never quoted.
  const dir = mkdtempSync(join(tmpdir(), 'turnpike-secret-nl-'));
  const file = join(dir, 'c.yaml');
  writeFileSync(file, cfg('{type: key-auth, key: "${ALICE_KEY}"}'));
  const r = spawnSync(process.execPath, ['bin/turnpike.js', 'validate', '--config', file], { encoding: 'utf8', env: { ...process.env, ALICE_KEY: 'alice-key-0123\n' } });
  assert.equal(r.status, 1, r.stdout + r.stderr);
  assert.match(r.stderr, /consumers\[0\]\.credentials\[0\]\.key \(line 5\): ends with a newline: a header or query value cannot carry it; trim the secret/);
  assert.doesNotMatch(r.stderr, /alice-key-0123/);
});

test('secrets sent as written that cannot go out (a composition step\'s bearer or basic credentials, an access_log http header with a file\'s last newline) are refused at load, naming path and line', () => {
  const step = (auth: string) => `routes:\n  - name: fx\n    paths: [/fx]\n    compose:\n      steps:\n        - name: rates\n          url: http://127.0.0.1:1/v1\n          auth: ${auth}\n`;
  const bearer = 'an Authorization: Bearer header cannot carry it';
  const basic = 'Basic credentials (RFC 7617) cannot carry it';
  const at = 'routes[0].compose.steps[0].auth';
  for (const [auth, env, path, message] of [
    ['{bearer: "${T}"}', { T: 'fx-token\n' }, `${at}.bearer`, `ends with a newline: ${bearer}; trim the secret`],
    ['{bearer: "${T}"}', { T: 'fx-token ' }, `${at}.bearer`, `ends with a space: ${bearer}; trim the secret`],
    ['{bearer: "fx token"}', {}, `${at}.bearer`, `contains a space: ${bearer}`],
    ['{basic: {username: u, password: "${P}"}}', { P: 'pass\r\n' }, `${at}.basic.password`, `ends with a newline: ${basic}; trim the secret`],
    ['{basic: {username: "${U}", password: p}}', { U: 'u\n' }, `${at}.basic.username`, `ends with a newline: ${basic}; trim the secret`],
  ] as const) {
    assert.deepEqual(configIssues(step(auth), env), [{ path, line: 8, message }], auth);
  }
  assert.deepEqual(configIssues(step('{basic: {username: u, password: " pass word "}}')), []);

  const log = (headers: string) => `services: []\naccess_log:\n  destination: http\n  url: http://127.0.0.1:1/logs\n  http_headers: ${headers}\n`;
  assert.deepEqual(configIssues(log('{authorization: "Bearer ${T}"}'), { T: 'log-token\n' }), [
    { path: 'access_log.http_headers.authorization', line: 5, message: 'ends with a newline: a header value cannot carry it; trim the secret' },
  ]);
  assert.deepEqual(configIssues(log('{x-api-key: "a\\u0000b"}')), [{ path: 'access_log.http_headers.x-api-key', line: 5, message: 'contains the character U+0000: a header value cannot carry it' }]);
  assert.deepEqual(configIssues(log('{authorization: "Bearer log-token"}')), []);
});

test('TURNPIKE_LOG_LEVEL: a level pino does not know is one line and exit 2 (no stack); case and surrounding blanks do not count', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'turnpike-loglevel-'));
  const file = join(dir, 'c.yaml');
  writeFileSync(file, 'listen: 127.0.0.1:0\nservices: []\n');
  const cli = ['bin/turnpike.js', 'start', '--config', file];
  const refused = [['verbose', 'verbose'], ['info debug', '"info debug"']] as const;
  const results = await cliAll(refused.map(([level]) => ({ args: cli.slice(1), env: { ...process.env, TURNPIKE_LOG_LEVEL: level } })));
  for (const [i, [level, shown]] of refused.entries()) {
    const r = results[i]!;
    assert.equal(r.signal, null, `${level}: hung`);
    assert.equal(r.status, 2, `${level}: ${r.stderr}`);
    assert.equal(r.stderr, `TURNPIKE_LOG_LEVEL=${shown}: use trace, debug, info, warn, error, fatal or silent\n`);
    assert.equal(r.stdout, '');
  }
  // (a value from a file keeps its newline: still the level it names)
  for (const level of [' WARN\n', '']) {
    const child = spawn(process.execPath, cli, { env: { ...process.env, TURNPIKE_LOG_LEVEL: level }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    const exit = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
    const end = Date.now() + 20_000;
    while (!/ proxy on http:\/\//.test(out) && child.exitCode === null && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
    child.kill('SIGTERM');
    assert.equal(await exit, 0, `${JSON.stringify(level)}: ${out}`);
    assert.match(out, / proxy on http:\/\//);
    // warn: the info lines are not there; unset: they are
    assert.equal(/"msg":"proxy listener up"/.test(out), level === '', out);
  }
});

test('turnpike CLI usage: no command is a usage error on stderr (2); help and --help print it on stdout (0); extra arguments are refused (2)', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'turnpike-usage-'));
  const good = join(dir, 'good.yaml');
  writeFileSync(good, base);
  const helps = [['help'], ['--help'], ['-h']];
  const extras = [['validate', '--config', good, 'extra'], ['validate', 'extra', '--config', good], ['start', '--config', good, 'extra'], ['hash-password', 'secret']];
  // (all at once)
  const results = await cliAll([[], ...helps, ...extras, ['validate', '--config', good]].map((args) => ({ args })));
  const none = results[0]!;
  assert.equal(none.status, 2);
  assert.equal(none.stdout, '');
  assert.match(none.stderr, /a command is needed/);
  assert.match(none.stderr, /Usage:/);
  for (const [i, args] of helps.entries()) {
    const r = results[1 + i]!;
    assert.equal(r.status, 0, `${args}: ${r.stderr}`);
    assert.match(r.stdout, /Usage:\n {2}turnpike start --config FILE/, String(args));
    assert.equal(r.stderr, '', String(args));
  }
  for (const [i, args] of extras.entries()) {
    const r = results[1 + helps.length + i]!;
    assert.equal(r.status, 2, `${args.join(' ')}: ${r.stdout}${r.stderr}`);
    assert.equal(r.stdout, '', args.join(' '));
    assert.match(r.stderr, new RegExp(`turnpike ${args[0]}: unexpected argument "(extra|secret)"`), args.join(' '));
  }
  assert.equal(results[1 + helps.length + extras.length]!.status, 0);
});

test('the configuration example in README.md is valid', () => {
  const readme = readFileSync('README.md', 'utf8');
  const start = readme.indexOf('    listen: 127.0.0.1:8080\n');
  assert.ok(start !== -1, 'README lost its config example');
  const lines: string[] = [];
  for (const line of readme.slice(start).split('\n')) {
    if (!line.startsWith('    ')) break;
    lines.push(line.slice(4));
  }
  const pools = new PoolRegistry();
  try {
    const hash = 'scrypt$16384$8$1$bUFeiyX4/rYjw6v0OLXolA==$X3YBnwZw4JUz4JFRADC1XPOGi04qFPwbZ+5LShzbV4w=';
    compile(parseConfigText(lines.join('\n'), { env: { ACME_KEY: 'a-long-enough-key', ACME_PASSWORD_HASH: hash } }), { pools }).dispose();
  } finally {
    void pools.closeAll();
  }
});

test('every whole config example in README.md and docs/ is valid (a missing certificate file aside): users copy them', () => {
  const hash = 'scrypt$16384$8$1$bUFeiyX4/rYjw6v0OLXolA==$X3YBnwZw4JUz4JFRADC1XPOGi04qFPwbZ+5LShzbV4w=';
  // Every ${VAR} is set: a secret-looking value, a password hash where one is asked for.
  const env = new Proxy({} as NodeJS.ProcessEnv, { get: (_t, k) => (typeof k === 'string' ? (k.endsWith('_HASH') ? hash : 'a-placeholder-value-long-enough-for-any-secret-0123456789') : undefined), has: () => true });
  const top = new Set(Object.keys((JSON.parse(schemaJson()) as { properties: Record<string, unknown> }).properties));
  const files = ['README.md', ...readdirSync('docs').filter((f) => f.endsWith('.md')).map((f) => join('docs', f))];
  let checked = 0;
  const wrong: string[] = [];
  for (const file of files) {
    const lines = readFileSync(file, 'utf8').split('\n');
    for (let i = 0; i < lines.length; i++) {
      const block: string[] = [];
      const at = i + 1;
      if (lines[i]!.startsWith('```')) {
        // A fenced block: a yaml one is read, any other skipped.
        const yaml = /^```ya?ml\s*$/.test(lines[i]!);
        for (i++; i < lines.length && !lines[i]!.startsWith('```'); i++) if (yaml) block.push(lines[i]!);
        if (!yaml) continue;
      } else if (lines[i]!.startsWith('    ') && (i === 0 || lines[i - 1]!.trim() === '')) {
        // An indented block (after a blank line).
        while (i < lines.length && (lines[i]!.startsWith('    ') || lines[i]!.trim() === '')) block.push(lines[i++]!.slice(4));
      } else continue;
      const text = block.join('\n');
      // Whole configs only: top-level settings and nothing else at the margin (not a JSON
      // answer, a shell session or a fragment), no placeholders (PORT, ...).
      const margin = block.filter((l) => l !== '' && !l.startsWith(' ') && !l.startsWith('#'));
      const keys = margin.map((l) => /^([a-z_0-9]+):/.exec(l)?.[1]);
      if (keys.length === 0 || !keys.every((k) => k !== undefined && top.has(k)) || new Set(keys).size < keys.length) continue; // (a key twice: alternatives)
      if (/\b(PORT|TLSPORT|UPSTREAM_PORT)\b|\.\.\./.test(text.replace(/(^|\s)#.*$/gm, ''))) continue;
      checked++;
      const pools = new PoolRegistry();
      try {
        compile(parseConfigText(text, { env }), { pools, storeOpened: true }).dispose();
      } catch (err) {
        if (!(err instanceof ConfigError)) throw err;
        const real = err.issues.filter((x) => !/cannot read|ENOENT/.test(x.message));
        if (real.length > 0) wrong.push(`${file}:${at}: ${real.map((x) => `${x.path}: ${x.message}`).join('; ')}`);
      } finally {
        void pools.closeAll();
      }
    }
  }
  assert.ok(checked >= 9, `only ${checked} examples found`);
  assert.deepEqual(wrong, []);
});

test('the TLS / HTTP/2 / WebSocket / gRPC example in README.md is valid (with real certificate files)', () => {
  const readme = readFileSync('README.md', 'utf8');
  const start = readme.indexOf('    listen_tls: 127.0.0.1:8443\n');
  assert.ok(start !== -1, 'README lost its protocols example');
  const lines: string[] = [];
  for (const line of readme.slice(start).split('\n')) {
    if (!line.startsWith('    ')) break;
    lines.push(line.slice(4));
  }
  const ca = makeCa();
  try {
    const api = ca.issue('api.example.com', { dns: ['api.example.com', '*.example.org'] });
    const client = ca.issue('client', { client: true });
    for (const [from, to] of [[api.certFile, 'api.pem'], [api.keyFile, 'api-key.pem'], [client.certFile, 'client.pem'], [client.keyFile, 'client-key.pem']] as const) copyFileSync(from, join(ca.dir, to));
    const pools = new PoolRegistry();
    try {
      compile(parseConfigText(lines.join('\n'), { env: { TLS_DIR: ca.dir } }), { pools }).dispose();
    } finally {
      void pools.closeAll();
    }
  } finally {
    ca.cleanup();
  }
});

test('resilience settings are checked with their paths and lines', () => {
  const issues = issuesOf(`services:
  - name: s
    upstream:
      targets: [{url: "http://127.0.0.1:1"}, {url: "http://127.0.0.1:1/"}]
      hash_on: header:x-user
      healthcheck:
        active: {path: /h, interval: 1s, timeout: 2s}
        passive: {ejection: 10s, max_ejection: 1s}
    timeouts: {response: 5s, total: 1s}
    circuit_breaker: {max_pending: 3}
`).map((i) => `${i.path} (line ${i.line}): ${i.message}`);
  assert.deepEqual(issues, [
    'services[0].upstream.targets[1].url (line 4): target http://127.0.0.1:1 is listed twice (give it a weight instead)',
    'services[0].upstream.healthcheck.active.timeout (line 7): must be between 1ms and the interval',
    'services[0].upstream.healthcheck.passive.max_ejection (line 8): must be at least the ejection time',
    'services[0].timeouts.total (line 9): must be at least timeouts.response (it bounds all attempts together)',
    'services[0].circuit_breaker (line 10): max_pending and max_wait need max_concurrent',
  ]);
  // One syntax error is reported once, not once per token after it.
  assert.ok(issuesOf('admin: {listen: 127.0.0.1:8081, token: ${X:-}}\nservices: []\n').length <= 6);
});

test('the fast YAML path (reload thread) gives the same object as the full parser, or steps aside', () => {
  const same = [
    base,
    `listen: 127.0.0.1:8080\nworkers: 2\nservices:\n  - name: a\n    upstream:\n      targets: [{url: "http://10.0.0.1:1", weight: 2}, {url: 'http://b.internal:2'}]\n      balancer: consistent-hash\n      hash_on: "header:x-user"\n    retry_on: [connect-error, 502]\n    routes:\n      - {paths: ["/a/{id}"], hosts: ["*.example.com"], methods: [GET]}  # a comment\n      - paths: [/b]\n        headers: {x-v: ["1", "2"]}\n`,
    `{"services": [{"name": "j", "url": "http://127.0.0.1:1", "routes": [{"paths": ["/j"]}]}]}`,
    `services:\n  - name: big\n    url: http://127.0.0.1:1\n    routes:\n${Array.from({ length: 500 }, (_, i) => `      - {name: r${i}, paths: ["/r/${i}/{id}"]}`).join('\n')}\n`,
  ];
  for (const text of same) {
    const fast = fastValidConfig(text);
    assert.ok(fast, `fast path refused:\n${text.slice(0, 200)}`);
    assert.deepEqual(fast, parseConfigText(text, { env: {} }).config);
  }
  const aside = [
    'services:\n  - name: s\n    url: ${U}\n', // env substitution
    'x: &a {listen: "127.0.0.1:1"}\nservices: []\n', // anchor
    'services:\n  - &s {name: s, url: "http://a"}\n  - *s\n', // alias
    'services: !!seq []\n', // explicit tag
    'services: []\nservices: []\n', // duplicate key
    'services:\n  - name: s\n    urll: http://x\n', // schema error
    'listen: [unclosed\n', // syntax error
    'a: 1\n', // unknown key
    // numbers js-yaml reads and `yaml` does not (a reload must agree with validate and startup)
    'services:\n  - name: s\n    url: http://127.0.0.1:1\n    plugins: [{name: rate-limit, config: {limit: 0b10, window: 1m}}]\n',
    'services:\n  - name: s\n    url: http://127.0.0.1:1\n    plugins: [{name: rate-limit, config: {limit: 1_000, window: 1m}}]\n',
    // a sign before 0x / 0o: js-yaml 16, `yaml` the string "+0x10" (a reload took what validate refuses)
    'timeouts: {keepalive: +0x10}\n',
    'limits: {max_headers: +0o17}\n',
  ];
  for (const text of aside) assert.equal(fastValidConfig(text), undefined, text);
});

test('reference forms the gateway does not do (${VAR-x}, ${VAR:?msg}) are errors naming the path, not literal text', () => {
  for (const ref of ['${ADMIN_TOKEN-please-change-me}', '${ACME_KEY:?set it}', '${1}']) {
    let message = '';
    try {
      parseConfigText(`admin: {listen: 127.0.0.1:0, token: "${ref}"}\nservices: []\n`, { env: {} });
    } catch (err) {
      message = (err as Error).message;
    }
    assert.match(message, /admin\.token \(line 1\): unsupported reference/, ref);
  }
  // The supported forms and the escape still work.
  const ok = parseConfigText('admin: {listen: 127.0.0.1:0, token: "$${LITERAL}-${T:-default-token-0123456}"}\nservices: []\n', { env: {} });
  assert.equal((ok.config as { admin: { token: string } }).admin.token, '${LITERAL}-default-token-0123456');
});

test('a value from ${VAR} never shows in a config error (it may be a secret): the reference does', () => {
  const env = { UPSTREAM: 'AKIA-super-secret-value', REDIS: 'redis//:hunter2-pass@10.0.0.1:6379' };
  for (const text of [
    'services:\n  - name: s\n    url: "${UPSTREAM}"\n',
    'redis: "${REDIS}"\nservices: []\n',
  ]) {
    let message = '';
    try {
      parseConfigText(text, { env });
    } catch (err) {
      message = (err as Error).message;
    }
    assert.ok(message !== '', `no error for ${text}`);
    assert.doesNotMatch(message, /super-secret|hunter2/, message);
    assert.match(message, /\$\{(UPSTREAM|REDIS)\}/, message);
  }
});

test("issue 3's contract validates as written (hash_on next to round-robin is allowed and unused)", () => {
  const contract = `workers: auto                          # or a number
services:
  - name: orders
    upstream:
      targets: [{url: http://10.0.0.1:9001, weight: 2}, {url: http://10.0.0.2:9001}]
      balancer: round-robin            # least-connections | consistent-hash | latency
      hash_on: header:x-user-id           # for consistent-hash
      healthcheck:
        active: {path: /healthz, interval: 5s, healthy: 2, unhealthy: 3}
        passive: {failures: 3, ejection: 30s}
    retries: 2
    retry_on: [connect-error, 502, 503, timeout]
    circuit_breaker: {max_concurrent: 1000, max_pending: 100}
`;
  const pools = new PoolRegistry();
  try {
    const snap = compile(parseConfigText(contract, { env: {} }), { pools, cores: 4 });
    const s = snap.services[0]!;
    assert.equal(snap.workers, 4);
    assert.equal(s.balancerName, 'round-robin');
    assert.equal(s.hashOn, null);
    assert.deepEqual(s.targets.map((t) => t.weight), [2, 1]);
    assert.deepEqual(s.retryOn, { connectError: true, timeout: true, reset: false, statuses: new Set([502, 503]) });
    assert.deepEqual(s.bulkhead, { maxConcurrent: 250, maxPending: 25, maxWait: 1000 }); // per worker: 4 workers
    assert.equal(s.health.active?.interval, 5000);
    assert.equal(s.health.passive?.ejection, 30000);
    snap.dispose();
  } finally {
    void pools.closeAll();
  }
});

test('durations that run timers are at most 24d (setTimeout turns longer ones into 1 ms: a 30d probe interval probed in a loop)', () => {
  const long = issuesOf(`dns: {refresh: 25d, min_ttl: 25d}
services:
  - name: s
    timeouts: {read: 30d}
    upstream:
      targets: [{url: "http://127.0.0.1:9001"}]
      healthcheck:
        active: {path: /health, interval: 30d}
        passive: {failures: 1, ejection: 30d}
    circuit_breaker: {open_for: 2147483648}
`);
  assert.deepEqual(long.map((i) => i.path).sort(), [
    'dns.min_ttl', 'dns.refresh', 'services[0].circuit_breaker.open_for', 'services[0].timeouts.read',
    'services[0].upstream.healthcheck.active.interval', 'services[0].upstream.healthcheck.passive.ejection',
  ]);
  for (const i of long) assert.match(i.message, /at most 24d/);
  // 24d and longer non-timer durations (hsts, quotas) are fine.
  assert.deepEqual(issuesOf(`services:\n  - name: s\n    upstream:\n      targets: [{url: "http://127.0.0.1:9001"}]\n      healthcheck: {active: {path: /h, interval: 24d}}\n`), []);
});

test('a health probe Host with line breaks or spaces is a config error (it made every probe fail silently)', () => {
  const bad = issuesOf('services:\n  - name: s\n    upstream:\n      targets: [{url: "http://127.0.0.1:9001"}]\n      healthcheck: {active: {path: /h, host: "a\\r\\nX-Evil: 1"}}\n');
  assert.equal(bad[0]?.path, 'services[0].upstream.healthcheck.active.host');
  assert.deepEqual(issuesOf('services:\n  - name: s\n    upstream:\n      targets: [{url: "http://127.0.0.1:9001"}]\n      healthcheck: {active: {path: /h, host: "api.internal:8443"}}\n'), []);
});

test('a plan named like an Object.prototype member (toString, constructor, hasOwnProperty) is an unknown plan, with path and line', () => {
  const plans = 'plans:\n  gold: {services: [orders]}\n';
  for (const name of ['toString', 'constructor', 'hasOwnProperty', '__proto__']) {
    const issues = issuesOf(base + plans + `consumers:\n  - name: acme\n    plan: ${name}\n`);
    assert.equal(issues.length, 1, `${name}: ${JSON.stringify(issues)}`);
    assert.deepEqual([issues[0]!.path, issues[0]!.line, issues[0]!.message], ['consumers[0].plan', 13, `unknown plan "${name}"`]);
  }
  const portal = issuesOf(base + plans + 'portal:\n  enabled: true\n  accounts:\n    enabled: true\n    default_plan: valueOf\n    plans: [gold, toString]\n');
  assert.deepEqual(portal.map((i) => [i.path, i.message]), [
    ['portal.accounts.default_plan', 'unknown plan "valueOf"'],
    ['portal.accounts.plans[1]', 'unknown plan "toString"'],
  ]);
  // a plan really named so is fine
  assert.deepEqual(issuesOf(base + 'plans:\n  toString: {services: [orders]}\nconsumers:\n  - name: acme\n    plan: toString\n'), []);
});

test('a key given twice names the key, its path, line and column (a one-line JSON file too), not only "Map keys must be unique"', () => {
  const yamlDup = issuesOf(base + 'plans:\n  gold: {services: [orders]}\n  gold: {services: [orders]}\n');
  assert.equal(yamlDup.length, 1, JSON.stringify(yamlDup));
  assert.deepEqual([yamlDup[0]!.path, yamlDup[0]!.line], ['plans.gold', 11]);
  assert.match(yamlDup[0]!.message, /^duplicate key "gold" \(column 3\)/);
  const jsonDup = issuesOf('{"services": [{"name": "s", "url": "http://127.0.0.1:1", "name": "t"}]}');
  assert.deepEqual([jsonDup[0]!.path, jsonDup[0]!.line], ['services[0].name', 1]);
  assert.match(jsonDup[0]!.message, /^duplicate key "name" \(column 58\)/);
});

test('a map keyed by names (plans, a route\'s match headers, response-transform status) refuses a key that is no such name, with path and line; its value is not left unchecked', () => {
  // a plan name outside the pattern skipped the plan's own schema: plugins: 5 then threw a TypeError in validate / reload
  const plan = issuesOf(base + 'plans:\n  -bad: {plugins: 5}\n');
  assert.deepEqual(plan.map((i) => [i.path, i.line]), [['plans["-bad"]', 10]]);
  assert.match(plan[0]!.message, /^invalid key "-bad" \(must match /);
  assert.deepEqual(issuesOf(base + 'plans:\n  "a b": {services: 5}\n').map((i) => i.path), ['plans["a b"]']);
  const header = issuesOf(base.replace('paths: [/x]', 'paths: [/x]\n        headers: {"x y": 5}'));
  assert.deepEqual(header.map((i) => [i.path, i.line]), [['services[0].routes[1].headers["x y"]', 9]]);
  const status = issuesOf(base.replace('paths: [/x]', 'paths: [/x]\n        plugins: [{name: response-transform, config: {status: {"999": "x"}}}]'));
  assert.equal(status.length, 1, JSON.stringify(status));
  assert.match(status[0]!.message, /invalid key "999"/);
  assert.deepEqual(issuesOf(base + 'plans:\n  gold.v2: {services: [orders]}\n'), []);
});

test('name-keyed maps refuse an empty key (query edits, jwt claims, compose query) and exporter headers a field name or value that cannot be sent', () => {
  const at = (yaml: string) => issuesOf(yaml).map((i) => [i.path, i.message]);
  const svc = 'services:\n  - name: s\n    url: http://127.0.0.1:1\n';
  assert.deepEqual(at(svc + '    plugins: [{name: request-transform, config: {query: {set: {"": a}, rename: {"": b}}}}]\n'), [
    ['services[0].plugins[0].config.query.rename[""]', 'an empty key ""'],
    ['services[0].plugins[0].config.query.set[""]', 'an empty key ""'],
  ]);
  assert.deepEqual(at('routes:\n  - name: r\n    paths: [/r]\n    compose:\n      steps:\n        - {name: a, url: "http://127.0.0.1:1/x", query: {"": 1}}\n'), [['routes[0].compose.steps[0].query[""]', 'an empty key ""']]);
  assert.deepEqual(at(svc + '    plugins: [{name: jwt, config: {jwks_url: "http://127.0.0.1:1/j", claims: {"": a}}}]\n'), [['services[0].plugins[0].config.claims[""]', 'an empty key ""']]);
  assert.deepEqual(at(svc + '    plugins: [{name: jwt, config: {jwks_url: "http://127.0.0.1:1/j", claims: {"https://x/roles": a}}}]\n'), []);
  const tracing = at('tracing: {endpoint: "http://127.0.0.1:1/v1/traces", headers: {"a b": x}}\n' + svc);
  assert.deepEqual(tracing.map(([p]) => p), ['tracing.headers["a b"]']);
  assert.match(tracing[0]![1]!, /^invalid key "a b"/);
  // a value that cannot go out is named, not quoted (it is a token)
  assert.deepEqual(at('tracing: {enabled: true, endpoint: "http://127.0.0.1:1/v1/traces", headers: {authorization: "Bearer abc\\n"}}\n' + svc), [['tracing.headers.authorization', 'ends with a newline: a header value cannot carry it; trim the secret']]);
  assert.deepEqual(at('access_log: {destination: http, url: "http://127.0.0.1:1/", http_headers: {"": x}}\n' + svc), [['access_log.http_headers[""]', 'an empty key ""']]);
  assert.deepEqual(at('tracing: {endpoint: "http://127.0.0.1:1/v1/traces", headers: {authorization: "Bearer a b"}}\n' + svc), []);
});

test('a config file that is not UTF-8 (Latin-1 from an old editor, UTF-16) is an error naming its line, not values with U+FFFD in them; a BOM is fine', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'turnpike-encoding-'));
  // admin.token in Latin-1: "pässwörd-for-the-admin" (0xE4, 0xF6), silently "p\uFFFDssw\uFFFDrd..." before.
  const latin1 = join(dir, 'latin1.yaml');
  writeFileSync(latin1, Buffer.concat([Buffer.from(base + 'admin:\n  token: "p'), Buffer.from([0xe4]), Buffer.from('ssw'), Buffer.from([0xf6]), Buffer.from('rd-for-the-admin"\n')]));
  // UTF-16 (Windows' "Unicode"), with its BOM.
  const utf16 = join(dir, 'utf16.yaml');
  writeFileSync(utf16, Buffer.concat([Buffer.from([0xff, 0xfe]), Buffer.from(base, 'utf16le')]));
  // A UTF-8 BOM (Notepad) and non-ASCII text are valid.
  const bom = join(dir, 'bom.yaml');
  writeFileSync(bom, '\uFEFF' + base + 'admin:\n  token: "pässwörd-for-the-admin"\n');
  const [ko, ko16, ok] = await cliAll([latin1, utf16, bom].map((f) => ({ args: ['validate', '--config', f] }))) as [CliResult, CliResult, CliResult];
  assert.equal(ko.status, 1, ko.stderr);
  assert.match(ko.stderr, /\(file\) \(line 10\): .*not valid UTF-8/);
  assert.match(ko.stderr, /column 12/);
  assert.ok(!ko.stderr.includes('\uFFFD'), ko.stderr);
  assert.equal(ko16.status, 1, ko16.stderr);
  assert.match(ko16.stderr, /UTF-16/);
  assert.equal(ok.status, 0, ok.stderr);
});

test('turnpike start --config "" (a script\'s unset $CONFIG) is a usage error (2), not a gateway with no file, no routes and a new turnpike.db; validate too', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'turnpike-empty-flag-'));
  const argv = [['start', '--config', ''], ['start', '--config='], ['start', '-c', ''], ['validate', '--config', '']];
  const results = await cliAll(argv.map((args) => ({ args, cwd: dir })));
  for (const [i, args] of argv.entries()) {
    const r = results[i]!;
    assert.equal(r.status, 2, `${args.join(' ')}: ${r.stdout}${r.stderr}`);
    assert.match(r.stderr, /--config: the file name is empty/, args.join(' '));
  }
  assert.ok(!existsSync(join(dir, 'turnpike.db')), 'a store was created');
});

test('an upstream URL whose host is no host name (a quote, braces: WHATWG URL lets them through) is a config error naming the path; the access log and metrics write origins unescaped', () => {
  for (const url of ['http://a"b:1/', 'http://a{b}/', "http://it's:80"]) {
    const issues = issuesOf(`services: [{name: a, url: '${url.replace(/'/g, "''")}', routes: [{paths: [/a]}]}]\n`);
    assert.equal(issues.length, 1, `${url}: ${JSON.stringify(issues)}`);
    assert.equal(issues[0]!.path, 'services[0].url');
    assert.match(issues[0]!.message, /not a host name/);
  }
  for (const url of ['http://my_svc.ns.svc.cluster.local:8080', 'http://[::1]:9', 'http://127.0.0.1:1', 'http://xn--bcher-kva.example', 'http://bücher.example', 'http://host.example./x']) {
    assert.deepEqual(issuesOf(`services: [{name: a, url: '${url}', routes: [{paths: [/a]}]}]\n`), [], url);
  }
});

test('limits and http2 sizes past what the HTTP parsers take are config errors with path and line (validate said valid; the listener did not start, or the first h2 client crashed the gateway)', () => {
  const bad = issuesOf(`listen: 127.0.0.1:0
limits:
  max_uri_length: 99999999999999999999999
  max_header_size: 2gb
http2:
  h2c: true
  max_header_list_size: 5gb
`);
  assert.deepEqual(bad.map((i) => [i.path, i.line]), [['limits.max_uri_length', 3], ['limits.max_header_size', 4], ['http2.max_header_list_size', 7]]);
  assert.match(bad[0]!.message, /at most 1gb/);
  assert.match(bad[2]!.message, /at most 4294967295/);
  // The largest values still load.
  assert.deepEqual(issuesOf('limits: {max_uri_length: 1gb, max_header_size: 1gb}\nhttp2: {max_header_list_size: 4294967295}\n'), []);
});

test('an unquoted ${VAR} inside a flow collection (the contract\'s `- {type: key-auth, key: ${ACME_KEY}}`) loads: it was a YAML syntax error', async () => {
  const { rawDocument } = await import('../src/config/stores/document.js');
  const text = `plugins: [{name: key-auth}]
consumers:
  - name: acme
    groups: [partners]
    credentials:
      - {type: key-auth, key: \${ACME_KEY}}
services:
  - {name: s, url: "http://127.0.0.1:1", retries: \${RETRIES}, routes: [{paths: [\${P:-/orders}], tags: [$\${literal}]}]}
`;
  const env = { ACME_KEY: 'k-0123456789abcdef', RETRIES: '2' };
  const loaded = parseConfigText(text, { env });
  assert.deepEqual(loaded.config.consumers![0]!.credentials, [{ type: 'key-auth', key: 'k-0123456789abcdef' }]);
  const svc = loaded.config.services![0]!;
  assert.equal(svc.retries, 2); // (unquoted: typed, as in block style)
  assert.deepEqual(svc.routes![0]!.paths, ['/orders']);
  assert.deepEqual(svc.routes![0]!.tags, ['${literal}']);
  assert.deepEqual(issuesOf(text, env), []);
  // Lines and columns stay those of the file.
  assert.deepEqual(issuesOf(text.replace('retries: ${RETRIES}', 'retries: ${RETRIES}, retrys: 1'), env).map((i) => [i.path, i.line]), [['services[0].retrys', 8]]);
  assert.throws(() => parseConfigText('consumers: [{name: \${N}, name: b}]\n', { env: { N: 'a' } }), (e: ConfigError) =>
    e.issues.length === 1 && e.issues[0]!.path === 'consumers[0].name' && e.issues[0]!.line === 1 && /duplicate key "name" \(column 26\)/.test(e.issues[0]!.message));
  // As written in a store (the reference kept) and an unset variable named with its line.
  assert.deepEqual((rawDocument(text, env).consumers as { credentials: unknown[] }[])[0]!.credentials, [{ type: 'key-auth', key: '${ACME_KEY}' }]);
  assert.deepEqual(issuesOf(text, { RETRIES: '2' }).map((i) => [i.path, i.line]), [['consumers[0].credentials[0].key', 6]]);
  // A real syntax error is still reported as one.
  assert.equal(issuesOf('services: [{name: \${N}\nx: 1\n', { N: 'a' })[0]!.path, '(syntax)');
});

test('an admin API YAML body takes an unquoted ${VAR} inside a flow collection as a config file does (turnpike config apply sends the file as written)', () => {
  const body = parseYaml(Buffer.from('consumers:\n  - name: acme\n    credentials:\n      - {type: key-auth, key: ${ACME_KEY}}\n')) as { consumers: { credentials: unknown[] }[] };
  // (stored as written: the reference, not the value)
  assert.deepEqual(body.consumers[0]!.credentials, [{ type: 'key-auth', key: '${ACME_KEY}' }]);
  assert.throws(() => parseYaml(Buffer.from('consumers: [{name: a\n')), (e: unknown) => e instanceof ApiError && /line 2/.test(e.message));
});

test('a text field given an unquoted ${VAR} whose value reads as a number (a digits-only key or password) says so and how to quote it, not only "expected string"', () => {
  const text = 'plugins: [{name: basic-auth}]\nconsumers:\n  - name: acme\n    credentials:\n      - type: basic-auth\n        username: ${U}\n        password: ${P}\nservices:\n  - {name: s, url: "http://127.0.0.1:1", retries: ${R}}\n';
  // (credentials are checked by their plugin's schema, at compile)
  const issues = issuesOf(text, { U: 'true', P: '98765432109876543210', R: '2' });
  assert.deepEqual(issues.map((i) => [i.path, i.line]), [['consumers[0].credentials[0].username', 6], ['consumers[0].credentials[0].password', 7]]);
  assert.match(issues[0]!.message, /^expected string \(\$\{U\} is unquoted, so its value was read as a boolean: write "\$\{U\}" to keep it text\)$/);
  assert.match(issues[1]!.message, /\$\{P\} is unquoted, so its value was read as a number: write "\$\{P\}"/);
  // A secret's schema error quotes no value, and gets the hint too.
  const token = issuesOf('admin: {listen: "127.0.0.1:0", token: ${T}}\n', { T: '12345678901234567890' });
  assert.deepEqual(token.map((i) => i.path), ['admin.token']);
  assert.match(token[0]!.message, /\$\{T\} is unquoted, so its value was read as a number/);
  // A number field out of range: nothing to quote.
  const retries = issuesOf(text, { U: 'u', P: 'p', R: '99' });
  assert.deepEqual(retries.map((i) => i.path), ['services[0].retries']);
  assert.doesNotMatch(retries[0]!.message, /unquoted/);
  // Quoted, it loads.
  assert.deepEqual(issuesOf(text.replace('${U}', '"${U}"').replace('${P}', '"${P}"'), { U: 'true', P: '98765432109876543210', R: '2' }), []);
});

test('a file of two YAML documents (a --- line after the config, two files concatenated) names the line of the second and says one is allowed, not yaml\'s "use YAML.parseAllDocuments()"', () => {
  const issues = issuesOf('services:\n  - name: s\n    url: http://127.0.0.1:1\n---\nservices: []\n');
  assert.deepEqual(issues.map((i) => [i.path, i.line]), [['(syntax)', 4]]);
  assert.match(issues[0]!.message, /a second YAML document starts here .*a config file holds one document/);
  assert.doesNotMatch(issues[0]!.message, /parseAllDocuments/);
  // A leading --- and a closing ... are one document.
  assert.deepEqual(issuesOf('---\nservices: []\n...\n'), []);
});

test('a YAML merge key (<<: *defaults, as in docker-compose files) is an error saying so, with path and line, not `unknown key "<<"` (nor, in a plugin\'s config, a key); the reload thread agrees', () => {
  const service = 'services:\n  - &a {name: a, url: "http://127.0.0.1:1", timeouts: {connect: 1s}}\n  - name: b\n    <<: *a\n';
  const inPlugin = 'services:\n  - name: a\n    url: http://127.0.0.1:1\n    plugins:\n      - name: rate-limit\n        config:\n          <<: {limit: 1}\n          window: 1m\n';
  for (const [text, path, line] of [[service, 'services[1]["<<"]', 4], [inPlugin, 'services[0].plugins[0].config["<<"]', 7]] as const) {
    const issues = issuesOf(text);
    assert.deepEqual(issues.map((i) => [i.path, i.line]), [[path, line]]);
    assert.match(issues[0]!.message, /a YAML merge key \(<<: \*anchor\) is not supported/);
    assert.equal(fastValidConfig(text), undefined);
  }
  // A quoted "<<" is a key as written (a plugin's free-form map may have it).
  assert.doesNotMatch(issuesOf('plugins:\n  - name: request-transform\n    config: {"<<": 1}\n').map((i) => i.message).join(), /merge key/);
});

test('a service timeout of 0 (response, read, total: read as "no timeout" by habit) is an error with path and line: a 0 ms timer 504ed every request or cut every streamed response', () => {
  const issues = issuesOf('services:\n  - name: s\n    url: http://127.0.0.1:1\n    timeouts:\n      response: 0\n      read: 0s\n      total: 0.4ms\n');
  assert.deepEqual(issues.map((i) => [i.path, i.line]), [['services[0].timeouts.response', 5], ['services[0].timeouts.read', 6], ['services[0].timeouts.total', 7]]);
  for (const i of issues) assert.match(i.message, /must be at least 1ms/);
  // One message for a total of 0 under a response timeout.
  assert.deepEqual(issuesOf('services:\n  - name: s\n    url: http://127.0.0.1:1\n    timeouts: {response: 30s, total: 0}\n').map((i) => [i.path, i.message.slice(0, 22)]), [['services[0].timeouts.total', 'must be at least 1ms: ']]);
  assert.deepEqual(issuesOf('services:\n  - name: s\n    url: http://127.0.0.1:1\n    timeouts: {response: 1ms, read: 1, total: 24d}\n'), []);
});

test('a YAML 1.1 boolean (yes, no, on, off) where a boolean goes says it is text in YAML 1.2 and what to write, in the config and in a plugin\'s config', () => {
  const issues = issuesOf('watch: yes\nhttp2: {h2c: off}\nplugins:\n  - name: cors\n    config: {origins: ["*"], credentials: No}\n');
  assert.deepEqual(issues.map((i) => [i.path, i.line, i.message]), [
    ['watch', 1, 'expected boolean (yes is text in YAML 1.2, which the config is read as: write true)'],
    ['http2.h2c', 2, 'expected boolean (off is text in YAML 1.2, which the config is read as: write false)'],
  ]);
  const plugin = issuesOf('plugins:\n  - name: cors\n    config: {origins: ["*"], credentials: No}\n');
  assert.deepEqual(plugin.map((i) => [i.path, i.line, i.message]), [['plugins[0].config.credentials', 3, 'expected boolean (No is text in YAML 1.2, which the config is read as: write false)']]);
  // Other text gets no hint.
  assert.deepEqual(issuesOf('watch: maybe\n').map((i) => i.message), ['expected boolean']);
});

test('redis.timeout of 0 or past 24d is a config error (each Redis call ran on a 1 ms timer: every limit fell to its fault)', () => {
  const svc = 'services:\n  - name: s\n    url: http://127.0.0.1:9001\n';
  assert.deepEqual(configIssues(`redis: {url: "redis://127.0.0.1:6379", timeout: 30d}\n${svc}`), [
    { path: 'redis.timeout', line: 1, message: 'must be at most 24d (2147483647 ms, the longest timer)' },
  ]);
  assert.deepEqual(configIssues(`redis:\n  url: redis://127.0.0.1:6379\n  timeout: 0\n${svc}`), [{ path: 'redis.timeout', line: 3, message: 'must be at least 1ms' }]);
  assert.deepEqual(configIssues(`redis: {url: "redis://127.0.0.1:6379", timeout: 24d}\n${svc}`), []);
  assert.deepEqual(configIssues(`redis: {url: "redis://127.0.0.1:6379", timeout: 1}\n${svc}`), []);
});

test('jwt and oauth2-introspection: a timeout of 0 or past 24d is a config error (each IdP call was aborted at once: every token refused)', () => {
  const svc = 'services:\n  - name: s\n    url: http://127.0.0.1:9001\n    plugins:\n';
  const jwt = (t: string) => `${svc}      - name: jwt\n        config: {jwks_url: "http://127.0.0.1:1/j", timeout: ${t}}\n`;
  const intro = (t: string) => `${svc}      - name: oauth2-introspection\n        config: {introspection_url: "http://127.0.0.1:1/i", client_id: a, client_secret: b, timeout: ${t}}\n`;
  const long = 'must be at most 24d (2147483647 ms, the longest timer)';
  assert.deepEqual(configIssues(jwt('30d')), [{ path: 'services[0].plugins[0].config.timeout', line: 6, message: long }]);
  assert.deepEqual(configIssues(jwt('0ms')), [{ path: 'services[0].plugins[0].config.timeout', line: 6, message: 'must be at least 1ms' }]);
  assert.deepEqual(configIssues(intro('2147483648')), [{ path: 'services[0].plugins[0].config.timeout', line: 6, message: long }]);
  assert.deepEqual(configIssues(intro('0')), [{ path: 'services[0].plugins[0].config.timeout', line: 6, message: 'must be at least 1ms' }]);
  assert.deepEqual(configIssues(jwt('24d')), []);
  assert.deepEqual(configIssues(intro('1ms')), []);
});

test('analytics.publish_interval and access_log.flush_interval past 24d are config errors (the timer fired after 1 ms: analytics published to Redis in a loop)', () => {
  const svc = 'services:\n  - name: s\n    url: http://127.0.0.1:9001\n';
  const long = 'must be at most 24d (2147483647 ms, the longest timer)';
  assert.deepEqual(configIssues(`analytics: {publish_interval: 30d}\n${svc}`), [{ path: 'analytics.publish_interval', line: 1, message: long }]);
  assert.deepEqual(configIssues(`access_log:\n  destination: http\n  url: http://127.0.0.1:9002/logs\n  flush_interval: 2147483648\n${svc}`), [{ path: 'access_log.flush_interval', line: 4, message: long }]);
  assert.deepEqual(configIssues(`analytics: {publish_interval: 24d}\naccess_log: {destination: http, url: "http://127.0.0.1:9002/logs", flush_interval: 24d}\n${svc}`), []);
});

test('portal.accounts: a session_ttl under 1s ("0s": a cookie of Max-Age=0, no login kept) and a verification timeout of "0s" (no verification hook call ever went out) are errors with path and line', () => {
  const portal = (acc: string) => `services:\n  - name: s\n    url: http://127.0.0.1:9001\nportal:\n  enabled: true\n  accounts:\n    enabled: true\n${acc}`;
  const hook = (t: string) => `    verification: {url: "http://127.0.0.1:9002/hook", link_base: "https://dev.example.com", timeout: ${t}}\n`;
  assert.deepEqual(configIssues(portal('    session_ttl: 0s\n')), [{ path: 'portal.accounts.session_ttl', line: 8, message: 'must be at least 1s (the login cookie\'s Max-Age is whole seconds)' }]);
  assert.deepEqual(configIssues(portal('    session_ttl: 999ms\n')).map((i) => i.path), ['portal.accounts.session_ttl']);
  assert.deepEqual(configIssues(portal(hook('0s'))), [{ path: 'portal.accounts.verification.timeout', line: 8, message: 'must be at least 1ms' }]);
  assert.deepEqual(configIssues(portal(`    session_ttl: 1s\n${hook('1ms')}`)), []);
  assert.deepEqual(configIssues(portal('    session_ttl: 400d\n')), []);
});

test('timeouts.client_header, client_body and keepalive of 0 are errors with path and line: node:http reads 0 as no timeout (a slow or idle client held its connection forever)', () => {
  const svc = 'services:\n  - name: s\n    url: http://127.0.0.1:9001\n';
  const why = 'must be at least 1ms: 0 is no timeout at all (a client may hold a connection open forever)';
  assert.deepEqual(configIssues(`timeouts:\n  client_header: 0\n  client_body: 0s\n  keepalive: 0ms\n${svc}`), [
    { path: 'timeouts.client_header', line: 2, message: why },
    { path: 'timeouts.client_body', line: 3, message: why },
    { path: 'timeouts.keepalive', line: 4, message: why },
  ]);
  assert.deepEqual(configIssues(`timeouts: {client_header: 1, client_body: 1ms, keepalive: 1ms, drain: 0, shutdown_delay: 0}\n${svc}`), []);
});

test('http2.idle_timeout, http2.reset_window and tls.handshake_timeout of 0 are errors with path and line (no idle limit, no rapid-reset count, node\'s 120 s)', () => {
  const svc = 'services:\n  - name: s\n    url: http://127.0.0.1:9001\n';
  assert.deepEqual(configIssues(`http2:\n  idle_timeout: 0\n  reset_window: 0s\n${svc}`), [
    { path: 'http2.idle_timeout', line: 2, message: 'must be at least 1ms: 0 is no timeout at all (an idle HTTP/2 connection is held forever)' },
    { path: 'http2.reset_window', line: 3, message: 'must be at least 1ms: 0 restarts the count of reset streams every millisecond (no rapid-reset protection)' },
  ]);
  assert.deepEqual(configIssues(`http2: {idle_timeout: 1ms, reset_window: 1}\n${svc}`), []);
  const ca = makeCa();
  try {
    const leaf = ca.issue('localhost');
    const tls = (t: string) => `listen_tls: 127.0.0.1:0\ntls:\n  certificates: [{hosts: [localhost], cert: ${leaf.certFile}, key: ${leaf.keyFile}}]\n  handshake_timeout: ${t}\n${svc}`;
    assert.deepEqual(configIssues(tls('0')), [{ path: 'tls.handshake_timeout', line: 4, message: 'must be at least 1ms (0 is not "none": node takes it as 120s)' }]);
    assert.deepEqual(configIssues(tls('1ms')), []);
  } finally {
    ca.cleanup();
  }
});

test('dns.timeout of 0 is an error with path and line (it became 1 ms: a lookup was given up before any answer)', () => {
  const svc = 'services:\n  - name: s\n    url: http://127.0.0.1:9001\n';
  assert.deepEqual(configIssues(`dns:\n  servers: ["127.0.0.1:53"]\n  timeout: 0s\n${svc}`), [{ path: 'dns.timeout', line: 3, message: 'must be at least 1ms (0 is not "none": each lookup was given up after 1 ms)' }]);
  assert.deepEqual(configIssues(`dns: {timeout: 1ms, refresh: 0, min_ttl: 0}\n${svc}`), []);
});

test('request-transform and response-transform: a max_body past the longest string (JSON is parsed as one) is an error with path and line', () => {
  const svc = 'services:\n  - name: s\n    url: http://127.0.0.1:9001\n    plugins:\n';
  const why = 'must be at most 536870888 bytes (just under 512mb): a JSON body is parsed as one string, and no longer one can be made';
  for (const name of ['request-transform', 'response-transform']) {
    const cfg = (max: string) => `${svc}      - name: ${name}\n        config:\n          json: {remove: [a]}\n          max_body: ${max}\n`;
    assert.deepEqual(configIssues(cfg('1gb')), [{ path: 'services[0].plugins[0].config.max_body', line: 8, message: why }], name);
    assert.deepEqual(configIssues(cfg('536870889')), [{ path: 'services[0].plugins[0].config.max_body', line: 8, message: why }], name);
    assert.deepEqual(configIssues(cfg('536870888')), [], name);
    assert.deepEqual(configIssues(cfg('100mb')), [], name);
  }
});

test('request-validator and compose: a max_body past the longest string is an error with path and line too (both parse the body as one string)', () => {
  const why = 'must be at most 536870888 bytes (just under 512mb): a JSON body is parsed as one string, and no longer one can be made';
  const svc = 'services:\n  - name: s\n    url: http://127.0.0.1:9001\n';
  const validator = (max: string) => `${svc}    plugins:\n      - name: request-validator\n        config:\n          body_schema: {type: object}\n          max_body: ${max}\n`;
  assert.deepEqual(configIssues(validator('1gb')), [{ path: 'services[0].plugins[0].config.max_body', line: 8, message: why }]);
  assert.deepEqual(configIssues(validator('536870888')), []);
  const compose = (top: string, step: string) => `${svc}routes:\n  - name: c\n    paths: [/c]\n    compose:\n      max_body: ${top}\n      steps:\n        - name: a\n          service: s\n          max_body: ${step}\n`;
  assert.deepEqual(configIssues(compose('600mb', '1mb')), [{ path: 'routes[0].compose.max_body', line: 8, message: why }]);
  assert.deepEqual(configIssues(compose('1mb', '2gb')), [{ path: 'routes[0].compose.steps[0].max_body', line: 12, message: why }]);
  assert.deepEqual(configIssues(compose('500mb', '100mb')), []);
});

test('jwt: a clock_skew past 5m is a config error (a typo, 100d, accepted every token for 100 days past its exp)', () => {
  const svc = 'services:\n  - name: s\n    url: http://127.0.0.1:9001\n    plugins:\n';
  const jwt = (t: string) => `${svc}      - name: jwt\n        config:\n          jwks_url: "http://127.0.0.1:1/j"\n          clock_skew: ${t}\n`;
  for (const t of ['100d', '6m', '300001']) {
    const issues = configIssues(jwt(t));
    assert.equal(issues.length, 1, t);
    assert.equal(issues[0]!.path, 'services[0].plugins[0].config.clock_skew', t);
    assert.equal(issues[0]!.line, 8, t);
    assert.match(issues[0]!.message, /must be at most 5m/, t);
  }
  for (const t of ['0s', '30s', '5m', '300000']) assert.deepEqual(configIssues(jwt(t)), [], t);
});

test('scaling: a policy rule broken (min above max, a zero window, panic window not shorter) names the field and its line, not the scaling block', () => {
  const svc = (scaling: string) => `services:\n  - name: orders\n    url: http://127.0.0.1:9001\n    routes: [{name: a, paths: [/o]}]\n    scaling:\n      target_concurrency: 4\n${scaling}`;
  assert.deepEqual(configIssues(svc('      min_replicas: 5\n      max_replicas: 2\n')), [
    { path: 'services[0].scaling.max_replicas', line: 8, message: 'max replicas (2) must be at least min replicas (5)' },
  ]);
  // (max_replicas left at its default 10: the field written is the one to change)
  assert.deepEqual(configIssues(svc('      max_scale_down_rate: 3\n      min_replicas: 20\n')), [
    { path: 'services[0].scaling.min_replicas', line: 8, message: 'max replicas (10) must be at least min replicas (20)' },
  ]);
  assert.deepEqual(configIssues(svc('      stable_window: 10s\n      panic_window: 10s\n')), [
    { path: 'services[0].scaling.panic_window', line: 8, message: 'panic window (10 s) must be shorter than the stable window (10 s)' },
  ]);
  assert.deepEqual(configIssues(svc('      stable_window: 5s\n')), [
    { path: 'services[0].scaling.stable_window', line: 7, message: 'panic window (6 s) must be shorter than the stable window (5 s)' },
  ]);
  assert.deepEqual(configIssues(svc('      panic_window: 0s\n')), [
    { path: 'services[0].scaling.panic_window', line: 7, message: 'panic window must be > 0 ms (got 0)' },
  ]);
  assert.deepEqual(configIssues(`scaling:\n  gateway:\n    min_nodes: 200\nservices: []\n`), [
    { path: 'scaling.gateway.min_nodes', line: 3, message: 'must be at most max_nodes (100)' },
  ]);
});

test('scaling: a stable_window or scale_down_stabilization past an hour is an error with path and line (a sample a tick each: 30d was seconds of the event loop per tick)', () => {
  const svc = (scaling: string) => `services:\n  - name: orders\n    url: http://127.0.0.1:9001\n    routes: [{name: a, paths: [/o]}]\n    scaling:\n      target_concurrency: 4\n${scaling}`;
  assert.deepEqual(configIssues(svc('      stable_window: 30d\n      scale_down_stabilization: 2h\n')), [
    { path: 'services[0].scaling.stable_window', line: 7, message: 'stable window must be at most 1 h (got 2592000 s)' },
    { path: 'services[0].scaling.scale_down_stabilization', line: 8, message: 'scale-down stabilization must be at most 1 h (got 7200 s)' },
  ]);
  assert.deepEqual(configIssues(svc('      stable_window: 1h\n      scale_down_stabilization: 60m\n')), []);
});

test('scaling: a webhook URL to a loopback, link-local (cloud metadata) or "this host" address is an error with path and line unless scaling.webhook_allowed_networks lists it; an entry that is no CIDR is one too', () => {
  const svc = (url: string, top = '') => `${top}services:\n  - name: orders\n    url: http://127.0.0.1:9001\n    routes: [{name: a, paths: [/o]}]\n    scaling:\n      target_concurrency: 4\n      triggers:\n        - type: webhook\n          url: ${url}\n          secret: whsec-0123456789abcdef\n`;
  const refused = (where: string) => `${where}: a webhook may not be sent there unless scaling.webhook_allowed_networks (node-local) lists it`;
  assert.deepEqual(configIssues(svc('http://169.254.169.254/latest/meta-data/')), [
    { path: 'services[0].scaling.triggers[0].url', line: 9, message: refused('169.254.169.254 is a link-local address (169.254.169.254: the cloud metadata service)') },
  ]);
  assert.deepEqual(configIssues(svc('http://user:pw@127.0.0.1:8001/api')), [
    { path: 'services[0].scaling.triggers[0].url', line: 9, message: refused('127.0.0.1 is a loopback address') },
  ]);
  assert.deepEqual(configIssues(svc('"http://[::1]:8001/api"')), [
    { path: 'services[0].scaling.triggers[0].url', line: 9, message: refused('[::1] is a loopback address') },
  ]);
  assert.deepEqual(configIssues(svc('http://127.0.0.1:8001/api', 'scaling: {webhook_allowed_networks: [127.0.0.0/8]}\n')), []);
  assert.deepEqual(configIssues(svc('https://hooks.internal/scale')), []);
  assert.deepEqual(configIssues(svc('http://10.1.2.3/hook', 'scaling:\n  webhook_allowed_networks: [127.0.0.1/32, 10.0.0.0/33]\n')), [
    { path: 'scaling.webhook_allowed_networks[1]', line: 2, message: '"10.0.0.0/33" is not an IP address or CIDR (10.0.0.0/8, 127.0.0.1/32, fd00::/8)' },
  ]);
});

test('start-up: the quickstart gateway does not load what its config does not use (Redis, PostgreSQL, SQLite, gRPC + protobuf, the OpenTelemetry SDK, ajv, JSONata, ws)', async () => {
  // Every process (a CLI run, each worker fork, a rolling restart) pays for the modules it loads.
  // These packages are CommonJS (no "exports" with an ESM build): imported or required, they are
  // in require.cache, which the process writes out as it exits.
  const dir = mkdtempSync(join(tmpdir(), 'turnpike-loaded-'));
  const record = join(dir, 'loaded.txt');
  const script = join(dir, 'record.mjs');
  writeFileSync(script, `import { createRequire } from 'node:module';\nimport { writeFileSync } from 'node:fs';\nprocess.on('exit', () => writeFileSync(${JSON.stringify(record)}, Object.keys(createRequire(process.cwd() + '/').cache).join('\\n')));\n`);
  const run = startCli(['start', '--config', 'examples/quickstart.yaml'], {
    NODE_OPTIONS: `--import=${pathToFileURL(script).href}`,
    TURNPIKE_LISTEN: '127.0.0.1:0',
    TURNPIKE_ADMIN_LISTEN: '127.0.0.1:0',
    TURNPIKE_DEMO_LISTEN: '127.0.0.1:0',
  });
  await eventually(() => run.stderr().includes('"msg":"proxy listener up"') || run.child.exitCode !== null, 15_000, 20);
  run.child.kill('SIGTERM');
  assert.equal(await run.exit, 0, run.stderr());
  const packages = new Set<string>();
  for (const line of readFileSync(record, 'utf8').split('\n')) {
    const m = /node_modules[\\/]((?:@[^\\/]+[\\/])?[^\\/]+)/.exec(line);
    if (m) packages.add(m[1]!.replace('\\', '/'));
  }
  // (the record works: what every gateway uses is in it)
  for (const used of ['undici', 'prom-client', 'pino']) assert.ok(packages.has(used), `${used} not recorded: ${[...packages].join(' ')}`);
  const unused = ['pg', 'pg-pool', 'ioredis', 'better-sqlite3', '@grpc/grpc-js', '@grpc/proto-loader', 'protobufjs', '@opentelemetry/sdk-trace-base', '@opentelemetry/core', '@opentelemetry/resources', '@opentelemetry/exporter-trace-otlp-http', 'ajv', 'ajv-formats', 'jsonata', 'ws'];
  assert.deepEqual(unused.filter((p) => packages.has(p)), []);
});
