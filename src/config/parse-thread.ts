/**
 * Parsing and validating a config off the main thread. YAML parsing and schema validation of
 * a large config (10,000 routes: ~0.5 s) would stall every request in flight if done on the
 * event loop during a reload; here it runs in one long-lived worker thread, and only the
 * validated config comes back (as JSON text with its hash). Line numbers for errors found later (compile) are
 * recovered lazily by parsing the text again on the main thread — only when there is an error.
 */
import { Worker, isMainThread, parentPort } from 'node:worker_threads';
import { readlinkSync } from 'node:fs';
import { setPriority } from 'node:os';
import { execFile, spawnSync } from 'node:child_process';
import { ConfigError, type ConfigIssue } from './errors.js';
import { configHashOf, fastValidConfig, parseConfigText, type LoadedConfig } from './load.js';
import type { TurnpikeConfigInput } from './schema.js';

interface Job { id: number; text: string; file: string | undefined; env: NodeJS.ProcessEnv }
type Reply = { tid: number; idle: boolean } | { id: number; json: string; hash: string } | { id: number; issues: ConfigIssue[]; file: string | undefined } | { id: number; failure: string };

/** A LoadedConfig around an already validated object; lines are computed only if asked for. */
export function fromValidated(config: TurnpikeConfigInput, text: string, file: string | undefined, env?: NodeJS.ProcessEnv, configHash?: string): LoadedConfig {
  let full: LoadedConfig | null = null;
  const lazy = () => (full ??= parseConfigText(text, { file, env }));
  return { config, file, text, configHash, lineOf: (p) => lazy().lineOf(p), error: (issues) => lazy().error(issues) };
}

/** The parser thread's old-generation heap in MB: TURNPIKE_CONFIG_PARSER_HEAP_MB, 512 by default. */
function parserHeapMb(): number {
  const n = Number(process.env.TURNPIKE_CONFIG_PARSER_HEAP_MB);
  return Number.isInteger(n) && n >= 16 ? n : 512;
}

let worker: Worker | null = null;
let nextId = 0;
/** The parser thread's id when it runs SCHED_IDLE (0: not idle-class, nothing to promote). */
let threadId = 0;
let promoted = false;
let starveTimer: NodeJS.Timeout | undefined;
/** A parse still pending after this long is given a normal (nice 19) scheduling class. */
const STARVE_MS = 10_000;

/**
 * SCHED_IDLE keeps reload parsing off the cores requests need, but it can starve for as long
 * as every core is busy. A parse pending for STARVE_MS is promoted to SCHED_OTHER (still nice
 * 19, so ~1.5% of a busy core: slow, but sure); it goes back to idle when nothing is pending.
 */
function setClass(idle: boolean): void {
  if (threadId === 0) return;
  execFile('chrt', [idle ? '--idle' : '--other', '-p', '0', String(threadId)], { timeout: 2000 }, () => {});
}
function watchStarvation(): void {
  if (starveTimer || promoted) return;
  starveTimer = setTimeout(() => {
    starveTimer = undefined;
    if (pending.size > 0 && !promoted) {
      promoted = true;
      setClass(false);
    }
  }, STARVE_MS);
  starveTimer.unref();
}
function settle(): void {
  clearTimeout(starveTimer);
  starveTimer = undefined;
  if (promoted) {
    promoted = false;
    setClass(true);
  }
}
const pending = new Map<number, { resolve: (l: LoadedConfig) => void; reject: (e: Error) => void; job: Job; thread: Worker }>();

function ensureWorker(): Worker {
  if (worker) return worker;
  // The compiled file in dist/, or this source file when run through tsx (tests).
  // Bounded heap: a file too large or too hostile exhausts the thread, not the gateway.
  const w = new Worker(new URL(import.meta.url), { resourceLimits: { maxOldGenerationSizeMb: parserHeapMb() } });
  w.unref();
  w.on('message', (r: Reply) => {
    if ('tid' in r) {
      threadId = r.idle ? r.tid : 0;
      return;
    }
    const p = pending.get(r.id);
    if (!p) return;
    pending.delete(r.id);
    if (pending.size === 0) settle();
    // A JSON string, not the object: JSON.parse here costs ~4 ms for 10,000 routes where
    // structured-clone deserialization of the object graph blocked the loop 20-50 ms.
    if ('json' in r) p.resolve(fromValidated(JSON.parse(r.json) as TurnpikeConfigInput, p.job.text, p.job.file, p.job.env, r.hash));
    else if ('issues' in r) p.reject(new ConfigError(r.issues, r.file));
    else p.reject(new Error(r.failure));
  });
  const fail = (err: Error) => {
    if (worker === w) {
      worker = null;
      threadId = 0;
    }
    const oom = (err as NodeJS.ErrnoException).code === 'ERR_WORKER_OUT_OF_MEMORY';
    for (const [id, p] of pending) {
      if (p.thread !== w) continue; // (a later thread's: it is alive)
      pending.delete(id);
      // Out of memory: the same text would take the gateway's own heap next (a crash, or seconds
      // of a blocked event loop), so it is refused, as any invalid config is.
      if (oom) {
        p.reject(new ConfigError([{ path: '(file)', message: `parsing it ran out of the config parser's ${parserHeapMb()} MB of memory (TURNPIKE_CONFIG_PARSER_HEAP_MB raises it)` }], p.job.file));
        continue;
      }
      // The thread could not run (it failed to start): the main thread parses instead.
      try {
        p.resolve(parseConfigText(p.job.text, { file: p.job.file, env: p.job.env }));
      } catch (e) {
        p.reject(e instanceof Error ? e : err);
      }
    }
    if (pending.size === 0) settle();
  };
  w.on('error', fail);
  w.on('exit', () => fail(new Error('config parser thread exited')));
  worker = w;
  return w;
}

/** parseConfigText on the worker thread. Resolves with a LoadedConfig or rejects with ConfigError. */
export function parseConfigOffThread(text: string, opts: { file?: string; env?: NodeJS.ProcessEnv } = {}): Promise<LoadedConfig> {
  const job: Job = { id: ++nextId, text, file: opts.file, env: opts.env ?? process.env };
  return new Promise((resolve, reject) => {
    const thread = ensureWorker();
    pending.set(job.id, { resolve, reject, job, thread });
    thread.postMessage(job);
    watchStarvation();
  });
}

/** Starts the parser thread ahead of the first reload (a node that follows a config store reloads often; the thread's start would otherwise delay the first one by 100-300 ms). */
export function warmParserThread(): void {
  ensureWorker();
}

/** Stops the parser thread (tests; a process exits without it, the thread is unref'd). */
export async function stopParserThread(): Promise<void> {
  const w = worker;
  worker = null;
  if (w) await w.terminate();
}

if (!isMainThread && parentPort) {
  const port = parentPort;
  // Lowest CPU priority for this thread only (Linux applies setpriority to a thread id): when
  // it shares a core with the event loop, requests go first and parsing takes the idle time.
  try {
    const tid = Number(readlinkSync('/proc/thread-self').split('/').pop());
    if (tid > 0) {
      setPriority(tid, 19);
      // SCHED_IDLE where util-linux's chrt is there: parsing runs only in a core's idle time
      // (the main thread promotes it when a parse starves, see setClass).
      const idle = spawnSync('chrt', ['--idle', '-p', '0', String(tid)], { stdio: 'ignore', timeout: 2000 }).status === 0;
      port.postMessage({ tid, idle });
    }
  } catch {
    /* not Linux: the thread keeps the process priority */
  }
  port.on('message', (job: Job) => {
    let reply: Reply;
    try {
      const fast = fastValidConfig(job.text);
      const json = JSON.stringify(fast ?? parseConfigText(job.text, { file: job.file, env: job.env }).config);
      reply = { id: job.id, json, hash: configHashOf(json) };
    } catch (err) {
      reply = err instanceof ConfigError ? { id: job.id, issues: err.issues, file: err.file } : { id: job.id, failure: String(err) };
    }
    port.postMessage(reply);
  });
}
