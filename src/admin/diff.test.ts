import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { configChanges, hasChanges, unifiedDiff } from './diff.js';
import { sampleDocument } from './testing.js';
import type { Obj } from './document.js';

/** Applies a unified diff to `before` (strictly: context and removed lines must match). */
function applyPatch(before: string, patch: string): string {
  const a = before === '' ? [] : before.replace(/\n$/, '').split('\n');
  const out: string[] = [];
  let ai = 0;
  const lines = patch.replace(/\n$/, '').split('\n').slice(2);
  for (let i = 0; i < lines.length; i++) {
    const m = /^@@ -(\d+),(\d+) \+(\d+),(\d+) @@$/.exec(lines[i]!);
    assert.ok(m, `hunk header expected: ${lines[i]}`);
    const start = Number(m[2]) === 0 ? Number(m[1]) : Number(m[1]) - 1;
    while (ai < start) out.push(a[ai++]!);
    while (i + 1 < lines.length && !lines[i + 1]!.startsWith('@@')) {
      const l = lines[++i]!;
      if (l[0] === ' ') {
        assert.equal(a[ai], l.slice(1));
        out.push(a[ai++]!);
      } else if (l[0] === '-') {
        assert.equal(a[ai], l.slice(1));
        ai++;
      } else if (l[0] === '+') out.push(l.slice(1));
      else assert.fail(`bad line ${l}`);
    }
  }
  while (ai < a.length) out.push(a[ai++]!);
  return out.length ? out.join('\n') + '\n' : '';
}

function rng(seed: number) {
  return () => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed / 0x7fffffff;
  };
}

test('unifiedDiff: random edits round-trip through the patch, hunks have 3 lines of context', () => {
  const r = rng(7);
  for (let n = 0; n < 300; n++) {
    const a = Array.from({ length: Math.floor(r() * 40) }, () => `line ${Math.floor(r() * 12)}`);
    const b = a.filter(() => r() > 0.2).flatMap((l) => (r() > 0.85 ? [l, `new ${Math.floor(r() * 5)}`] : [l]));
    if (r() > 0.7) b.unshift('head');
    const ta = a.length ? a.join('\n') + '\n' : '';
    const tb = b.length ? b.join('\n') + '\n' : '';
    const d = unifiedDiff(ta, tb, ['a', 'b']);
    if (ta === tb) {
      assert.equal(d, '');
      continue;
    }
    assert.ok(d.startsWith('--- a\n+++ b\n@@ '));
    assert.equal(applyPatch(ta, d), tb, d);
  }
  // a change too big for the edit budget is still a correct (if coarse) diff
  const big = Array.from({ length: 500 }, (_, i) => `x${i}`).join('\n') + '\n';
  const other = Array.from({ length: 500 }, (_, i) => `y${i}`).join('\n') + '\n';
  assert.equal(applyPatch(big, unifiedDiff(big, other, ['a', 'b'], 3, 10)), other);
});

test('unifiedDiff matches diff -u where diff(1) is installed', (t) => {
  if (spawnSync('sh', ['-c', 'command -v diff']).status !== 0) return t.skip('no diff(1)');
  const dir = mkdtempSync(join(tmpdir(), 'tp-diff-'));
  try {
    const a = 'a\nb\nc\nd\ne\nf\ng\nh\ni\nj\nk\nl\nm\n';
    const b = 'a\nB\nc\nd\ne\nf\ng\nh\ni\nj\nk\nl\nm\nn\n';
    writeFileSync(join(dir, 'a'), a);
    writeFileSync(join(dir, 'b'), b);
    const out = spawnSync('diff', ['-u', '--label', 'a', '--label', 'b', join(dir, 'a'), join(dir, 'b')], { encoding: 'utf8' }).stdout;
    assert.equal(unifiedDiff(a, b, ['a', 'b']), out);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('configChanges: added / removed / changed names by entity; a changed key is a changed credential', () => {
  const before = sampleDocument() as Obj;
  const after = structuredClone(before);
  const services = after['services'] as Obj[];
  services[0]!['retries'] = 2;
  services.push({ name: 'billing', url: 'http://127.0.0.1:9100' });
  (services[1]!['routes'] as Obj[]).splice(0, 1);
  const acme = (after['consumers'] as Obj[])[0]!;
  (acme['credentials'] as Obj[])[0]!['key'] = 'another-key-000001';
  delete after['plans'];
  after['consumer_headers'] = { id: 'x-cid' };
  const c = configChanges(before, after);
  assert.deepEqual(c.services, { added: ['billing'], removed: [], changed: ['orders'] });
  assert.deepEqual(c.routes, { added: [], removed: ['users-api'], changed: [] });
  assert.deepEqual(c.upstreams, { added: ['billing'], removed: [], changed: [] });
  assert.deepEqual(c.credentials, { added: [], removed: [], changed: ['acme/credentials/acme/key-auth/1'] });
  assert.deepEqual(c.consumers, { added: [], removed: [], changed: [] });
  assert.deepEqual(c.plans, { added: [], removed: ['gold'], changed: [] });
  assert.deepEqual(c.other, { added: ['consumer_headers'], removed: [], changed: [] });
  assert.equal(hasChanges(c), true);
  assert.equal(hasChanges(configChanges(before, structuredClone(before))), false);
});
