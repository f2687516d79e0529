#!/usr/bin/env node
/**
 * Summarizes a V8 .cpuprofile (from `node --cpu-prof`): the functions with the most self time,
 * self time grouped by where the code lives (Turnpike, undici, node core, GC, ...), and the
 * total (self + callees) time of Turnpike's own functions.
 *
 *   BENCH_PROFILE=/tmp/prof BENCH_TARGETS=turnpike,reference npm run bench
 *   node bench/profile.mjs /tmp/prof/turnpike-*.cpuprofile [--top 25] [--inclusive /dist/] [--focus NAME]
 *
 * --inclusive SUBSTRING  total time of the functions whose script URL contains SUBSTRING
 *                        (outside node_modules; default /dist/, i.e. Turnpike's own code)
 * --focus NAME           instead: the self time spent in and below functions named NAME, by callee
 *
 * Shares are of busy (non-idle) samples. Native entries such as `writev` are mostly the time
 * of the system call they make.
 */
import { readFileSync } from 'node:fs';

const args = process.argv.slice(2);
function option(name, fallback) {
  const i = args.indexOf(name);
  return i === -1 ? fallback : args.splice(i, 2)[1];
}
const TOP = Number(option('--top', 25));
const INCLUSIVE = option('--inclusive', '/dist/');
const FOCUS = option('--focus', null);
if (!args.length) {
  console.error('usage: node bench/profile.mjs FILE.cpuprofile [--top N] [--inclusive SUBSTRING] [--focus NAME]');
  process.exit(2);
}

const shortUrl = (url) => url.replace(/^file:\/\/.*?\/(node_modules|dist|bench)\//, '$1/');
const label = (cf) => `${cf.functionName || '(anonymous)'}  ${cf.url ? `${shortUrl(cf.url)}:${cf.lineNumber + 1}` : ''}`;

function origin(cf) {
  if (cf.functionName === '(garbage collector)' || cf.functionName === '(program)') return cf.functionName;
  const url = cf.url;
  if (!url) return 'native / V8';
  if (url.startsWith('node:')) return url.startsWith('node:internal/') ? url.split('/').slice(0, 2).join('/') : url;
  const nm = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url);
  if (nm) return nm[1];
  const own = /\/(dist|bench)\/(.+)$/.exec(url);
  if (own) return `${own[1]}/${own[2].split('/')[0]}`;
  return url;
}

function top(map, n, pct) {
  for (const [k, us] of [...map].sort((a, b) => b[1] - a[1]).slice(0, n)) console.log(`  ${pct(us)}  ${k}`);
}

const add = (map, k, v) => map.set(k, (map.get(k) ?? 0) + v);

for (const file of args) {
  const prof = JSON.parse(readFileSync(file, 'utf8'));
  const byId = new Map(prof.nodes.map((n) => [n.id, n]));
  const self = new Map();
  for (let i = 0; i < prof.samples.length; i++) add(self, prof.samples[i], prof.timeDeltas[i] ?? 0);

  let total = 0;
  let idle = 0;
  const fns = new Map();
  const groups = new Map();
  for (const [id, us] of self) {
    const cf = byId.get(id).callFrame;
    total += us;
    if (cf.functionName === '(idle)') {
      idle += us;
      continue;
    }
    add(fns, label(cf), us);
    add(groups, origin(cf), us);
  }
  const busy = total - idle;
  const pct = (us) => `${((100 * us) / busy).toFixed(1).padStart(5)}%`;
  console.log(`${file}\n  ${(total / 1e6).toFixed(1)} s sampled, ${(busy / 1e6).toFixed(1)} s busy (${((100 * busy) / total).toFixed(0)}%); shares are of busy time\n`);

  if (FOCUS) {
    const below = new Map();
    let sum = 0;
    const walk = (node, inside) => {
      const cf = node.callFrame;
      const now = inside || cf.functionName === FOCUS;
      const us = self.get(node.id) ?? 0;
      if (now && us) {
        add(below, label(cf), us);
        sum += us;
      }
      for (const c of node.children ?? []) walk(byId.get(c), now);
    };
    walk(prof.nodes[0], false);
    console.log(`  in and below ${FOCUS} (${pct(sum).trim()} of busy time), self time by function:`);
    top(below, TOP, pct);
    console.log('');
    continue;
  }

  console.log('  self time by function:');
  top(fns, TOP, pct);
  console.log('\n  self time by origin:');
  top(groups, 15, pct);

  // Total time: walk down from the root, carrying the matching functions on the stack (each
  // counted once per sample, however deep it recurses).
  const inc = new Map();
  const walk = (node, onStack) => {
    const cf = node.callFrame;
    let stack = onStack;
    if (cf.url && cf.url.includes(INCLUSIVE) && !cf.url.includes('node_modules')) {
      const key = label(cf);
      if (!onStack.has(key)) stack = new Set(onStack).add(key);
    }
    const us = self.get(node.id) ?? 0;
    if (us && cf.functionName !== '(idle)') for (const k of stack) add(inc, k, us);
    for (const c of node.children ?? []) walk(byId.get(c), stack);
  };
  walk(prof.nodes[0], new Set());
  console.log(`\n  total time (self + callees) of functions in *${INCLUSIVE}*:`);
  top(inc, TOP, pct);
  console.log('');
}
