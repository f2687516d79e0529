/**
 * A real PostgreSQL server for tests: Debian's postgresql package (initdb + postgres from
 * /usr/lib/postgresql/<version>/bin, or PATH), a fresh cluster in its own temp dir, on a free
 * loopback port, trust auth for the `postgres` user. PostgreSQL refuses to run as root: as root
 * the cluster belongs to, and the server runs as, the `postgres` system user (the package
 * creates it). Every server is stopped and its dir removed on stop(), on process exit, and —
 * by a watcher beside it — when the test process dies without cleaning up.
 */
import { spawn, spawnSync, execFile, type ChildProcess } from 'node:child_process';
import { chownSync, existsSync, mkdtempSync, readdirSync, readFileSync, realpathSync, renameSync, rmSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';
import { freePort } from './redis-server.js';

const run = promisify(execFile);
const live = new Set<ChildProcess>();
const dirs = new Set<string>();
process.on('exit', () => {
  for (const c of live) {
    for (const pid of [...childrenOf(c.pid!), c.pid!]) {
      try {
        process.kill(pid, 'SIGCONT'); // if paused
      } catch { /* gone */ }
    }
    c.kill('SIGQUIT'); // immediate shutdown: the postmaster takes its backends with it
  }
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

/** Pids whose parent is `pid` (from /proc). */
function childrenOf(pid: number): number[] {
  const out: number[] = [];
  let entries: string[] = [];
  try {
    entries = readdirSync('/proc');
  } catch {
    return out;
  }
  for (const e of entries) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const stat = readFileSync(`/proc/${e}/stat`, 'utf8');
      // pid (comm) state ppid ...: comm may hold spaces and parentheses, so read after the last ')'.
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid === pid) out.push(Number(e));
    } catch { /* gone meanwhile */ }
  }
  return out;
}

/** The directory with initdb and postgres; throws saying what to install when there is none. */
export function postgresBinDir(): string {
  const onPath = spawnSync('sh', ['-c', 'command -v initdb'], { encoding: 'utf8' });
  if (onPath.status === 0 && onPath.stdout.trim()) {
    const dir = dirname(realpathSync(onPath.stdout.trim()));
    if (existsSync(join(dir, 'postgres'))) return dir;
  }
  const base = '/usr/lib/postgresql';
  const versions = existsSync(base) ? readdirSync(base).filter((v) => existsSync(join(base, v, 'bin', 'initdb'))).sort((a, b) => Number(b) - Number(a)) : [];
  if (versions[0]) return join(base, versions[0], 'bin');
  const root = process.getuid?.() === 0;
  throw new Error(
    'PostgreSQL (initdb, postgres) not found: these tests run a real PostgreSQL server. Install the Debian package postgresql ' +
    `(apt-get install postgresql)${root ? '' : ' as root'}, or run the tests with \`node scripts/run-tests.mjs\` as root, which installs it.`,
  );
}

/** As root: the uid/gid of the `postgres` user that owns and runs the cluster. */
function runAs(): { uid: number; gid: number } | null {
  if (process.getuid?.() !== 0) return null;
  const id = (flag: string) => spawnSync('id', [flag, 'postgres'], { encoding: 'utf8' });
  const u = id('-u');
  const g = id('-g');
  if (u.status !== 0 || g.status !== 0) {
    throw new Error('PostgreSQL will not run as root and there is no `postgres` user to run it as (the Debian package postgresql creates it).');
  }
  return { uid: Number(u.stdout.trim()), gid: Number(g.stdout.trim()) };
}

async function until(what: string, ms: number, probe: () => Promise<boolean>): Promise<void> {
  const end = Date.now() + ms;
  for (;;) {
    if (await probe().catch(() => false)) return;
    if (Date.now() > end) throw new Error(`${what}: not within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

// The server is exec'd (its pid is the postmaster's). The watcher beside it shuts the server
// down (immediate mode, then SIGKILL) and removes the dir if the test process dies, and ends by
// itself once the server is gone. It runs as the server's user: /proc tells it who is alive.
const WATCHED = `(while [ -d /proc/"$TP_WATCH" ]; do [ -d /proc/$$ ] || exit 0; sleep 0.5; done; kill -QUIT $$ 2>/dev/null; sleep 2; kill -9 $$ 2>/dev/null; sleep 0.2; rm -rf "$TP_DIR") &
exec "$TP_POSTGRES" "$@"`;

export interface PostgresServer {
  port: number;
  /** postgresql://postgres@127.0.0.1:PORT/postgres */
  url: string;
  dir: string;
  readonly pid: number | undefined;
  /** A new, empty database on this server; resolves with its URL. */
  createDatabase(name: string): Promise<string>;
  /** One statement over a fresh connection (to `database`, default postgres). */
  query<R extends pg.QueryResultRow = pg.QueryResultRow>(sql: string, params?: unknown[], database?: string): Promise<R[]>;
  /**
   * Stops the server, keeping its data: `fast` (SIGINT: sessions are disconnected, a clean
   * checkpoint) or `immediate` (SIGQUIT: like a crash; the next start replays the WAL).
   */
  shutdown(mode?: 'fast' | 'immediate'): Promise<void>;
  /** Starts it again on the same port and data. */
  restart(): Promise<void>;
  /** SIGSTOP / SIGCONT to the postmaster and all its processes: a hung server (connections accepted, no answers). */
  pause(): void;
  resume(): void;
  /** Stops it and removes its dir. */
  stop(): Promise<void>;
}

const INITDB_ARGS = ['-U', 'postgres', '--auth=trust', '-E', 'UTF8', '--locale=C', '--no-sync'];

/**
 * A fresh cluster in `data`: initdb, or a copy of a cluster initdb made earlier in this run.
 * initdb takes one to two seconds of a loaded machine per server; scripts/run-tests.mjs names a
 * directory for the run (TURNPIKE_TEST_PG_TEMPLATES, removed when the run ends) where the first
 * server keeps a copy of its new cluster, moved in by one rename (a file running beside it
 * finds all of it or none), and later servers copy that (`cp -a`: owner and modes kept). The
 * copy is taken before the server first starts: it is the cluster as initdb left it. Without
 * the variable (a file run by node --test directly) every server runs initdb.
 */
async function initCluster(bin: string, data: string, dir: string, user: { uid: number; gid: number } | null): Promise<void> {
  const as = user ? { uid: user.uid, gid: user.gid } : {};
  const initdb = () => run(join(bin, 'initdb'), ['-D', data, ...INITDB_ARGS], { ...as, cwd: dir, timeout: 60_000 });
  const root = process.env.TURNPIKE_TEST_PG_TEMPLATES;
  if (!root || !existsSync(root)) return void await initdb();
  const template = join(root, createHash('sha256').update(JSON.stringify([bin, INITDB_ARGS, user])).digest('hex').slice(0, 16));
  if (existsSync(template)) {
    await run('cp', ['-a', template, data], { timeout: 60_000 });
    return;
  }
  await initdb();
  const tmp = mkdtempSync(join(root, 'new-'));
  try {
    await run('cp', ['-a', data, join(tmp, 'data')], { timeout: 60_000 });
    renameSync(join(tmp, 'data'), template);
  } catch {
    // (another file kept its copy first, or this one could not: the next server runs initdb)
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

export async function startPostgres(opts: { port?: number; settings?: Record<string, string> } = {}): Promise<PostgresServer> {
  const bin = postgresBinDir();
  const user = runAs();
  const port = opts.port ?? await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'turnpike-pg-'));
  dirs.add(dir);
  if (user) chownSync(dir, user.uid, user.gid);
  const data = join(dir, 'data');
  const as = user ? { uid: user.uid, gid: user.gid } : {};
  try {
    await initCluster(bin, data, dir, user);
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    dirs.delete(dir);
    throw new Error(`initdb failed: ${(err as Error).message}`);
  }
  const settings: Record<string, string> = {
    listen_addresses: '127.0.0.1',
    unix_socket_directories: dir,
    max_connections: '60',
    shared_buffers: '16MB',
    fsync: 'on', // durability is what the tests are about
    log_min_messages: 'fatal',
    ...opts.settings,
  };
  const args = ['-D', data, '-p', String(port), ...Object.entries(settings).flatMap(([k, v]) => ['-c', `${k}=${v}`])];
  const url = `postgresql://postgres@127.0.0.1:${port}/postgres`;
  let child: ChildProcess | null = null;
  let stderr = '';

  const query = async <R extends pg.QueryResultRow>(sql: string, params?: unknown[], database = 'postgres'): Promise<R[]> => {
    const c = new pg.Client({ host: '127.0.0.1', port, user: 'postgres', database, connectionTimeoutMillis: 2000, query_timeout: 10_000 });
    c.on('error', () => undefined);
    await c.connect();
    try {
      return (await c.query<R>(sql, params)).rows;
    } finally {
      await c.end().catch(() => undefined);
    }
  };

  const launch = async () => {
    stderr = '';
    const c = spawn('sh', ['-c', WATCHED, 'postgres', ...args], {
      ...as,
      cwd: dir,
      detached: true, // its own session: a ^C meant for the test runner does not stop it mid-test
      stdio: ['ignore', 'ignore', 'pipe'],
      env: { ...process.env, TP_WATCH: String(process.pid), TP_DIR: dir, TP_POSTGRES: join(bin, 'postgres') },
    });
    child = c;
    live.add(c);
    c.stderr!.on('data', (d) => { stderr = (stderr + d.toString()).slice(-4000); });
    c.once('exit', () => live.delete(c));
    try {
      await until(`postgres on port ${port}`, 20_000, async () => {
        if (c.exitCode !== null || c.signalCode !== null) throw new Error(`postgres exited (${c.exitCode ?? c.signalCode}): ${stderr}`);
        await query('SELECT 1');
        return true;
      });
    } catch (err) {
      c.kill('SIGQUIT');
      throw new Error(`${(err as Error).message} ${stderr}`);
    }
  };

  const shutdown = async (mode: 'fast' | 'immediate' = 'fast') => {
    const c = child;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    const gone = new Promise<void>((r) => c.once('exit', () => r()));
    signalAll('SIGCONT'); // if paused
    c.kill(mode === 'fast' ? 'SIGINT' : 'SIGQUIT');
    const t = setTimeout(() => signalAll('SIGKILL'), 10_000);
    await gone;
    clearTimeout(t);
    // The postmaster exits only after its backends did (immediate mode too), so a restart finds no stale shared memory.
  };

  /** The postmaster, then its children (backends call setsid(): they are not in its process group). */
  const signalAll = (sig: NodeJS.Signals) => {
    const c = child;
    if (!c?.pid || c.exitCode !== null || c.signalCode !== null) return;
    const pids = sig === 'SIGCONT' ? [...childrenOf(c.pid), c.pid] : [c.pid, ...childrenOf(c.pid)];
    for (const pid of pids) {
      try {
        process.kill(pid, sig);
      } catch { /* gone */ }
    }
  };

  await launch();
  return {
    port,
    url,
    dir,
    get pid() { return child?.pid; },
    async createDatabase(name: string) {
      if (!/^[a-z_][a-z0-9_]*$/.test(name)) throw new Error(`bad database name ${name}`);
      await query(`CREATE DATABASE ${name}`);
      return `postgresql://postgres@127.0.0.1:${port}/${name}`;
    },
    query,
    shutdown,
    restart: launch,
    pause: () => signalAll('SIGSTOP'),
    resume: () => signalAll('SIGCONT'),
    async stop() {
      await shutdown('fast');
      rmSync(dir, { recursive: true, force: true });
      dirs.delete(dir);
    },
  };
}
