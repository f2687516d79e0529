/**
 * `turnpike validate` and `turnpike start` once main.ts has read the arguments: the modules of
 * the gateway are loaded here, so `turnpike --help`, `--version` and usage errors answer at once.
 */
import cluster from 'node:cluster';
import { availableParallelism } from 'node:os';
import { readFile } from 'node:fs/promises';
import { configText, loadConfigFile, parseConfigText, type LoadedConfig } from '../config/load.js';
import { ControlPlane, fileControl } from '../server/control-plane.js';
import { redactUrl } from '../core/url-secrets.js';
import type { ControlView } from '../server/gateway.js';
import { parseConfigOffThread, warmParserThread } from '../config/parse-thread.js';
import { watchConfig, watchInputs, type ConfigWatcher, type InputsWatcher } from '../config/watch.js';
import { startPrimary, runWorker } from '../server/cluster.js';
import { compile, validationCounters } from '../config/compile.js';
import { ConfigError } from '../config/errors.js';
import { PoolRegistry } from '../upstream/pools.js';
import { crlWarnings } from '../server/tls.js';
import { Gateway } from '../server/gateway.js';
import { createLogger, logLevelFrom, type LogLevel } from '../core/log.js';
import { VERSION } from '../version.js';

/** `turnpike start` without --config: the defaults, the admin API on loopback, no file to watch. */
const FILELESS = 'admin: {listen: "127.0.0.1:8081"}\nwatch: false\n';

/** Runs a checked `validate` or `start` command line: `file` is the config (for a fileless start, where the store's seed would be). */
export async function runCommand(command: 'start' | 'validate', file: string, fileless: boolean, storeArg: string | undefined): Promise<number> {
  if (command === 'validate') {
    const pools = new PoolRegistry();
    let stores: ReturnType<typeof validationCounters> | undefined;
    try {
      const loaded = loadConfigFile(file);
      // (judged as start would: a `redis` setting gets its store, never connected)
      stores = validationCounters(loaded);
      const snap = compile(loaded, { pools, storeOpened: true, counters: stores.counters });
      // A client CRL out of date is valid config that refuses every client certificate: said, exit 0.
      const stale = snap.tls !== null ? crlWarnings(snap.tls.certs) : [];
      snap.dispose();
      for (const w of stale) {
        const issue = loaded.error([{ path: ['tls', 'client_crl'], message: w }]).issues[0]!;
        process.stderr.write(`${file}: warning: ${issue.path}${issue.line !== undefined ? ` (line ${issue.line})` : ''}: ${issue.message}\n`);
      }
      process.stdout.write(`${file}: valid\n`);
      return 0;
    } catch (err) {
      if (err instanceof ConfigError) {
        process.stderr.write(`${err.message}\n`);
        return 1;
      }
      throw err;
    } finally {
      stores?.close();
      await pools.closeAll();
    }
  }

  let level: LogLevel;
  try {
    level = logLevelFrom(process.env.TURNPIKE_LOG_LEVEL);
  } catch (err) {
    process.stderr.write(`${(err as Error).message}\n`);
    return 2;
  }
  const log = createLogger(level);
  if (cluster.isWorker && process.env.TURNPIKE_WORKER === '1') return runWorker(log.child({ worker: cluster.worker!.id }));

  let loaded: LoadedConfig;
  try {
    loaded = fileless ? parseConfigText(FILELESS, { file }) : loadConfigFile(file);
  } catch (err) {
    process.stderr.write(`${(err as Error).message}\n`);
    return 1;
  }
  /** The file's text the gateway starts with: an edit made while it starts is a change too. */
  const startedText = loaded.text;
  // --store (or TURNPIKE_STORE) names the store instead of the file's `store:`.
  const storeSetting = storeArg ?? (fileless ? 'sqlite:./turnpike.db' : loaded.config.store ?? 'file');
  if (!/^(file|sqlite:.+|postgres(ql)?:\/\/.+)$/.test(storeSetting) || (fileless && storeSetting === 'file')) {
    process.stderr.write(`--store ${JSON.stringify(redactUrl(storeSetting))}: give sqlite:PATH or postgres://...${fileless ? '' : ' (or file)'}\n`);
    return 2;
  }
  if (fileless) log.info({ store: redactUrl(storeSetting), admin: loaded.config.admin?.listen }, 'no --config: node defaults, the config lives in the store (admin API)');
  // With `store: sqlite|postgres` the store holds the declarative config (seeded from this
  // file when empty) and the node runs the file's node-local keys with the store's document.
  let cp: ControlPlane | null = null;
  let control: ControlView;
  if (storeSetting !== 'file') {
    const waiting = new AbortController();
    const abort = () => waiting.abort();
    process.once('SIGTERM', abort);
    process.once('SIGINT', abort);
    try {
      cp = await ControlPlane.open({ file, loaded, setting: storeSetting, log, apply: (text, why) => reloadFrom(why, text), signal: waiting.signal });
      try {
        loaded = parseConfigText(cp.text(), { file });
      } catch (err) {
        // The store's head cannot run on this node (an env var or file it lacks): its disk
        // snapshot, when it has one, rather than a crash loop; the head is reported as rejected.
        if (!(err instanceof ConfigError) || !(await cp.fallBack(err.message))) throw err;
        loaded = parseConfigText(cp.text(), { file });
      }
    } catch (err) {
      if (err instanceof ConfigError) process.stderr.write(`the stored config (revision ${cp?.served?.revision}) cannot run on this node:\n${err.message}\n`);
      else process.stderr.write(`turnpike: cannot open the config store: ${(err as Error).message}\n`);
      await cp?.close();
      return 1;
    } finally {
      process.off('SIGTERM', abort);
      process.off('SIGINT', abort);
    }
    control = cp;
  } else {
    control = fileControl(file, loaded, log);
  }
  const w = loaded.config.workers;
  const workers = w === 'auto' ? availableParallelism() : w ?? 1;

  // Signals from before the start-up on (Node's defaults would end the process at once, or start
  // the inspector): one that arrives while the gateway starts is kept, and handled once it runs
  // (SIGTERM/SIGINT: the normal drain, once the listeners are up; a second one exits now).
  let startupStop: string | null = null;
  let startupHup = false;
  let onSignal = (signal: NodeJS.Signals): void => {
    if (signal === 'SIGTERM' || signal === 'SIGINT') {
      if (startupStop === null) {
        startupStop = signal;
        log.info({ signal }, 'stop asked while starting: draining once the gateway is up');
        return;
      }
      log.warn({ signal }, 'second signal while starting: exiting now');
      for (const w of Object.values(cluster.workers ?? {})) w?.process.kill('SIGKILL');
      process.exit(1);
    }
    if (signal === 'SIGHUP') startupHup = true;
    else log.info({ signal }, 'signal while starting: ignored');
  };
  for (const signal of ['SIGTERM', 'SIGINT', 'SIGHUP', 'SIGUSR1', 'SIGUSR2'] as const) process.on(signal, () => onSignal(signal));
  // Under npm (`npx turnpike start`: npm exec -> sh -c -> node) a SIGTERM to npx ends npm and the
  // shell but is not passed on (npm/cli#6547): the gateway would serve on, orphaned, its ports
  // held. Losing the parent npm started it under is taken as that SIGTERM (the drain, exit 0).
  if (process.env['npm_command'] !== undefined) {
    const parent = process.ppid;
    const orphaned = setInterval(() => {
      if (process.ppid === parent) return;
      clearInterval(orphaned);
      log.warn({ parent }, 'the npm process that started the gateway is gone (npm does not pass signals on): draining as on SIGTERM');
      onSignal('SIGTERM');
    }, 500);
    orphaned.unref();
  }

  // One object for both modes: the single-process gateway, or the primary supervising workers.
  type Running = { gw: Gateway; reload(l: LoadedConfig): Promise<unknown>; stop(): Promise<void>; reopenLogs(): void; rollingRestart?(): Promise<void>; kill?(): void };
  let running: Running;
  let banner: string;
  const launch = async (l: LoadedConfig): Promise<[Running, string]> => {
    if (workers > 1) {
      const sup = await startPrimary(l, log, { control });
      return [sup, `turnpike ${VERSION} proxy on http://${fmt(sup.proxyAddress)} (${workers} workers)` + extras(sup.gw)];
    }
    const gw = await Gateway.start(l, { logger: log, control });
    // timeouts.shutdown_delay (not ready, still accepting), then the drain.
    return [
      { gw, reload: (next) => gw.reloadAsync(next), stop: () => gw.shutdownDelay().then(() => gw.stop()), reopenLogs: () => gw.observer.reopen() },
      `turnpike ${VERSION} proxy on http://${fmt(gw.proxyAddress!)}` + extras(gw),
    ];
  };
  try {
    try {
      [running, banner] = await launch(loaded);
    } catch (err) {
      // The store's head parses but does not compile on this node (a plugin this version does
      // not know, written through a newer node; a file this node lacks): its disk snapshot, as
      // for a head that does not parse, rather than a crash loop; the head is reported as rejected.
      if (!cp || !(err instanceof ConfigError) || !(await cp.fallBack(err.message))) throw err;
      loaded = parseConfigText(cp.text(), { file });
      [running, banner] = await launch(loaded);
    }
  } catch (err) {
    if (err instanceof ConfigError) process.stderr.write(`${err.message}\n`);
    else process.stderr.write(`turnpike: cannot start: ${(err as Error).message}\n`);
    await cp?.close();
    return 1;
  }
  process.stderr.write(banner + '\n');

  // Parsing runs on a worker thread and compiling in slices, so the proxy keeps serving while a
  // large config reloads. One reload at a time: changes that arrive meanwhile are coalesced
  // into one more reload of the newest text afterwards (never starved by a busy writer).
  let busy = false;
  let queued: { why: string; text?: string; done: ((ok: boolean) => void)[] } | null = null;
  let inputs: InputsWatcher | null = null;
  let watcher: ConfigWatcher | null = null;
  /** False once the gateway stops: a reload that ends after it does not watch again. */
  let following = true;
  /**
   * `watch` follows the config, as the other settings a reload applies do: a reload that sets
   * `watch: false` stops following the file and the files it refers to (SIGHUP still reloads);
   * `watch: true` (again) starts, comparing the file with `since` (the text just applied).
   */
  const follow = (on: boolean, since: string) => {
    if (fileless || !following) return; // (no file: the store's head is followed)
    if (on && !watcher) {
      // (with a store, a changed file is read again by reloadFrom: its node-local keys + the store's
      // document; so is a file that may not be UTF-8, the watcher's text having U+FFFD for such bytes)
      // The file is compared with `since` at once (checkNow): an edit made while the gateway
      // started, before the watch began, is reloaded now rather than at the next edit.
      watcher = watchConfig(file, since, (text) => void reloadFrom('file change', cp || text.includes('\uFFFD') ? undefined : text), {
        onError: (err) => log.warn({ err: err.message }, 'config file watch failed; SIGHUP still reloads'),
        checkNow: true,
      });
      // The files the config refers to (a rotated upstream CA, an edited OpenAPI document): a change
      // reloads the config, which reads them again (their digests are part of the snapshot's hash).
      inputs = watchInputs(() => void reloadFrom('referenced file change'));
      inputs.set(running.gw.snapshot.inputs);
    } else if (!on && watcher) {
      watcher.close();
      watcher = null;
      inputs?.close();
      inputs = null;
    }
  };
  /** Settings a reload cannot change: said, as for the listeners (the gateway's swap). */
  const fixed = { workers: loaded.config.workers, store: loaded.config.store };
  /** Resolves true when this text (or a newer one queued after it) was applied. */
  const reloadFrom = async (why: string, given?: string): Promise<boolean> => {
    if (busy) {
      const done = queued?.done ?? [];
      // (a pending re-read of the file wins: its text is built from the file and the store's head)
      queued = { why, text: given === undefined || (queued !== null && queued.text === undefined) ? undefined : given, done };
      return new Promise<boolean>((r) => done.push(r));
    }
    busy = true;
    let ok = false;
    let adopt: (() => void) | undefined;
    try {
      let text = given;
      if (text === undefined) {
        let bytes: Buffer;
        try {
          bytes = await readFile(file);
        } catch (err) {
          throw new ConfigError([{ path: '(file)', message: `cannot read ${file}: ${(err as Error).message}` }], file);
        }
        text = configText(bytes, file);
        // With a store, the file holds this node's own keys: they join the store's document
        // (adopted once the reload is, so a bad file edit does not spoil later revisions).
        if (cp) {
          const next = cp.withFile(await parseConfigOffThread(text, { file }));
          text = next.text;
          adopt = next.adopt;
        }
      }
      let next: LoadedConfig;
      try {
        next = await parseConfigOffThread(text, { file });
      } catch (err) {
        running.gw.reloadRejected(); // (compile errors are counted by the gateway)
        throw err;
      }
      await running.reload(next);
      adopt?.();
      ok = true;
      for (const k of ['workers', 'store'] as const) {
        if (JSON.stringify(next.config[k]) !== JSON.stringify(fixed[k])) log.warn({ setting: k }, `${k} changed: restart to apply it`);
      }
      follow(next.config.watch !== false, next.text);
      inputs?.set(running.gw.snapshot.inputs);
      control.reloaded?.(why, null);
      log.info({ trigger: why }, 'reload applied');
    } catch (err) {
      const message = err instanceof ConfigError ? err.message : String(err);
      control.reloaded?.(why, message);
      log.error({ trigger: why, err: message }, 'reload rejected; the running config stays');
    } finally {
      busy = false;
      const next = queued;
      queued = null;
      if (next) void reloadFrom(next.why, next.text).then((r) => next.done.forEach((d) => d(r)));
    }
    return ok;
  };
  follow(loaded.config.watch !== false, startedText);
  if (cp) warmParserThread();
  cp?.run();

  return new Promise<number>((resolve) => {
    let stopping = false;
    const stop = (signal: string) => {
      if (stopping) {
        log.warn({ signal }, 'second signal: exiting now');
        running.kill?.();
        resolve(1);
        return;
      }
      stopping = true;
      follow(false, '');
      following = false;
      void cp?.close();
      log.info({ signal }, 'draining');
      // A hard bound on the whole shutdown: whatever hangs, the process (and its workers) go.
      const bound = running.gw.snapshot.timeouts.shutdownDelay + running.gw.snapshot.timeouts.drain + 10_000;
      setTimeout(() => {
        log.error({ after_ms: bound }, 'shutdown did not finish: exiting now');
        running.kill?.();
        resolve(1);
      }, bound).unref();
      running.stop().then(() => resolve(0), (err) => {
        log.error({ err }, 'shutdown failed');
        resolve(1);
      });
    };
    const hup = () => {
      if (!fileless) void reloadFrom('SIGHUP');
      void cp?.refresh(true); // and the store's head, without waiting for its resync (a rejected one again)
    };
    onSignal = (signal) => {
      switch (signal) {
        case 'SIGTERM':
        case 'SIGINT':
          return stop(signal);
        case 'SIGHUP':
          return hup();
        case 'SIGUSR1':
          // Log rotation: the access log file is reopened (logrotate's postrotate: kill -USR1).
          // (This replaces Node's default SIGUSR1, which would start the inspector.)
          log.info('SIGUSR1: reopening log files');
          return running.reopenLogs();
        case 'SIGUSR2':
          if (!running.rollingRestart) return log.info('SIGUSR2: rolling restart needs workers > 1');
          log.info('SIGUSR2: rolling restart of the workers');
          running.rollingRestart().then(() => log.info('rolling restart done'), (err) => log.error({ err: String(err) }, 'rolling restart failed'));
          return;
      }
    };
    // What came while the gateway started.
    if (startupStop !== null) stop(startupStop);
    else if (startupHup) hup();
  });
}

function extras(gw: Gateway): string {
  const tls = gw.snapshot.tls;
  // (a primary does not listen itself: its workers do, on the configured address)
  const tlsAt = gw.tlsAddress ? fmt(gw.tlsAddress) : tls ? `${tls.listen.host.includes(':') ? `[${tls.listen.host}]` : tls.listen.host}:${tls.listen.port}` : null;
  return (tlsAt ? `, TLS on https://${tlsAt}${gw.snapshot.http2.enabled ? ' (h2, http/1.1)' : ''}` : '') +
    (gw.snapshot.http2.h2c ? ', h2c on the plain listener' : '') +
    (gw.adminAddress ? `, admin on http://${fmt(gw.adminAddress)}` : '') +
    (gw.demoAddress ? `, demo upstream on http://${fmt(gw.demoAddress)}` : '');
}

function fmt(a: { address: string; port: number; family: string }): string {
  return a.family === 'IPv6' ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`;
}
