/**
 * Analytics without a database: per-route and per-consumer request statistics (counts, 5xx and
 * 4xx, error rate, rps, latency percentiles) over sliding 1m / 1h / 24h windows, in bounded memory.
 *
 * Layout. Each window is a ring of time slots aligned on wall-clock multiples of the slot length
 * (1m: 12 x 5 s, 1h: 60 x 1 min, 24h: 96 x 15 min), so the slots of different processes line up
 * and their states merge slot by slot. A slot holds one cell per (route, service) and one per
 * consumer: request / 5xx / 4xx counts and a DDSketch of the durations (mergeable without loss of
 * its relative-accuracy guarantee). A window's report covers its slots that start in
 * (now - window, now], the current partial one included.
 *
 * Hot path. record() touches only the current 5 s slot: a clock read compared with the slot's
 * end, a Map lookup or two per cell, one sketch insert for the route cell and one for the
 * consumer cell. Totals are not kept: a total is the merge of the route cells at read time.
 * There are no timers: when the clock passes the slot's end (seen by record() or by a read) the
 * slot is rolled up, i.e. merged into the live slots of the 1h and 24h rings, then frozen:
 * encoded in the state() format, where a sketch is a short string of its non-empty bins. A
 * coarse ring's live slot is frozen in turn when rollups reach its next slot. So at most three
 * slots hold live sketches; reads decode the frozen ones (and encode the live ones).
 *
 * Memory bound. 168 slots; per slot at most maxRoutes + 1 route cells and maxConsumers + 1
 * consumer cells (new keys beyond a cap are counted under "(other)"). A sketch keeps at most
 * binLimit bins: 1036 at 1% accuracy, full accuracy over 9 decades (e.g. 1 µs .. 1000 s; the
 * lowest bins collapse beyond that). A live cell takes 2.3 KB (one value) to 7.5 KB (1036 bins);
 * a frozen one ~0.1 KB plus, per non-empty bin, 1 byte up to 15 requests, 2 up to 511, 3 up to
 * 16,383 (a run of empty bins takes one number). Worst case with the defaults, every cell of
 * every slot holding 1036 bins: 165 frozen slots x 2,202 cells x ~3.2 KB + 3 live slots x 2,202
 * x 7.5 KB ≈ 1.2 GB, linear in maxRoutes + maxConsumers. Measured for 50 routes and 1,000
 * consumers (200 kept per slot) around the clock for 24 h: 9 MB at 20 req/s, 14 MB at 200 req/s
 * (state() as JSON: 4.5 MB, 9 MB).
 *
 * Clock. A step back of less than one 5 s slot keeps filling the current slot; a larger one drops
 * the slots after the new time (they would be counted at the wrong time); a jump forward only
 * makes slots expire. Durations are clamped to [0, 1e9] ms (NaN -> 0).
 */
import { LogCollapsingLowestDenseDDSketch as Sketch } from '@datadog/sketches-js';

export type WindowName = '1m' | '1h' | '24h';

export interface AnalyticsOptions {
  /** ms clock, injected for tests (default Date.now) */
  now?: () => number;
  /** consumer cells kept per time slot (default 200); beyond: counted under consumer "(other)" */
  maxConsumers?: number;
  /** route cells per slot (default 2000); beyond: route and service "(other)" */
  maxRoutes?: number;
  /** DDSketch relative accuracy (default 0.01) */
  relativeAccuracy?: number;
}

export interface Stats {
  requests: number;
  /** status >= 500 */
  errors: number;
  /** status 400-499 */
  client_errors: number;
  /** errors / requests, 0 when none */
  error_rate: number;
  /** requests / window seconds */
  rps: number;
  p50_ms: number | null;
  p90_ms: number | null;
  p95_ms: number | null;
  p99_ms: number | null;
}

export interface Report {
  window: WindowName;
  /** ISO start of the oldest slot covered */
  from: string;
  /** ISO of the report's now */
  to: string;
  total: Stats;
  /** every (route, service), by requests descending */
  routes: ({ route: string; service: string } & Stats)[];
  /** top K by requests, descending */
  consumers: ({ consumer: string } & Stats)[];
}

/**
 * `top`: consumers listed (default 10). `route`: total and routes of that route only, consumers
 * empty (consumers are not kept per route). `consumer`: total and consumers of that consumer only,
 * routes empty. Not both.
 */
export interface ReportOptions {
  top?: number;
  route?: string;
  consumer?: string;
}

/** A cell of a serialized slot. */
export interface CellState {
  /** requests */
  readonly n: number;
  /** status >= 500 */
  readonly e: number;
  /** status 400-499 */
  readonly c: number;
  /**
   * The sketch's bins as base64 VLQ integers (the source-map encoding): the zero count, then,
   * if any duration was > 0, the first bin's key and the counts from there on, -m standing for m
   * empty bins.
   */
  readonly h: string;
}

export interface SlotState {
  /** slot start / slot length */
  readonly i: number;
  readonly routes: readonly (CellState & { readonly route: string; readonly service: string })[];
  readonly consumers: readonly (CellState & { readonly consumer: string })[];
}

/** JSON-safe. Frozen slots are shared with the instance: treat as read-only. */
export interface AnalyticsState {
  readonly v: 1;
  /** the process clock (ms) when taken: the default `now` of Analytics.report */
  readonly at: number;
  readonly relativeAccuracy: number;
  /** Per window, the slots it covered at `at`. The 1h and 24h lists also hold the 5 s slot not rolled up yet, under its index in their units. */
  readonly windows: { readonly [W in WindowName]: readonly SlotState[] };
}

const WINDOWS: Readonly<Record<WindowName, { slotMs: number; size: number }>> = {
  '1m': { slotMs: 5_000, size: 12 },
  '1h': { slotMs: 60_000, size: 60 },
  '24h': { slotMs: 900_000, size: 96 },
};
const NAMES = Object.keys(WINDOWS) as WindowName[];
const FINE_MS = WINDOWS['1m'].slotMs;
const OTHER = '(other)';
const MAX_MS = 1e9;
const DEFAULT_ACCURACY = 0.01;

interface Config {
  readonly accuracy: number;
  /** bins for full accuracy over 9 decades: gamma^binLimit = 1e9, gamma = (1 + a) / (1 - a) */
  readonly binLimit: number;
  readonly maxRoutes: number;
  /** (set by Analytics.maxConsumers: a reload's analytics.top_consumers) */
  maxConsumers: number;
}
const config = (accuracy: number, maxRoutes: number, maxConsumers: number): Config => ({
  accuracy,
  binLimit: Math.ceil(Math.log(1e9) / Math.log1p((2 * accuracy) / (1 - accuracy))),
  maxRoutes,
  maxConsumers,
});

/** Base64 VLQ: 5 bits a digit, low digits first, bit 5 set when more follow; the sign in the lowest bit of the value. */
const B64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';
const B64_INDEX = new Int8Array(128);
for (let d = 0; d < 64; d++) B64_INDEX[B64.charCodeAt(d)] = d;
/** Reused output buffer of vlq(): a frozen string is built once, flat, 1 byte a character. */
let out = Buffer.allocUnsafe(4096);
let outLen = 0;
function vlq(v: number): void {
  if (outLen + 12 > out.length) {
    const bigger = Buffer.allocUnsafe(out.length * 2);
    out.copy(bigger, 0, 0, outLen);
    out = bigger;
  }
  let x = v < 0 ? -v * 2 + 1 : v * 2; // arithmetic, not bit operations: counts may exceed 2^31
  do {
    const d = x % 32;
    x = Math.floor(x / 32);
    out[outLen++] = B64.charCodeAt(x > 0 ? d + 32 : d);
  } while (x > 0);
}

class Cell {
  requests = 0;
  errors = 0;
  clientErrors = 0;
  readonly sketch: Sketch;
  constructor(cfg: Config) {
    this.sketch = new Sketch({ relativeAccuracy: cfg.accuracy, binLimit: cfg.binLimit });
  }
  add(status: number, ms: number): void {
    this.requests++;
    if (status >= 500) this.errors++;
    else if (status >= 400) this.clientErrors++;
    this.sketch.accept(ms);
  }
  merge(o: Cell): void {
    this.requests += o.requests;
    this.errors += o.errors;
    this.clientErrors += o.clientErrors;
    this.sketch.merge(o.sketch);
  }
  load(s: CellState): void {
    this.requests += s.n;
    this.errors += s.e;
    this.clientErrors += s.c;
    const h = s.h;
    let pos = 0;
    const next = (): number => {
      let x = 0;
      let scale = 1;
      let d: number;
      do {
        d = B64_INDEX[h.charCodeAt(pos++)] ?? 0;
        x += (d & 31) * scale;
        scale *= 32;
      } while (d & 32);
      return x % 2 === 1 ? -(x - 1) / 2 : x / 2;
    };
    const sk = this.sketch;
    const zeros = next();
    if (zeros > 0) sk.accept(0, zeros);
    if (pos >= h.length) return;
    // mapping.value(key) is a value inside bin `key`, so accepting it fills exactly that bin.
    let key = next();
    while (pos < h.length) {
      const x = next();
      if (x < 0) key -= x;
      else sk.accept(sk.mapping.value(key++), x);
    }
  }
  save(): CellState {
    const st = this.sketch.store;
    outLen = 0;
    vlq(this.sketch.zeroCount);
    if (st.count > 0) {
      vlq(st.minKey);
      let gap = 0;
      for (let k = st.minKey; k <= st.maxKey; k++) {
        const x = st.bins[k - st.offset]!;
        if (x === 0) gap++;
        else {
          if (gap > 0) vlq(-gap);
          vlq(x);
          gap = 0;
        }
      }
    }
    return { n: this.requests, e: this.errors, c: this.clientErrors, h: out.toString('latin1', 0, outLen) };
  }
}

/** A live slot (or a report's aggregate, with no caps): route -> service -> cell, consumer -> cell. */
class Bucket {
  readonly routes = new Map<string, Map<string, Cell>>();
  readonly consumers = new Map<string, Cell>();
  private routeCells = 0;
  constructor(readonly index: number, private readonly cfg: Config) {}

  get empty(): boolean {
    return this.routeCells === 0 && this.consumers.size === 0;
  }
  route(route: string, service: string): Cell {
    return this.routes.get(route)?.get(service) ?? this.newRoute(route, service);
  }
  consumer(name: string): Cell {
    return this.consumers.get(name) ?? this.newConsumer(name);
  }
  private newRoute(route: string, service: string): Cell {
    if (this.routeCells >= this.cfg.maxRoutes && (route !== OTHER || service !== OTHER)) return this.route(OTHER, OTHER);
    let byService = this.routes.get(route);
    if (byService === undefined) this.routes.set(route, (byService = new Map()));
    const cell = new Cell(this.cfg);
    byService.set(service, cell);
    this.routeCells++;
    return cell;
  }
  private newConsumer(name: string): Cell {
    if (this.consumers.size >= this.cfg.maxConsumers && name !== OTHER) return this.consumer(OTHER);
    const cell = new Cell(this.cfg);
    this.consumers.set(name, cell);
    return cell;
  }
  merge(b: Bucket): void {
    for (const [route, byService] of b.routes) for (const [service, c] of byService) this.route(route, service).merge(c);
    for (const [name, c] of b.consumers) this.consumer(name).merge(c);
  }
  load(s: SlotState): void {
    for (const x of s.routes) this.route(x.route, x.service).load(x);
    for (const x of s.consumers) this.consumer(x.consumer).load(x);
  }
  save(i = this.index): SlotState {
    const routes = [];
    for (const [route, byService] of this.routes) for (const [service, c] of byService) routes.push({ route, service, ...c.save() });
    const consumers = [];
    for (const [consumer, c] of this.consumers) consumers.push({ consumer, ...c.save() });
    return { i, routes, consumers };
  }
}

interface Ring {
  readonly slotMs: number;
  readonly size: number;
  /** frozen slots at position index mod size */
  readonly frozen: (SlotState | undefined)[];
  /** 1h / 24h: the slot rollups go into */
  live: Bucket | undefined;
}

const mod = (i: number, n: number): number => ((i % n) + n) % n;

const isCell = (x: unknown): boolean => {
  const c = x as Partial<CellState> | null;
  return typeof c === 'object' && c !== null && typeof c.n === 'number' && typeof c.e === 'number' && typeof c.c === 'number' && typeof c.h === 'string';
};

/**
 * Whether a state from elsewhere (another node's, through Redis) is one this version reads and
 * merges: v 1 at the default accuracy, every window a list of slots of well-formed cells.
 * Analytics.report throws on any other (another version's during a rolling upgrade, a hand-written
 * value), which would fail the whole report, not only that node's part.
 */
export function readableState(x: unknown): x is AnalyticsState {
  const s = x as Partial<AnalyticsState> | null;
  if (typeof s !== 'object' || s === null || s.v !== 1 || s.relativeAccuracy !== DEFAULT_ACCURACY || typeof s.at !== 'number') return false;
  const w = s.windows as Record<string, unknown> | undefined;
  if (typeof w !== 'object' || w === null) return false;
  return NAMES.every((name) => {
    const slots = w[name];
    return Array.isArray(slots) && slots.every((slot: Partial<SlotState> | null) =>
      typeof slot === 'object' && slot !== null && typeof slot.i === 'number' &&
      Array.isArray(slot.routes) && slot.routes.every((c) => isCell(c) && typeof c.route === 'string' && typeof c.service === 'string') &&
      Array.isArray(slot.consumers) && slot.consumers.every((c) => isCell(c) && typeof c.consumer === 'string'));
  });
}

export class Analytics {
  private readonly now: () => number;
  private readonly cfg: Config;
  /** 1m, 1h, 24h (the order of NAMES) */
  private readonly rings: Ring[];
  /** the 5 s slot being filled: not rolled up, not in the 1m ring's frozen slots yet */
  private cur: Bucket;
  private start = 0;
  private end = 0;

  constructor(opts: AnalyticsOptions = {}) {
    const { relativeAccuracy = DEFAULT_ACCURACY, maxRoutes = 2000, maxConsumers = 200 } = opts;
    if (!(relativeAccuracy > 0 && relativeAccuracy < 1)) throw new RangeError('relativeAccuracy must be between 0 and 1');
    if (!(maxRoutes >= 0 && maxConsumers >= 0)) throw new RangeError('maxRoutes and maxConsumers must be >= 0');
    this.now = opts.now ?? Date.now;
    this.cfg = config(relativeAccuracy, maxRoutes, maxConsumers);
    this.rings = NAMES.map((w) => ({ ...WINDOWS[w], frozen: new Array<SlotState | undefined>(WINDOWS[w].size), live: undefined }));
    this.cur = this.open(this.now());
  }

  /**
   * Consumer cells per slot from now on (a reload's analytics.top_consumers): the slot being
   * filled too; a slot that holds more keeps them.
   */
  set maxConsumers(n: number) {
    if (!(n >= 0)) throw new RangeError('maxConsumers must be >= 0');
    this.cfg.maxConsumers = n;
  }

  /** Hot path: one finished request. consumer null = anonymous (not counted in consumers). */
  record(route: string, service: string, consumer: string | null, status: number, durationMs: number): void {
    const t = this.now();
    if (t >= this.end || t < this.start) this.rotate(t);
    const ms = durationMs > 0 ? (durationMs < MAX_MS ? durationMs : MAX_MS) : 0;
    this.cur.route(route, service).add(status, ms);
    if (consumer !== null) this.cur.consumer(consumer).add(status, ms);
  }

  /** Serializable state of every window (for merging across worker processes / nodes). */
  state(): AnalyticsState {
    const at = this.advance();
    const pending = this.cur.empty ? undefined : this.cur.save();
    const windows = {} as Record<WindowName, SlotState[]>;
    NAMES.forEach((w, k) => (windows[w] = this.slots(this.rings[k]!, at, pending)));
    return { v: 1, at, relativeAccuracy: this.cfg.accuracy, windows };
  }

  /** The report of one window from this process alone. */
  report(window: WindowName, opts: ReportOptions = {}): Report {
    const ring = this.rings[NAMES.indexOf(window)];
    if (ring === undefined) throw new RangeError(`unknown window ${window}`);
    const at = this.advance();
    return aggregate([this.slots(ring, at, this.cur.empty ? undefined : this.cur.save())], window, at, this.cfg.accuracy, opts);
  }

  /**
   * Merges states of several processes (same window alignment: slots are aligned to wall-clock
   * multiples of the slot length) into one report. `now` defaults to the latest state's `at`.
   */
  static report(states: AnalyticsState[], window: WindowName, opts: ReportOptions & { now?: number } = {}): Report {
    const accuracy = states[0]?.relativeAccuracy ?? DEFAULT_ACCURACY;
    if (states.some((s) => s.v !== 1 || s.relativeAccuracy !== accuracy)) throw new Error('analytics states of different versions or accuracies cannot be merged');
    const now = opts.now ?? (states.length > 0 ? Math.max(...states.map((s) => s.at)) : Date.now());
    return aggregate(states.map((s) => s.windows[window]), window, now, accuracy, opts);
  }

  private open(t: number): Bucket {
    const i = Math.floor(t / FINE_MS);
    this.start = i * FINE_MS;
    this.end = this.start + FINE_MS;
    return new Bucket(i, this.cfg);
  }

  /** Rotates if the clock left the current slot; returns the time reads are anchored at. */
  private advance(): number {
    const t = this.now();
    if (t >= this.end || t < this.start) this.rotate(t);
    return Math.max(t, this.start);
  }

  private rotate(t: number): void {
    const back = t < this.start;
    if (back && this.start - t < FINE_MS) return; // a small step back keeps filling the current slot
    this.rollUp();
    if (back) this.prune(t);
    this.cur = this.open(t);
  }

  /** Merges the current slot into the live slots of the coarse rings, then freezes it. */
  private rollUp(): void {
    const cur = this.cur;
    if (cur.empty) return;
    for (const r of this.rings.slice(1)) {
      const i = Math.floor(this.start / r.slotMs);
      if (r.live?.index !== i) {
        if (r.live !== undefined) this.freeze(r, r.live);
        r.live = new Bucket(i, this.cfg);
      }
      r.live.merge(cur);
    }
    this.freeze(this.rings[0]!, cur);
  }

  private freeze(r: Ring, b: Bucket): void {
    if (b.empty) return;
    const p = mod(b.index, r.size);
    const old = r.frozen[p];
    // After a step back the same slot can be filled again: merge rather than overwrite.
    if (old?.i === b.index) b.load(old);
    r.frozen[p] = b.save();
  }

  /** After a step back: drops every slot later than t's. */
  private prune(t: number): void {
    for (const r of this.rings) {
      const i = Math.floor(t / r.slotMs);
      r.frozen.forEach((s, p) => {
        if (s !== undefined && s.i > i) r.frozen[p] = undefined;
      });
      if (r.live !== undefined && r.live.index > i) r.live = undefined;
    }
  }

  /** The slots of a ring in its window at `at`, plus the pending 5 s slot (in the ring's units). */
  private slots(r: Ring, at: number, pending: SlotState | undefined): SlotState[] {
    const last = Math.floor(at / r.slotMs);
    const inWindow = (i: number): boolean => i > last - r.size && i <= last;
    const out = r.frozen.filter((s): s is SlotState => s !== undefined && inWindow(s.i));
    if (r.live !== undefined && !r.live.empty && inWindow(r.live.index)) out.push(r.live.save());
    if (pending !== undefined) out.push({ ...pending, i: Math.floor(this.start / r.slotMs) });
    return out;
  }
}

function aggregate(lists: readonly (readonly SlotState[])[], window: WindowName, now: number, accuracy: number, opts: ReportOptions): Report {
  const { route, consumer, top = 10 } = opts;
  if (route !== undefined && consumer !== undefined) throw new RangeError('filter by route or by consumer, not both');
  const w = WINDOWS[window];
  if (w === undefined) throw new RangeError(`unknown window ${window}`);
  const last = Math.floor(now / w.slotMs);
  const first = last - w.size + 1;
  const cfg = config(accuracy, Infinity, Infinity);
  const agg = new Bucket(0, cfg);
  for (const slots of lists) {
    for (const s of slots) {
      if (s.i < first || s.i > last) continue;
      if (consumer === undefined) for (const x of s.routes) if (route === undefined || x.route === route) agg.route(x.route, x.service).load(x);
      if (route === undefined) for (const x of s.consumers) if (consumer === undefined || x.consumer === consumer) agg.consumer(x.consumer).load(x);
    }
  }
  const seconds = (w.size * w.slotMs) / 1000;
  let total = new Cell(cfg);
  if (consumer !== undefined) total = agg.consumers.get(consumer) ?? total;
  else for (const byService of agg.routes.values()) for (const c of byService.values()) total.merge(c);

  const routes: Report['routes'] = [];
  for (const [r, byService] of agg.routes) for (const [service, c] of byService) routes.push({ route: r, service, ...stats(c, seconds) });
  routes.sort((a, b) => b.requests - a.requests || cmp(a.route, b.route) || cmp(a.service, b.service));
  const consumers = [...agg.consumers]
    .sort(([an, a], [bn, b]) => b.requests - a.requests || cmp(an, bn))
    .slice(0, Math.max(0, top))
    .map(([name, c]) => ({ consumer: name, ...stats(c, seconds) }));
  return {
    window,
    from: new Date(first * w.slotMs).toISOString(),
    to: new Date(now).toISOString(),
    total: stats(total, seconds),
    routes,
    consumers,
  };
}

const cmp = (a: string, b: string): number => (a < b ? -1 : a > b ? 1 : 0);

function stats(c: Cell, seconds: number): Stats {
  const n = c.requests;
  // Nearest rank: the value of the ceil(p * n)-th smallest request. getValueAtQuantile(q) returns
  // the bin holding the element of 0-based rank floor(q * (n - 1)), hence the (r + 0.5) / (n - 1).
  const q = (p: number): number | null => {
    if (n === 0) return null;
    const r = Math.max(0, Math.ceil(p * n) - 1);
    return c.sketch.getValueAtQuantile(Math.min(1, (r + 0.5) / (n - 1)));
  };
  return {
    requests: n,
    errors: c.errors,
    client_errors: c.clientErrors,
    error_rate: n === 0 ? 0 : c.errors / n,
    rps: n / seconds,
    p50_ms: q(0.5),
    p90_ms: q(0.9),
    p95_ms: q(0.95),
    p99_ms: q(0.99),
  };
}
