/**
 * `workers: N` (N > 1): a primary process and N workers (node:cluster).
 *
 * - The primary owns the listening socket (node:cluster shares it with the workers), the admin
 *   listener, the demo upstream, the config file (watch, SIGHUP) and the health authority:
 *   active probes run only here; workers report passive failures and circuit outcomes over IPC
 *   and every decision (target down/up, circuit open/half-open/closed) is broadcast to all
 *   workers, so they never disagree for longer than one IPC hop.
 * - A new config is parsed and compiled by the primary first; only a valid one is sent to the
 *   workers, which compile the same text and swap snapshots. A worker that fails to (a file it
 *   could not read: out of file descriptors, memory) would serve the old config beside the
 *   others' new one: it is replaced (its successor starts with the config, it retires once that
 *   listens; while the successor cannot start, tried again after 10 s, doubling up to 5 min),
 *   and /status shows each worker's config hash and its failed reload meanwhile.
 * - A worker that dies is replaced; the listener stays open in the primary meanwhile, and the
 *   other workers keep serving. SIGUSR2 restarts the workers one by one (each new worker is
 *   listening before the old one drains). SIGTERM/SIGINT: timeouts.shutdown_delay (every worker
 *   still accepts, /status/ready 503), then every worker drains, then exit 0.
 * - Per-worker limits: a bulkhead's max_concurrent / max_pending and the retry budget's
 *   min_per_second are divided between the workers (rounded up), see compile.ts.
 */
import { performance } from 'node:perf_hooks';
import cluster, { type Worker } from 'node:cluster';
import type { LoadedConfig } from '../config/load.js';
import { fromValidated } from '../config/parse-thread.js';
import type { TurnpikeConfigInput } from '../config/schema.js';
import { ConfigError } from '../config/errors.js';
import { Gateway, type ControlView } from './gateway.js';
import type { WorkerDemand } from '../scaling/advisor.js';
import { applyDecision } from '../upstream/state.js';
import type { Decision, Reporter } from '../upstream/authority.js';
import type { Logger } from '../core/log.js';
import { IpcStore, answerCounter, type CounterReply, type CounterRequest } from '../state/ipc.js';
import type { MemoryStore } from '../state/memory.js';
import { keepRouteSeries, retainCounters } from '../observability/metrics.js';
import type { AnalyticsState } from '../observability/analytics.js';
import type { Bucket, PurgeFilter } from '../plugins/cache/entry.js';
import type { AccountRequest, AccountResponse } from '../portal/accounts.js';

type ToWorker =
  | { tp: 'config'; text: string; config: TurnpikeConfigInput; hash: string | undefined; file: string | undefined; dns: Record<string, string[]>; decisions: Decision[]; counterBatches?: boolean }
  | { tp: 'reload'; text: string; config: TurnpikeConfigInput; hash: string | undefined; dns: Record<string, string[]> }
  | { tp: 'decisions'; decisions: Decision[] }
  /** The stop began (timeouts.shutdown_delay): not ready, responses close their connections; 'stop' follows. */
  | { tp: 'drain' }
  | { tp: 'stop' }
  | { tp: 'observe'; id: number }
  | { tp: 'reopen' }
  | { tp: 'cache-purge'; id: number; filter: PurgeFilter }
  | { tp: 'cache-invalidate'; bucket: Bucket }
  | { tp: 'portal-r'; id: number; res: AccountResponse }
  | CounterReply;

type ToPrimary =
  | { tp: 'hello' }
  /** Every second while it serves: its event loop runs (timeouts.worker_unresponsive). */
  | { tp: 'beat' }
  | { tp: 'listening'; address: { address: string; port: number; family: string }; hash?: string }
  /** It could not start (its error, worded as single-process mode words it); it exits next. */
  | { tp: 'start-failed'; error: string }
  /** `hash`: the snapshot the worker runs now. */
  | { tp: 'reloaded'; hash?: string }
  | { tp: 'reload-failed'; error: string; hash?: string }
  | { tp: 'passive'; key: string; ok: boolean }
  | { tp: 'outcomes'; service: string; ok: number; fail: number; trialOk: number; trialFail: number }
  | { tp: 'observed'; id: number; metrics: unknown[]; analytics: AnalyticsState | null }
  | ({ tp: 'demand' } & WorkerDemand)
  | { tp: 'cache-purged'; id: number; purged: number }
  | { tp: 'cache-invalidate'; bucket: Bucket }
  | { tp: 'portal'; id: number; req: AccountRequest }
  | CounterRequest;

const isMsg = (m: unknown): m is { tp: string } => typeof m === 'object' && m !== null && typeof (m as { tp?: unknown }).tp === 'string';

export interface Supervisor {
  gw: Gateway;
  proxyAddress: { address: string; port: number; family: string };
  reload(loaded: LoadedConfig): Promise<void>;
  rollingRestart(): Promise<void>;
  /** SIGUSR1: every worker reopens its access log file. */
  reopenLogs(): void;
  stop(): Promise<void>;
  /** Last resort: SIGKILL every worker. */
  kill(): void;
}

interface WorkerInfo {
  worker: Worker;
  startedAt: number;
  listening: boolean;
  retiring: boolean;
  /** A rolling restart started its successor: the successor counts in its place. */
  replaced: boolean;
  /**
   * It was started in another's place (a rolling restart's or a renewal's successor): if it never
   * listens, the one that started it decides what comes next (the other keeps serving), not the
   * exit handler — which said "worker died; starting a replacement" for each successor that could
   * not start, and took it for a crash (the next real one's replacement waited longer).
   */
  standIn: boolean;
  /** Called once it listens (no argument) or says why it cannot start. */
  onListening: ((startError?: string) => void)[];
  startError: string | null;
  /** The worker's metrics as last reported (kept when it exits, so counters never go back). */
  metrics: unknown[] | null;
  /** Its analytics as last reported (stand in for it when it does not answer in time). */
  analytics: AnalyticsState | null;
  /** Reloads sent and not answered yet (reloaded / reload-failed), and who waits for none. */
  reloadsPending: number;
  onSettled: (() => void)[];
  /** When it last sent anything (performance.now(); it beats every second once it listens). */
  heardAt: number;
  /** The hash of the snapshot it runs (as it last said: listening, reloaded, reload-failed). */
  configHash: string | null;
  /** Its last reload failed (it runs an older config than the primary) and it is being replaced. */
  reloadFailed: { error: string; at: string; successor_failures?: number; next_try_at?: string } | null;
  renewing: boolean;
  /** Successors of it (reloadFailed) that could not start in a row: the next try backs off. */
  renewFailures: number;
  /** The next try at replacing it (one at a time: each failed reload would start a chain of its own). */
  renewTimer: NodeJS.Timeout | undefined;
}

/**
 * A worker whose successor could not start (it was on an old config) is replaced again after
 * this, doubled after each successor that could not start, up to RENEW_RETRY_MAX_MS: a successor
 * that can never start (the config's file gone, the host out of memory) is not forked every
 * 10 s for ever. (TURNPIKE_RENEW_RETRY_MS: a shorter base for the tests, the cap 30 times it.)
 */
const RENEW_RETRY_MS = Number(process.env.TURNPIKE_RENEW_RETRY_MS) > 0 ? Number(process.env.TURNPIKE_RENEW_RETRY_MS) : 10_000;
const RENEW_RETRY_MAX_MS = RENEW_RETRY_MS * 30;

/** The signals a worker leaves to the primary (a signal to the process group reaches both). */
const GROUP_SIGNALS: ReadonlySet<string> = new Set(['SIGTERM', 'SIGINT', 'SIGHUP', 'SIGUSR1', 'SIGUSR2']);

/** How long a reload waits for the workers to run it too. */
const WORKER_RELOAD_WAIT_MS = 5000;

/** How long /metrics and /analytics wait for the workers' answers. */
const COLLECT_TIMEOUT_MS = 1000;

/** Starts the primary: admin/demo/health here, `count` proxy workers. Resolves when all workers listen. */
export async function startPrimary(loaded: LoadedConfig, log: Logger, extra: { control?: ControlView } = {}): Promise<Supervisor> {
  const infos = new Map<number, WorkerInfo>();
  const broadcast = (m: ToWorker) => {
    for (const i of infos.values()) if (i.worker.isConnected()) i.worker.send(m);
  };
  let stopping = false;
  /** Until the first workers all listen. */
  let starting = true;
  let restarting: Promise<void> | null = null;
  let crashDelay = 0;
  let address: Supervisor['proxyAddress'] | null = null;
  // Counters of workers that exited (their last report), folded into one.
  let retired: unknown[] = [];
  let observeId = 0;
  const waitingObserve = new Map<number, (m: Extract<ToPrimary, { tp: 'observed' }>, info: WorkerInfo) => void>();
  const waitingPurge = new Map<number, (purged: number) => void>();
  /** DELETE /cache: every worker purges its memory caches; resolves with their total. */
  const purgeWorkers = async (filter: PurgeFilter): Promise<number> => {
    const id = ++observeId;
    const targets = [...infos.values()].filter((i) => i.worker.isConnected());
    let total = 0;
    await new Promise<void>((resolve) => {
      let pending = targets.length;
      if (pending === 0) return resolve();
      const timer = setTimeout(() => {
        waitingPurge.delete(id);
        resolve();
      }, COLLECT_TIMEOUT_MS);
      waitingPurge.set(id, (n) => {
        total += n;
        if (--pending === 0) {
          clearTimeout(timer);
          waitingPurge.delete(id);
          resolve();
        }
      });
      for (const i of targets) i.worker.send({ tp: 'cache-purge', id, filter } satisfies ToWorker);
    });
    return total;
  };
  /** Asks every worker for its metrics and analytics (those that do not answer in time are left out). */
  const collect = async () => {
    const id = ++observeId;
    const targets = [...infos.values()].filter((i) => i.listening && i.worker.isConnected());
    const got: { metrics: unknown[]; analytics: AnalyticsState | null; info: WorkerInfo }[] = [];
    const answered = new Set<WorkerInfo>();
    await new Promise<void>((resolve) => {
      let pending = targets.length;
      if (pending === 0) return resolve();
      const timer = setTimeout(() => {
        waitingObserve.delete(id);
        resolve();
      }, COLLECT_TIMEOUT_MS);
      waitingObserve.set(id, (m, info) => {
        got.push({ metrics: m.metrics, analytics: m.analytics, info });
        answered.add(info);
        if (--pending === 0) {
          clearTimeout(timer);
          waitingObserve.delete(id);
          resolve();
        }
      });
      for (const i of targets) i.worker.send({ tp: 'observe', id } satisfies ToWorker);
    });
    // A worker that did not answer in time (busy, stopped) is still counted: its counters as it
    // last reported them. Left out, its counts would vanish from this scrape and come back in
    // the next, which Prometheus reads as counter resets (rate() and increase() jump).
    // (so is its analytics: the console's numbers do not dip)
    const stale: unknown[][] = [];
    const staleAnalytics: AnalyticsState[] = [];
    for (const i of infos.values()) {
      if (answered.has(i)) continue;
      if (i.metrics) stale.push(i.metrics);
      if (i.analytics) staleAnalytics.push(i.analytics);
    }
    // (a worker that answered and exited while the others were waited for: its counters are in
    // `retired` now, so its answer is left out here, or the scrape would count them twice)
    const current = got.filter((g) => infos.has(g.info.worker.id));
    return {
      metrics: [...current.map((g) => g.metrics), ...(stale.length ? [retainCounters(stale)] : []), ...(retired.length ? [retired] : [])],
      analytics: [...got.flatMap((g) => (g.analytics ? [g.analytics] : [])), ...staleAnalytics],
    };
  };

  const settled = (info: WorkerInfo) => {
    if (info.reloadsPending > 0) info.reloadsPending--;
    if (info.reloadsPending === 0) for (const f of info.onSettled.splice(0)) f();
  };
  /** Resolves when every worker ran the reloads sent so far (or failed them, or exited), at most WORKER_RELOAD_WAIT_MS. */
  const workersSettled = () => new Promise<void>((resolve) => {
    const waiting = [...infos.values()].filter((i) => i.reloadsPending > 0);
    let left = waiting.length;
    if (left === 0) return resolve();
    const undo: (() => void)[] = [];
    const finish = () => {
      clearTimeout(timer);
      for (const u of undo) u();
      resolve();
    };
    const timer = setTimeout(() => {
      // A worker that did not answer in time is not waited for again (it gets the next config anyway).
      for (const i of waiting) {
        if (i.reloadsPending === 0) continue;
        log.warn({ worker: i.worker.process.pid }, 'a worker did not run a reload within 5 s; not waiting for it');
        i.reloadsPending = 0;
        i.onSettled.length = 0;
      }
      finish();
    }, WORKER_RELOAD_WAIT_MS);
    for (const i of waiting) {
      let done = false;
      const one = () => {
        if (done) return;
        done = true;
        if (--left === 0) finish();
      };
      i.onSettled.push(one);
      i.worker.once('exit', one);
      undo.push(() => i.worker.off('exit', one));
    }
  });

  const gw = await Gateway.start(loaded, {
    logger: log,
    role: 'primary',
    ...(extra.control ? { control: extra.control } : {}),
    collect,
    purgeWorkers,
    onDecision: (d) => broadcast({ tp: 'decisions', decisions: [d] }),
    workers: () => [...infos.values()].map((i) => ({
      pid: i.worker.process.pid, state: i.retiring ? 'retiring' : i.listening ? 'listening' : 'starting', config_hash: i.configHash,
      ...(i.reloadFailed ? { reload_failed: i.reloadFailed } : {}),
    })),
    // Every new snapshot (file, SIGHUP, changed DNS answers) goes to the workers as the
    // validated object plus the primary's DNS answers: workers neither parse YAML, validate
    // again, nor resolve names on their own.
    onSwap: (next, snap) => {
      for (const i of infos.values()) if (i.worker.isConnected()) i.reloadsPending++;
      broadcast({ tp: 'reload', text: next.text, config: next.config, hash: next.configHash, dns: gw.dns.table() });
      // (the workers drop the series of routes this config removed: so do the counts of those that exited)
      if (retired.length) retired = keepRouteSeries(retired, snap.routes.map((r) => ({ service: r.service.name, route: r.name })));
      if (snap.workers !== live().length) {
        log.info({ to: snap.workers }, 'worker count changed');
        scaleTo(snap.workers);
      }
    },
  });
  const health = gw.health!;
  // /status: 200 while a worker accepts on the proxy port (none does before the first one
  // listens, nor once the stop began: the port refuses connections then).
  const updateReady = () => {
    if (!gw.draining) gw.ready = [...infos.values()].some((i) => i.listening && !i.retiring);
  };

  const fork = (): WorkerInfo => {
    // (the node's token for the cache's background refreshes: any worker may take one)
    const worker = cluster.fork({ TURNPIKE_WORKER: '1', TURNPIKE_INTERNAL_TOKEN: gw.caches.refresher.token });
    const info: WorkerInfo = { worker, startedAt: performance.now(), listening: false, retiring: false, replaced: false, standIn: false, onListening: [], startError: null, metrics: null, analytics: null, reloadsPending: 0, onSettled: [], heardAt: performance.now(), configHash: null, reloadFailed: null, renewing: false, renewFailures: 0, renewTimer: undefined };
    infos.set(worker.id, info);
    worker.on('message', (m: unknown) => {
      if (!isMsg(m)) return;
      info.heardAt = performance.now();
      const msg = m as ToPrimary;
      switch (msg.tp) {
        case 'hello':
          // Told to stop while it loaded its modules (a stop right after its fork): that 'stop'
          // came before it listened for messages and was lost; it would start and serve now.
          if (info.retiring) {
            worker.send({ tp: 'stop' } satisfies ToWorker);
            break;
          }
          worker.send({ tp: 'config', text: gw.loaded.text, config: gw.loaded.config, hash: gw.loaded.configHash, file: gw.loaded.file, dns: gw.dns.table(), decisions: health.decisions(), counterBatches: true } satisfies ToWorker);
          // Its config is the newest: a reload sent while it loaded its modules (lost, as that
          // 'stop' was) is in it. Not waited for (a reload would wait its 5 s for no answer).
          if (info.reloadsPending > 0) {
            info.reloadsPending = 0;
            for (const f of info.onSettled.splice(0)) f();
          }
          break;
        case 'listening':
          info.listening = true;
          info.configHash = msg.hash ?? null;
          info.heardAt = performance.now();
          address ??= msg.address;
          updateReady();
          for (const f of info.onListening.splice(0)) f();
          break;
        case 'start-failed':
          info.startError = msg.error;
          for (const f of info.onListening.splice(0)) f(msg.error);
          break;
        case 'reloaded':
          // Decisions made while it compiled may name targets it did not know yet.
          worker.send({ tp: 'decisions', decisions: health.decisions() } satisfies ToWorker);
          if (msg.hash !== undefined) info.configHash = msg.hash;
          info.reloadFailed = null;
          info.renewFailures = 0;
          settled(info);
          break;
        case 'reload-failed':
          // It serves its old config beside the others' new one (split brain): a new worker,
          // which starts with the config, takes its place.
          if (msg.hash !== undefined) info.configHash = msg.hash;
          info.reloadFailed = { error: String(msg.error).slice(0, 500), at: new Date().toISOString() };
          log.error({ worker: worker.process.pid, error: msg.error }, 'a worker rejected a config the primary accepted (it still runs the one before): replacing it');
          settled(info);
          void renew(info);
          break;
        case 'passive':
          health.passive(msg.key, msg.ok);
          break;
        case 'outcomes':
          health.outcomes(msg.service, msg.ok, msg.fail, msg.trialOk, msg.trialFail);
          break;
        case 'observed':
          info.metrics = msg.metrics;
          info.analytics = msg.analytics;
          waitingObserve.get(msg.id)?.(msg, info);
          break;
        case 'cache-purged':
          waitingPurge.get(msg.id)?.(msg.purged);
          break;
        case 'demand':
          gw.scaling?.fromWorker(msg, worker.id);
          break;
        case 'cache-invalidate':
          // One worker's §4.4 invalidation reaches the others' memory caches.
          for (const i of infos.values()) if (i.worker !== worker && i.worker.isConnected()) i.worker.send(msg satisfies ToWorker);
          break;
        case 'portal': {
          // Developer accounts live where the config store is: here.
          const reply = (r: AccountResponse) => { if (worker.isConnected()) worker.send({ tp: 'portal-r', id: msg.id, res: r } satisfies ToWorker); };
          if (!gw.portalAccounts) reply({ status: 503, headers: { 'content-type': 'application/problem+json' }, body: JSON.stringify({ title: 'Service Unavailable', status: 503, detail: 'developer accounts need a config store' }) });
          else gw.portalAccounts(msg.req).then(reply, (err: unknown) => {
            log.error({ err: String(err) }, 'portal: an account request failed');
            reply({ status: 500, headers: { 'content-type': 'application/problem+json' }, body: JSON.stringify({ title: 'Internal Server Error', status: 500 }) });
          });
          break;
        }
        case 'ctr':
        case 'ctrb':
          // One truth per node: the primary's counters decide for every worker.
          if (worker.isConnected()) worker.send(answerCounter(gw.counters.local as MemoryStore, msg) satisfies ToWorker);
          break;
      }
    });
    worker.on('error', (err) => log.warn({ err, worker: worker.process.pid }, 'worker IPC error'));
    return info;
  };

  const listening = (info: WorkerInfo) =>
    new Promise<void>((resolve, reject) => {
      if (info.listening) return resolve();
      // (what the worker said, e.g. `listen EADDRINUSE: address already in use 127.0.0.1:8080`)
      info.onListening.push((startError) => (startError === undefined ? resolve() : reject(new Error(startError))));
      info.worker.once('exit', (code) => reject(new Error(info.startError ?? `worker exited with code ${code} before listening`)));
    });

  // A worker whose event loop is stuck (a busy loop, a stopped process) still gets its share of
  // new connections from the primary and answers none: past timeouts.worker_unresponsive of
  // silence it is killed, and the exit below starts its replacement.
  // (a monotonic clock: a wall clock stepped forward would read as silence)
  let checkedAt = performance.now();
  const watchdog = setInterval(() => {
    const now = performance.now();
    // (this loop was stuck itself: what the workers sent meanwhile is not read yet)
    const late = now - checkedAt > 2_000;
    checkedAt = now;
    const limit = gw.snapshot.timeouts.workerUnresponsive;
    for (const i of infos.values()) {
      if (late || !i.listening) i.heardAt = now;
      else if (!stopping && !i.retiring && !i.worker.isDead() && now - i.heardAt >= limit) {
        log.error({ pid: i.worker.process.pid, silent_ms: now - i.heardAt }, 'a worker has not answered for timeouts.worker_unresponsive (its event loop is stuck): killing it');
        i.heardAt = now;
        i.worker.process.kill('SIGKILL');
      }
    }
  }, 1000);
  watchdog.unref();

  cluster.on('exit', (worker, code, signal) => {
    const info = infos.get(worker.id);
    infos.delete(worker.id);
    gw.scaling?.workerGone(worker.id);
    updateReady();
    if (info?.metrics) retired = retainCounters([retired, info.metrics]);
    // (during the start, a worker that exits before it listens fails the start: nothing to
    // replace; one that listened did its part, and the start goes on without it: replace it)
    if (stopping || !info || info.retiring || (starting && !info.listening) || (info.standIn && !info.listening)) return;
    log.error({ pid: worker.process.pid, code, signal, ...(info.startError ? { error: info.startError } : {}) }, 'worker died; starting a replacement');
    // A worker that dies young is likely to die again: back off (up to 30 s) instead of spinning.
    crashDelay = performance.now() - info.startedAt < 5_000 ? Math.min(Math.max(crashDelay * 2, 250), 30_000) : 0;
    setTimeout(() => {
      if (!stopping && live().length < gw.snapshot.workers) fork();
    }, crashDelay).unref();
  });

  const retire = (info: WorkerInfo) =>
    new Promise<void>((resolve) => {
      info.retiring = true;
      updateReady();
      if (info.worker.isDead()) return resolve();
      info.worker.once('exit', () => resolve());
      if (info.worker.isConnected()) info.worker.send({ tp: 'stop' } satisfies ToWorker);
      else info.worker.process.kill('SIGTERM');
      // Drain is bounded in the worker; this is a safety net.
      setTimeout(() => info.worker.process.kill('SIGKILL'), gw.snapshot.timeouts.drain + 5_000).unref();
    });

  /**
   * Replaces a worker whose reload failed: a successor (started with the config) listens, then it
   * retires. A successor that cannot start leaves it serving; tried again after RENEW_RETRY_MS,
   * doubled for each successor in a row that could not start (up to RENEW_RETRY_MAX_MS), unless
   * a later reload worked on it meanwhile.
   */
  const renew = async (old: WorkerInfo): Promise<void> => {
    if (old.renewing || old.retiring || stopping) return;
    clearTimeout(old.renewTimer);
    if (restarting !== null) {
      // (a rolling restart under way: tried once it ended, if that did not replace it)
      renewLater(old, RENEW_RETRY_MS);
      return;
    }
    old.renewing = true;
    old.replaced = true; // (its successor counts in its place)
    const fresh = fork();
    fresh.standIn = true;
    try {
      await listening(fresh);
    } catch (err) {
      old.replaced = false;
      old.renewing = false;
      if (stopping) return;
      const delay = Math.min(RENEW_RETRY_MS * 2 ** old.renewFailures, RENEW_RETRY_MAX_MS);
      old.renewFailures++;
      if (old.reloadFailed !== null) {
        old.reloadFailed.successor_failures = old.renewFailures;
        old.reloadFailed.next_try_at = new Date(Date.now() + delay).toISOString();
      }
      log.error({ worker: old.worker.process.pid, error: (err as Error).message, successor_failures: old.renewFailures, retry_in_ms: delay }, `the successor of a worker on an old config could not start: it keeps serving; tried again in ${delay / 1000} s`);
      renewLater(old, delay);
      return;
    }
    if (stopping || old.retiring) return;
    log.info({ worker: old.worker.process.pid, successor: fresh.worker.process.pid }, 'a worker on an old config was replaced');
    await retire(old);
  };

  const renewLater = (old: WorkerInfo, ms: number): void => {
    clearTimeout(old.renewTimer);
    old.renewTimer = setTimeout(() => { if (infos.get(old.worker.id) === old && old.reloadFailed !== null) void renew(old); }, ms).unref();
  };

  /** The workers that count towards `workers` (a rolling restart's successor stands for the one it replaces). */
  function live(): WorkerInfo[] {
    return [...infos.values()].filter((i) => !i.retiring && !i.replaced);
  }
  function scaleTo(n: number): void {
    const now = live();
    for (let k = now.length; k < n; k++) fork();
    // (the oldest go first: a rolling restart's successor, the newest, stays)
    for (const info of now.slice(0, Math.max(0, now.length - n))) void retire(info);
  }

  /**
   * One worker of the first ones, listening. A signal to the whole process group (Ctrl-C,
   * systemd's KillMode=control-group) that comes while Node boots a worker, before any of its
   * code runs (some tens of ms), ends it: nothing is wrong with the worker, so a new one is
   * started (the primary got the same signal and keeps it: a stop drains once they listen).
   */
  const startOne = async (): Promise<void> => {
    for (let tries = 0; ; tries++) {
      const info = fork();
      try {
        return await listening(info);
      } catch (err) {
        const signal = info.worker.process.signalCode;
        if (stopping || tries >= 3 || signal === null || !GROUP_SIGNALS.has(signal)) throw err;
        log.warn({ pid: info.worker.process.pid, signal }, `a worker ended by ${signal} as it started (a signal to the process group): starting a replacement`);
      }
    }
  };

  try {
    await Promise.all(Array.from({ length: gw.snapshot.workers }, startOne));
    starting = false;
  } catch (err) {
    stopping = true;
    clearInterval(watchdog);
    for (const i of infos.values()) i.worker.process.kill('SIGKILL');
    await gw.stop();
    throw err;
  }

  return {
    gw,
    proxyAddress: address!,
    async reload(next: LoadedConfig) {
      // Rejects with ConfigError: then nothing is sent to the workers (onSwap sends the rest).
      await gw.reloadAsync(next);
      // Read your writes: an admin or portal write is answered once the workers run it too.
      await workersSettled();
    },
    reopenLogs() {
      broadcast({ tp: 'reopen' });
    },
    async rollingRestart() {
      // One at a time: a second SIGUSR2 during a restart joins the one under way.
      restarting ??= (async () => {
        try {
          for (const old of live()) {
            if (stopping) return;
            // (died meanwhile and was replaced, or retired by a smaller worker count)
            if (!infos.has(old.worker.id) || old.retiring) continue;
            // A reload meanwhile counts the successor, not both (else it retires one as surplus).
            old.replaced = true;
            const fresh = fork();
            fresh.standIn = true;
            try {
              await listening(fresh);
            } catch (err) {
              old.replaced = false;
              if (stopping) return; // (the stop ended it before it listened)
              throw err;
            }
            if (stopping) return;
            await retire(old);
          }
        } finally {
          restarting = null;
        }
      })();
      return restarting;
    },
    async stop() {
      stopping = true;
      clearInterval(watchdog);
      gw.beginDrain(); // /status: 503 "draining" while the workers drain, not once they are gone
      // timeouts.shutdown_delay: the workers keep accepting (Connection: close, HTTP/2 notices)
      // while /status/ready says 503; a second signal meanwhile kills them (kill()).
      broadcast({ tp: 'drain' });
      await gw.shutdownDelay();
      await Promise.all([...infos.values()].map(retire));
      await gw.stop();
    },
    kill() {
      stopping = true;
      clearInterval(watchdog);
      for (const i of infos.values()) i.worker.process.kill('SIGKILL');
    },
  };
}

/** Sends what this worker sees to the primary: passive failures at once, circuit outcomes batched. */
class IpcReporter implements Reporter {
  /** Targets this worker reported a failure for: their next success is reported too. */
  private readonly failing = new Set<string>();
  private readonly counts = new Map<string, { ok: number; fail: number; trialOk: number; trialFail: number }>();
  private timer: NodeJS.Timeout | undefined;

  passive(key: string, ok: boolean): void {
    if (ok) {
      if (!this.failing.delete(key)) return;
    } else this.failing.add(key);
    send({ tp: 'passive', key, ok });
  }

  outcome(service: string, ok: boolean, trial: boolean): void {
    let c = this.counts.get(service);
    if (!c) this.counts.set(service, (c = { ok: 0, fail: 0, trialOk: 0, trialFail: 0 }));
    if (trial) {
      if (ok) c.trialOk++;
      else c.trialFail++;
      // A trial decides the circuit: no batching delay.
      this.flush();
      return;
    }
    if (ok) c.ok++;
    else c.fail++;
    this.timer ??= setTimeout(() => this.flush(), 50).unref();
  }

  flush(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    for (const [service, c] of this.counts) send({ tp: 'outcomes', service, ...c });
    this.counts.clear();
  }
}

/** Why a worker cannot start, worded as a single process words it: a worker's listen error is `bind EADDRINUSE 127.0.0.1:8080` (node:cluster), a single process's `listen EADDRINUSE: address already in use 127.0.0.1:8080`. */
function startErrorText(err: unknown): string {
  if (!(err instanceof Error)) return String(err);
  const e = err as NodeJS.ErrnoException & { address?: string; port?: number };
  const words: Record<string, string> = { EADDRINUSE: 'address already in use', EACCES: 'permission denied', EADDRNOTAVAIL: 'address not available' };
  if (e.syscall === 'bind' && e.code !== undefined && words[e.code] !== undefined && e.address !== undefined) return `listen ${e.code}: ${words[e.code]} ${e.address}${e.port !== undefined ? `:${e.port}` : ''}`;
  return err.message;
}

function send(m: ToPrimary): void {
  if (process.connected) process.send!(m);
}

/** A worker: waits for its config from the primary, serves the proxy listener, follows the primary's decisions. */
export async function runWorker(log: Logger): Promise<number> {
  // Signals, from the start: a signal to the whole process group (Ctrl-C, systemd's
  // KillMode=control-group) reaches the primary too, and the primary decides (it keeps a stop
  // that comes while the workers start, and tells them once they listen). Node's defaults would
  // end a starting worker (and fail the primary's start) or, for SIGUSR1, start the inspector.
  // SIGTERM/SIGINT stop a worker that serves (a drain, as the primary's 'stop' does); before
  // that, and for the others always, the worker leaves it to the primary.
  let onStopSignal: (() => void) | null = null;
  process.on('SIGTERM', () => onStopSignal?.());
  process.on('SIGINT', () => onStopSignal?.());
  process.on('SIGHUP', () => {}); // the primary reloads and tells us
  process.on('SIGUSR1', () => {}); // the primary tells us to reopen logs
  process.on('SIGUSR2', () => {}); // the primary restarts the workers one by one
  // One message handler from the start: what arrives while the worker is still starting
  // (decisions, a reload, stop) is kept and handled once it serves, never dropped.
  const early: ToWorker[] = [];
  let handle: ((m: ToWorker) => void) | null = null;
  let onConfig: ((m: Extract<ToWorker, { tp: 'config' }> | null) => void) | null = null;
  const counters = new IpcStore((m) => send(m));
  // The portal's account requests go to the primary (it holds the config store and the sessions).
  const portalWaiting = new Map<number, (r: AccountResponse) => void>();
  let portalId = 0;
  const askPrimary = (req: AccountRequest) => new Promise<AccountResponse>((resolve, reject) => {
    const id = ++portalId;
    const timer = setTimeout(() => {
      portalWaiting.delete(id);
      reject(new Error('the primary did not answer'));
    }, 30_000);
    portalWaiting.set(id, (r) => {
      clearTimeout(timer);
      resolve(r);
    });
    send({ tp: 'portal', id, req });
  });
  process.on('message', (m: unknown) => {
    if (!isMsg(m)) return;
    const msg = m as ToWorker;
    if (msg.tp === 'ctr-r' || msg.tp === 'ctrb-r') return counters.onReply(msg);
    if (msg.tp === 'portal-r') {
      const w = portalWaiting.get(msg.id);
      portalWaiting.delete(msg.id);
      return w?.(msg.res);
    }
    if (onConfig && (msg.tp === 'config' || msg.tp === 'stop')) {
      const f = onConfig;
      onConfig = null;
      f(msg.tp === 'config' ? msg : null);
    } else if (handle) handle(msg);
    else early.push(msg);
  });
  const config = await new Promise<Extract<ToWorker, { tp: 'config' }> | null>((resolve) => {
    onConfig = resolve;
    send({ tp: 'hello' });
  });
  if (config === null) return 0; // told to stop before it started
  // (a primary still running older code answers one call per message)
  counters.batched(config.counterBatches === true);
  const reporter = new IpcReporter();
  let gw: Gateway;
  try {
    gw = await Gateway.start(fromValidated(config.config, config.text, config.file, undefined, config.hash), { logger: log, role: 'worker', reporter, dnsTable: config.dns, localCounters: counters });
  } catch (err) {
    log.error({ err: err instanceof ConfigError ? err.message : String(err) }, 'worker cannot start');
    // The primary's start fails with this reason (on stderr): sent before the worker exits.
    const error = startErrorText(err);
    await new Promise<void>((resolve) => (process.connected ? process.send!({ tp: 'start-failed', error } satisfies ToPrimary, () => resolve()) : resolve()));
    return 1;
  }
  for (const d of config.decisions) applyDecision(gw.runtime, d);
  gw.portalAccounts = askPrimary;
  gw.caches.onInvalidate = (bucket) => send({ tp: 'cache-invalidate', bucket });
  // Scaling: this worker's demand and load go to the primary's advisor every second.
  let elu = performance.eventLoopUtilization();
  let cpu = process.cpuUsage();
  let lastReport = performance.now();
  const demandTimer = setInterval(() => {
    if (!gw.observer.demand) return;
    const e = performance.eventLoopUtilization(elu).utilization;
    elu = performance.eventLoopUtilization();
    const c = process.cpuUsage(cpu);
    cpu = process.cpuUsage();
    const now = performance.now();
    const periodMs = now - lastReport;
    lastReport = now;
    const queued: Record<string, number> = {};
    for (const svc of gw.snapshot.services) if (svc.state.queue.length > 0) queued[svc.name] = svc.state.queue.length;
    send({ tp: 'demand', counts: gw.demand.drain(), queued, elu: e, cpuMs: (c.user + c.system) / 1000, periodMs });
  }, 1000);
  demandTimer.unref();
  const a = gw.proxyAddress!;
  send({ tp: 'listening', address: { address: a.address, port: a.port, family: a.family }, hash: gw.snapshot.hash });
  // Alive (timeouts.worker_unresponsive), through the drain too: the primary kills a silent worker.
  setInterval(() => send({ tp: 'beat' }), 1000).unref();

  return new Promise<number>((resolve) => {
    let stopping = false;
    /** This worker's metrics and analytics, for the primary. */
    const observed = async (id: number): Promise<ToPrimary> => ({ tp: 'observed', id, metrics: (await gw.observer.metrics?.json()) ?? [], analytics: gw.observer.analytics?.state() ?? null });
    let signalled = false;
    /** SIGTERM/SIGINT to the worker itself (a signal to the process group): its own shutdown delay, then the drain; a second one drains now. */
    const onSignal = () => {
      if (signalled) return stop();
      signalled = true;
      void gw.shutdownDelay().then(stop);
    };
    const stop = () => {
      if (stopping) return;
      stopping = true;
      reporter.flush();
      clearInterval(demandTimer);
      // Drained: the final counts go to the primary (they stay in its /metrics), then exit.
      const done = (code: number) => observed(0).then(
        (m) => (process.connected ? process.send!(m, () => resolve(code)) : resolve(code)),
        () => resolve(code),
      );
      gw.stop().then(() => done(0), () => done(1));
    };
    handle = (msg) => {
      if (msg.tp === 'decisions') for (const d of msg.decisions) applyDecision(gw.runtime, d);
      else if (msg.tp === 'reload') {
        gw.reloadAsync(fromValidated(msg.config, msg.text, config.file, undefined, msg.hash), { dnsTable: msg.dns }).then(
          () => send({ tp: 'reloaded', hash: gw.snapshot.hash }),
          (err: unknown) => send({ tp: 'reload-failed', error: err instanceof Error ? err.message : String(err), hash: gw.snapshot.hash }),
        );
      } else if (msg.tp === 'observe') {
        void observed(msg.id).then(send, (err: unknown) => log.error({ err }, 'collecting metrics failed'));
      } else if (msg.tp === 'reopen') gw.observer.reopen();
      else if (msg.tp === 'cache-purge') {
        void gw.caches.purge(msg.filter).then(
          (r) => send({ tp: 'cache-purged', id: msg.id, purged: r.purged }),
          () => send({ tp: 'cache-purged', id: msg.id, purged: 0 }),
        );
      } else if (msg.tp === 'cache-invalidate') gw.caches.invalidateMemory(msg.bucket);
      else if (msg.tp === 'drain') gw.beginDrain();
      else if (msg.tp === 'stop') stop();
    };
    for (const m of early.splice(0)) handle(m);
    // The primary is gone: nobody can hand us work or decisions any more.
    process.on('disconnect', stop);
    onStopSignal = onSignal;
  });
}
