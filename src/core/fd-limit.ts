/**
 * Running out of file descriptors, said in the log. At the open-files limit (ulimit -n,
 * systemd's LimitNOFILE) libuv accepts each new connection on a descriptor it keeps in reserve
 * and closes it at once: the client sees its connection closed or reset, and the process sees
 * nothing at all. Upstream connects fail with EMFILE. So:
 *
 * - a probe opens /dev/null once a second (async, on the thread pool; one descriptor for a
 *   moment): EMFILE or ENFILE there means new connections are being dropped right now;
 * - a listener's 'error' (an accept error libuv could not absorb: node emits it and the server
 *   keeps listening; without a handler it would end the process) is logged;
 * - an upstream connect that fails with EMFILE/ENFILE is logged (the forwarder reports it).
 *
 * Each kind is logged at most once per window (10 s), the first at once; what happened after
 * it in the window is logged when the window ends, with how many times (`occurrences`).
 * A per-process resource, hence one per process (workers have their own).
 */
import { readFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import type { Server as NetServer } from 'node:net';
import type { Logger } from './log.js';

/** Out of descriptors: this process's limit (EMFILE) or the system's (ENFILE). */
export const FD_EXHAUSTED: ReadonlySet<string> = new Set(['EMFILE', 'ENFILE']);

const ADVICE = 'raise the open-files limit (ulimit -n, systemd LimitNOFILE=, a container\'s nofile ulimit)';

/** Logs each kind of event at most once per window, with the count of what it held back. */
export class ThrottledWarnings {
  private readonly kinds = new Map<string, { until: number; held: number; fields: Record<string, unknown>; msg: string; timer: NodeJS.Timeout | undefined }>();

  constructor(
    private readonly log: () => Pick<Logger, 'warn'> | null,
    private readonly windowMs = 10_000,
  ) {}

  note(kind: string, fields: Record<string, unknown>, msg: string): void {
    const now = Date.now();
    const k = this.kinds.get(kind);
    if (k !== undefined && now < k.until) {
      k.held++;
      k.fields = fields;
      k.msg = msg;
      k.timer ??= setTimeout(() => this.flush(kind), k.until - now).unref();
      return;
    }
    this.kinds.set(kind, { until: now + this.windowMs, held: 0, fields, msg, timer: undefined });
    this.log()?.warn({ kind, ...fields, occurrences: 1 }, msg);
  }

  /** The end of a kind's window: what it held back, in one line (which opens a new window). */
  private flush(kind: string): void {
    const k = this.kinds.get(kind);
    if (k === undefined) return;
    k.timer = undefined;
    if (k.held === 0) return;
    this.log()?.warn({ kind, ...k.fields, occurrences: k.held, window_ms: this.windowMs }, k.msg);
    k.held = 0;
    k.until = Date.now() + this.windowMs;
  }

  /** A stop: what is held back is logged now, and the windows end. */
  clear(): void {
    for (const kind of this.kinds.keys()) {
      clearTimeout(this.kinds.get(kind)!.timer);
      this.flush(kind);
    }
    this.kinds.clear();
  }
}

/** The soft open-files limit (Linux: /proc/self/limits), or null. Read once, when a gateway starts. */
let limitRead = false;
let limit: number | null = null;
function openFilesLimit(): number | null {
  if (limitRead) return limit;
  limitRead = true;
  try {
    const m = /^Max open files\s+(\d+)/m.exec(readFileSync('/proc/self/limits', 'utf8'));
    limit = m ? Number(m[1]) : null;
  } catch {
    limit = null;
  }
  return limit;
}

class FdWatch {
  private readonly loggers: Logger[] = [];
  readonly warnings = new ThrottledWarnings(() => this.loggers[0] ?? null);
  private probe: NodeJS.Timeout | undefined;
  private probing = false;

  /** A gateway of this process starts: the probe runs while one is attached. */
  attach(log: Logger, probeMs = 1000): void {
    this.loggers.push(log);
    openFilesLimit(); // (now: at the limit, the file could not be opened)
    if (this.probe !== undefined) return;
    this.probe = setInterval(() => void this.probeOnce(), probeMs).unref();
  }

  detach(log: Logger): void {
    const i = this.loggers.indexOf(log);
    if (i === -1) return;
    if (this.loggers.length === 1) {
      clearInterval(this.probe);
      this.probe = undefined;
      this.warnings.clear(); // (said by the last one)
    }
    this.loggers.splice(i, 1);
  }

  private async probeOnce(): Promise<void> {
    if (this.probing) return;
    this.probing = true;
    try {
      await (await open('/dev/null', 'r')).close();
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? '';
      if (FD_EXHAUSTED.has(code)) {
        this.warnings.note('open-files', { code, limit: openFilesLimit() }, `out of file descriptors (${code}): new connections are closed as soon as they are accepted and upstream connects fail; ${ADVICE}`);
      }
    } finally {
      this.probing = false;
    }
  }

  /** Logs the accept errors of a listening server (it keeps listening). */
  watchListener(server: NetServer, name: string): void {
    server.on('error', (err: NodeJS.ErrnoException) => {
      const code = err.code ?? 'error';
      this.warnings.note(`accept:${name}`, { listener: name, code, ...(FD_EXHAUSTED.has(code) ? { limit: openFilesLimit() } : {}) },
        `the ${name} listener could not accept a connection (${code})${FD_EXHAUSTED.has(code) ? `: out of file descriptors; ${ADVICE}` : ''}; it keeps listening`);
    });
  }

  /** An upstream connect that failed for want of a descriptor. */
  upstreamConnect(code: string, service: string): void {
    this.warnings.note('upstream-connect', { code, service, limit: openFilesLimit() }, `out of file descriptors (${code}): could not connect to an upstream; ${ADVICE}`);
  }
}

/** This process's watch. */
export const fdWatch = new FdWatch();
