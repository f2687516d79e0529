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

/**
 * A state as of `now` when the clock stepped back since it was written (Redis's TIME after a
 * failover to a replica, or a slot moved to a master, whose clock is behind): a TAT is never more
 * than a period ahead of the clock that set it, so further ahead it is a full bucket — not full
 * for the length of the step too; a sliding window ahead of the clock is the current one (what
 * it counted still counts) — not a fresh burst. The same object when the clock did not step
 * back. Stores write back a state this changed (even for a refused request): otherwise a
 * client stays refused, or its counts stuck, until the clock catches up.
 */
export function gcraAt(state: GcraState | undefined, periodMs: number, now: number): GcraState | undefined {
  return state !== undefined && state.tat > now + periodMs ? { tat: now + periodMs } : state;
}

export function slidingAt(state: SlidingState | undefined, periodMs: number, now: number): SlidingState | undefined {
  if (state === undefined) return state;
  const start = Math.floor(now / periodMs) * periodMs;
  return state.start > start ? { start, curr: state.curr, prev: state.prev } : state;
}

export function gcra(state: GcraState | undefined, limit: number, periodMs: number, cost: number, now: number): { decision: RateDecision; next: GcraState | undefined } {
  const t = periodMs / limit;
  const tat = Math.max(gcraAt(state, periodMs, now)?.tat ?? now, now);
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
function roll(state: SlidingState | undefined, periodMs: number, now: number): SlidingState {
  const s = slidingAt(state, periodMs, now);
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
