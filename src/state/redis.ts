/**
 * Redis counters: one truth across gateway nodes (limits with `policy: redis`).
 *
 * Every decision is ONE Lua script run atomically on the server: all windows of a query list
 * are evaluated on Redis's own clock (`TIME`, so nodes with skewed clocks agree) with the same
 * arithmetic as algorithms.ts, and the cost is taken from all of them only if every one allows
 * it. Keys are `${prefix}{${key}}:g|s:${periodMs}:${limit}` (quotas `${prefix}{${key}}:q`): the
 * hash tag is the rate key, so all keys of one decision live in one Redis Cluster slot.
 *
 * Redis's clock can step back (a failover to a replica, a slot moved to a master whose clock
 * is behind): a TAT more than a period ahead is a full bucket, a sliding window ahead of the
 * clock the current one, written back at once (algorithms.ts gcraAt / slidingAt): not a lockout
 * for the length of the step, nor a fresh burst.
 *
 * State in Redis: GCRA keeps the theoretical arrival time (ms, a string that round-trips the
 * double exactly) expiring at the TAT; the sliding window keeps a hash {s: window start,
 * c: current count, p: previous count} expiring two periods after its window's start (PEXPIRE
 * relative to the script's clock).
 *
 * Failing fast: no offline queue (a call while disconnected fails at once), no retries of a
 * command, and a deadline of our own around every call (cluster redirections and retry delays
 * included): the caller's (a limit binding's `timeout`), else `redis.timeout` (default 50 ms),
 * firing only after the answers already in the socket were read (state/deadline.ts). ioredis'
 * `commandTimeout` is only a backstop (at least 10 s) that keeps a hung Redis from holding
 * commands forever. The connection comes back by itself
 * (capped exponential backoff, at most 1 s apart), and is dropped for a new one when Redis
 * answers READONLY (a failover behind one address left it on the old primary, now a replica)
 * or answers nothing at all for a while (noAnswer). Errors are thrown; the plugin applies its
 * `fault` setting.
 *
 * A command cannot be taken back once written: a stalled Redis (SIGSTOP, a slow fork, a long
 * script) runs the ones it was sent when it resumes, long after the caller answered the request
 * per its `fault` (503, let through, or counted on the node). So every charging script carries
 * the caller's give-up time in Redis's clock and, run later than that, changes nothing and
 * answers SKIPPED (the caller is gone; its answer, if read at all, is a timeout). Skew-free: the
 * give-up time is the caller's own (sent + timeout on this process's monotonic clock) plus an
 * upper bound of (Redis's clock - ours) that every answer measures for free (each script returns
 * the `TIME` it ran at: that minus the send time is at least the offset). The bound is the
 * largest such measurement of answers read in time over the last 10-20 s, so it errs late (a
 * decision Redis runs in time is never skipped, whatever the clocks; a Cluster's masters with
 * different clocks are all covered) by at most the send-to-run delay of the slowest of those
 * answers, at most the timeout: a command run later than twice its timeout is never counted.
 * Seeded by a `TIME` when a connection becomes ready (and by waitReady); before any measurement
 * (none answered in time yet), commands carry no give-up time (as before). A SKIPPED answer
 * read while the caller still waits (Redis's clock stepped forward beyond the bound) is
 * measured and sent once more. Nothing is added per decision but a give-up time in its ARGV.
 */
import { createHash } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import type { Redis, Cluster, RedisOptions, ClusterOptions } from 'ioredis';
import { lazy } from '../core/lazy.js';
import { parseDuration } from '../config/units.js';
import { credentialUrlProblem } from '../core/url-secrets.js';
import type { Logger } from '../core/log.js';
import type { CounterStore, QuotaDecision, QuotaQuery, RateDecision, RateQuery } from './types.js';
import { withDeadline } from './deadline.js';

/** The top-level `redis` setting: a URL, or {url | cluster seeds, timeout, prefix}. */
export type RedisSetting = string | {
  url?: string;
  cluster?: string[];
  timeout?: number | string;
  prefix?: string;
};

export interface RedisStoreOptions {
  log?: Logger;
  /**
   * Tests only: the clock (epoch ms) the scripts use instead of Redis's `TIME`, so decisions
   * can be compared exactly with algorithms.ts. Never set in production: nodes would disagree.
   */
  clock?: () => number;
  /**
   * false: never connect (ioredis lazyConnect, and no command is ever sent): a store that only
   * stands for the setting, for a compile that judges a config without running it (validate).
   */
  connect?: boolean;
}

export const DEFAULT_REDIS_TIMEOUT_MS = 50;
/** The least a Redis call may hang before the store itself fails it (bindings give up sooner). */
const BACKSTOP_MS = 10_000;
export const DEFAULT_REDIS_PREFIX = 'turnpike:';
/** Longest wait between two reconnection attempts. */
const MAX_BACKOFF_MS = 1000;
/** A repeated connection error is logged at most this often. */
const ERROR_LOG_EVERY_MS = 10_000;
/** The Redis clock offset bound is the largest measurement of the last one or two of these. */
const OFFSET_WINDOW_MS = 10_000;
/** READONLY answers replace the connection at most this often. */
const READONLY_RECONNECT_MS = 1000;
/** A connection with a command unanswered this long (at least; see stallMs) is replaced. */
const STALL_MIN_MS = 2000;
/** What a charging script answers (first element) when it ran after its caller's give-up time. */
const SKIPPED = -1;

/**
 * The start of every charging script: `us` is Redis's clock (TIME, in µs); ARGV[1] the caller's
 * give-up time on that clock (µs) or '' (none): ran later, the script answers {SKIPPED, us} and
 * changes nothing.
 */
const GIVE_UP_LUA = `
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = redis.call('TIME')
local us = tonumber(t[1]) * 1000000 + tonumber(t[2])
if ARGV[1] ~= '' and us > tonumber(ARGV[1]) then return {${SKIPPED}, us} end
`;

/**
 * KEYS: one per window. ARGV[1]: give-up time (GIVE_UP_LUA); ARGV[2]: '' (use TIME) or a clock
 * reading in ms (tests); then per window: kind ('g' GCRA | 's' sliding window), limit, period
 * ms, cost. Returns {all, TIME in µs, then per window: allowed, remaining, resetMs, retryAfterMs}
 * (all: 1 | 0 | SKIPPED).
 */
const RATE_LUA = `${GIVE_UP_LUA}
local now
if ARGV[2] ~= '' then
  now = tonumber(ARGV[2])
else
  now = math.floor(us / 1000)
end
local out = {1, us}
local writes = {}
local all = 1
for i = 1, #KEYS do
  local key = KEYS[i]
  local kind = ARGV[i * 4 - 1]
  local limit = tonumber(ARGV[i * 4])
  local period = tonumber(ARGV[i * 4 + 1])
  local cost = tonumber(ARGV[i * 4 + 2])
  local allowed, remaining, reset, retry
  if kind == 'g' then
    local t = period / limit
    local tat = now
    local stored = redis.call('GET', key)
    if stored then
      stored = tonumber(stored)
      -- (written before Redis's clock stepped back: a full bucket, kept whatever the decision)
      if stored > now + period then
        stored = now + period
        redis.call('SET', key, string.format('%.17g', stored), 'PX', math.max(1, math.ceil(period)))
      end
      tat = math.max(stored, now)
    end
    local newTat = tat + cost * t
    local ahead = newTat - now
    if ahead > period then
      allowed = 0
      remaining = math.max(0, math.floor((period - (tat - now)) / t + 1e-9))
      reset = math.ceil(tat - now)
      retry = math.ceil(ahead - period)
    else
      allowed = 1
      remaining = math.max(0, math.floor((period - ahead) / t + 1e-9))
      reset = math.ceil(ahead)
      retry = 0
      writes[#writes + 1] = {key, 'g', newTat, now}
    end
  else
    local start = math.floor(now / period) * period
    local curr, prev = 0, 0
    local s = redis.call('HMGET', key, 's', 'c', 'p')
    if s[1] then
      local ss = tonumber(s[1])
      if ss >= start then
        curr = tonumber(s[2]) or 0
        prev = tonumber(s[3]) or 0
        if ss > start then
          -- (a window ahead of Redis's clock, which stepped back since: the current one, kept whatever the decision)
          redis.call('HSET', key, 's', string.format('%.17g', start))
          redis.call('PEXPIRE', key, math.max(1, math.ceil(start + 2 * period - now)))
        end
      elseif ss + period == start then
        prev = tonumber(s[2]) or 0
      end
    end
    local used = prev * (1 - (now - start) / period) + curr
    local resetAt = now
    if curr + cost > 0 then resetAt = start + 2 * period elseif prev > 0 then resetAt = start + period end
    reset = math.max(0, math.ceil(resetAt - now))
    if used + cost > limit then
      allowed = 0
      local r
      if curr + cost <= limit then
        r = ((used + cost - limit) / prev) * period
      else
        r = start + period - now + period * (1 - (limit - cost) / curr)
      end
      remaining = math.max(0, math.floor(limit - used))
      retry = math.max(1, math.ceil(r))
    else
      allowed = 1
      remaining = math.max(0, math.floor(limit - used - cost))
      retry = 0
      writes[#writes + 1] = {key, 's', start, curr + cost, prev, start + 2 * period - now}
    end
  end
  if allowed == 0 then all = 0 end
  out[#out + 1] = allowed
  out[#out + 1] = remaining
  out[#out + 1] = reset
  out[#out + 1] = retry
end
out[1] = all
if all == 1 then
  for _, w in ipairs(writes) do
    if w[2] == 'g' then
      redis.call('SET', w[1], string.format('%.17g', w[3]), 'PX', math.max(1, math.ceil(w[3] - w[4])))
    else
      redis.call('HSET', w[1], 's', string.format('%.17g', w[3]), 'c', string.format('%.17g', w[4]), 'p', string.format('%.17g', w[5]))
      redis.call('PEXPIRE', w[1], math.max(1, math.ceil(w[6])))
    end
  end
end
return out
`;

/** How long a quota count outlives a period that is over by Redis's clock but not by its node's (behind it). */
const QUOTA_GRACE_MS = 60_000;

/**
 * KEYS[1]: the quota counter. ARGV: give-up time (GIVE_UP_LUA), limit, cost, period end (epoch
 * ms, the node's clock; expiring then, or QUOTA_GRACE_MS after this request when that is past
 * by Redis's). Returns {allowed (1 | 0 | SKIPPED), TIME in µs, used}.
 */
const QUOTA_LUA = `${GIVE_UP_LUA}
local limit = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if used + cost > limit then return {0, us, used} end
used = redis.call('INCRBY', KEYS[1], cost)
if tonumber(ARGV[4]) > math.floor(us / 1000) then
  redis.call('PEXPIREAT', KEYS[1], ARGV[4])
else
  -- (the period is over by Redis's clock, not yet by the node's, which is behind: a PEXPIREAT
  -- in the past would delete the count at each request, unlimited until the node's period ends)
  redis.call('PEXPIRE', KEYS[1], ${QUOTA_GRACE_MS})
end
return {1, us, used}
`;

type Client = Redis | Cluster;

// (loaded by the first Redis setting, not by every start)
const ioredis = lazy<typeof import('ioredis')>('ioredis');
/** A Redis Cluster client (not a single node's). */
export const isCluster = (c: Redis | Cluster): c is Cluster => c instanceof ioredis().Cluster;
interface Scripts {
  tpRate(...args: (string | number)[]): Promise<number[]>;
  tpQuota(key: string, giveUp: string, limit: number, cost: number, periodEnd: number): Promise<[number, number, number]>;
}

/** The part of a key inside the hash tag: the key itself when it is safe there, else its digest. */
function tag(key: string): string {
  // Redis hashes what lies between the first '{' and the next '}' (the whole key when that is
  // empty): a key with braces (a header value can carry any) or an empty one gets its digest,
  // marked with a leading '#' that a key used as it is never has.
  if (key !== '' && !/[{}]/.test(key) && !key.startsWith('#')) return key;
  return `#${createHash('sha256').update(key).digest('base64url')}`;
}

/** The host and port of a redis:// / rediss:// URL (a cluster seed). */
function seed(url: string): { host: string; port: number } {
  const u = new URL(url);
  return { host: u.hostname.replace(/^\[|\]$/g, '') || '127.0.0.1', port: u.port ? Number(u.port) : 6379 };
}

export class RedisStore implements CounterStore {
  readonly client: Client;
  readonly prefix: string;
  readonly timeoutMs: number;
  /** `redis.timeout`: how long a limit binding without a timeout of its own waits for a decision. */
  get defaultTimeoutMs(): number {
    return this.timeoutMs;
  }
  /** How long ioredis lets a command hang, whatever the caller's deadline (a backstop). */
  private readonly backstopMs: number;
  private readonly scripts: Scripts;
  private readonly clock: (() => number) | undefined;
  private readonly log: Logger | undefined;
  private lastErrorLog = 0;
  /** The last connection error (status()); null once connected. */
  private lastError: string | null = null;
  private closed = false;
  /**
   * Upper bounds of (Redis's clock - performance.now()), in ms: the largest measured in the
   * current window (since offsetSince) and in the one before (-Infinity: none).
   */
  private offsetNow = -Infinity;
  private offsetBefore = -Infinity;
  private offsetSince = -Infinity;
  /** Where it points, without credentials (for logs). */
  private readonly where: string;
  /** When a READONLY answer last replaced the connection (performance.now()). */
  private readonlyReconnectAt = -Infinity;
  /**
   * A connection whose oldest unanswered command stays that for this long is taken for dead
   * and replaced (noAnswer): max(2 s, 20 timeouts), at most the backstop.
   */
  private readonly stallMs: number;
  /** Per connection: its oldest unanswered command when a deadline passed, and since when it was. */
  private readonly stalls = new WeakMap<Redis, { head: unknown; since: number }>();

  constructor(setting: RedisSetting, opts: RedisStoreOptions = {}) {
    const s = typeof setting === 'string' ? { url: setting } : setting;
    // (a password with / ? # not percent-encoded: another host, or no URL, and part of the password shown as if it were none)
    for (const url of [...(s.url !== undefined ? [s.url] : []), ...(s.cluster ?? [])]) {
      const problem = credentialUrlProblem(url);
      if (problem !== null) throw new Error(`the redis URL ${problem}`);
    }
    this.prefix = s.prefix ?? DEFAULT_REDIS_PREFIX;
    // A brace in the prefix would move (or void) the hash tag: windows of one decision could
    // land in different cluster slots.
    if (/[{}]/.test(this.prefix)) throw new Error('redis.prefix must not contain { or }');
    this.timeoutMs = s.timeout === undefined ? DEFAULT_REDIS_TIMEOUT_MS : Math.max(1, parseDuration(s.timeout));
    this.backstopMs = Math.max(this.timeoutMs, BACKSTOP_MS);
    this.stallMs = Math.min(this.backstopMs, Math.max(STALL_MIN_MS, 20 * this.timeoutMs));
    this.clock = opts.clock;
    this.log = opts.log;
    const connectTimeout = Math.max(250, Math.min(2000, this.timeoutMs * 10));
    const retry = (times: number) => Math.min(MAX_BACKOFF_MS, 25 * 2 ** Math.min(times, 10));
    const common: RedisOptions = {
      commandTimeout: this.backstopMs,
      connectTimeout,
      maxRetriesPerRequest: 0,
      enableOfflineQueue: false,
      enableReadyCheck: true,
      autoResubscribe: false,
      connectionName: 'turnpike',
      keepAlive: 5000,
      // A failover behind one address (a DNS name or VIP moved to the promoted replica, as
      // managed Redis services do): the connection stays on the old primary, now a replica,
      // and every script answers READONLY for as long as it lives. Such an answer drops the
      // connection (once, whatever number of commands get it); the next one goes where the
      // address points now. (The failed command is not sent again: its caller has its fault.)
      // At most once a second: while the address still names a replica (a DNS TTL not run out,
      // a misconfiguration) every answer would otherwise make a new connection.
      reconnectOnError: (err: Error) => {
        if (!err.message.startsWith('READONLY')) return false;
        this.logError(err);
        const now = performance.now();
        if (now - this.readonlyReconnectAt < READONLY_RECONNECT_MS) return false;
        this.readonlyReconnectAt = now;
        return 1;
      },
      ...(opts.connect === false ? { lazyConnect: true } : {}),
    };
    const hostOf = (url: string) => { const { host, port } = seed(url); return `${host}:${port}`; };
    this.where = s.cluster && s.cluster.length > 0 ? `cluster ${s.cluster.map(hostOf).join(',')}` : hostOf(s.url ?? 'redis://127.0.0.1:6379');
    if (s.cluster && s.cluster.length > 0) {
      const first = new URL(s.cluster[0]!);
      const redisOptions: ClusterOptions['redisOptions'] = {
        ...common,
        ...(first.username ? { username: decodeURIComponent(first.username) } : {}),
        ...(first.password ? { password: decodeURIComponent(first.password) } : {}),
        ...(first.protocol === 'rediss:' ? { tls: {} } : {}),
      };
      delete (redisOptions as RedisOptions).enableOfflineQueue;
      this.client = new (ioredis().Cluster)(s.cluster.map(seed), {
        ...(opts.connect === false ? { lazyConnect: true } : {}),
        enableOfflineQueue: false,
        enableReadyCheck: true,
        clusterRetryStrategy: retry,
        // A node that went away is reconnected too (a restarted master keeps its slots).
        clusterNodeRetryStrategy: retry,
        slotsRefreshTimeout: Math.max(250, Math.min(2000, this.timeoutMs * 10)),
        // A command whose node went away is retried in the background (the caller's deadline
        // has long passed): a few tries, not the default 16.
        maxRedirections: 6,
        retryDelayOnFailover: Math.min(100, this.timeoutMs),
        retryDelayOnClusterDown: Math.min(100, this.timeoutMs),
        retryDelayOnTryAgain: Math.min(100, this.timeoutMs),
        redisOptions,
      });
    } else {
      this.client = new (ioredis().Redis)(s.url ?? 'redis://127.0.0.1:6379', { ...common, retryStrategy: retry });
    }
    this.client.on('error', (err: Error) => this.logError(err));
    this.client.on('node error', (err: Error) => this.logError(err));
    this.client.on('close', () => { this.lastError ??= 'the connection closed'; });
    this.client.on('ready', () => {
      this.lastErrorLog = 0;
      this.lastError = null;
      this.log?.info({ redis: this.where }, 'redis counter store connected');
    });
    // Load the scripts as soon as a connection is up: otherwise every call of a first burst
    // gets NOSCRIPT for its EVALSHA and is sent again whole (EVAL), doubling its time. And
    // measure its clock, so that the first decisions carry a give-up time too.
    const preload = (c: Redis) => {
      for (const lua of [RATE_LUA, QUOTA_LUA]) c.script('LOAD', lua).catch(() => undefined);
      this.measure(c).catch(() => undefined);
    };
    if (isCluster(this.client)) {
      // Node connections are lazy in ioredis: the first burst for a master would wait for its
      // connect. Connect each one as soon as it is known, and load the scripts whenever it
      // (re)connects.
      this.client.on('+node', (n: Redis) => {
        n.on('ready', () => preload(n));
        if (n.status === 'wait') n.connect().catch(() => undefined);
      });
    } else {
      const single = this.client;
      single.on('ready', () => preload(single));
    }
    this.client.defineCommand('tpRate', { lua: RATE_LUA });
    this.client.defineCommand('tpQuota', { lua: QUOTA_LUA, numberOfKeys: 1 });
    this.scripts = this.client as unknown as Scripts;
  }

  /**
   * For /status: where it points (no credentials) and whether it is connected now (`ready`;
   * else ioredis's state: connecting, reconnecting...) with the last error since it was.
   */
  status(): { where: string; reachable: boolean; state: string; error?: string } {
    const state = this.client.status;
    const reachable = state === 'ready';
    return { where: this.where, reachable, state, ...(!reachable && this.lastError !== null ? { error: this.lastError } : {}) };
  }

  /** Where it points (no credentials), its key prefix and timeout: for logs. */
  describe(): { where: string; prefix: string; timeoutMs: number } {
    return { where: this.where, prefix: this.prefix, timeoutMs: this.timeoutMs };
  }

  private logError(err: Error): void {
    this.lastError = err.message;
    const now = Date.now();
    if (this.closed || now - this.lastErrorLog < ERROR_LOG_EVERY_MS) return;
    this.lastErrorLog = now;
    this.log?.warn({ err: err.message, redis: this.where }, 'redis counter store unavailable (retrying)');
  }

  /** The Redis key of a window (exported shape, for tests and operators). */
  rateKey(q: Pick<RateQuery, 'key' | 'algorithm' | 'periodMs' | 'limit'>): string {
    return `${this.prefix}{${tag(q.key)}}:${q.algorithm === 'gcra' ? 'g' : 's'}:${q.periodMs}:${q.limit}`;
  }

  quotaKey(key: string): string {
    return `${this.prefix}{${tag(key)}}:q`;
  }

  /** Settles with `p` or rejects once `ms` has passed (and the answers in hand were read), whatever ioredis is doing. */
  private deadline<T>(p: Promise<T>, ms = this.timeoutMs): Promise<T> {
    return withDeadline(p, ms, `redis did not answer within ${ms} ms`, this.noAnswer);
  }

  /**
   * A deadline passed. A connection that is open but carries nothing back — a partition that
   * dropped it without a FIN or RST (a NAT, firewall or load balancer lost its state), a peer
   * gone dark — looks ready to ioredis until TCP keepalive gives up (~11 min on Linux defaults):
   * every call waits its deadline, and every command written stays queued for its answer (the
   * backstop rejects the caller, not the entry). So a connection whose oldest unanswered
   * command has not moved for stallMs (looked at when a deadline passes only: a call answered
   * in time pays nothing) is dropped: its queue is failed, and the next connection goes where
   * the address points now. (A Redis busy that long, or SIGSTOPped, is dropped too: the
   * give-up times keep what it runs later from counting.) Called too by the other users of
   * this client when their deadline passes (the cache zones of src/plugins/cache/store-redis.ts).
   */
  readonly noAnswer = (): void => {
    if (this.closed) return;
    try {
      this.replaceSilent();
    } catch (err) {
      // (it runs from a timer: an exception here would end the process)
      this.log?.debug?.({ err: (err as Error).message }, 'redis: looking at the connection failed');
    }
  };

  private replaceSilent(): void {
    const now = performance.now();
    const conns = isCluster(this.client) ? this.client.nodes() : [this.client];
    for (const c of conns) {
      const head: unknown = c.status === 'ready' ? c.commandQueue.peekFront() : undefined;
      const seen = this.stalls.get(c);
      if (head === undefined) {
        if (seen) this.stalls.delete(c);
        continue;
      }
      if (seen === undefined || seen.head !== head) {
        this.stalls.set(c, { head, since: now });
        continue;
      }
      if (now - seen.since < this.stallMs) continue;
      this.stalls.delete(c);
      this.log?.warn({ redis: this.where, node: `${c.options.host}:${c.options.port}`, waiting: c.commandQueue.length, stalled_ms: Math.round(now - seen.since) }, 'redis connection answers nothing: replacing it');
      c.disconnect(true);
    }
  }

  /**
   * Takes in Redis's clock (`us`, µs) as read by a command sent at `sent` (performance.now())
   * and answered now, when that was within `ms`: `us` was read after the send, so
   * us - sent bounds the clock offset from above (+1 µs: TIME is truncated).
   */
  private measured(us: number, sent: number, ms: number): void {
    const now = performance.now();
    if (now - sent > ms) return;
    const bound = us / 1000 + 0.001 - sent;
    if (now - this.offsetSince >= OFFSET_WINDOW_MS) {
      if (this.offsetNow !== -Infinity) this.offsetBefore = this.offsetNow;
      this.offsetNow = -Infinity;
      this.offsetSince = now;
    }
    if (bound > this.offsetNow) this.offsetNow = bound;
  }

  /** Measures the clock of one connection (a Cluster: of one master) with a TIME. */
  private async measure(c: Redis): Promise<void> {
    const sent = performance.now();
    const [sec, usec] = await c.time();
    this.measured(Number(sec) * 1e6 + Number(usec), sent, this.timeoutMs);
  }

  /** ARGV of the give-up time `end` (performance.now()) on Redis's clock, in µs: '' before any measurement. */
  private giveUp(end: number): string {
    const offset = Math.max(this.offsetNow, this.offsetBefore);
    return offset === -Infinity ? '' : String(Math.ceil((end + offset) * 1000));
  }

  /**
   * After a SKIPPED answer (its clock already measured) to a call sent at `sent` with `ms` to
   * wait: the time left to send it again, or the deadline's error when none is left.
   */
  private leftAfterSkip(sent: number, ms: number): number {
    const left = sent + ms - performance.now();
    if (left < 1) throw new Error(`redis did not answer within ${ms} ms`);
    return left;
  }

  async rate(queries: readonly RateQuery[], timeoutMs = this.timeoutMs): Promise<RateDecision[]> {
    if (queries.length === 0) return [];
    if (this.closed) throw new Error('the redis counter store is closed');
    const keys: string[] = [];
    const argv: (string | number)[] = ['', this.clock ? String(this.clock()) : ''];
    for (const q of queries) {
      keys.push(this.rateKey(q));
      argv.push(q.algorithm === 'gcra' ? 'g' : 's', q.limit, q.periodMs, q.cost);
    }
    let sent = performance.now();
    argv[0] = this.giveUp(sent + timeoutMs);
    let raw = await this.deadline(this.scripts.tpRate(keys.length, ...keys, ...argv), timeoutMs);
    this.measured(raw[1]!, sent, timeoutMs);
    if (raw[0] === SKIPPED) {
      const left = this.leftAfterSkip(sent, timeoutMs);
      argv[0] = this.giveUp(sent + timeoutMs);
      sent = performance.now();
      raw = await this.deadline(this.scripts.tpRate(keys.length, ...keys, ...argv), left);
      this.measured(raw[1]!, sent, left);
      if (raw[0] === SKIPPED) throw new Error(`redis did not answer within ${timeoutMs} ms`);
    }
    const decisions: RateDecision[] = queries.map((_, i) => ({
      allowed: raw[2 + i * 4] === 1,
      remaining: Number(raw[3 + i * 4]),
      resetMs: Number(raw[4 + i * 4]),
      retryAfterMs: Number(raw[5 + i * 4]),
    }));
    if (raw[0] === 1) return decisions;
    // All windows or none (exactly as MemoryStore): a window that would have allowed it reports
    // the refusal too, and was not charged, so its remaining is as before.
    const retry = Math.max(...decisions.map((d) => d.retryAfterMs));
    return decisions.map((d, i) => (d.allowed
      ? { ...d, allowed: false, remaining: Math.min(queries[i]!.limit, d.remaining + queries[i]!.cost), retryAfterMs: retry }
      : d));
  }

  async quota(q: QuotaQuery, timeoutMs = this.timeoutMs): Promise<QuotaDecision> {
    if (this.closed) throw new Error('the redis counter store is closed');
    const key = this.quotaKey(q.key);
    const periodEnd = Math.ceil(q.periodEnd);
    let sent = performance.now();
    let raw = await this.deadline(this.scripts.tpQuota(key, this.giveUp(sent + timeoutMs), q.limit, q.cost, periodEnd), timeoutMs);
    this.measured(raw[1], sent, timeoutMs);
    if (raw[0] === SKIPPED) {
      const left = this.leftAfterSkip(sent, timeoutMs);
      const giveUp = this.giveUp(sent + timeoutMs);
      sent = performance.now();
      raw = await this.deadline(this.scripts.tpQuota(key, giveUp, q.limit, q.cost, periodEnd), left);
      this.measured(raw[1], sent, left);
      if (raw[0] === SKIPPED) throw new Error(`redis did not answer within ${timeoutMs} ms`);
    }
    const [allowed, , used] = raw;
    return allowed === 1
      ? { allowed: true, used, remaining: q.limit - used }
      : { allowed: false, used, remaining: Math.max(0, q.limit - used) };
  }

  async quotaUsage(key: string): Promise<number> {
    if (this.closed) throw new Error('the redis counter store is closed');
    const v = await this.deadline(this.client.get(this.quotaKey(key)));
    return v === null ? 0 : Number(v);
  }

  /**
   * Resolves once connected (a cluster: the slots known and every master connected) and their
   * clocks measured (so that the first decisions carry a give-up time); rejects after `ms`.
   */
  async waitReady(ms = 2000): Promise<void> {
    const end = Date.now() + ms;
    const ready = (c: Redis | Cluster) => (c.status === 'ready' ? Promise.resolve() : new Promise<void>((resolve, reject) => {
      const done = (err?: Error) => {
        clearTimeout(timer);
        c.off('ready', onReady);
        if (err) reject(err); else resolve();
      };
      const onReady = () => done();
      const timer = setTimeout(() => done(new Error(`redis not ready within ${ms} ms (status ${c.status})`)), Math.max(0, end - Date.now()));
      c.on('ready', onReady);
    }));
    await ready(this.client);
    const nodes = isCluster(this.client) ? this.client.nodes('master') : [this.client];
    if (isCluster(this.client)) await Promise.all(nodes.map(ready));
    // (a measurement that fails or comes late is not a store that is not ready: calls measure too)
    await withDeadline(Promise.all(nodes.map((n) => this.measure(n))), Math.max(1, end - Date.now()), '').catch(() => undefined);
  }

  /**
   * QUIT when connected (pending answers still arrive), then drop the connection and stop
   * reconnecting; resolves once it is closed, in at most ~350 ms whatever Redis does.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    let timer: NodeJS.Timeout | undefined;
    const bounded = (p: Promise<unknown>, ms: number) => Promise.race([p, new Promise((r) => { timer = setTimeout(r, ms); })]).finally(() => clearTimeout(timer));
    const ended = this.client.status === 'end' ? Promise.resolve() : new Promise<void>((r) => this.client.once('end', () => r()));
    if (this.client.status === 'ready') await bounded(this.client.quit().catch(() => undefined), 250);
    this.client.disconnect();
    await bounded(ended, 100);
  }
}
