/**
 * Real redis-server processes for tests: a single server on a free loopback port (no
 * persistence, its own temp dir), and a Redis Cluster of N masters made with
 * `redis-cli --cluster create`. Every process is killed and every temp dir removed on stop, and
 * on process exit if a test forgot to.
 */
import { spawn, spawnSync, execFile, type ChildProcess } from 'node:child_process';
import { createServer, connect } from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);
const live = new Set<ChildProcess>();
const dirs = new Set<string>();
process.on('exit', () => {
  for (const c of live) c.kill('SIGKILL');
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

/** Throws, saying what to install, when redis-server or redis-cli is missing. */
export function requireRedis(): void {
  const missing = ['redis-server', 'redis-cli'].filter((b) => spawnSync('sh', ['-c', `command -v ${b}`]).status !== 0);
  if (missing.length === 0) return;
  const root = process.getuid?.() === 0;
  throw new Error(
    `${missing.join(' and ')} not found: these tests run real Redis servers. Install the Debian package redis-server ` +
    `(apt-get install redis-server; it also provides redis-cli)${root ? '' : ' as root'}, or run the tests with ` +
    '`node scripts/run-tests.mjs` as root, which installs it.',
  );
}

/** A port nobody listens on now (the kernel picks it; redis-server cannot take port 0 itself). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

/** One RESP command over a fresh connection; resolves with the raw reply text. */
export function rawCommand(port: number, args: string[], timeoutMs = 500): Promise<string> {
  return new Promise((resolve, reject) => {
    const sock = connect(port, '127.0.0.1');
    let buf = '';
    const timer = setTimeout(() => { sock.destroy(); reject(new Error('timeout')); }, timeoutMs);
    sock.on('error', (e) => { clearTimeout(timer); reject(e); });
    sock.on('connect', () => sock.write(`*${args.length}\r\n${args.map((a) => `$${Buffer.byteLength(a)}\r\n${a}\r\n`).join('')}`));
    sock.on('data', (d) => {
      buf += d.toString();
      // Simple (+ - :) replies and a nil ($-1) end with their first CRLF; a bulk string ($n) once n bytes follow.
      const m = /^\$(\d+)\r\n/.exec(buf);
      if ((m && buf.length >= m[0].length + Number(m[1]) + 2) || (!/^\$\d/.test(buf) && buf.includes('\r\n'))) {
        clearTimeout(timer);
        sock.destroy();
        resolve(buf);
      }
    });
  });
}

async function until(what: string, ms: number, probe: () => Promise<boolean>): Promise<void> {
  const end = Date.now() + ms;
  for (;;) {
    if (await probe().catch(() => false)) return;
    if (Date.now() > end) throw new Error(`${what}: not within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

const WATCHED = `(while kill -0 "$TP_WATCH" 2>/dev/null; do kill -0 $$ 2>/dev/null || exit 0; sleep 0.5; done; kill -9 $$ 2>/dev/null; sleep 0.2; rm -rf "$TP_DIR") &
exec redis-server "$@"`;

export interface RedisServer {
  port: number;
  url: string;
  dir: string;
  readonly pid: number | undefined;
  /** SIGKILL (no goodbye to clients), resolves once the process is gone. */
  kill(signal?: NodeJS.Signals): Promise<void>;
  /** SIGSTOP / SIGCONT: a hung server (connections open, no answers). */
  pause(): void;
  resume(): void;
  /** Starts it again on the same port (and dir). */
  restart(): Promise<void>;
  /** Stops it and removes its dir. */
  stop(): Promise<void>;
}

export async function startRedis(opts: { port?: number; extra?: string[] } = {}): Promise<RedisServer> {
  requireRedis();
  const port = opts.port ?? await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'turnpike-redis-'));
  dirs.add(dir);
  const args = ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir, '--daemonize', 'no', '--loglevel', 'warning', ...(opts.extra ?? [])];
  let child: ChildProcess | null = null;
  let stderr = '';
  const launch = async () => {
    // `exec` keeps the pid (signals and 'exit' are redis-server's own); the watcher beside it
    // kills the server and removes its dir if this process dies without cleaning up (SIGKILL,
    // a killed test runner), and ends by itself once the server is gone.
    const c = spawn('sh', ['-c', WATCHED, 'redis-server', ...args], {
      stdio: ['ignore', 'ignore', 'pipe'],
      env: { ...process.env, TP_WATCH: String(process.pid), TP_DIR: dir },
    });
    child = c;
    live.add(c);
    c.stderr!.on('data', (d) => { stderr += d.toString(); });
    c.once('exit', () => live.delete(c));
    try {
      await until(`redis-server on port ${port}`, 5000, async () => {
        if (c.exitCode !== null) throw new Error(`redis-server exited (${c.exitCode}): ${stderr}`);
        return (await rawCommand(port, ['PING'])).startsWith('+PONG');
      });
    } catch (err) {
      c.kill('SIGKILL');
      throw new Error(`${(err as Error).message} ${stderr}`);
    }
  };
  const kill = async (signal: NodeJS.Signals = 'SIGKILL') => {
    const c = child;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    const gone = new Promise<void>((r) => c.once('exit', () => r()));
    c.kill('SIGCONT');
    c.kill(signal);
    const t = setTimeout(() => c.kill('SIGKILL'), 2000);
    await gone;
    clearTimeout(t);
  };
  await launch();
  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    dir,
    get pid() { return child?.pid; },
    kill,
    pause: () => { child?.kill('SIGSTOP'); },
    resume: () => { child?.kill('SIGCONT'); },
    restart: launch,
    async stop() {
      await kill('SIGTERM');
      rmSync(dir, { recursive: true, force: true });
      dirs.delete(dir);
    },
  };
}

export interface RedisClusterHandle {
  nodes: RedisServer[];
  /** redis:// URLs of every master (the store's `cluster` seeds). */
  seeds: string[];
  stop(): Promise<void>;
}

/** N masters (no replicas) on loopback, every slot assigned, cluster_state:ok on all of them. */
export async function startRedisCluster(n = 3): Promise<RedisClusterHandle> {
  requireRedis();
  const nodes: RedisServer[] = [];
  try {
    for (let i = 0; i < n; i++) {
      // The cluster bus port gets a free port of its own (port + 10000 may be taken or > 65535).
      const busPort = await freePort();
      nodes.push(await startRedis({
        extra: ['--cluster-enabled', 'yes', '--cluster-config-file', 'nodes.conf', '--cluster-node-timeout', '2000', '--cluster-port', String(busPort)],
      }));
    }
    await run('redis-cli', ['--cluster', 'create', ...nodes.map((s) => `127.0.0.1:${s.port}`), '--cluster-replicas', '0', '--cluster-yes'], { timeout: 20_000 });
    for (const s of nodes) {
      await until(`cluster_state:ok on ${s.port}`, 15_000, async () => (await rawCommand(s.port, ['CLUSTER', 'INFO'])).includes('cluster_state:ok'));
    }
    // Every node must also know every other node's slots (their views converge over the bus).
    for (const s of nodes) {
      await until(`slots known on ${s.port}`, 15_000, async () => {
        const info = await rawCommand(s.port, ['CLUSTER', 'INFO']);
        return /cluster_slots_ok:16384/.test(info) && new RegExp(`cluster_known_nodes:${n}\\b`).test(info);
      });
    }
  } catch (err) {
    await Promise.all(nodes.map((s) => s.stop()));
    throw err;
  }
  return {
    nodes,
    seeds: nodes.map((s) => s.url),
    stop: async () => { await Promise.all(nodes.map((s) => s.stop())); },
  };
}

/**
 * A TCP proxy to a loopback port whose current connections can be silenced — their bytes
 * dropped both ways, the sockets left open (a partition without FIN or RST: a NAT or load
 * balancer lost the connection) — while new connections go through.
 */
export async function silenceableProxy(port: number): Promise<{ url: string; silence(): void; close(): void }> {
  const links = new Set<{ dead: boolean; a: import('node:net').Socket; b: import('node:net').Socket }>();
  const server = createServer((client) => {
    const upstream = connect(port, '127.0.0.1');
    const link = { dead: false, a: client, b: upstream };
    links.add(link);
    client.on('data', (d) => { if (!link.dead) upstream.write(d); });
    upstream.on('data', (d) => { if (!link.dead) client.write(d); });
    for (const [x, y] of [[client, upstream], [upstream, client]] as const) {
      x.on('error', () => y.destroy());
      x.on('close', () => { links.delete(link); y.destroy(); });
    }
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return {
    url: `redis://127.0.0.1:${(server.address() as { port: number }).port}`,
    silence: () => { for (const l of links) l.dead = true; },
    close: () => {
      for (const l of links) { l.a.destroy(); l.b.destroy(); }
      server.close();
    },
  };
}
