/**
 * Quota counters on disk (better-sqlite3): loaded at start, written every second when changed
 * and at shutdown, so a restart of the node keeps its quotas (at most ~1 s of counts can be
 * lost in a crash). Only the node's primary (or the single process) writes it. A write that
 * fails (the file locked by another process, a full disk) throws at once; MemoryStore keeps
 * those counts to write at the next flush.
 */
import type Database from 'better-sqlite3';
import { lazy } from '../core/lazy.js';
import { closeSync, openSync, readSync, renameSync } from 'node:fs';
import { dirname } from 'node:path';
import { makeDirectory } from '../core/mkdir.js';

const sqlite = lazy<typeof Database>('better-sqlite3');

/** SQLite's answer for a file that is not a database, or one whose pages are damaged. */
const isCorrupt = (err: unknown): boolean => {
  const code = (err as { code?: unknown } | null)?.code;
  return code === 'SQLITE_CORRUPT' || code === 'SQLITE_NOTADB' || (typeof code === 'string' && code.startsWith('SQLITE_CORRUPT_'));
};

/** The file begins as an SQLite database does (a damaged one, not some other file state_file names by mistake). */
function sqliteHeader(path: string): boolean {
  const magic = Buffer.from('SQLite format 3\0');
  const buf = Buffer.alloc(magic.length);
  let fd: number | undefined;
  try {
    fd = openSync(path, 'r');
    return readSync(fd, buf, 0, buf.length, 0) === buf.length && buf.equals(magic);
  } catch {
    return false;
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

/**
 * Opens the quota file and reads what it holds. A database SQLite finds damaged (cut short by a
 * copy or a disk that lost its tail, pages overwritten) is renamed aside
 * (`<path>.corrupt-<epoch ms>`, with its -wal and -shm) and a new one started: its counts are
 * lost either way, and without a file of its own the node would keep every quota in memory
 * only, for good — each restart handing out fresh quotas. `onCorrupt` hears where it went. A
 * file that is no SQLite database at all (state_file naming another file by mistake) is left
 * as it is: the error is thrown.
 */
export function openQuotaFile(path: string, now: number, onCorrupt: (err: Error, movedTo: string) => void): { file: QuotaFile; rows: { key: string; used: number; expires: number }[] } {
  let file: QuotaFile | null = null;
  try {
    file = new QuotaFile(path);
    return { file, rows: file.load(now) };
  } catch (err) {
    file?.close();
    if (!isCorrupt(err) || !sqliteHeader(path)) throw err;
    const aside = `${path}.corrupt-${Date.now()}`;
    renameSync(path, aside);
    for (const ext of ['-wal', '-shm']) {
      try {
        renameSync(path + ext, aside + ext);
      } catch {
        // (none)
      }
    }
    onCorrupt(err as Error, aside);
    file = new QuotaFile(path);
    try {
      return { file, rows: file.load(now) };
    } catch (again) {
      file.close();
      throw again;
    }
  }
}

export class QuotaFile {
  private readonly db: Database.Database;
  private readonly upsert: Database.Statement;
  private readonly purge: Database.Statement;

  constructor(readonly path: string) {
    makeDirectory(dirname(path));
    this.db = new (sqlite())(path);
    try {
      this.db.pragma('journal_mode = WAL');
      this.db.pragma('synchronous = NORMAL');
      this.db.exec('CREATE TABLE IF NOT EXISTS quota (key TEXT PRIMARY KEY, used INTEGER NOT NULL, expires INTEGER NOT NULL)');
      // Every flush (each second under traffic) purges what expired: by this index it reads only
      // that, not the whole table (at a million keys a scan held the event loop ~150 ms a second).
      this.db.exec('CREATE INDEX IF NOT EXISTS quota_expires ON quota (expires)');
      this.upsert = this.db.prepare('INSERT INTO quota (key, used, expires) VALUES (?, ?, ?) ON CONFLICT(key) DO UPDATE SET used = excluded.used, expires = excluded.expires');
      this.purge = this.db.prepare('DELETE FROM quota WHERE expires <= ?');
    } catch (err) {
      // (not left open: a reload tries again, one descriptor each time otherwise)
      this.db.close();
      throw err;
    }
  }

  /** What the file holds (opening it, this may wait for another process's write lock, as SQLite does: up to 5 s). */
  load(now: number): { key: string; used: number; expires: number }[] {
    this.purge.run(now);
    const rows = this.db.prepare('SELECT key, used, expires FROM quota').all() as { key: string; used: number; expires: number }[];
    // From now on (the flushes, every second) never SQLite's busy wait, which sleeps on the
    // event loop while another process holds the write lock: save() throws at once instead.
    this.db.pragma('busy_timeout = 0');
    return rows;
  }

  save(rows: Iterable<[string, { used: number; expires: number }]>, now: number): void {
    this.db.transaction(() => {
      for (const [k, v] of rows) this.upsert.run(k, v.used, v.expires);
      this.purge.run(now);
    })();
  }

  close(): void {
    this.db.close();
  }
}
