/**
 * The Kubernetes trigger: the scale subresource of a Deployment (or StatefulSet),
 *   GET   {api}/apis/apps/v1/namespaces/{ns}/{kind}/{name}/scale  -> spec.replicas, status.replicas
 *   PATCH same, application/merge-patch+json {"spec":{"replicas":N}}  (?dryRun=All when dry_run)
 * with a bearer token read from its file on every call (projected tokens rotate) and the API
 * server's CA. In a pod, the defaults are the service account's (KUBERNETES_SERVICE_HOST/PORT,
 * /var/run/secrets/kubernetes.io/serviceaccount/{token,ca.crt}).
 *
 * What was read is kept: the subresource is read again once the last read (or PATCH answer) is
 * `readEveryMs` old (ten scaling intervals, at most 10 s: 10 s at the default interval), not at every tick, so a fleet of gateways does not ask the
 * API server once a second each. A PATCH carries the resourceVersion last seen
 * (metadata.resourceVersion: a precondition), so one made on a count someone else has changed
 * since (kubectl scale, another controller) is answered 409: the subresource is then read again
 * at once (the new count and version) and the PATCH made again only if it still differs.
 *
 * The CA file (the service account's ca.crt, which Kubernetes rotates, or ca_file) is looked at
 * again at most every `caCheckMs` (default 30 s; a stat, off the event loop, before a call): a
 * changed file that holds certificates is used for the connections from then on; one that does
 * not (half written, emptied) is logged and the CA in use kept.
 */
import { readFileSync, statSync } from 'node:fs';
import { FileRefused, readRegularFile } from '../core/files.js';
import { readFile, stat } from 'node:fs/promises';
import { isAbsolute, join } from 'node:path';
import { Agent, request, type Dispatcher } from 'undici';
import type { Logger } from '../core/log.js';
import { parseDuration } from '../config/units.js';
import type { TriggerConfig } from './schema.js';
import { loggableUrl } from './webhook.js';
import { caBundleProblem } from '../server/tls.js';

const SA = '/var/run/secrets/kubernetes.io/serviceaccount';
/** The most of an answer read: a Scale or a Status is a few hundred bytes; anything larger (not an API server's answer) is cut, not buffered. */
const BODY_LIMIT = 1 << 20;

async function textOf(body: Dispatcher.ResponseData['body']): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of body as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > BODY_LIMIT) throw new Error(`the answer is larger than ${BODY_LIMIT} bytes`); // (leaving the loop destroys the body)
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}
type KubernetesConfig = Extract<TriggerConfig, { type: 'kubernetes' }>;

/** The most of a token file read (a service account token is about 1 KB). */
const TOKEN_LIMIT = 64 * 1024;

/**
 * The bearer token in `file` ('' when there is none: the API server answers 401, reported). It
 * is read on every call, on the event loop: a path that is no regular file (a FIFO, whose open
 * waits for a writer for ever; /dev/zero, read until memory ran out) or a file past 64 KiB throws.
 */
export function readToken(file: string): string {
  let buf: Buffer;
  try {
    buf = readRegularFile(file, TOKEN_LIMIT);
  } catch (err) {
    if (err instanceof FileRefused) throw new Error(`token_file ${file} ${err.message}`);
    return '';
  }
  return buf.toString('utf8').trim();
}

/**
 * The API server of the pod's cluster, null outside a pod. KUBERNETES_SERVICE_HOST is an IPv6
 * address in an IPv6 cluster: bracketed in the URL (as client-go's net.JoinHostPort does).
 */
export function inClusterApiServer(env: NodeJS.ProcessEnv = process.env): string | null {
  const host = env['KUBERNETES_SERVICE_HOST'];
  if (!host) return null;
  return `https://${host.includes(':') ? `[${host}]` : host}:${env['KUBERNETES_SERVICE_PORT'] || '443'}`;
}

/** How long a read (or a PATCH answer) of the scale subresource stands for it. */
export const READ_EVERY_MS = 10_000;
/** How often the CA file is looked at for a change. */
export const CA_CHECK_MS = 30_000;
/** The largest CA file read (a bundle of a few certificates is a few KB). */
const CA_LIMIT = 1 << 20;
/** The longest a call waits for a CA check under way (a stat on a hung file system holds no call). */
const CA_WAIT_MS = 1000;

const signatureOf = (st: { ino: number; size: number; mtimeMs: number }): string => `${st.ino}:${st.size}:${st.mtimeMs}`;

export class KubernetesTrigger {
  /** Replaced when the CA file changes (the old one closes once its calls ended). */
  private agent: Agent;
  private readonly caFile: string | null;
  private caPem: Buffer | undefined;
  private readonly caCheckMs: number;
  /** inode, size and mtime of the CA file in use, and of one refused (logged once). */
  private caSignature: string | null = null;
  private caRefused: string | null = null;
  private caCheckAt = 0;
  private caChecking: Promise<void> | null = null;
  private readonly readEveryMs: number;
  /** metadata.resourceVersion of the last read or PATCH answer (null: none, or one without it). */
  private resourceVersion: string | null = null;
  /** performance.now() of the last successful read or PATCH answer. */
  private freshAt = -Infinity;
  private readonly url: string;
  private readonly tokenFile: string;
  private readonly timeoutMs: number;
  /**
   * The replica count asked for (spec.replicas, as the HPA reads it: status.replicas lags while
   * pods start or stop) from the last read or PATCH answer; null before the first one.
   */
  current: number | null = null;
  last: { at: string; desired: number; ok: boolean; status?: number; error?: string } | null = null;
  /** The last read's failure (null: the last read worked, or none was made yet): for /api/scaling. */
  readError: { at: string; error: string } | null = null;

  /** `caPem`: the ca_file as read when the config compiled (else it is read here). `readEveryMs`: see READ_EVERY_MS. */
  constructor(private readonly cfg: KubernetesConfig, private readonly log: Pick<Logger, 'info' | 'warn'>, baseDir: string, env: NodeJS.ProcessEnv = process.env, caPem?: Buffer, opts: { readEveryMs?: number; caCheckMs?: number } = {}) {
    this.readEveryMs = opts.readEveryMs ?? READ_EVERY_MS;
    this.caCheckMs = opts.caCheckMs ?? CA_CHECK_MS;
    const file = (p: string) => (isAbsolute(p) ? p : join(baseDir, p));
    const api = cfg.api_server ?? inClusterApiServer(env);
    if (api === null) throw new Error('kubernetes trigger: api_server is not set and this is not a pod (no KUBERNETES_SERVICE_HOST)');
    const enc = encodeURIComponent;
    this.url = `${api.replace(/\/+$/, '')}/apis/apps/v1/namespaces/${enc(cfg.namespace)}/${cfg.kind ?? 'deployments'}/${enc(cfg.deployment)}/scale`;
    this.tokenFile = file(cfg.token_file ?? `${SA}/token`);
    const caFile = cfg.ca_file ? file(cfg.ca_file) : cfg.api_server ? null : `${SA}/ca.crt`;
    const ca = caPem ?? (caFile ? readFileSync(caFile) : undefined);
    this.caFile = caFile;
    this.caPem = ca;
    try {
      if (caFile !== null) this.caSignature = signatureOf(statSync(caFile));
    } catch { /* (looked at again at the first check) */ }
    this.caCheckAt = performance.now() + this.caCheckMs;
    this.agent = KubernetesTrigger.agentFor(ca);
    this.timeoutMs = parseDuration(cfg.timeout ?? '5s');
  }

  private static agentFor(ca: Buffer | undefined): Agent {
    return new Agent({ connections: 2, ...(ca ? { connect: { ca } } : {}) });
  }

  /**
   * Before a call: the CA file looked at when due (a check under way is waited for, at most
   * CA_WAIT_MS). Resolves at once when none is due.
   */
  private caCurrent(): Promise<void> | undefined {
    if (this.caFile === null || this.closed) return undefined;
    if (this.caChecking === null) {
      if (performance.now() < this.caCheckAt) return undefined;
      this.caCheckAt = performance.now() + this.caCheckMs;
      this.caChecking = this.checkCa(this.caFile).finally(() => { this.caChecking = null; });
    }
    let timer: NodeJS.Timeout | undefined;
    return Promise.race([this.caChecking, new Promise<void>((r) => { timer = setTimeout(r, CA_WAIT_MS); })]).finally(() => clearTimeout(timer));
  }

  private async checkCa(file: string): Promise<void> {
    let sig = '';
    try {
      const st = await stat(file);
      sig = signatureOf(st);
      if (sig === this.caSignature || sig === this.caRefused) return;
      if (!st.isFile()) throw new Error('is not a regular file');
      if (st.size > CA_LIMIT) throw new Error(`is larger than ${CA_LIMIT} bytes`);
      const pem = await readFile(file);
      const bad = caBundleProblem(pem);
      if (bad !== null) throw new Error(bad);
      this.caSignature = sig;
      this.caRefused = null;
      if (this.closed || (this.caPem !== undefined && pem.equals(this.caPem))) return;
      const old = this.agent;
      this.caPem = pem;
      this.agent = KubernetesTrigger.agentFor(pem);
      void old.close().catch(() => undefined); // (its calls under way end first)
      this.log.info({ file }, 'kubernetes trigger: the API server CA file changed; new connections use it');
    } catch (err) {
      if (sig !== '' && sig === this.caRefused) return;
      this.caRefused = sig || null;
      this.log.warn({ file, err: (err as Error).message }, 'kubernetes trigger: the API server CA file cannot be used; the CA read before is kept');
    }
  }

  /** The headers of a call; `token` gets the token sent (its errors are scrubbed of it). */
  private headers(token: { value: string }, extra: Record<string, string> = {}): Record<string, string> {
    token.value = readToken(this.tokenFile);
    return { accept: 'application/json', ...(token.value ? { authorization: `Bearer ${token.value}` } : {}), ...extra };
  }

  /**
   * What an answer or an error says, without the token (a proxy or an API server that echoes
   * the request, `invalid bearer token "..."`): scrubbed before it is cut to `max` characters, so
   * no part of it is left at the cut either. It goes to the log and to /api/scaling.
   */
  private static said(text: string, max: number, token: { value: string }): string {
    const t = token.value;
    return (t.length > 0 ? text.split(t).join('(secret)') : text).slice(0, max);
  }

  private reading: Promise<number | null> | null = null;
  private lastReadError = 0;
  /** PATCHes started: a read that began before one may answer what ran before it (ignored). */
  private patches = 0;

  /**
   * spec.replicas of a Scale object (status.replicas when it has no spec). ScaleSpec.replicas is
   * `omitempty`: a spec without it (`"spec": {}`) asks for 0, whatever status still runs.
   */
  private static replicasOf(text: string): { replicas: number; resourceVersion: string | null } | null {
    const scale = JSON.parse(text) as { metadata?: { resourceVersion?: unknown }; spec?: { replicas?: number }; status?: { replicas?: number } } | null;
    const n = scale?.spec !== null && typeof scale?.spec === 'object' ? (scale.spec.replicas ?? 0) : scale?.status?.replicas;
    // (no count: not a Scale object, e.g. a proxy's {} — unknown, not 0, which would scale a fleet down)
    if (typeof n !== 'number' || !Number.isInteger(n) || n < 0) return null;
    const rv = scale?.metadata?.resourceVersion;
    return { replicas: n, resourceVersion: typeof rv === 'string' && rv.length > 0 && rv.length <= 64 ? rv : null };
  }

  /** What a read or a PATCH answer said: the count and version now known. */
  private took(scale: { replicas: number; resourceVersion: string | null }): void {
    this.current = scale.replicas;
    this.resourceVersion = scale.resourceVersion;
    this.freshAt = performance.now();
  }

  /**
   * Reads the scale subresource; updates `current` (one read at a time: callers share it). A
   * read or PATCH answer younger than readEveryMs stands for it (no request).
   */
  read(): Promise<number | null> {
    // An API server that fails is asked again after 1 s, 2 s, 4 s... up to 30 s (not every tick).
    if (performance.now() < this.readRetryAt) return Promise.resolve(this.current);
    if (this.reading === null && this.current !== null && performance.now() - this.freshAt < this.readEveryMs) return Promise.resolve(this.current);
    this.reading ??= this.readOnce().then((n) => {
      if (n === null) this.readRetryAt = performance.now() + Math.min(30_000, 1000 * 2 ** this.readFailures++);
      else this.readFailures = 0;
      return n;
    }).finally(() => { this.reading = null; });
    return this.reading;
  }
  private readFailures = 0;
  private readRetryAt = 0;

  private async readOnce(): Promise<number | null> {
    const patches = this.patches;
    const token = { value: '' };
    try {
      await this.caCurrent();
      // (one deadline for the whole call: bodyTimeout only bounds the gaps of a trickled body)
      const r = await request(this.url, { dispatcher: this.agent, headers: this.headers(token), headersTimeout: this.timeoutMs, bodyTimeout: this.timeoutMs, signal: AbortSignal.timeout(this.timeoutMs) });
      const text = await textOf(r.body);
      if (r.statusCode !== 200) throw new Error(`GET scale: HTTP ${r.statusCode} ${KubernetesTrigger.said(text, 200, token)}`);
      const n = KubernetesTrigger.replicasOf(text);
      if (n === null) throw new Error(`GET scale: no replica count in the answer ${KubernetesTrigger.said(text, 200, token)}`);
      if (patches === this.patches) this.took(n);
      this.readError = null;
      return this.current;
    } catch (err) {
      const error = KubernetesTrigger.said((err as Error).message, 300, token);
      this.readError = { at: new Date().toISOString(), error };
      // Once a minute at most: it is read every tick.
      if (Date.now() - this.lastReadError > 60_000) {
        this.lastReadError = Date.now();
        this.log.warn({ url: loggableUrl(this.url), err: error }, 'kubernetes trigger: cannot read the scale subresource');
      }
      return null;
    }
  }

  private pushing: Promise<void> = Promise.resolve();
  private wanted = -1;

  /** Sets spec.replicas: one PATCH at a time, in order; one superseded while waiting is skipped (false). True: the API server took it. */
  push(desired: number): Promise<boolean> {
    // spec.replicas already says so (the first decision after a start; a count someone else
    // set), with no PATCH on its way that would change it: nothing to PATCH.
    if (this.current === desired && this.queued === 0) return Promise.resolve(true);
    this.wanted = desired;
    this.queued++;
    const done = this.pushing.then(() => (this.wanted === desired ? this.patch(desired) : false)).finally(() => { this.queued--; });
    this.pushing = done.then(() => undefined);
    return done;
  }
  /** PATCHes asked for and not yet ended. */
  private queued = 0;

  private async patch(desired: number): Promise<boolean> {
    let status: number | undefined;
    let error: string | undefined;
    this.patches++;
    const token = { value: '' };
    try {
      // A 409 (the object was modified meanwhile: another writer, an admission webhook's
      // update, or a count changed since the resourceVersion sent) is tried again at once, as
      // client-go's RetryOnConflict does (10 ms doubling, 5 tries), not left to the next attempt
      // seconds later: the subresource is read again first (the count now asked for and its
      // version), and what already says `desired` needs no PATCH; a newer count asked for
      // meanwhile wins.
      for (let attempt = 0; ; attempt++) {
        await this.caCurrent();
        const rv = this.resourceVersion;
        const r = await request(`${this.url}${this.cfg.dry_run ? '?dryRun=All' : ''}`, {
          method: 'PATCH', dispatcher: this.agent,
          headers: this.headers(token, { 'content-type': 'application/merge-patch+json' }),
          body: JSON.stringify(rv !== null ? { metadata: { resourceVersion: rv }, spec: { replicas: desired } } : { spec: { replicas: desired } }),
          headersTimeout: this.timeoutMs, bodyTimeout: this.timeoutMs, signal: AbortSignal.timeout(this.timeoutMs),
        });
        status = r.statusCode;
        const text = await textOf(r.body);
        if (status === 409 && attempt < 4 && this.wanted === desired && !this.closed) {
          await new Promise((done) => setTimeout(done, 10 * 2 ** attempt));
          this.resourceVersion = null; // (sent again without it if the read fails)
          if ((await this.readOnce()) === desired && !this.cfg.dry_run) {
            status = 200;
            break;
          }
          continue;
        }
        if (status < 200 || status >= 300) error = KubernetesTrigger.said(text, 300, token);
        // The answer is the Scale object as now asked for (not with dry_run: nothing changed).
        else if (!this.cfg.dry_run) {
          let scale: ReturnType<typeof KubernetesTrigger.replicasOf> = null;
          try {
            scale = KubernetesTrigger.replicasOf(text);
          } catch { /* (an answer that is no JSON: the count asked for, its version unknown) */ }
          this.took(scale ?? { replicas: desired, resourceVersion: null });
        }
        break;
      }
    } catch (err) {
      error = KubernetesTrigger.said((err as Error).message, 300, token);
    }
    const ok = error === undefined;
    this.last = { at: new Date().toISOString(), desired, ok, ...(status !== undefined ? { status } : {}), ...(error ? { error } : {}) };
    if (!ok) this.log.warn({ url: loggableUrl(this.url), status, err: error }, 'kubernetes trigger: PATCH scale failed');
    return ok;
  }

  private closed = false;

  async close(): Promise<void> {
    this.closed = true;
    // (a read or PATCH in flight on an API server that does not answer ends now, not at its timeout)
    await this.agent.destroy();
  }
}
