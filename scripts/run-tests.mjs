#!/usr/bin/env node
// Runs every *.test.ts under src/ and test/ with node's test runner (TypeScript through tsx).
// Extra arguments are passed to node --test (e.g. a file list or --test-name-pattern).
import { readdirSync, statSync } from 'node:fs';
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

const args = process.argv.slice(2);
const files = args.some((a) => a.endsWith('.ts')) ? [] : [...find('src'), ...find('test')].sort();
const r = spawnSync(
  process.execPath,
  ['--import', 'tsx', '--test', '--test-timeout=120000', ...args, ...files],
  { stdio: 'inherit', env: { ...process.env, TURNPIKE_LOG_LEVEL: process.env.TURNPIKE_LOG_LEVEL ?? 'silent' } },
);
process.exit(r.status ?? 1);
