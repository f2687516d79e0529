/** Test helpers: in-process gateways, loopback upstreams, raw-socket clients and origins. */
import { createServer, request as httpRequest, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createNetServer, connect, type Server as NetServer, type Socket, type AddressInfo } from 'node:net';
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { parseConfigText } from '../src/config/load.js';
import { Gateway } from '../src/server/gateway.js';
import { compile } from '../src/config/compile.js';
import { ConfigError } from '../src/config/errors.js';
import { PoolRegistry } from '../src/upstream/pools.js';
import parsePrometheusTextFormat from 'parse-prometheus-text-format';

export interface TestGateway {
  gw: Gateway;
  port: number;
  url: string;
  adminUrl: string | null;
  close(): Promise<void>;
}

/** Starts a gateway from YAML text on a random port (listen: 127.0.0.1:0 unless given). */
export async function startGateway(yaml: string, env: NodeJS.ProcessEnv = {}): Promise<TestGateway> {
  let text = /^listen:/m.test(yaml) ? yaml : `listen: 127.0.0.1:0\n${yaml}`;
  // In-process gateways keep the test runner's stdout clean unless a test asks for an access log.
  if (!/^access_log:/m.test(text)) text += '\naccess_log: {enabled: false}\n';
  const gw = await Gateway.start(parseConfigText(text, { env }));
  const port = gw.proxyAddress!.port;
  return {
    gw,
    port,
    url: `http://127.0.0.1:${port}`,
    adminUrl: gw.adminAddress ? `http://127.0.0.1:${gw.adminAddress.port}` : null,
    close: () => gw.stop(),
  };
}

export interface TestUpstream {
  server: Server;
  port: number;
  url: string;
  requests: { method: string; url: string; headers: IncomingMessage['headers']; rawHeaders: string[]; body: Buffer }[];
  close(): Promise<void>;
}

/** A node:http upstream; the default handler echoes the request as JSON. */
export async function startUpstream(
  handler?: (req: IncomingMessage, res: ServerResponse, body: Buffer) => void,
): Promise<TestUpstream> {
  const requests: TestUpstream['requests'] = [];
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      requests.push({ method: req.method!, url: req.url!, headers: req.headers, rawHeaders: req.rawHeaders, body });
      if (handler) return handler(req, res, body);
      const out = JSON.stringify({ method: req.method, url: req.url, headers: req.headers, body: body.toString() });
      res.writeHead(200, { 'content-type': 'application/json' }).end(out);
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  return {
    server, port, url: `http://127.0.0.1:${port}`, requests,
    close: () => new Promise<void>((r) => { server.closeAllConnections(); server.close(() => r()); }),
  };
}

export interface RawOrigin {
  port: number;
  url: string;
  /** Every byte received, per connection, in arrival order. */
  connections: Buffer[];
  received(): string;
  close(): Promise<void>;
}

/**
 * A raw TCP origin that records the exact bytes it receives. `respond` is called with the
 * bytes so far on each data event and returns the raw response to write (or null to wait).
 */
export async function startRawOrigin(
  respond: (data: Buffer, socket: Socket) => string | Buffer | null | undefined,
): Promise<RawOrigin> {
  const connections: Buffer[] = [];
  const sockets = new Set<Socket>();
  const server: NetServer = createNetServer((socket) => {
    sockets.add(socket);
    const idx = connections.push(Buffer.alloc(0)) - 1;
    let answered = false;
    socket.on('data', (d) => {
      connections[idx] = Buffer.concat([connections[idx]!, d]);
      if (answered) return;
      const out = respond(connections[idx]!, socket);
      if (out != null) {
        answered = true;
        socket.write(out);
      }
    });
    socket.on('error', () => {});
    socket.on('close', () => sockets.delete(socket));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  return {
    port, url: `http://127.0.0.1:${port}`, connections,
    received: () => Buffer.concat(connections).toString('latin1'),
    close: () => new Promise<void>((r) => { for (const s of sockets) s.destroy(); server.close(() => r()); }),
  };
}

/** Complete requests (headers + body by Content-Length) seen in raw bytes: used to count what an origin received. */
export function countRequests(raw: string): number {
  return (raw.match(/(GET|POST|PUT|DELETE|HEAD|OPTIONS|PATCH|TRACE) \S+ HTTP\/1\.[01]\r\n/g) ?? []).length;
}

/**
 * Sends raw bytes and collects everything the server sends until it closes the connection
 * or `idleMs` passes without data. `closed` says whether the server closed it.
 */
export function rawRequest(port: number, data: string | Buffer, idleMs = 1500): Promise<{ text: string; closed: boolean }> {
  return new Promise((resolve) => {
    const sock = connect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    let timer: NodeJS.Timeout;
    const done = (closed: boolean) => {
      clearTimeout(timer);
      sock.destroy();
      resolve({ text: Buffer.concat(chunks).toString('latin1'), closed });
    };
    const arm = () => {
      clearTimeout(timer);
      timer = setTimeout(() => done(false), idleMs);
    };
    sock.on('connect', () => { sock.write(data); arm(); });
    sock.on('data', (d) => { chunks.push(d); arm(); });
    sock.on('end', () => done(true));
    sock.on('close', () => done(true));
    sock.on('error', () => done(true));
  });
}

/** Parses the status codes of every response in a raw HTTP/1.1 byte stream. */
export function statuses(raw: string): number[] {
  return [...raw.matchAll(/HTTP\/1\.1 (\d{3}) /g)].map((m) => Number(m[1]));
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export interface SimpleResponse {
  status: number;
  headers: IncomingMessage['headers'];
  rawHeaders: string[];
  body: string;
  informational: { status: number; headers: Record<string, unknown> }[];
}

/** One request with node:http (no agent reuse); resolves with the whole response. */
export function request(
  url: string,
  opts: { method?: string; headers?: Record<string, string | string[]> | string[]; body?: string | Buffer; setHost?: boolean } = {},
): Promise<SimpleResponse> {
  return new Promise((resolve, reject) => {
    const informational: SimpleResponse['informational'] = [];
    const req = httpRequest(url, { method: opts.method ?? 'GET', headers: opts.headers as never, agent: false, setHost: opts.setHost ?? true }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({
        status: res.statusCode!, headers: res.headers, rawHeaders: res.rawHeaders,
        body: Buffer.concat(chunks).toString(), informational,
      }));
      res.on('error', reject);
    });
    req.on('information', (info) => informational.push({ status: info.statusCode, headers: info.headers }));
    req.on('error', reject);
    req.end(opts.body);
  });
}

/** A loopback port that was free a moment ago (nothing listens on it when this returns). */
export async function freePort(): Promise<number> {
  const s = createNetServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as AddressInfo).port;
  await new Promise((r) => s.close(r));
  return port;
}

/** The CLI as users run it: bin/turnpike.js (the built copy, `npm run build`). stdout and stderr are collected together. */
export interface Running {
  child: ChildProcess;
  stderr: () => string;
  exit: Promise<number | null>;
}

const cliGroups = new Set<number>();
process.once('exit', () => {
  // Whatever a test left running (a failed assertion before its cleanup): the CLI and its workers go too.
  for (const pgid of cliGroups) {
    try {
      process.kill(-pgid, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
});

/** Whether any process of the group is still there. */
function groupAlive(pgid: number): boolean {
  try {
    process.kill(-pgid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * A process group a test spawned (detached: true) by hand: SIGKILLed when the test process exits
 * if it is still there (see the exit hook above). stopGroup ends it.
 */
export function trackGroup(pgid: number): void {
  cliGroups.add(pgid);
}

/**
 * Ends a process group (a shell, the gateway it started, its workers, a `| cat`): SIGTERM to
 * every process in it, then waits until none is left — not only the shell, which dies at once
 * while the gateway drains —, SIGKILL after `graceMs`.
 */
export async function stopGroup(pgid: number, graceMs = 15_000): Promise<void> {
  try {
    process.kill(-pgid, 'SIGTERM');
  } catch {
    /* gone */
  }
  const end = Date.now() + graceMs;
  while (groupAlive(pgid) && Date.now() < end) await sleep(50);
  if (groupAlive(pgid)) {
    try {
      process.kill(-pgid, 'SIGKILL');
    } catch {
      /* gone */
    }
    while (groupAlive(pgid)) await sleep(20);
  }
  cliGroups.delete(pgid);
}

/** `fds`: open files the process gets as its fds 3, 4... (the workers of `workers: N` do not). */
export function startCli(args: string[], env: NodeJS.ProcessEnv, fds: number[] = []): Running {
  const child = spawn(process.execPath, ['bin/turnpike.js', ...args], {
    env: { ...process.env, TURNPIKE_LOG_LEVEL: 'info', ...env },
    stdio: ['ignore', 'pipe', 'pipe', ...fds],
    detached: true, // its own process group, with its workers: see the exit hook above
  });
  if (child.pid) cliGroups.add(child.pid);
  let err = '';
  child.stderr!.on('data', (d) => (err += d));
  child.stdout!.on('data', (d) => (err += d));
  const exit = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  void exit.then(() => {
    // Workers outlive a primary only by a drain: give them a moment, then make sure.
    setTimeout(() => {
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        /* gone */
      }
      cliGroups.delete(child.pid!);
    }, 3000).unref();
  });
  return { child, stderr: () => err, exit };
}

export async function waitFor(url: string, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  for (;;) {
    try {
      const r = await request(url);
      if (r.status === 200) return;
    } catch {
      /* not up yet */
    }
    if (Date.now() > end) throw new Error(`${url} did not come up`);
    await sleep(50);
  }
}


/** Polls `check` until it returns true (or throws its last error after `ms`). */
export async function eventually(check: () => boolean | Promise<boolean>, ms = 5000, every = 100): Promise<void> {
  const end = Date.now() + ms;
  for (;;) {
    let last: unknown;
    try {
      if (await check()) return;
    } catch (e) {
      last = e;
    }
    if (Date.now() > end) throw new Error(`condition not met within ${ms} ms${last ? `: ${String(last)}` : ''}`);
    await sleep(every);
  }
}

/** The issues a config text is refused with (path, line, message); [] when it compiles. */
export function configIssues(text: string, env: NodeJS.ProcessEnv = {}): { path: string; line?: number; message: string }[] {
  const pools = new PoolRegistry();
  try {
    compile(parseConfigText(text, { env }), { pools }).dispose();
    return [];
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    return err.issues;
  } finally {
    void pools.closeAll();
  }
}

/**
 * The samples of a Prometheus text exposition, parsed by parse-prometheus-text-format (which
 * only groups unlabelled histograms: histogram families are read as their _bucket / _sum /
 * _count samples).
 */
export function promSamples(text: string): { name: string; labels: Record<string, string>; value: number }[] {
  return parsePrometheusTextFormat(text.replace(/^# TYPE (\S+) histogram$/gm, '# TYPE $1 untyped'))
    .flatMap((f) => f.metrics.map((m) => ({ name: f.name, labels: m.labels ?? {}, value: Number(m.value) })));
}

/** The value of the sample of `name` whose labels include `labels` (0 when absent). */
export function promValue(text: string, name: string, labels: Record<string, string>): number {
  return promSamples(text).find((x) => x.name === name && Object.entries(labels).every(([k, v]) => x.labels[k] === v))?.value ?? 0;
}

/** The primary's children (its workers), from /proc. */
export function children(pid: number): number[] {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

/** A Redis that answers (INFO, then +OK to everything) only the connections `answer` picks, by their order: the others wait for ever. */
export async function fakeRedis(answer: (n: number) => boolean) {
  const sockets: Socket[] = [];
  const server = createNetServer((s) => {
    sockets.push(s);
    if (!answer(sockets.length)) return;
    let buf = Buffer.alloc(0);
    s.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      // One command: *N CRLF, then N times $len CRLF arg CRLF.
      for (;;) {
        const args: string[] = [];
        let at = 0;
        const line = () => {
          const end = buf.indexOf('\r\n', at);
          if (end < 0) return null;
          const l = buf.toString('latin1', at, end);
          at = end + 2;
          return l;
        };
        const head = line();
        if (head === null) return;
        let complete = true;
        for (let i = 0, n = Number(head.slice(1)); i < n; i++) {
          const len = line();
          if (len === null || buf.length < at + Number(len.slice(1)) + 2) { complete = false; break; }
          args.push(buf.toString('latin1', at, at + Number(len.slice(1))));
          at += Number(len.slice(1)) + 2;
        }
        if (!complete) return;
        buf = buf.subarray(at);
        const info = '# Server\r\nredis_version:7.2.0\r\nloading:0\r\n';
        s.write(args[0]?.toUpperCase() === 'INFO' ? `$${info.length}\r\n${info}\r\n` : '+OK\r\n');
      }
    });
    s.on('error', () => {});
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: (server.address() as AddressInfo).port,
    sockets,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise((r) => server.close(r));
    },
  };
}
