/**
 * Target selection. Every balancer skips targets that are down and, on a retry, the targets
 * already tried (falling back to a tried one only when no other is up). null = nothing is up.
 *
 * - round-robin: smooth weighted round-robin (nginx): weight 2:1 gives a b a a b a ..., evenly spread.
 * - least-connections: fewest in-flight requests per unit of weight; ties rotate.
 * - consistent-hash: a ring with 160 points per unit of weight (capped), placed by the
 *   target's URL, so adding or removing a target moves only the keys it gains or owned.
 * - latency: power of two choices over peak-EWMA response time x (in-flight + 1) / weight.
 */
import { createHash } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import type { Target } from '../config/compile.js';

export type BalancerName = 'round-robin' | 'least-connections' | 'consistent-hash' | 'latency';

export interface Balancer {
  pick(hashKey: string, tried: readonly Target[] | null): Target | null;
}

/** Balancers that choose among usable targets: on a retry, untried ones first, then any up one. */
abstract class Choosing implements Balancer {
  constructor(protected readonly targets: Target[]) {}
  pick(_key: string, tried: readonly Target[] | null): Target | null {
    return this.choose(tried) ?? (tried ? this.choose(null) : null);
  }
  protected abstract choose(tried: readonly Target[] | null): Target | null;
}

const usable = (t: Target, tried: readonly Target[] | null) => !t.state.down && t.weight > 0 && (tried === null || !tried.includes(t));

class RoundRobin extends Choosing {
  private readonly current: number[];
  constructor(targets: Target[]) {
    super(targets.filter((t) => t.weight > 0));
    this.current = new Array<number>(this.targets.length).fill(0);
  }
  protected choose(tried: readonly Target[] | null): Target | null {
    const ts = this.targets;
    if (ts.length === 1) return usable(ts[0]!, tried) ? ts[0]! : null;
    let best = -1;
    let total = 0;
    for (let i = 0; i < ts.length; i++) {
      const t = ts[i]!;
      if (!usable(t, tried)) continue;
      this.current[i]! += t.weight;
      total += t.weight;
      if (best === -1 || this.current[i]! > this.current[best]!) best = i;
    }
    if (best === -1) return null;
    this.current[best]! -= total;
    return ts[best]!;
  }
}

class LeastConnections extends Choosing {
  private next = 0;
  protected choose(tried: readonly Target[] | null): Target | null {
    const ts = this.targets;
    const n = ts.length;
    if (n === 0) return null;
    const start = this.next++ % n;
    let best: Target | null = null;
    let bestScore = Infinity;
    for (let k = 0; k < n; k++) {
      const t = ts[(start + k) % n]!;
      if (!usable(t, tried)) continue;
      const score = (t.state.inflight + 1) / t.weight;
      if (score < bestScore) {
        best = t;
        bestScore = score;
      }
    }
    return best;
  }
}

/** FNV-1a, 32 bits: the per-request key hash (cheap, well spread for short keys). */
export function fnv1a(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

const MAX_RING_POINTS = 160_000;

class ConsistentHash implements Balancer {
  private readonly points: Uint32Array;
  private readonly owners: Target[];
  constructor(targets: Target[]) {
    const ring: { p: number; t: Target }[] = [];
    // 160 points per unit of weight, in proportion to the weights (as NGINX's hash ... consistent);
    // past MAX_RING_POINTS every target is scaled by the same factor (a per-target cap would
    // flatten 1:1000 to 1:100).
    let total = 0;
    for (const t of targets) total += 160 * t.weight;
    const scale = total > MAX_RING_POINTS ? MAX_RING_POINTS / total : 1;
    for (const t of targets) {
      const n = t.weight > 0 ? Math.max(1, Math.round(160 * t.weight * scale)) : 0;
      const id = t.origin + t.basePath;
      // Four points per md5 digest (ketama).
      for (let v = 0; v < n; v += 4) {
        const d = createHash('md5').update(`${id}-${v}`).digest();
        for (let j = 0; j < 4 && v + j < n; j++) ring.push({ p: d.readUInt32LE(j * 4), t });
      }
    }
    ring.sort((a, b) => a.p - b.p);
    this.points = Uint32Array.from(ring, (r) => r.p);
    this.owners = ring.map((r) => r.t);
  }
  pick(key: string, tried: readonly Target[] | null): Target | null {
    const n = this.points.length;
    if (n === 0) return null;
    const h = fnv1a(key);
    let lo = 0;
    let hi = n;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.points[mid]! < h) lo = mid + 1;
      else hi = mid;
    }
    // Walk clockwise to the first usable owner; then to any up owner if all untried are down.
    return (tried !== null ? this.walk(lo, tried) : null) ?? this.walk(lo, null);
  }

  private walk(from: number, tried: readonly Target[] | null): Target | null {
    const n = this.points.length;
    for (let k = 0; k < n; k++) {
      const t = this.owners[(from + k) % n]!;
      if (usable(t, tried)) return t;
    }
    return null;
  }
}

class Latency extends Choosing {
  protected choose(tried: readonly Target[] | null): Target | null {
    const ts = this.targets;
    const n = ts.length;
    if (n === 0) return null;
    // Two random distinct candidates; if either is not usable, scan for a usable one.
    const i = Math.floor(Math.random() * n);
    let j = n > 1 ? Math.floor(Math.random() * (n - 1)) : 0;
    if (j >= i) j++;
    const a = ts[i]!;
    const b = n > 1 ? ts[j]! : a;
    const ua = usable(a, tried);
    const ub = usable(b, tried);
    const now = performance.now();
    if (ua && ub) return cost(a, now) <= cost(b, now) ? a : b;
    if (ua) return a;
    if (ub) return b;
    let best: Target | null = null;
    for (const t of ts) if (usable(t, tried) && (best === null || cost(t, now) < cost(best, now))) best = t;
    return best;
  }
}

const cost = (t: Target, now: number) => ((t.state.latency(now) || 1) * (t.state.inflight + 1)) / t.weight;

export function createBalancer(name: BalancerName, targets: Target[]): Balancer {
  switch (name) {
    case 'least-connections': return new LeastConnections(targets);
    case 'consistent-hash': return new ConsistentHash(targets);
    case 'latency': return new Latency(targets);
    default: return new RoundRobin(targets);
  }
}
