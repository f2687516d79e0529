/**
 * Destinations for the access log: stdout, a file (reopened on rotation) or an HTTP receiver
 * (NDJSON batches). Each is a pino destination (`pino(options, sink)`) whose write() never throws
 * and never blocks: when a destination cannot keep up, lines are dropped and counted rather than
 * buffered without bound.
 */
import { closeSync, openSync } from 'node:fs';
import { dirname } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { pino } from 'pino';
import { Pool } from 'undici';
import { urlTarget, type UrlTarget } from '../core/url-auth.js';
import { makeDirectory } from '../core/mkdir.js';

export type SinkSetting =
  | { destination: 'stdout' }
  | { destination: 'file'; path: string }
  | {
      destination: 'http';
      url: string;
      headers?: Record<string, string>;
      /** Lines per POST (default 500). */
      batch_lines?: number;
      /** Bytes per POST body (default 1 MiB; a single longer line is sent alone). */
      batch_bytes?: number;
      /** A partial batch is sent after this long (default 1000). */
      interval_ms?: number;
      /** Lines waiting for a POST are held up to this many bytes, newer ones are dropped (default 16 MiB). */
      max_queue_bytes?: number;
      /** Per POST attempt, and the bound on flush() / close() (default 5000). */
      timeout_ms?: number;
    };

export interface AccessSink {
  /**
   * pino-compatible destination: receives complete lines ("{...}\n"). Never throws, never blocks.
   * Returns false when the line was dropped (stdout / file: also when the buffer is past its high-water mark).
   */
  write(chunk: string): boolean;
  /** Reopens the file (log rotation: SIGUSR1 after the file was moved away). No-op for stdout/http. */
  reopen(): void;
  /**
   * Writes out / sends what is buffered (http: one or more POSTs); resolves when done or failed
   * (bounded by timeout). The optional callback is pino's `logger.flush(cb)` contract.
   */
  flush(cb?: (err?: Error) => void): Promise<void>;
  /** flush() then release fds / connections. Lines written afterwards are dropped. */
  close(): Promise<void>;
  /** Lines dropped because the sink could not keep up or the HTTP receiver failed (counter). */
  readonly dropped: number;
  /** Lines handed over (counter): stdout / file: accepted into the write buffer; http: acknowledged with a 2xx. */
  readonly written: number;
}

type Log = { warn(obj: object, msg: string): void };
type Warn = (kind: string, obj: object, msg: string) => void;
type SonicBoom = ReturnType<typeof pino.destination>;

const MiB = 1024 * 1024;
/** What stdout / file buffer while the fd is slower than the traffic (e.g. a stalled pipe). */
const FD_MAX_BUFFER = 16 * MiB;
/** Bound on flush() / close() for stdout / file (http uses timeout_ms). */
const FD_FLUSH_TIMEOUT_MS = 5000;
/** stdout / file: lines go to sonic-boom in chunks of about this many bytes, or every FD_FLUSH_EVERY_MS. */
const FD_CHUNK = 128 * 1024;
const FD_FLUSH_EVERY_MS = 100;
/**
 * Writes to a pipe are atomic up to PIPE_BUF (4096 bytes on Linux, the POSIX minimum is 512 but
 * every platform Node runs on has at least 4096): where several processes share stdout (workers > 1),
 * each write carries whole lines and at most this many bytes, so that no two workers' writes
 * splice mid-line. A single longer line is written alone and cannot be atomic (docs/observability.md).
 */
export const PIPE_ATOMIC = 4096;
/** Delays before the 2nd and 3rd attempt of a failed POST; then the batch is dropped. */
const BACKOFF_MS = [250, 1000];
const WARN_EVERY_MS = 10_000;

/** An http destination's URL (without user and password) and the Basic credentials they make; throws what is wrong with it. */
function httpTarget(u: string): UrlTarget {
  let t: UrlTarget;
  try {
    t = urlTarget(u);
  } catch (err) {
    throw new Error(`access log: the http destination url: ${(err as Error).message}`);
  }
  if (t.url.protocol !== 'http:' && t.url.protocol !== 'https:') {
    throw new Error(`access log: the http destination url must be http: or https:, not ${t.url.protocol}`);
  }
  return t;
}

/** Throws when a file destination cannot be opened for appending, or an http one's URL is bad (what createSink would refuse). */
export function checkSink(setting: SinkSetting): void {
  if (setting.destination === 'http') {
    httpTarget(setting.url);
    return;
  }
  if (setting.destination !== 'file') return;
  try {
    makeDirectory(dirname(setting.path));
    closeSync(openSync(setting.path, 'a'));
  } catch (err) {
    throw new Error(`access log: cannot open ${setting.path} for writing: ${(err as Error).message}`, { cause: err });
  }
}

/**
 * `shared`: other processes write to the same stdout (cluster workers): writes are cut at line
 * boundaries at PIPE_ATOMIC bytes so that they stay atomic on a pipe.
 */
export function createSink(setting: SinkSetting, log?: Log, opts: { shared?: boolean } = {}): AccessSink {
  const warn = rateLimited(log);
  switch (setting.destination) {
    case 'stdout':
      if (opts.shared) {
        // sonic-boom's maxWrite: it joins consecutive writes up to this size, one fs.write each.
        return new FdSink(pino.destination({ dest: 1, sync: false, maxLength: FD_MAX_BUFFER, maxWrite: PIPE_ATOMIC }), 'stdout', warn, false, PIPE_ATOMIC);
      }
      return new FdSink(pino.destination({ dest: 1, sync: false, maxLength: FD_MAX_BUFFER }), 'stdout', warn, false);
    case 'file':
      // sonic-boom opens asynchronously and reports failures as an 'error' event; open once
      // synchronously first so that a bad path is a config error instead.
      checkSink(setting);
      return new FdSink(
        pino.destination({ dest: setting.path, sync: false, mkdir: true, append: true, maxLength: FD_MAX_BUFFER }),
        setting.path,
        warn,
        true,
      );
    case 'http':
      return new HttpSink(setting, warn);
    default:
      throw new Error(`access log: unknown destination ${JSON.stringify((setting as { destination: unknown }).destination)}`);
  }
}

/** log.warn at most once per WARN_EVERY_MS for each kind of trouble. */
function rateLimited(log: Log | undefined): Warn {
  const last = new Map<string, number>();
  return (kind, obj, msg) => {
    const now = Date.now();
    if (!log || now - (last.get(kind) ?? -Infinity) < WARN_EVERY_MS) return;
    last.set(kind, now);
    log.warn(obj, msg);
  };
}

/** Resolves when p does or after ms, whichever comes first. */
function within(p: Promise<unknown>, ms: number): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    void p.then(() => {
      clearTimeout(t);
      resolve();
    });
  });
}

/**
 * stdout or a file, through an asynchronous sonic-boom. Lines are gathered here and handed over
 * in chunks (FD_CHUNK bytes, or every FD_FLUSH_EVERY_MS): sonic-boom measures its pending
 * buffer with Buffer.byteLength on every write, which per line would cost O(buffer) each time.
 */
class FdSink implements AccessSink {
  #dropped = 0;
  #written = 0;
  /** Lines not handed to sonic-boom yet, and their length (UTF-16 units: only a threshold). */
  private lines: string[] = [];
  private chars = 0;
  /** Bytes handed to sonic-boom and not written to the fd yet ('write' events report progress). */
  private pending = 0;
  private wakers: (() => void)[] = [];
  private readonly timer: NodeJS.Timeout;
  private closing?: Promise<void>;
  /** The fd's other end is gone for good (EPIPE): nothing more can be written. */
  private broken = false;
  /**
   * The last write failed (disk full, an I/O error) and none succeeded since: sonic-boom keeps
   * the data and tries it again only with the next write.
   */
  private failing = false;

  constructor(
    private readonly stream: SonicBoom,
    private readonly name: string,
    private readonly warn: Warn,
    private readonly isFile: boolean,
    /** 0: lines are handed over in one chunk; otherwise in writes of whole lines of at most this many bytes. */
    private readonly maxWrite = 0,
  ) {
    this.timer = setInterval(() => this.handOver(), FD_FLUSH_EVERY_MS).unref();
    stream.on('write', (n: number) => {
      this.failing = false;
      this.pending -= n;
      if (this.pending <= 0) this.wake();
    });
    // Emitted synchronously from write() when sonic-boom's buffer would exceed maxLength.
    stream.on('drop', (data: string) => {
      let n = 0;
      for (let i = data.indexOf('\n'); i !== -1; i = data.indexOf('\n', i + 1)) n++;
      this.#dropped += n;
      this.#written -= n;
      // (handOver counted these bytes as pending: they never will be written)
      this.pending -= Buffer.byteLength(data);
      if (this.pending <= 0) this.wake();
      warn('drop', { destination: name, dropped: this.#dropped }, `access log: ${name} cannot keep up, dropping lines`);
    });
    // Without a listener an 'error' event would crash the process. sonic-boom retries the
    // failed data on the next write — except when the other end of a pipe or socket is gone for
    // good (stdout read by a log shipper that exited): then what is buffered and every later line
    // is dropped and counted, and flush() and close() do not wait for writes that cannot happen.
    stream.on('error', (err: NodeJS.ErrnoException) => {
      if (!this.broken && (err.code === 'EPIPE' || err.code === 'ECONNRESET')) {
        this.broken = true;
        this.#dropped += this.lines.length;
        this.#written -= this.lines.length;
        this.lines = [];
        this.chars = 0;
        this.pending = 0;
        clearInterval(this.timer);
        this.wake();
        warn('error', { destination: name, err }, `access log: ${name} is closed at its other end (its reader is gone): lines are dropped from now on`);
        return;
      }
      this.failing = true;
      this.wake();
      warn('error', { destination: name, err }, `access log: writing to ${name} failed`);
    });
  }

  get dropped(): number {
    return this.#dropped;
  }

  get written(): number {
    return this.#written;
  }

  write(chunk: string): boolean {
    if (this.closing || this.broken) {
      this.#dropped++;
      return false;
    }
    this.lines.push(chunk);
    this.#written++;
    if ((this.chars += chunk.length) >= FD_CHUNK) this.handOver();
    return true;
  }

  /** Gives the gathered lines to sonic-boom as one chunk (or as pieces of at most maxWrite bytes of whole lines). */
  private handOver(): void {
    if (this.lines.length === 0) return;
    const lines = this.lines;
    this.lines = [];
    this.chars = 0;
    const max = this.maxWrite;
    if (max === 0) {
      this.put(lines.join(''), -1);
      return;
    }
    let piece = '';
    let bytes = 0;
    for (const line of lines) {
      const b = Buffer.byteLength(line);
      if (bytes > 0 && bytes + b > max) {
        this.put(piece, bytes);
        piece = '';
        bytes = 0;
      }
      piece += line;
      bytes += b;
    }
    this.put(piece, bytes);
  }

  private put(chunk: string, bytes: number): void {
    this.pending += bytes < 0 ? Buffer.byteLength(chunk) : bytes;
    try {
      this.stream.write(chunk);
    } catch {
      this.stream.emit('drop', chunk); // destroyed: counted like a drop
    }
  }

  reopen(): void {
    if (this.closing || this.broken || !this.isFile) return;
    this.handOver();
    try {
      this.stream.reopen();
    } catch (err) {
      this.warn('error', { destination: this.name, err }, `access log: reopening ${this.name} failed`);
    }
  }

  flush(cb?: (err?: Error) => void): Promise<void> {
    this.handOver();
    // After a failed write the data is only tried again with the next one: tried now, so that
    // its outcome (written, or failed again: the wait ends) is known at once, not after the bound.
    if (this.failing && this.pending > 0) this.retry();
    const done =
      this.pending <= 0 ? Promise.resolve() : within(new Promise<void>((r) => this.wakers.push(r)), FD_FLUSH_TIMEOUT_MS);
    if (cb) void done.then(() => cb());
    return done;
  }

  close(): Promise<void> {
    this.closing ??= (async () => {
      clearInterval(this.timer);
      await this.flush();
      // (sonic-boom would try the lines it holds again, and wait for them, before its 'close')
      if (this.broken) return;
      // A destination that still refuses writes (disk full): what it holds is lost, and its fd
      // is closed now — sonic-boom's end() would try once more, fail, and never close it (a
      // replaced sink's fd left open, a shutdown waiting out a second bound).
      if (this.failing) {
        this.destroy();
        return;
      }
      const closed = new Promise<void>((resolve) => {
        this.stream.once('close', resolve);
        this.stream.once('error', () => {
          this.destroy();
          resolve();
        });
        try {
          this.stream.end(); // stdout: marks the stream done, fd 1 stays open
        } catch {
          resolve(); // already destroyed
        }
      });
      await within(closed, FD_FLUSH_TIMEOUT_MS);
    })();
    return this.closing;
  }

  private wake(): void {
    for (const w of this.wakers.splice(0)) w();
  }

  /** Makes sonic-boom write what it holds (an empty write starts one when none is under way). */
  private retry(): void {
    try {
      this.stream.write('');
    } catch {
      /* destroyed */
    }
  }

  /** Closes the fd (not stdout's) without writing what is held. */
  private destroy(): void {
    try {
      this.stream.destroy();
    } catch {
      /* already */
    }
  }
}

/**
 * NDJSON batches POSTed to a receiver, one POST in flight at a time (keeps order). Memory is bounded
 * by max_queue_bytes (the queue) plus one batch (the POST in flight or in backoff).
 */
class HttpSink implements AccessSink {
  #dropped = 0;
  #written = 0;
  private readonly origin: string;
  private readonly path: string;
  private readonly headers: Record<string, string>;
  private readonly batchLines: number;
  private readonly batchBytes: number;
  private readonly intervalMs: number;
  private readonly maxQueueBytes: number;
  private readonly timeoutMs: number;
  private readonly pool: Pool;
  /** Aborted by close(): fails the POST in flight or its backoff. */
  private readonly aborter = new AbortController();

  private queue: string[] = [];
  private queueBytes = 0;
  // Line sequence numbers: lines are accepted, then taken into a batch, then settled (delivered
  // or dropped), all in order.
  private accepted = 0;
  private taken = 0;
  private settled = 0;
  /** Partial batches are sent without waiting until this many lines were taken (flush). */
  private flushUpTo = 0;
  private waiters: { upTo: number; resolve: () => void }[] = [];
  private inFlight?: Promise<void>;
  private timer?: NodeJS.Timeout;
  private closing?: Promise<void>;

  constructor(
    s: Extract<SinkSetting, { destination: 'http' }>,
    private readonly warn: Warn,
  ) {
    const { url, authorization } = httpTarget(s.url);
    this.origin = url.origin;
    this.path = url.pathname + url.search;
    // Lower-cased so that a configured Content-Type replaces the default instead of doubling it.
    // A user and password in the URL are Basic credentials (as in Kong's http-log), unless the
    // headers set Authorization; the origin logged never holds them.
    this.headers = { 'content-type': 'application/x-ndjson', ...(authorization !== null ? { authorization } : {}) };
    for (const [k, v] of Object.entries(s.headers ?? {})) this.headers[k.toLowerCase()] = v;
    this.batchLines = s.batch_lines ?? 500;
    this.batchBytes = s.batch_bytes ?? MiB;
    this.intervalMs = s.interval_ms ?? 1000;
    this.maxQueueBytes = s.max_queue_bytes ?? 16 * MiB;
    this.timeoutMs = s.timeout_ms ?? 5000;
    this.pool = new Pool(this.origin, { connections: 1, connect: { timeout: this.timeoutMs } });
  }

  get dropped(): number {
    return this.#dropped;
  }

  get written(): number {
    return this.#written;
  }

  write(chunk: string): boolean {
    const bytes = Buffer.byteLength(chunk);
    if (this.closing || this.queueBytes + bytes > this.maxQueueBytes) {
      this.#dropped++;
      if (!this.closing) {
        this.warn(
          'queue',
          { destination: this.origin, dropped: this.#dropped, max_queue_bytes: this.maxQueueBytes },
          `access log: ${this.origin} cannot keep up, dropping lines`,
        );
      }
      return false;
    }
    this.queue.push(chunk);
    this.queueBytes += bytes;
    this.accepted++;
    this.pump();
    return true;
  }

  reopen(): void {}

  flush(cb?: (err?: Error) => void): Promise<void> {
    const upTo = this.accepted;
    let done: Promise<void> = Promise.resolve();
    if (this.settled < upTo) {
      done = within(new Promise<void>((resolve) => this.waiters.push({ upTo, resolve })), this.timeoutMs);
      this.flushUpTo = Math.max(this.flushUpTo, upTo);
      this.pump();
    }
    if (cb) void done.then(() => cb());
    return done;
  }

  close(): Promise<void> {
    this.closing ??= (async () => {
      await this.flush();
      this.aborter.abort();
      clearTimeout(this.timer);
      const left = this.queue.length;
      this.queue = [];
      this.queueBytes = 0;
      this.#dropped += left;
      this.settle(left);
      await this.inFlight;
      await this.pool.destroy().catch(() => undefined);
    })();
    return this.closing;
  }

  /** Starts a POST if none is in flight and a batch is due; otherwise arms the interval timer. */
  private pump(timerFired = false): void {
    if (this.inFlight || this.queue.length === 0 || this.aborter.signal.aborted) return;
    const full = this.queue.length >= this.batchLines || this.queueBytes >= this.batchBytes;
    if (!full && !timerFired && this.flushUpTo <= this.taken) {
      this.timer ??= setTimeout(() => {
        this.timer = undefined;
        this.pump(true);
      }, this.intervalMs).unref();
      return;
    }
    let n = 0;
    let bytes = 0;
    for (const line of this.queue) {
      const b = Buffer.byteLength(line);
      if (n === this.batchLines || (n > 0 && bytes + b > this.batchBytes)) break;
      n++;
      bytes += b;
    }
    const body = this.queue.splice(0, n).join('');
    this.queueBytes -= bytes;
    this.taken += n;
    if (this.queue.length === 0) {
      clearTimeout(this.timer);
      this.timer = undefined;
    }
    this.inFlight = this.send(body, n).then(() => {
      this.inFlight = undefined;
      this.settle(n);
      this.pump();
    });
  }

  /** POSTs one batch with retries; never rejects. */
  private async send(body: string, lines: number): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      try {
        const res = await this.pool.request({
          path: this.path,
          method: 'POST',
          headers: this.headers,
          body,
          signal: AbortSignal.any([this.aborter.signal, AbortSignal.timeout(this.timeoutMs)]),
        });
        await res.body.dump();
        if (res.statusCode < 200 || res.statusCode > 299) throw new Error(`receiver answered ${res.statusCode}`);
        this.#written += lines;
        return;
      } catch (err) {
        const delay = BACKOFF_MS[attempt];
        if (delay === undefined || this.aborter.signal.aborted) {
          this.#dropped += lines;
          this.warn(
            'send',
            { destination: this.origin, err, lines, dropped: this.#dropped },
            `access log: could not deliver ${lines} lines to ${this.origin}, dropped them`,
          );
          return;
        }
        // An abort (close) ends the wait early; the next attempt then fails at once and drops.
        await sleep(delay, undefined, { ref: false, signal: this.aborter.signal }).catch(() => undefined);
      }
    }
  }

  private settle(n: number): void {
    this.settled += n;
    this.waiters = this.waiters.filter((w) => {
      if (w.upTo > this.settled) return true;
      w.resolve();
      return false;
    });
  }
}
