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

const args = process.argv.slice(2);
const files = args.some((a) => a.endsWith('.ts')) ? [] : [...find('src'), ...find('test')].sort();
const r = spawnSync(
  process.execPath,
  ['--import', 'tsx', '--test', '--test-timeout=120000', ...args, ...files],
  { stdio: 'inherit', env: { ...process.env, TURNPIKE_LOG_LEVEL: process.env.TURNPIKE_LOG_LEVEL ?? 'silent' } },
);
process.exit(r.status ?? 1);
