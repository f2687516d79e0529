/**
 * The one truth about target health and circuit state. It receives passive reports (outcomes
 * of real requests) and runs the active probes, decides, and publishes decisions through
 * `publish`. In a single process it lives beside the proxy and publishes straight into the
 * runtime state; with workers it lives in the primary, workers report to it over IPC and every
 * decision is broadcast to all of them (src/server/cluster.ts), so no worker keeps sending
 * traffic to a target another one found dead.
 */
import { Pool, buildConnector, request } from 'undici';
import { isIP } from 'node:net';
import { performance } from 'node:perf_hooks';
import { upstreamTlsName } from '../server/tls.js';
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import type { Snapshot } from '../config/compile.js';
import type { CircuitState } from './state.js';
import type { Logger } from '../core/log.js';

export type Decision =
  | { t: 'target'; key: string; down: boolean }
  | { t: 'circuit'; service: string; state: CircuitState; until: number };

/** What the request path calls. */
export interface Reporter {
  /** One attempt's outcome on a target whose service has passive checks. */
  passive(key: string, ok: boolean): void;
  /** One request's outcome on a service with a failure-ratio circuit; `trial`: admitted while half-open. */
  outcome(service: string, ok: boolean, trial: boolean): void;
}

export interface PassiveConfig { failures: number; ejection: number; maxEjection: number; maxEjectionPercent: number; statuses: ReadonlySet<number> }
export interface ActiveConfig { path: string; interval: number; timeout: number; healthy: number; unhealthy: number; statuses: ReadonlySet<number> | null; host: string | undefined }
export interface CircuitConfig { failureRatio: number; minRequests: number; window: number; openFor: number; halfOpenRequests: number }

interface TargetHealth {
  key: string;
  origin: string;
  hostHeader: string;
  /** The service whose target it is (passive health never ejects a service's last target up). */
  service: string;
  /** Its balancer weight: a target of weight 0 takes no traffic, so it is no target up for that rule. */
  weight: number;
  /**
   * What its probes go through (null without active checks): a pool of its own, closed with it (a
   * shared agent kept an idle connection to a removed target for its keep-alive hint), with the
   * service's protocol and upstream TLS settings; `probeKey` names them.
   */
  dispatcher: Pool | null;
  probeKey: string;
  /**
   * An HTTP/1.1 target's TLS settings for a probe read with node:http instead (see probeAfter100),
   * null over HTTP/2 (no 100 Continue there that undici would refuse).
   */
  probeTls: ProbeTls | null;
  passive: PassiveConfig | null;
  active: ActiveConfig | null;
  failures: number;
  /** The ejection multiplier: ejections not yet worked off (see passive()). */
  ejections: number;
  /** When it was last readmitted from an ejection (performance.now(), ms). */
  readmittedAt: number;
  ejected: boolean;
  ejectTimer: NodeJS.Timeout | undefined;
  probeOk: number;
  probeFail: number;
  activeDown: boolean;
  down: boolean;
  probeTimer: NodeJS.Timeout | undefined;
  probing: boolean;
}

const BUCKETS = 10;

/** What a probe reads of its answer's body: past it the rest is not read (a big body is no failure). */
const PROBE_BODY_BYTES = 64 * 1024;

/**
 * Reads a probe's body, up to PROBE_BODY_BYTES. It rejects when the body breaks off — a
 * connection cut short of its Content-Length or mid-chunk, a reset: a target whose answers
 * break is not healthy, as Envoy counts a reset stream — or when the probe's timeout fires
 * (undici's request destroys the body with the signal's reason). undici's body.dump() took a
 * body that broke off for a whole one: it resolves on any close that is not its signal's.
 */
async function readProbeBody(body: AsyncIterable<Buffer>): Promise<void> {
  let n = 0;
  for await (const chunk of body) {
    n += chunk.length;
    if (n > PROBE_BODY_BYTES) break; // (leaving the loop destroys the body, its connection with it)
  }
}

/** TLS settings of an HTTP/1.1 probe read with node:http (empty over cleartext). */
type ProbeTls = { ca?: Buffer; cert?: Buffer; key?: Buffer; rejectUnauthorized?: boolean } & ReturnType<typeof upstreamTlsName>;

/**
 * undici's HTTP/1.1 client refuses any 100 Continue (it never sends Expect: every 100 is
 * unrequested) and drops the connection with this message, though RFC 9110 §15.2 has a client
 * read past a 1xx it did not expect (forward.ts: UNDICI_REFUSED_100).
 */
const undiciRefused100 = (err: unknown) => (err as { code?: string }).code === 'UND_ERR_SOCKET' && (err as Error).message === 'bad response';

/**
 * The probe once more with node:http, which reads past interim answers (a 100 Continue
 * included), on a connection of its own: a health endpoint that sends an unrequested 100 before
 * its 200 is healthy, not down (undici's refusal of the 100 failed every probe). Its status, the
 * body read as readProbeBody does; the probe's signal bounds it.
 */
function probeAfter100(url: string, host: string, tls: ProbeTls, signal: AbortSignal): Promise<number> {
  return new Promise((resolve, reject) => {
    const u = new URL(url);
    const opts = { method: 'GET', headers: { host, 'user-agent': 'turnpike-healthcheck' }, agent: false, signal, ...tls };
    const req = (u.protocol === 'https:' ? httpsRequest : httpRequest)(u, opts, (res) => {
      let n = 0;
      res.on('data', (c: Buffer) => {
        n += c.length;
        if (n > PROBE_BODY_BYTES) {
          resolve(res.statusCode!);
          res.destroy();
        }
      });
      res.on('end', () => resolve(res.statusCode!));
      res.on('error', reject);
      res.on('close', () => reject(new Error('the answer broke off'))); // (after 'end' or a resolve: nothing)
    });
    req.on('error', reject);
    req.end();
  });
}

function sameActive(a: ActiveConfig | null, b: ActiveConfig | null): boolean {
  if (a === null || b === null) return a === b;
  const key = (c: ActiveConfig) => JSON.stringify([c.path, c.interval, c.timeout, c.healthy, c.unhealthy, c.statuses ? [...c.statuses] : null, c.host]);
  return key(a) === key(b);
}

interface Circuit {
  name: string;
  cfg: CircuitConfig;
  state: CircuitState;
  until: number;
  ok: Float64Array;
  fail: Float64Array;
  stamp: Float64Array;
  timer: NodeJS.Timeout | undefined;
}

export class HealthAuthority implements Reporter {
  private readonly targets = new Map<string, TargetHealth>();
  private readonly circuits = new Map<string, Circuit>();
  private stopped = false;

  constructor(private readonly publish: (d: Decision) => void, private readonly log?: Logger) {}

  /** Adopts the targets and circuits of a new snapshot; state of those that stay is kept. */
  sync(snap: Snapshot): void {
    const seen = new Set<string>();
    const seenCircuits = new Set<string>();
    for (const s of snap.services) {
      for (const t of s.targets) {
        seen.add(t.state.key);
        let h = this.targets.get(t.state.key);
        if (!h) {
          h = {
            key: t.state.key, origin: t.origin, hostHeader: t.hostHeader, service: s.name, weight: t.weight, dispatcher: null, probeKey: '', probeTls: null, passive: null, active: null,
            failures: 0, ejections: 0, readmittedAt: 0, ejected: false, ejectTimer: undefined,
            probeOk: 0, probeFail: 0, activeDown: false, down: false, probeTimer: undefined, probing: false,
          };
          this.targets.set(h.key, h);
        }
        h.passive = s.health.passive;
        h.weight = t.weight;
        const hadActive = h.active !== null;
        // Same probe settings (a reload builds new objects): keep the object, so a probe in
        // flight still counts (a result is dropped only when its settings changed).
        if (!sameActive(h.active, s.health.active)) h.active = s.health.active;
        this.probePool(h, s);
        if (!h.active && hadActive) {
          clearTimeout(h.probeTimer);
          h.probeTimer = undefined;
          h.activeDown = false;
          h.probeOk = h.probeFail = 0;
          this.update(h);
        }
        if (!h.passive && h.ejected) this.readmit(h);
        if (h.active && !h.probeTimer && !h.probing) this.scheduleProbe(h, 0);
      }
      if (s.circuit) {
        seenCircuits.add(s.name);
        const c = this.circuits.get(s.name);
        if (c) c.cfg = s.circuit;
        else {
          this.circuits.set(s.name, {
            name: s.name, cfg: s.circuit, state: 'closed', until: 0, timer: undefined,
            ok: new Float64Array(BUCKETS), fail: new Float64Array(BUCKETS), stamp: new Float64Array(BUCKETS).fill(-1),
          });
        }
      }
    }
    for (const [key, h] of this.targets) {
      if (!seen.has(key)) {
        clearTimeout(h.probeTimer);
        clearTimeout(h.ejectTimer);
        h.dispatcher?.close().catch(() => {}); // (once a probe in flight ended)
        this.targets.delete(key);
        // Its runtime state lives on while a request of an older snapshot holds it, and a reload
        // that puts the target back takes that state over: it must not stay down with no
        // ejection or probe left here to bring it up.
        if (h.down) this.publish({ t: 'target', key, down: false });
      }
    }
    for (const [name, c] of this.circuits) {
      if (!seenCircuits.has(name)) {
        clearTimeout(c.timer);
        this.circuits.delete(name);
        this.publish({ t: 'circuit', service: name, state: 'closed', until: 0 });
      }
    }
  }

  /** Current decisions, for a worker that just started. */
  decisions(): Decision[] {
    const out: Decision[] = [];
    for (const h of this.targets.values()) if (h.down) out.push({ t: 'target', key: h.key, down: true });
    for (const c of this.circuits.values()) if (c.state !== 'closed') out.push({ t: 'circuit', service: c.name, state: c.state, until: c.until });
    return out;
  }

  /** Health as the admin API shows it. */
  report(): { targets: Record<string, { down: boolean; ejected: boolean; failing_probes: boolean; failures: number }>; circuits: Record<string, CircuitState> } {
    const targets: Record<string, { down: boolean; ejected: boolean; failing_probes: boolean; failures: number }> = {};
    for (const h of this.targets.values()) targets[h.key] = { down: h.down, ejected: h.ejected, failing_probes: h.activeDown, failures: h.failures };
    const circuits: Record<string, CircuitState> = {};
    for (const c of this.circuits.values()) circuits[c.name] = c.state;
    return { targets, circuits };
  }

  passive(key: string, ok: boolean): void {
    const h = this.targets.get(key);
    if (!h || !h.passive) return;
    if (ok) {
      h.failures = 0;
      return;
    }
    if (h.ejected) return;
    if (++h.failures >= h.passive.failures) {
      // The last target up stays (NGINX never marks a lone server down; Envoy has its panic
      // threshold): ejecting it turns a blip into an outage of `ejection` for every request.
      if (!this.anotherUp(h) || !this.mayEject(h, h.passive.maxEjectionPercent)) {
        h.failures = 0;
        return;
      }
      h.failures = 0;
      h.probeOk = 0; // probes must pass `healthy` times again before they readmit it early
      h.ejected = true;
      // Each repeat doubles the ejection, up to max_ejection; the multiplier steps down by one
      // for every `ejection` the target then stayed in (as Envoy's outlier detection decrements
      // it per healthy interval). A flapping target — readmitted, a few answers good, failing
      // again — is out longer each time (a success alone reset it: a target failing every
      // other minute got the base ejection each time), and one that recovered is back at the
      // base after a while (without a success to reset it, a target of a quiet service kept its
      // multiplier for good: one run of failures months later got max_ejection). The multiplier
      // stops growing where max_ejection is reached, so working it off takes a bounded time.
      const { ejection, maxEjection } = h.passive;
      // (the monotonic clock: a wall clock stepped back would read as time to add, not take off)
      if (h.ejections > 0) h.ejections = Math.max(0, h.ejections - Math.floor((performance.now() - h.readmittedAt) / ejection));
      const ms = Math.min(ejection * 2 ** h.ejections, maxEjection);
      h.ejections = Math.min(h.ejections + 1, Math.ceil(Math.log2(maxEjection / ejection)));
      this.log?.warn({ target: key, ejection_ms: ms }, 'target ejected after consecutive failures');
      h.ejectTimer = setTimeout(() => this.readmit(h), ms);
      h.ejectTimer.unref();
      this.update(h);
    }
  }

  outcome(service: string, ok: boolean, trial: boolean): void {
    if (trial) this.outcomes(service, 0, 0, ok ? 1 : 0, ok ? 0 : 1);
    else this.outcomes(service, ok ? 1 : 0, ok ? 0 : 1, 0, 0);
  }

  /**
   * Outcomes in bulk (workers send counts). While half-open only the trials' outcomes decide:
   * a request admitted before the circuit opened says nothing about the service now.
   */
  outcomes(service: string, ok: number, fail: number, trialOk = 0, trialFail = 0): void {
    const c = this.circuits.get(service);
    if (!c) return;
    if (c.state === 'open') return;
    if (c.state === 'half-open') {
      if (trialFail > 0) this.open(c);
      else if (trialOk > 0) this.close(c);
      return;
    }
    ok += trialOk;
    fail += trialFail;
    const width = c.cfg.window / BUCKETS;
    // (the monotonic clock: stepped back, the wall clock kept old buckets in the window for as long)
    const now = performance.now();
    const slot = Math.floor(now / width);
    const i = slot % BUCKETS;
    if (c.stamp[i] !== slot) {
      c.stamp[i] = slot;
      c.ok[i] = 0;
      c.fail[i] = 0;
    }
    c.ok[i]! += ok;
    c.fail[i]! += fail;
    if (fail === 0) return;
    let okSum = 0;
    let failSum = 0;
    for (let k = 0; k < BUCKETS; k++) {
      if (slot - c.stamp[k]! < BUCKETS) {
        okSum += c.ok[k]!;
        failSum += c.fail[k]!;
      }
    }
    const total = okSum + failSum;
    if (total >= c.cfg.minRequests && failSum / total >= c.cfg.failureRatio) this.open(c);
  }

  private open(c: Circuit): void {
    clearTimeout(c.timer);
    c.state = 'open';
    c.until = Date.now() + c.cfg.openFor;
    this.log?.warn({ service: c.name, open_ms: c.cfg.openFor }, 'circuit opened');
    c.timer = setTimeout(() => {
      c.state = 'half-open';
      this.publish({ t: 'circuit', service: c.name, state: 'half-open', until: 0 });
    }, c.cfg.openFor);
    c.timer.unref();
    this.publish({ t: 'circuit', service: c.name, state: 'open', until: c.until });
  }

  private close(c: Circuit): void {
    clearTimeout(c.timer);
    c.state = 'closed';
    c.until = 0;
    c.stamp.fill(-1);
    this.log?.info({ service: c.name }, 'circuit closed');
    this.publish({ t: 'circuit', service: c.name, state: 'closed', until: 0 });
  }

  /** Whether another target of h's service is up now and takes traffic (a weight above 0). */
  private anotherUp(h: TargetHealth): boolean {
    for (const o of this.targets.values()) if (o !== h && o.service === h.service && !o.down && o.weight > 0) return true;
    return false;
  }

  /**
   * Whether ejecting h keeps its service within max_ejection_percent: as Envoy's, the targets
   * passive checks ejected already, against all the service's targets, must be under it; one
   * may always be ejected. Without the bound a bad deploy or a dependency all targets share
   * (failing answers from each) ejected every target but the last, which then took all traffic.
   */
  private mayEject(h: TargetHealth, percent: number): boolean {
    if (percent >= 100) return true;
    let all = 0;
    let ejected = 0;
    for (const o of this.targets.values()) {
      if (o.service !== h.service) continue;
      all++;
      if (o.ejected) ejected++;
    }
    return ejected === 0 || (ejected * 100) / all < percent;
  }

  private readmit(h: TargetHealth): void {
    clearTimeout(h.ejectTimer);
    h.ejectTimer = undefined;
    if (h.ejected) h.readmittedAt = performance.now();
    h.ejected = false;
    h.failures = 0;
    this.update(h);
  }

  private update(h: TargetHealth): void {
    const down = h.ejected || h.activeDown;
    if (down === h.down) return;
    h.down = down;
    this.log?.info({ target: h.key, down }, down ? 'target down' : 'target up');
    this.publish({ t: 'target', key: h.key, down });
  }

  /**
   * Gives an actively checked target the pool its probes go through: the service's protocol (a
   * target that speaks only HTTP/2 — gRPC servers, many h2c services — cannot read an HTTP/1.1
   * probe) and, over TLS, its CA, client certificate, verification switch and server name, as
   * its requests use (a private CA must not make a healthy target look down; the SNI of a target
   * resolved to an address is its name). Settings that changed (a reload rotated the CA) get a
   * new pool; the old one is closed once its probe in flight ended.
   */
  private probePool(h: TargetHealth, s: Snapshot['services'][number]): void {
    let key = '';
    let connect: Pool.Options['connect'] | undefined;
    h.probeTls = null;
    if (h.active !== null) {
      const tls = s.tls;
      if (h.origin.startsWith('https:')) {
        const name = h.hostHeader.replace(/:[0-9]+$/, '').replace(/^\[|\]$/g, '');
        const servername = tls?.servername ?? (isIP(name) === 0 ? name : undefined);
        if (!s.h2Upstream) h.probeTls = { ...(tls ? { ca: tls.ca, cert: tls.cert, key: tls.key, rejectUnauthorized: tls.rejectUnauthorized } : {}), ...upstreamTlsName(servername) };
        key = JSON.stringify([tls?.ca?.toString('base64'), tls?.cert?.toString('base64'), tls?.key ? 'k' + tls.key.length : '', tls?.rejectUnauthorized ?? true, servername ?? '', s.h2Upstream]);
        const build = buildConnector({ ...(tls ? { ca: tls.ca, cert: tls.cert, key: tls.key, rejectUnauthorized: tls.rejectUnauthorized } : {}), ...upstreamTlsName(servername), ...(s.h2Upstream ? { allowH2: true } : {}) });
        // (undici would name the probe's Host — healthcheck.host — before these: see pools.ts)
        connect = (o, cb) => build({ ...o, servername: undefined }, cb);
      } else {
        key = s.h2Upstream ? 'h2c' : 'http';
        if (!s.h2Upstream) h.probeTls = {};
        // (HTTP/2 with prior knowledge: undici's connector option, not in its types)
        if (s.h2Upstream) connect = { useH2c: true } as Pool.Options['connect'];
      }
    }
    if (key === h.probeKey) return;
    h.dispatcher?.close().catch(() => {});
    h.probeKey = key;
    h.dispatcher = key === '' ? null : new Pool(h.origin, {
      keepAliveTimeout: 10_000,
      connections: 2,
      // (ALPN h2 over TLS, as the service's own connections offer it)
      ...(s.h2Upstream ? { allowH2: true } : {}),
      ...(connect ? { connect } : {}),
    });
  }

  private scheduleProbe(h: TargetHealth, delay: number): void {
    if (this.stopped || !h.active) return;
    h.probeTimer = setTimeout(() => {
      h.probeTimer = undefined;
      void this.probe(h);
    }, delay);
    h.probeTimer.unref();
  }

  private async probe(h: TargetHealth): Promise<void> {
    const cfg = h.active;
    if (!cfg || this.stopped) return;
    h.probing = true;
    let ok = false;
    let why = '';
    try {
      const signal = AbortSignal.timeout(cfg.timeout);
      const host = cfg.host ?? h.hostHeader;
      let status: number;
      try {
        const res = await request(h.origin + cfg.path, {
          method: 'GET',
          dispatcher: h.dispatcher!,
          headers: { host, 'user-agent': 'turnpike-healthcheck' },
          headersTimeout: cfg.timeout,
          bodyTimeout: cfg.timeout,
          signal,
        });
        status = res.statusCode;
        // A body that stalls past the timeout or breaks off fails the probe (readProbeBody).
        await readProbeBody(res.body);
      } catch (err) {
        if (!undiciRefused100(err) || h.probeTls === null) throw err;
        status = await probeAfter100(h.origin + cfg.path, host, h.probeTls, signal);
      }
      ok = cfg.statuses ? cfg.statuses.has(status) : status >= 200 && status < 400;
      if (!ok) why = `status ${status}`;
    } catch (err) {
      ok = false;
      const e = err as { code?: string; name?: string; message?: string };
      why = e.name === 'TimeoutError' || (e as { cause?: { name?: string } }).cause?.name === 'TimeoutError' || e.code === 'UND_ERR_HEADERS_TIMEOUT' || e.code === 'UND_ERR_BODY_TIMEOUT' ? `no answer within ${cfg.timeout} ms` : `${e.code ?? e.name ?? 'error'}: ${e.message ?? ''}`.slice(0, 200);
    }
    h.probing = false;
    if (this.targets.get(h.key) !== h || h.active !== cfg) {
      if (this.targets.get(h.key) === h && h.active) this.scheduleProbe(h, h.active.interval);
      return;
    }
    if (ok) {
      h.probeFail = 0;
      if (++h.probeOk >= cfg.healthy && (h.activeDown || h.ejected)) {
        h.activeDown = false;
        // A target the probes see healthy again is also readmitted from a passive ejection.
        if (h.ejected) this.readmit(h);
        else this.update(h);
      }
    } else {
      h.probeOk = 0;
      this.log?.debug({ target: h.key, path: cfg.path, reason: why }, 'health probe failed');
      if (++h.probeFail >= cfg.unhealthy && !h.activeDown) {
        h.activeDown = true;
        // Why, once per transition (a TLS or header problem would otherwise be a silent outage).
        this.log?.warn({ target: h.key, path: cfg.path, reason: why, failures: h.probeFail }, 'health probes fail: target taken down');
        this.update(h);
      }
    }
    this.scheduleProbe(h, cfg.interval);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    for (const h of this.targets.values()) {
      clearTimeout(h.probeTimer);
      clearTimeout(h.ejectTimer);
    }
    for (const c of this.circuits.values()) clearTimeout(c.timer);
    await Promise.all([...this.targets.values()].map((h) => h.dispatcher?.close().catch(() => {})));
  }
}
