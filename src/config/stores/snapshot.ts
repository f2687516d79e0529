/**
 * The node's last good config on local disk, so a node that starts while its store
 * (PostgreSQL) is down can serve what it served before instead of nothing.
 *
 * File format (JSON): {"format": "turnpike-config-snapshot", "version": 1, "saved_at": ISO,
 * "sha256": hex of JSON.stringify(config), "config": StoredConfig}.
 *
 * Written crash-safe: a temp file beside the target (same directory, so the rename stays on one
 * filesystem), fsync, rename over the old one, fsync the directory. A reader therefore sees the
 * old snapshot or the new one, never a mix; and still, reading checks the JSON, the format, the
 * digest and the shape — a torn or hand-edited file is reported and ignored, never served.
 */
import { open, rename, mkdir, unlink, readFile, readdir } from 'node:fs/promises';
import { createHash, randomBytes } from 'node:crypto';
import { dirname, basename, join } from 'node:path';
import type { Logger } from '../../core/log.js';
import type { ConfigDocument, StoredConfig } from './types.js';

export const SNAPSHOT_FORMAT = 'turnpike-config-snapshot';

const digest = (json: string) => createHash('sha256').update(json).digest('hex');
const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/** Writes `stored` to `path` atomically and durably. */
export async function writeSnapshot(path: string, stored: StoredConfig): Promise<void> {
  const config: StoredConfig = { revision: stored.revision, at: stored.at, actor: stored.actor, action: stored.action, document: stored.document };
  const json = JSON.stringify(config);
  const text = `{"format":${JSON.stringify(SNAPSHOT_FORMAT)},"version":1,"saved_at":${JSON.stringify(new Date().toISOString())},"sha256":"${digest(json)}","config":${json}}\n`;
  const dir = dirname(path);
  await mkdir(dir, { recursive: true });
  const tmp = join(dir, `.${basename(path)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
  try {
    const fh = await open(tmp, 'w', 0o600);
    try {
      await fh.writeFile(text, 'utf8');
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, path);
  } catch (err) {
    await unlink(tmp).catch(() => undefined);
    throw err;
  }
  // The rename itself is durable only once the directory is synced (not possible everywhere: ignore).
  try {
    const d = await open(dir, 'r');
    try {
      await d.sync();
    } finally {
      await d.close();
    }
  } catch {
    /* e.g. Windows: directories cannot be opened for fsync */
  }
}

/** Checks snapshot text; returns the config, or throws an Error saying what is wrong. */
export function parseSnapshot(text: string): StoredConfig {
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch (err) {
    throw new Error(`not JSON (torn or damaged file?): ${(err as Error).message}`);
  }
  if (!isObj(data) || data['format'] !== SNAPSHOT_FORMAT) throw new Error(`not a ${SNAPSHOT_FORMAT} file`);
  if (data['version'] !== 1) throw new Error(`snapshot version ${JSON.stringify(data['version'])} is not supported`);
  const c = data['config'];
  if (!isObj(c)) throw new Error('no config in the snapshot');
  if (typeof data['sha256'] !== 'string' || digest(JSON.stringify(c)) !== data['sha256']) throw new Error('the snapshot does not match its digest (damaged file?)');
  if (!Number.isSafeInteger(c['revision']) || (c['revision'] as number) < 1) throw new Error('the snapshot has no valid revision');
  if (typeof c['at'] !== 'string' || typeof c['actor'] !== 'string' || typeof c['action'] !== 'string') throw new Error('the snapshot lacks at / actor / action');
  if (!isObj(c['document'])) throw new Error('the snapshot document is not an object');
  return { revision: c['revision'] as number, at: c['at'], actor: c['actor'], action: c['action'], document: c['document'] as ConfigDocument };
}

/** The snapshot at `path`; null when there is none or it is not valid (logged). */
export async function readSnapshot(path: string, log?: Logger): Promise<StoredConfig | null> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') log?.warn({ err: (err as Error).message, snapshot: path }, 'cannot read the config snapshot');
    return null;
  }
  try {
    return parseSnapshot(text);
  } catch (err) {
    log?.warn({ err: (err as Error).message, snapshot: path }, 'config snapshot ignored');
    return null;
  }
}

/**
 * One node's snapshot file: save() after every config the node adopted (saves run one at a
 * time, in call order, so the last adopted wins; the revision saved last is not written
 * again), load() at start.
 */
export class ConfigSnapshot {
  /** revision@at of the snapshot on disk. */
  private saved = '';
  private chain: Promise<void> = Promise.resolve();

  constructor(readonly path: string, private readonly log?: Logger) {}

  /** Reads the snapshot (null: none, or not valid), and removes temp files left by writers that died mid-save. */
  async load(): Promise<StoredConfig | null> {
    await this.sweep();
    const s = await readSnapshot(this.path, this.log);
    if (s) this.saved = `${s.revision}@${s.at}`;
    return s;
  }

  private async sweep(): Promise<void> {
    const prefix = `.${basename(this.path)}.`;
    let names: string[];
    try {
      names = await readdir(dirname(this.path));
    } catch {
      return;
    }
    for (const name of names) {
      if (!name.startsWith(prefix) || !name.endsWith('.tmp')) continue;
      const pid = Number(name.slice(prefix.length).split('.')[0]);
      if (!Number.isSafeInteger(pid) || pid <= 0 || pid === process.pid) continue;
      try {
        process.kill(pid, 0);
        continue; // its writer is alive (perhaps another node process on this disk)
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'EPERM') continue;
      }
      await unlink(join(dirname(this.path), name)).catch(() => undefined);
    }
  }

  /** Never rejects: a failed save is logged (the node keeps serving; the next save tries again). */
  save(stored: StoredConfig): Promise<void> {
    this.chain = this.chain.then(async () => {
      const key = `${stored.revision}@${stored.at}`;
      if (key === this.saved) return;
      try {
        await writeSnapshot(this.path, stored);
        this.saved = key;
      } catch (err) {
        this.log?.warn({ err: (err as Error).message, snapshot: this.path }, 'cannot write the config snapshot');
      }
    });
    return this.chain;
  }
}
