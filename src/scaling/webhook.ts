/**
 * The webhook trigger: a JSON POST per change of a service's desired replicas, signed like
 * Stripe's webhooks so a receiver can check who sent it and when:
 *
 *   X-Turnpike-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>
 *
 * The body carries a unique `id` per delivery attempt (and `decision`, the same across the
 * retries of one decision); `verifyWebhook` (for receivers, and the tests) refuses a bad
 * signature, a timestamp outside the tolerance (default 300 s) and an id it has seen (replay).
 * Delivery retries with exponential backoff on network errors, 408, 429 and 5xx; a newer
 * decision for the same trigger replaces a delivery still retrying (only the latest counts).
 * A user and password in the URL go as Basic credentials (Authorization), never in a log line.
 * Destinations are guarded (destination.ts): loopback, link-local / cloud metadata and the node's
 * own addresses are refused unless scaling.webhook_allowed_networks lists them, checked on the
 * address connected to (no DNS rebinding); redirects are not followed.
 */
import { createHmac, randomUUID, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { Agent, request } from 'undici';
import type { Logger } from '../core/log.js';
import { parseDuration } from '../config/units.js';
import type { TriggerConfig } from './schema.js';
import { urlTarget } from '../core/url-auth.js';
import { WebhookDestinations } from './destination.js';

export const SIGNATURE_HEADER = 'x-turnpike-signature';
/** What is read of a receiver's answer body, and for how long at most, before the connection is cut. */
const BODY_LIMIT = 4096;
const BODY_WAIT_MS = 500;
/** The longest Retry-After honoured (a receiver asking for a day is asked again after this). */
const MAX_RETRY_AFTER_MS = 600_000;

/** A Retry-After value (delay-seconds or an HTTP-date, RFC 9110 10.2.3) in ms from now; null when absent or unreadable. */
export function retryAfterMs(value: string | string[] | undefined, nowMs = Date.now()): number | null {
  const v = Array.isArray(value) ? value[0] : value;
  if (v === undefined) return null;
  const t = v.trim();
  if (/^\d{1,10}$/.test(t)) return Math.min(MAX_RETRY_AFTER_MS, Number(t) * 1000);
  const date = Date.parse(t);
  return Number.isNaN(date) ? null : Math.min(MAX_RETRY_AFTER_MS, Math.max(0, date - nowMs));
}

export function signature(secret: string, timestamp: number, body: string): string {
  return `t=${timestamp},v1=${createHmac('sha256', secret).update(`${timestamp}.${body}`).digest('hex')}`;
}

/** Origin and path of a URL: no user, password, query or fragment (they may hold secrets). */
export function loggableUrl(u: string): string {
  try {
    const url = new URL(u);
    return `${url.origin}${url.pathname}`;
  } catch {
    return '(invalid URL)';
  }
}

export type VerifyResult = { ok: true; payload: Record<string, unknown> } | { ok: false; reason: string };

/**
 * Checks a received webhook: the signature over the raw body, its age, and that its id was not
 * seen before (`seen` is the receiver's memory of ids, pruned here to the tolerance window).
 */
export function verifyWebhook(secret: string, header: string | undefined, body: string, opts: { nowS?: number; toleranceS?: number; seen?: Map<string, number> } = {}): VerifyResult {
  const now = opts.nowS ?? Math.floor(Date.now() / 1000);
  const tolerance = opts.toleranceS ?? 300;
  const m = /^t=(\d{1,12}),v1=([0-9a-f]{64})$/.exec(header ?? '');
  if (!m) return { ok: false, reason: 'no or malformed signature header' };
  const t = Number(m[1]);
  const want = createHmac('sha256', secret).update(`${t}.${body}`).digest();
  if (!timingSafeEqual(want, Buffer.from(m[2]!, 'hex'))) return { ok: false, reason: 'signature mismatch' };
  if (Math.abs(now - t) > tolerance) return { ok: false, reason: `timestamp ${t} is outside the ${tolerance} s tolerance` };
  let payload: Record<string, unknown>;
  try {
    payload = JSON.parse(body) as Record<string, unknown>;
  } catch {
    return { ok: false, reason: 'the body is not JSON' };
  }
  const id = typeof payload['id'] === 'string' ? payload['id'] : '';
  if (id === '') return { ok: false, reason: 'no id' };
  if (opts.seen) {
    for (const [k, at] of opts.seen) if (at < now - tolerance) opts.seen.delete(k);
    if (opts.seen.has(id)) return { ok: false, reason: `replayed delivery ${id}` };
    opts.seen.set(id, t);
  }
  return { ok: true, payload };
}

type WebhookConfig = Extract<TriggerConfig, { type: 'webhook' }>;

export class WebhookTrigger {
  private readonly agent: Agent;
  private readonly timeoutMs: number;
  /** The receiver's URL without user and password, which go as Basic credentials (never logged). */
  private readonly target: string;
  private readonly authorization: string | null;
  /** Why the URL's host (an IP literal) may not be sent to; null: it may (a name is checked as it resolves). */
  private readonly refused: string | null;
  private generation = 0;
  /** Backoffs in progress: close() and a newer decision end them. */
  private readonly waits = new Set<() => void>();
  /** No request before this (performance.now()): the receiver's last Retry-After, for every decision. */
  private notBefore = 0;
  /** The last delivery's outcome (for /api/scaling). */
  last: { at: string; desired: number; ok: boolean; status?: number; error?: string } | null = null;

  /**
   * `caPem`: the ca_file as read when the config compiled (else it is read here).
   * `allowedNetworks`: the node's scaling.webhook_allowed_networks.
   */
  constructor(private readonly cfg: WebhookConfig, private readonly log: Pick<Logger, 'info' | 'warn'>, baseDir: string, caPem?: Buffer, allowedNetworks: readonly string[] = []) {
    const ca = caPem ?? (cfg.ca_file ? readFileSync(cfg.ca_file.startsWith('/') ? cfg.ca_file : `${baseDir}/${cfg.ca_file}`) : undefined);
    const destinations = new WebhookDestinations(allowedNetworks);
    this.agent = new Agent({ connections: 2, connect: { lookup: destinations.lookup, ...(ca ? { ca } : {}) } });
    this.timeoutMs = parseDuration(cfg.timeout ?? '5s');
    // (checked when the config was compiled: scalingPolicyOf)
    const t = urlTarget(cfg.url);
    this.target = t.url.href;
    this.authorization = t.authorization;
    const why = destinations.literalRefusal(t.url.hostname);
    this.refused = why === null ? null : `webhook destination refused: ${t.url.hostname} is ${why} (scaling.webhook_allowed_networks can allow it)`;
  }

  /** Sends `payload` (with a fresh id); resolves when delivered (true), given up or superseded (false). */
  async push(payload: Record<string, unknown>): Promise<boolean> {
    const gen = ++this.generation;
    for (const cancel of this.waits) cancel(); // (a superseded delivery waiting to retry gives up now)
    const decision = randomUUID();
    const retries = this.cfg.retries ?? 3;
    for (let attempt = 0; ; attempt++) {
      if (this.notBefore > performance.now()) {
        await this.sleep(this.notBefore - performance.now());
        if (gen !== this.generation) return false;
      }
      let status: number | undefined;
      let error: string | undefined;
      try {
        if (this.refused !== null) throw new Error(this.refused);
        // Every attempt is its own delivery (id, timestamp): a receiver that refused one as
        // seen or failed it can take the next; `decision` is the same across attempts.
        const body = JSON.stringify({ id: randomUUID(), decision, ...payload, ...(this.cfg.dry_run ? { dry_run: true } : {}) });
        const ts = Math.floor(Date.now() / 1000);
        // One deadline for the whole attempt (bodyTimeout alone only bounds the gaps: a receiver
        // trickling a byte a second would hold a connection forever).
        const headers: Record<string, string> = { 'content-type': 'application/json', 'user-agent': 'turnpike-scaling', [SIGNATURE_HEADER]: signature(this.cfg.secret, ts, body) };
        if (this.authorization !== null) headers['authorization'] = this.authorization;
        const r = await request(this.target, {
          method: 'POST', dispatcher: this.agent, body, headers,
          headersTimeout: this.timeoutMs, bodyTimeout: this.timeoutMs, signal: AbortSignal.timeout(this.timeoutMs),
        });
        status = r.statusCode;
        // 429 / 503 with Retry-After: neither a retry nor the next decision goes before it.
        const after = status === 429 || status === 503 ? retryAfterMs(r.headers['retry-after']) : null;
        if (after !== null) this.notBefore = performance.now() + after;
        // The status says it all: a short body is read (the connection is kept), a longer or
        // slower one is cut.
        await r.body.dump({ limit: BODY_LIMIT, signal: AbortSignal.timeout(Math.min(this.timeoutMs, BODY_WAIT_MS)) }).catch(() => r.body.destroy());
      } catch (err) {
        error = (err as Error).message;
      }
      const ok = status !== undefined && status >= 200 && status < 300;
      const retryable = !ok && this.refused === null && (status === undefined || status === 408 || status === 429 || status >= 500);
      this.last = { at: new Date().toISOString(), desired: Number(payload['desired']), ok, ...(status !== undefined ? { status } : {}), ...(error ? { error } : {}) };
      if (ok) return true;
      if (!retryable || attempt >= retries || gen !== this.generation) {
        this.log.warn({ url: loggableUrl(this.cfg.url), status, err: error, attempts: attempt + 1 }, 'scaling webhook not delivered');
        return false;
      }
      await this.sleep(Math.max(200 * 2 ** attempt, this.notBefore - performance.now()));
      if (gen !== this.generation) return false; // a newer decision is on its way
    }
  }

  /** A backoff that close() or a newer decision ends early. */
  private sleep(ms: number): Promise<void> {
    return new Promise<void>((r) => {
      const timer = setTimeout(() => { this.waits.delete(cancel); r(); }, ms);
      const cancel = () => { clearTimeout(timer); this.waits.delete(cancel); r(); };
      this.waits.add(cancel);
    });
  }

  async close(): Promise<void> {
    this.generation++;
    for (const cancel of this.waits) cancel();
    this.waits.clear();
    // (not close(): it waits for a delivery in flight, up to its timeout, on a receiver that does not answer)
    await this.agent.destroy();
  }
}
