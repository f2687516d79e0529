/** `scaling:` config -> what the advisor runs (checked at compile: errors name the field). */
import { WebhookDestinations, parseNetwork } from './destination.js';
import type { PathSegment } from '../config/errors.js';
import { createHash } from 'node:crypto';
import type { ConfigInputs } from '../config/inputs.js';
import { parseDuration } from '../config/units.js';
import { parseAddress } from '../config/address.js';
import { DEFAULT_POLICY, policyProblems, type ScalingPolicy } from './recommender.js';
import { urlTarget } from '../core/url-auth.js';
import { inClusterApiServer } from './kubernetes.js';
import { caBundleProblem, upstreamTlsProblem } from '../server/tls.js';
import type { ScalingConfig, ServiceScalingConfig, TriggerConfig } from './schema.js';

type Fail = (path: PathSegment[], message: string) => void;

export interface ScalingPolicyConfig {
  policy: ScalingPolicy;
  currentFrom: 'targets' | 'trigger';
  triggers: readonly TriggerConfig[];
  /** Per trigger (same order): the PEM of its ca_file, read when the config compiled. */
  cas: readonly (Buffer | undefined)[];
  /** The triggers and their CA files' digests: a reload that keeps it keeps the triggers (a rotated CA file starts new ones). */
  triggersKey: string;
  /** The node's scaling.webhook_allowed_networks (webhook destinations refused by default that it allows). */
  webhookAllowed: readonly string[];
  /** JSON of the policy: a reload that keeps it keeps the recommender's windows. */
  key: string;
}

export interface ScalingSettings {
  intervalMs: number;
  keda: { host: string; port: number; tls?: { cert: Buffer; key: Buffer; clientCa?: Buffer } } | null;
  gateway: { targetUtilization: number; minNodes: number; maxNodes: number };
  /** Relative trigger files (token_file, ca_file) are relative to this. */
  baseDir: string;
}

/** The config's name of each policy field (an error names the field, and so its line). */
const FIELD: Record<keyof ScalingPolicy, PathSegment[]> = {
  targetConcurrency: ['target_concurrency'], targetUtilization: ['target_utilization'], minReplicas: ['min_replicas'], maxReplicas: ['max_replicas'],
  stableWindowMs: ['stable_window'], panicWindowMs: ['panic_window'], panicThreshold: ['panic_threshold'], maxScaleUpRate: ['max_scale_up_rate'],
  maxScaleDownRate: ['max_scale_down_rate'], scaleUpCooldownMs: ['scale_up_cooldown'], scaleDownCooldownMs: ['scale_down_cooldown'],
  scaleDownStabilizationMs: ['scale_down_stabilization'], sloP95Ms: ['slo', 'p95'], maxErrorRate: ['max_error_rate'], tolerance: ['tolerance'],
};

const ms = (v: string | number | undefined, fallback: number): number => (v === undefined ? fallback : parseDuration(v));
const MAX_TIMER_MS = 2_147_483_647;

const originOf = (u: string): string | null => {
  try {
    return new URL(u).origin;
  } catch {
    return null;
  }
};

/**
 * `allowedApis`: the node's `scaling.kubernetes_api_servers`. A trigger's api_server must be one
 * of them: the node sends its bearer token there, and a service's settings may come from the
 * admin API (a writer must not be able to point the token anywhere).
 * `webhookAllowed`: the node's `scaling.webhook_allowed_networks`: a webhook URL whose host is an
 * IP literal refused by default (loopback, link-local, metadata: destination.ts) must be in it.
 */
export function scalingPolicyOf(c: ServiceScalingConfig, fail: Fail, allowedApis: readonly string[] = [], inputs?: ConfigInputs, webhookAllowed: readonly string[] = []): ScalingPolicyConfig {
  const destinations = new WebhookDestinations(webhookAllowed);
  const d = DEFAULT_POLICY;
  const policy: ScalingPolicy = {
    ...d,
    targetConcurrency: c.target_concurrency,
    targetUtilization: c.target_utilization ?? d.targetUtilization,
    minReplicas: c.min_replicas ?? 1,
    maxReplicas: c.max_replicas ?? 10,
    stableWindowMs: ms(c.stable_window, d.stableWindowMs),
    panicWindowMs: ms(c.panic_window, d.panicWindowMs),
    panicThreshold: c.panic_threshold ?? d.panicThreshold,
    maxScaleUpRate: c.max_scale_up_rate ?? d.maxScaleUpRate,
    maxScaleDownRate: c.max_scale_down_rate ?? d.maxScaleDownRate,
    scaleUpCooldownMs: ms(c.scale_up_cooldown, d.scaleUpCooldownMs),
    scaleDownCooldownMs: ms(c.scale_down_cooldown, d.scaleDownCooldownMs),
    scaleDownStabilizationMs: ms(c.scale_down_stabilization, d.scaleDownStabilizationMs),
    maxErrorRate: c.max_error_rate ?? d.maxErrorRate,
    tolerance: c.tolerance ?? d.tolerance,
    ...(c.slo ? { sloP95Ms: parseDuration(c.slo.p95) } : {}),
  };
  // A rule between two fields names the first of them the config sets (min_replicas: 20 under
  // the default max_replicas of 10 is min_replicas' line), else the first.
  const written = (f: keyof ScalingPolicy): boolean => {
    let at: unknown = c;
    for (const k of FIELD[f]) at = (at as Record<string, unknown> | undefined)?.[k as string];
    return at !== undefined;
  };
  for (const problem of policyProblems(policy)) fail(FIELD[problem.fields.find(written) ?? problem.fields[0]!], problem.message);
  const triggers = c.triggers ?? [];
  const kube = triggers.some((t) => t.type === 'kubernetes');
  // With a kubernetes trigger the scale subresource knows what runs; the healthy targets of a
  // Deployment behind one Service address count 1 (a restart would scale 10 replicas to 1).
  const currentFrom = c.current_replicas ?? (kube ? 'trigger' : 'targets');
  if (currentFrom === 'trigger' && !kube) fail(['current_replicas'], 'trigger needs a kubernetes trigger (it reads the scale subresource)');
  if (currentFrom === 'targets' && kube) fail(['current_replicas'], 'targets cannot be used with a kubernetes trigger: the current count comes from its scale subresource (leave current_replicas out, or set it to trigger)');
  const allowed = new Set(allowedApis.map(originOf).filter((o): o is string => o !== null));
  // (one scale subresource is the current count, and the advisor runs one: a second was dropped unseen)
  const kubes = triggers.flatMap((t, i) => (t.type === 'kubernetes' ? [i] : []));
  for (const i of kubes.slice(1)) fail(['triggers', i], `a second kubernetes trigger (the first is triggers[${kubes[0]}]): a service has one scale subresource, which gives its current count`);
  triggers.forEach((t, i) => {
    // (each call's deadline is a timer: 0 or past the longest timer aborted every call at once)
    if (t.timeout !== undefined) {
      const to = parseDuration(t.timeout);
      if (to < 1 || to > MAX_TIMER_MS) fail(['triggers', i, 'timeout'], 'must be above 0 and at most 24d (2147483647 ms, the longest timer)');
    }
    if (t.type === 'webhook') {
      // (its user and password are the receiver's Basic credentials: they must decode)
      try {
        const why = destinations.literalRefusal(urlTarget(t.url).url.hostname);
        if (why !== null) fail(['triggers', i, 'url'], `${new URL(t.url).hostname} is ${why}: a webhook may not be sent there unless scaling.webhook_allowed_networks (node-local) lists it`);
      } catch (err) {
        fail(['triggers', i, 'url'], (err as Error).message);
      }
      return;
    }
    if (t.type !== 'kubernetes') return;
    if (t.api_server === undefined) {
      if (!process.env['KUBERNETES_SERVICE_HOST']) fail(['triggers', i, 'api_server'], 'required outside a Kubernetes pod');
      return;
    }
    const o = originOf(t.api_server);
    const inPod = inClusterApiServer();
    if (o === null || (!allowed.has(o) && o !== (inPod && originOf(inPod)))) {
      fail(['triggers', i, 'api_server'], `${t.api_server} is not in scaling.kubernetes_api_servers (this node's list of API servers it may send its token to)`);
    }
  });
  // A CA file that cannot be read is the config's error (the trigger would not start: silently,
  // and for good, as a reload of the same text kept it); its digest makes a rotated one new.
  const cas = triggers.map((t, i) => {
    const pem = t.ca_file !== undefined && inputs ? inputs.readOr(t.ca_file, (msg) => fail(['triggers', i, 'ca_file'], msg)) : undefined;
    // (a file with no certificate in it would trust nothing: every delivery refused at run time)
    const bad = pem !== undefined ? caBundleProblem(pem) : null;
    if (bad !== null) fail(['triggers', i, 'ca_file'], bad);
    return pem;
  });
  const triggersKey = JSON.stringify([triggers, cas.map((b) => (b ? createHash('sha256').update(b).digest('hex') : null)), webhookAllowed]);
  const { triggers: _t, ...rest } = c;
  return { policy, currentFrom, triggers, cas, triggersKey, webhookAllowed, key: JSON.stringify(rest) };
}

export function scalingSettingsOf(c: ScalingConfig | undefined, services: readonly { scaling: ScalingPolicyConfig | null }[], inputs: ConfigInputs, fail: Fail): ScalingSettings | null {
  if (c === undefined && !services.some((s) => s.scaling !== null)) return null;
  const intervalMs = ms(c?.interval, 1000);
  if (intervalMs < 100 || intervalMs > 60_000) fail(['interval'], 'between 100ms and 60s');
  c?.webhook_allowed_networks?.forEach((n, i) => {
    if (parseNetwork(n) === null) fail(['webhook_allowed_networks', i], `"${n}" is not an IP address or CIDR (10.0.0.0/8, 127.0.0.1/32, fd00::/8)`);
  });
  let keda: ScalingSettings['keda'] = null;
  if (c?.keda) {
    const at = parseAddress(c.keda.listen);
    if (at.port > 65535) fail(['keda', 'listen'], 'host:port with a port up to 65535');
    else keda = at;
    const t = c.keda.tls;
    if (t && keda) {
      const read = (field: string, p: string): Buffer | undefined => inputs.readOr(p, (msg) => fail(['keda', 'tls', field], msg));
      const [cert, key, clientCa] = [read('cert', t.cert), read('key', t.key), t.client_ca !== undefined ? read('client_ca', t.client_ca) : undefined];
      if (cert && key) {
        // Material Node takes without a word (a client CA file with no certificate in it, a key
        // that is not the certificate's) would refuse every KEDA connection at run time.
        const id = createHash('sha256').update(cert).update('\0').update(key).update('\0').update(clientCa ?? '').digest('hex');
        const bad = upstreamTlsProblem(id, clientCa, cert, key);
        if (bad !== null) fail(['keda', 'tls', bad.field === 'ca' ? 'client_ca' : 'cert'], bad.message);
        else keda.tls = { cert, key, ...(clientCa ? { clientCa } : {}) };
      }
    }
  }
  const g = c?.gateway;
  const gateway = { targetUtilization: g?.target_utilization ?? 0.7, minNodes: g?.min_nodes ?? 1, maxNodes: g?.max_nodes ?? 100 };
  if (gateway.maxNodes < gateway.minNodes) fail(['gateway', g?.max_nodes === undefined ? 'min_nodes' : 'max_nodes'], g?.max_nodes === undefined ? `must be at most max_nodes (${gateway.maxNodes})` : 'must be at least min_nodes');
  return { intervalMs, keda, gateway, baseDir: inputs.baseDir };
}
