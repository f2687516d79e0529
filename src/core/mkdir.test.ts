import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { makeDirectory } from './mkdir.js';

const ROOT = process.cwd();

test('makeDirectory: nested directories, an existing one, and a file in the way (ENOTDIR, naming the path)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'turnpike-mkdir-'));
  makeDirectory(join(dir, 'a/b/c'));
  assert.ok(statSync(join(dir, 'a/b/c')).isDirectory());
  makeDirectory(join(dir, 'a/b/c'));
  writeFileSync(join(dir, 'file'), '');
  assert.throws(() => makeDirectory(join(dir, 'file/sub/deeper')), (e: NodeJS.ErrnoException) => e.code === 'ENOTDIR' && e.message.includes(join(dir, 'file/sub')));
});

test('on a read-only filesystem the access log, the quota state file and the sqlite store say EROFS and the directory (node\'s recursive mkdir said ENOENT)', (t) => {
  // A read-only tmpfs in a mount namespace of the child's own (root, util-linux's unshare).
  const ro = mkdtempSync(join(tmpdir(), 'turnpike-ro-'));
  const ns = (script: string) => spawnSync('unshare', ['-m', '--propagation', 'private', 'sh', '-c', 'mount -t tmpfs -o ro tmpfs "$0" && cd "$1" && exec "$2" --import tsx -e "$3"', ro, ROOT, process.execPath, script], { encoding: 'utf8', timeout: 60_000 });
  const probe = ns('');
  if (probe.status !== 0) return t.skip(`no read-only mount here (needs root and unshare -m): ${probe.stderr.trim()}`);
  const r = ns(`
    const { checkSink } = await import('./src/observability/sinks.ts');
    const { QuotaFile } = await import('./src/state/persist.ts');
    const { SqliteStore } = await import('./src/config/stores/sqlite.ts');
    const out = {};
    const grab = async (name, f) => { try { await f(); out[name] = 'no error'; } catch (e) { out[name] = e.message; } };
    await grab('access log', () => checkSink({ destination: 'file', path: ${JSON.stringify(ro)} + '/logs/a.log' }));
    await grab('state file', () => new QuotaFile(${JSON.stringify(ro)} + '/state/deeper/q.db'));
    await grab('sqlite store', () => new SqliteStore({ path: ${JSON.stringify(ro)} + '/store/s.db' }).open());
    console.log(JSON.stringify(out));
  `);
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout.trim().split('\n').at(-1)!), {
    'access log': `access log: cannot open ${ro}/logs/a.log for writing: EROFS: read-only file system, mkdir '${ro}/logs'`,
    'state file': `EROFS: read-only file system, mkdir '${ro}/state'`,
    'sqlite store': `cannot open the sqlite store ${ro}/store/s.db: EROFS: read-only file system, mkdir '${ro}/store'`,
  });
});
