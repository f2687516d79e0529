/** `scaling:` config -> what the advisor runs (checked at compile: errors name the field). */
import type { PathSegment } from '../config/errors.js';
import { parseDuration } from '../config/units.js';
import { DEFAULT_POLICY, validatePolicy, type ScalingPolicy } from './recommender.js';
import type { ScalingConfig, ServiceScalingConfig, TriggerConfig } from './schema.js';

type Fail = (path: PathSegment[], message: string) => void;

export interface ScalingPolicyConfig {
  policy: ScalingPolicy;
  currentFrom: 'targets' | 'trigger';
  triggers: readonly TriggerConfig[];
  /** JSON of the policy: a reload that keeps it keeps the recommender's windows. */
  key: string;
}

export interface ScalingSettings {
  intervalMs: number;
  keda: { host: string; port: number } | null;
  gateway: { targetUtilization: number; minNodes: number; maxNodes: number };
  /** Relative trigger files (token_file, ca_file) are relative to this. */
  baseDir: string;
}

const ms = (v: string | number | undefined, fallback: number): number => (v === undefined ? fallback : parseDuration(v));

export function scalingPolicyOf(c: ServiceScalingConfig, fail: Fail): ScalingPolicyConfig {
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
    ...(c.slo ? { sloP95Ms: parseDuration(c.slo.p95) } : {}),
  };
  for (const problem of validatePolicy(policy)) fail([], problem);
  const triggers = c.triggers ?? [];
  const currentFrom = c.current_replicas ?? 'targets';
  if (currentFrom === 'trigger' && !triggers.some((t) => t.type === 'kubernetes')) fail(['current_replicas'], 'trigger needs a kubernetes trigger (it reads the scale subresource)');
  triggers.forEach((t, i) => {
    if (t.type === 'kubernetes' && t.api_server === undefined && !process.env['KUBERNETES_SERVICE_HOST']) fail(['triggers', i, 'api_server'], 'required outside a Kubernetes pod');
  });
  const { triggers: _t, ...rest } = c;
  return { policy, currentFrom, triggers, key: JSON.stringify(rest) };
}

export function scalingSettingsOf(c: ScalingConfig | undefined, services: readonly { scaling: ScalingPolicyConfig | null }[], baseDir: string, fail: Fail): ScalingSettings | null {
  if (c === undefined && !services.some((s) => s.scaling !== null)) return null;
  const intervalMs = ms(c?.interval, 1000);
  if (intervalMs < 100 || intervalMs > 60_000) fail(['interval'], 'between 100ms and 60s');
  let keda: ScalingSettings['keda'] = null;
  if (c?.keda) {
    const m = /^\[?([^\]]*)\]?:(\d+)$/.exec(c.keda.listen);
    const port = Number(m?.[2]);
    if (!m || port > 65535) fail(['keda', 'listen'], 'host:port with a port up to 65535');
    else keda = { host: m[1] === '*' ? '0.0.0.0' : m[1]!, port };
  }
  const g = c?.gateway;
  const gateway = { targetUtilization: g?.target_utilization ?? 0.7, minNodes: g?.min_nodes ?? 1, maxNodes: g?.max_nodes ?? 100 };
  if (gateway.maxNodes < gateway.minNodes) fail(['gateway', 'max_nodes'], 'must be at least min_nodes');
  return { intervalMs, keda, gateway, baseDir };
}
