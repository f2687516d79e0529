/**
 * The limit algorithms, pure over a state record and a clock reading (the Redis store runs the
 * same arithmetic in Lua). No fixed windows: no double burst at a window edge.
 *
 * GCRA (generic cell rate algorithm, as in ATM and redis-cell): emission interval
 * T = period / limit; the state is the theoretical arrival time (TAT). A request of cost c is
 * allowed when max(TAT, now) + c*T - now <= period (so a burst of `limit` at once, then one per
 * T); then TAT = max(TAT, now) + c*T.
 *
 * Sliding window (Cloudflare's): counts of the current and previous fixed window; the estimate
 * is prev * (1 - elapsed/period) + curr; allowed when estimate + c <= limit.
 */
import type { RateDecision } from './types.js';

export interface GcraState { tat: number }
export interface SlidingState { start: number; curr: number; prev: number }

export function gcra(state: GcraState | undefined, limit: number, periodMs: number, cost: number, now: number): { decision: RateDecision; next: GcraState | undefined } {
  const t = periodMs / limit;
  const tat = Math.max(state?.tat ?? now, now);
  const newTat = tat + cost * t;
  const ahead = newTat - now;
  if (ahead > periodMs) {
    const remaining = Math.max(0, Math.floor((periodMs - (tat - now)) / t + 1e-9));
    return { decision: { allowed: false, remaining, resetMs: Math.ceil(tat - now), retryAfterMs: Math.ceil(ahead - periodMs) }, next: state };
  }
  return {
    decision: { allowed: true, remaining: Math.max(0, Math.floor((periodMs - ahead) / t + 1e-9)), resetMs: Math.ceil(ahead), retryAfterMs: 0 },
    next: { tat: newTat },
  };
}

/** Moves a sliding-window state to the window that contains `now`. */
function roll(s: SlidingState | undefined, periodMs: number, now: number): SlidingState {
  const start = Math.floor(now / periodMs) * periodMs;
  if (s === undefined || s.start + periodMs <= start - periodMs) return { start, curr: 0, prev: 0 };
  if (s.start === start) return s;
  // exactly one window on
  return { start, curr: 0, prev: s.start + periodMs === start ? s.curr : 0 };
}

export function sliding(state: SlidingState | undefined, limit: number, periodMs: number, cost: number, now: number): { decision: RateDecision; next: SlidingState } {
  const s = roll(state, periodMs, now);
  const weight = 1 - (now - s.start) / periodMs;
  const used = s.prev * weight + s.curr;
  // Whole again when every counted unit has slid out: prev's at the window's end, curr's one period later.
  const resetMs = Math.max(0, Math.ceil((s.curr + cost > 0 ? s.start + 2 * periodMs : s.prev > 0 ? s.start + periodMs : now) - now));
  if (used + cost > limit) {
    // When will it fit? Within this window when the current count leaves room for the cost:
    // once prev's weighted share has dropped enough (prev > 0 then). Otherwise not before the
    // window turns, and not then either: the current count becomes the previous one at full
    // weight; it has to slide out until curr * (1 - x/period) + cost <= limit.
    const retry = s.curr + cost <= limit
      ? ((used + cost - limit) / s.prev) * periodMs
      : s.start + periodMs - now + periodMs * (1 - (limit - cost) / s.curr);
    return { decision: { allowed: false, remaining: Math.max(0, Math.floor(limit - used)), resetMs, retryAfterMs: Math.max(1, Math.ceil(retry)) }, next: s };
  }
  const next = { start: s.start, curr: s.curr + cost, prev: s.prev };
  return { decision: { allowed: true, remaining: Math.max(0, Math.floor(limit - used - cost)), resetMs, retryAfterMs: 0 }, next };
}
