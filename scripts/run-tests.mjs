#!/usr/bin/env node
// Runs every *.test.ts under src/ and test/ with node's test runner: compiled to .tc/ for the whole suite, through tsx for files named.
// Extra arguments are passed to node --test (e.g. a file list or --test-name-pattern).
import { mkdtempSync, readdirSync, rmSync, statSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';

function find(dir, out = []) {
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) find(p, out);
    else if (name.endsWith('.test.ts')) out.push(p);
  }
  return out;
}

/**
 * What the tests need beyond npm: the openssl command line (test certificates),
 * redis-server + redis-cli (the Redis counter store's tests start real servers and a cluster;
 * both come with the Debian package redis-server) and PostgreSQL's initdb + postgres (the
 * PostgreSQL config store's tests start a real server, test/postgres-server.ts; Debian's
 * package postgresql puts them in /usr/lib/postgresql/<version>/bin) and chromium (the web
 * console's end-to-end tests drive it with playwright-core). Missing and root with
 * apt-get: installed; otherwise the run stops and says what to install.
 */
function provision() {
  const need = [
    ['openssl', 'openssl'], ['redis-server', 'redis-server'], ['redis-cli', 'redis-server'],
    ['initdb', 'postgresql', 'command -v initdb || ls /usr/lib/postgresql/*/bin/initdb'],
    ['chromium', 'chromium'],
  ].filter(([bin, , check]) => spawnSync('sh', ['-c', check ?? `command -v ${bin}`], { stdio: 'ignore' }).status !== 0);
  if (need.length === 0) return;
  const pkgs = [...new Set(need.map(([, pkg]) => pkg))];
  const root = process.getuid?.() === 0;
  const apt = spawnSync('sh', ['-c', 'command -v apt-get']).status === 0;
  if (root && apt) {
    console.error(`installing ${pkgs.join(' ')} (needed by the tests) with apt-get`);
    const r = spawnSync('sh', ['-c', `apt-get install -y --no-install-recommends ${pkgs.join(' ')} || (apt-get update && apt-get install -y --no-install-recommends ${pkgs.join(' ')})`], { stdio: 'inherit', env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } });
    if (r.status === 0) return;
  }
  console.error(`The tests need: ${need.map(([bin, pkg]) => `${bin} (Debian package ${pkg})`).join(', ')}. Install them and run npm test again.`);
  process.exit(1);
}
provision();

/**
 * Files whose tests measure time under load (a killed target under traffic, ejection and
 * limit windows, floods, a cluster of nodes, start-up windows): they run alone, one file at a
 * time, after the others, which run two files at a time (most of their time is spent waiting
 * on sockets, child processes and timers, not on the CPU).
 */
const SERIAL = new Set([
  'test/balancers.test.ts', 'test/http2-floods.test.ts', 'test/portal-accounts.test.ts',
  'test/rate-limit-nodes.test.ts', 'test/resilience-edges.test.ts', 'test/resilience.test.ts',
  'test/store-cluster.test.ts', 'test/upstream-failures.test.ts', 'test/workers.test.ts',
  'test/workers-lifecycle.test.ts', 'test/workers-restart.test.ts',
  // (short, with tight bounds: parallel steps, event-loop gaps, close times)
  'test/compose.test.ts', 'src/compose/run.test.ts', 'src/config/stores/sqlite.test.ts',
  'src/observability/sinks.test.ts', 'test/redis-store.test.ts',
  // (a load test of its own: real backend processes against a latency SLO)
  'test/scaling-e2e.test.ts',
]);

/**
 * A directory for the run where the first PostgreSQL server a test starts keeps a copy of its
 * fresh cluster, which later servers copy instead of running initdb (test/postgres-server.ts);
 * removed when the run ends.
 */
const pgTemplates = mkdtempSync(join(tmpdir(), 'turnpike-pg-templates-'));
process.on('exit', () => rmSync(pgTemplates, { force: true, recursive: true }));

const run = (loader, extra, files) => spawnSync(
  process.execPath,
  [...loader, '--test', '--test-timeout=120000', ...extra, ...files],
  { stdio: 'inherit', env: { ...process.env, TURNPIKE_LOG_LEVEL: process.env.TURNPIKE_LOG_LEVEL ?? 'silent', TURNPIKE_TEST_PG_TEMPLATES: pgTemplates } },
).status ?? 1;

const args = process.argv.slice(2);
// Files named on the command line run from their TypeScript through tsx (no build step).
if (args.some((a) => a.endsWith('.ts'))) process.exit(run(['--import', 'tsx'], args, []));

/**
 * The whole suite runs compiled: tsc (which is also the suite's type check) writes src/, test/
 * and scripts/ as JavaScript to .tc/, and node runs that. Loading a test file's module graph
 * through tsx's loader costs ~1.5 s of CPU per file (esbuild and the loader thread), against
 * ~0.3 s for the same graph compiled: over a hundred files, minutes of a two-core machine.
 * Tests find repository files from the working directory (the repository root), never from
 * their own location; .tc/dist points at the real dist/ for the modules that find the
 * built console next to themselves (src/console/handler.ts).
 */
const tsc = spawnSync(process.execPath, ['node_modules/typescript/bin/tsc', '-p', 'tsconfig.test.json'], { stdio: 'inherit' });
if (tsc.status !== 0) {
  console.error('# npm test: the type check failed (tsc -p tsconfig.test.json); no test ran');
  process.exit(1);
}
rmSync('.tc/dist', { force: true, recursive: true });
symlinkSync('../dist', '.tc/dist', 'dir');
const compiled = (f) => join('.tc', f.replace(/\.ts$/, '.js'));
const node = ['--enable-source-maps'];
const all = [...find('src'), ...find('test')].sort();
const concurrency = process.env.TURNPIKE_TEST_CONCURRENCY ?? '2';
const started = Date.now();
const first = run(node, [`--test-concurrency=${concurrency}`, ...args], all.filter((f) => !SERIAL.has(f)).map(compiled));
const second = run(node, ['--test-concurrency=1', ...args], all.filter((f) => SERIAL.has(f)).map(compiled));
console.log(`# npm test: ${all.length} files (${all.length - SERIAL.size} two at a time, ${SERIAL.size} alone) in ${Math.round((Date.now() - started) / 1000)} s: ${first === 0 && second === 0 ? 'pass' : 'FAIL'}`);
process.exit(first !== 0 ? first : second);
