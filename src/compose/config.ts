/**
 * Compiles a route's `compose:` block: steps resolved to services (or to a pool per external
 * URL), templates parsed, the dependency graph built and checked for unknown steps and cycles.
 * Problems are reported through `fail(path, message)` like every other config error.
 */
import { createHash } from 'node:crypto';
import type { ConfigInputs } from '../config/inputs.js';
import type { Pool } from 'undici';
import type { CompiledService } from '../config/compile.js';
import type { PathSegment } from '../config/errors.js';
import { unsendableSecret } from '../core/secret-text.js';
import { maskUrlSecrets } from '../core/url-secrets.js';
import { FRAMING_HEADERS } from '../core/headers.js';
import { jsonBodyProblem, parseDuration, parseSize } from '../config/units.js';
import type { PoolRegistry } from '../upstream/pools.js';
import { createBalancer } from '../upstream/balancer.js';
import { ServiceState } from '../upstream/state.js';
import type { ComposeInput, ComposeStepInput } from './schema.js';
import { StepCache } from './cache.js';
import { upstreamTlsProblem } from '../server/tls.js';
import {
  RESERVED_HEADS, jsonTemplateParts, parseJsonTemplate, parseTemplate, readsClientBody, stepsOf,
  type JsonTemplate, type ParseScope, type Template,
} from './template.js';

export const COMPOSE_DEFAULTS = {
  timeout: '30s',
  max_body: '1mb',
  max_request_body: '1mb',
  connect_timeout: '5s',
  cache_entries: 1000,
  cache_bytes: '16mb',
} as const;

/** Methods a step may retry (RFC 9110 §9.2.2). */
export const IDEMPOTENT = new Set(['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE']);
/** Request headers a step may not set (framing and connection management are undici's). */
const FORBIDDEN_HEADERS = FRAMING_HEADERS;

/** An external provider (a `url` step): its own pool, shared across snapshots by the pool registry. */
export interface UrlTarget {
  origin: string;
  hostHeader: string;
  pool: Pool;
}

export interface CompiledStep {
  name: string;
  index: number;
  /** Key of its value in the composed body (`as`, default the name). */
  key: string;
  method: string;
  /** The service it calls (null: a url step). */
  service: CompiledService | null;
  url: UrlTarget | null;
  /** Path template (for url steps: the URL's path joined with `path`). */
  path: Template;
  /** Query text template written after `?` in the url or path (null: none). */
  queryText: Template | null;
  /** `query:` parameters: encoded name, value template. */
  query: readonly [string, Template][];
  /** `headers:` (lower-case names). */
  headers: readonly [string, Template][];
  body: JsonTemplate | null;
  /** Indices of the steps that must finish first. */
  deps: readonly number[];
  optional: boolean;
  /** Bound on each attempt, headers and body (null: the service's timeouts and the composition deadline). */
  timeout: number | null;
  connectTimeout: number;
  retries: number;
  fallback: { value: unknown } | null;
  cache: StepCache | null;
  maxBody: number;
  select: readonly string[] | null;
  hidden: boolean;
  /** Authorization value from `auth` (null: none). */
  authorization: string | null;
}

export type MergeMode = 'nested' | 'flat' | 'by_key';

export interface CompiledCompose {
  steps: readonly CompiledStep[];
  /** Per step: indices of the steps that wait for it. */
  dependents: readonly (readonly number[])[];
  /** Deadline of the whole composition (ms). */
  timeout: number;
  merge: { mode: MergeMode; key: string; into: string };
  /** Some template reads the client's body ({body...}): the core must read it (at most maxRequestBody bytes). */
  readsBody: boolean;
  maxRequestBody: number;
}

export interface ComposeCompileDeps {
  /** Where the block is (routes[i].compose). */
  path: PathSegment[];
  /** The config's services, by name. */
  services: ReadonlyMap<string, CompiledService>;
  /** Path parameters the route's paths capture. */
  params: ReadonlySet<string>;
  pools: PoolRegistry;
  /** Pools acquired for url steps go here (released with the snapshot). */
  acquired: Pool[];
  /** Reads files named relative to the config file (recorded for the snapshot's hash). */
  inputs: ConfigInputs;
  fail: (path: PathSegment[], message: string) => void;
}

const NO_REPORTER = { passive() {}, outcome() {} };

/**
 * The service a composing route carries as `route.service`, for code that reads it (plugins'
 * ctx.service, metrics and logs label it): named after the route, no targets, no state shared
 * with a real service of the same name.
 */
export function composeService(routeName: string): CompiledService {
  return {
    name: routeName,
    scaling: null,
    protocol: 'http',
    grpc: false,
    h2Upstream: false,
    tls: undefined,
    targets: [],
    balancer: createBalancer('round-robin', []),
    balancerName: 'round-robin',
    hashOn: null,
    timeouts: { connect: 0, response: 0, read: 0, total: 0 },
    retries: 0,
    retryOn: { connectError: false, timeout: false, reset: false, statuses: new Set() },
    budget: { ratio: 0, minPerSecond: 0 },
    bulkhead: null,
    circuit: null,
    health: { active: null, passive: null },
    state: new ServiceState(routeName),
    reporter: NO_REPORTER,
  };
}

/** Names of the `{param}` segments of a route's paths. */
export function pathParams(paths: readonly string[] | undefined): Set<string> {
  const out = new Set<string>();
  for (const p of paths ?? []) for (const m of p.matchAll(/\{([A-Za-z_][A-Za-z0-9_]*)\}/g)) out.add(m[1]!);
  return out;
}

/** `/v1` + `/x` -> `/v1/x`; `` + `/x` -> `/x`; `/v1/` + `/x` -> `/v1/x`. */
function joinPath(base: string, path: string): string {
  const b = base.replace(/\/+$/, '');
  if (path === '' || path === '/') return b === '' ? '/' : b + (base.endsWith('/') ? '/' : '');
  return b + path;
}

/** Splits a template text at its first `?` (outside braces). */
function splitQuery(text: string): [string, string | null] {
  let depth = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === '{') depth++;
    else if (c === '}') depth = Math.max(0, depth - 1);
    else if (c === '?' && depth === 0) return [text.slice(0, i), text.slice(i + 1)];
  }
  return [text, null];
}

export function compileCompose(input: ComposeInput, deps: ComposeCompileDeps): CompiledCompose {
  const { fail } = deps;
  const cp = deps.path;
  const names = new Map<string, number>();
  input.steps.forEach((s, i) => {
    if (names.has(s.name)) fail([...cp, 'steps', i, 'name'], `duplicate step name "${s.name}" (also steps[${names.get(s.name)}])`);
    else names.set(s.name, i);
  });
  const scope: ParseScope = { params: deps.params, steps: new Set(names.keys()) };
  const m = input.merge ?? {};
  const mode: MergeMode = m.mode ?? 'nested';
  if (mode === 'by_key' && m.key === undefined) fail([...cp, 'merge', 'key'], 'merge mode by_key needs a key (the member that identifies an element, e.g. id)');
  if (mode !== 'by_key' && (m.key !== undefined || m.into !== undefined)) fail([...cp, 'merge'], 'key and into apply to merge mode by_key only');
  const maxBodyDefault = parseSize(input.max_body ?? COMPOSE_DEFAULTS.max_body);
  const tooBig = input.max_body !== undefined ? jsonBodyProblem(input.max_body) : null;
  if (tooBig !== null) fail([...cp, 'max_body'], tooBig);
  let readsBody = false;
  const keys = new Map<string, number>();

  const steps: CompiledStep[] = input.steps.map((s, i) => {
    const sp: PathSegment[] = [...cp, 'steps', i];
    const step = compileStep(s, i, sp, scope, deps, maxBodyDefault);
    if (RESERVED_HEADS.has(s.name)) fail([...sp, 'name'], `"${s.name}" cannot name a step: templates read {${s.name}.x} from the client's request`);
    // (a duplicate name is reported once, as such)
    if (!step.hidden && mode !== 'flat' && (s.as !== undefined || names.get(s.name) === i)) {
      const at: PathSegment[] = s.as !== undefined ? [...sp, 'as'] : [...sp, 'name'];
      if (mode === 'nested' && step.key === 'errors') fail(at, '"errors" is the key of the failed steps in the composed body: give the step another name or `as`');
      else if (mode === 'by_key' && step.key === (m.into ?? 'items')) fail(at, `"${step.key}" is the key of the merged array (merge.into)`);
      else if (keys.has(step.key)) fail(at, `key "${step.key}" is already used by steps[${keys.get(step.key)}]`);
      keys.set(step.key, i);
    }
    const all = [step.path, ...(step.queryText ? [step.queryText] : []), ...step.query.map(([, t]) => t), ...step.headers.map(([, t]) => t), ...(step.body ? jsonTemplateParts(step.body) : [])];
    if (all.some(readsClientBody)) readsBody = true;
    return step;
  });

  // Dependencies: the steps the templates read, plus depends_on.
  input.steps.forEach((s, i) => {
    const step = steps[i]!;
    const set = new Set<string>();
    for (const t of [step.path, ...(step.queryText ? [step.queryText] : []), ...step.query.map(([, x]) => x), ...step.headers.map(([, x]) => x), ...(step.body ? jsonTemplateParts(step.body) : [])]) stepsOf(t, set);
    s.depends_on?.forEach((d, di) => {
      if (!names.has(d)) fail([...cp, 'steps', i, 'depends_on', di], `unknown step "${d}"`);
      else set.add(d);
    });
    if (set.has(s.name)) {
      fail([...cp, 'steps', i], `step "${s.name}" depends on itself`);
      set.delete(s.name);
    }
    step.deps = [...set].filter((n) => names.has(n)).map((n) => names.get(n)!);
  });
  const cycle = findCycle(steps);
  if (cycle !== null) fail([...cp, 'steps', cycle[0]!], `dependency cycle: ${[...cycle, cycle[0]!].map((i) => steps[i]!.name).join(' -> ')} (each step needs the next)`);

  const dependents: number[][] = steps.map(() => []);
  for (const s of steps) for (const d of s.deps) dependents[d]!.push(s.index);
  const timeout = timerMs(input.timeout ?? COMPOSE_DEFAULTS.timeout, [...cp, 'timeout'], fail);
  if (timeout < 1) fail([...cp, 'timeout'], 'must be at least 1ms');
  return {
    steps,
    dependents,
    timeout,
    merge: { mode, key: m.key ?? 'id', into: m.into ?? 'items' },
    readsBody,
    maxRequestBody: parseSize(input.max_request_body ?? COMPOSE_DEFAULTS.max_request_body),
  };
}

/** The longest timer: setTimeout turns anything longer into 1 ms (a 30d deadline would fire at once). */
const MAX_TIMER_MS = 2_147_483_647;

/** A duration that runs a timer: past MAX_TIMER_MS it is a config error (as the services' timeouts). */
function timerMs(value: number | string, at: PathSegment[], fail: (path: PathSegment[], message: string) => void): number {
  const ms = parseDuration(value);
  if (ms > MAX_TIMER_MS) fail(at, 'must be at most 24d (2147483647 ms, the longest timer)');
  return Math.min(ms, MAX_TIMER_MS);
}

/** A cycle in the step graph as step indices (each needs the next), or null. */
function findCycle(steps: readonly CompiledStep[]): number[] | null {
  const state = new Array<0 | 1 | 2>(steps.length).fill(0);
  const stack: number[] = [];
  const visit = (i: number): number[] | null => {
    state[i] = 1;
    stack.push(i);
    for (const d of steps[i]!.deps) {
      if (state[d] === 1) return stack.slice(stack.indexOf(d));
      if (state[d] === 0) {
        const c = visit(d);
        if (c !== null) return c;
      }
    }
    stack.pop();
    state[i] = 2;
    return null;
  };
  for (let i = 0; i < steps.length; i++) {
    if (state[i] === 0) {
      const c = visit(i);
      if (c !== null) return c;
    }
  }
  return null;
}

type Mutable<T> = { -readonly [K in keyof T]: T[K] };

function compileStep(s: ComposeStepInput, index: number, sp: PathSegment[], scope: ParseScope, deps: ComposeCompileDeps, maxBodyDefault: number): Mutable<CompiledStep> {
  const { fail } = deps;
  const tpl = (text: string, at: PathSegment[]): Template => {
    const errors: string[] = [];
    const t = parseTemplate(text, scope, errors);
    for (const e of errors) fail(at, e);
    return t;
  };
  const method = (s.method ?? 'GET').toUpperCase();
  let service: CompiledService | null = null;
  let url: UrlTarget | null = null;
  let pathText = s.path ?? '/';
  let queryText: string | null = null;
  [pathText, queryText] = splitQuery(pathText);
  let pathAt: PathSegment[] = [...sp, 'path'];
  if (s.service !== undefined && s.url !== undefined) fail(sp, 'a step calls either a service or a url, not both');
  else if (s.service === undefined && s.url === undefined) fail(sp, 'a step needs a service or a url');
  const connectTimeout = timerMs(s.connect_timeout ?? COMPOSE_DEFAULTS.connect_timeout, [...sp, 'connect_timeout'], fail);
  if (s.service !== undefined) {
    service = deps.services.get(s.service) ?? null;
    if (service === null) fail([...sp, 'service'], `unknown service "${s.service}"`);
    else if (service.grpc) fail([...sp, 'service'], `service "${s.service}" speaks gRPC: a composition step needs a JSON service`);
    if (s.tls !== undefined) fail([...sp, 'tls'], 'tls applies to url steps (a service step uses the service\'s tls)');
    if (s.connect_timeout !== undefined) fail([...sp, 'connect_timeout'], 'connect_timeout applies to url steps (a service step uses the service\'s timeouts)');
  } else if (s.url !== undefined) {
    const m = /^(https?:\/\/[^/?#]+)([^#]*)$/.exec(s.url);
    let u: URL | null = null;
    try {
      u = m ? new URL(m[1]!) : null;
    } catch {
      u = null;
    }
    if (m === null || u === null) fail([...sp, 'url'], `invalid URL "${maskUrlSecrets(s.url)}" (http(s)://host[:port]/path?query, no fragment)`);
    else if (u.username || u.password) fail([...sp, 'url'], 'credentials in the URL are not supported: use auth');
    else {
      const [uPath, uQuery] = splitQuery(m[2]!);
      pathText = joinPath(uPath, s.path === undefined ? '' : pathText);
      queryText = uQuery === null ? queryText : queryText === null ? uQuery : `${uQuery}&${queryText}`;
      pathAt = s.path === undefined ? [...sp, 'url'] : pathAt;
      const https = u.protocol === 'https:';
      let tls: { ca?: Buffer; cert?: Buffer; key?: Buffer; rejectUnauthorized: boolean; id: string } | undefined;
      if (s.tls !== undefined) {
        if (!https) fail([...sp, 'tls'], 'tls needs an https:// url');
        const read = (f: string | undefined, key: string): Buffer | undefined => deps.inputs.readOr(f, (msg) => fail([...sp, 'tls', key], msg));
        const ca = read(s.tls.ca, 'ca');
        const cert = read(s.tls.cert, 'cert');
        const key = read(s.tls.key, 'key');
        if ((s.tls.cert === undefined) !== (s.tls.key === undefined)) fail([...sp, 'tls'], 'a client certificate needs both cert and key');
        const verify = s.tls.verify ?? true;
        const id = createHash('sha256').update(ca ?? '').update('|').update(cert ?? '').update('|').update(key ?? '').update(`|${verify}|${s.tls.server_name ?? ''}`).digest('hex').slice(0, 16);
        // (as a service's: what Node would take without a word and fail at the first call)
        const problem = upstreamTlsProblem(id, ca, cert, key);
        if (problem !== null) fail([...sp, 'tls', problem.field], problem.field === 'ca' ? `${s.tls.ca} ${problem.message}` : `cert ${s.tls.cert} with key ${s.tls.key} does not load: ${problem.message}`);
        tls = { ca, cert, key, rejectUnauthorized: verify, id };
      }
      const pool = deps.pools.acquire(u.origin, {
        connectTimeout,
        ...(s.tls?.server_name !== undefined ? { servername: s.tls.server_name } : {}),
        ...(tls !== undefined ? { tls } : {}),
      });
      deps.acquired.push(pool);
      url = { origin: u.origin, hostHeader: u.host, pool };
    }
  }
  if (!pathText.startsWith('/')) pathText = '/' + pathText;
  const path = tpl(pathText, pathAt);
  const qt = queryText === null || queryText === '' ? null : tpl(queryText, s.path !== undefined && splitQuery(s.path)[1] !== null ? [...sp, 'path'] : [...sp, 'url']);

  const query = Object.entries(s.query ?? {}).map(([k, v]): [string, Template] => [encodeURIComponent(k), tpl(String(v), [...sp, 'query', k])]);
  const headers: [string, Template][] = [];
  for (const [k, v] of Object.entries(s.headers ?? {})) {
    const name = k.toLowerCase();
    if (FORBIDDEN_HEADERS.has(name)) fail([...sp, 'headers', k], `${name} is set by the gateway`);
    else headers.push([name, tpl(v, [...sp, 'headers', k])]);
  }
  let authorization: string | null = null;
  if (s.auth !== undefined) {
    if (headers.some(([n]) => n === 'authorization')) fail([...sp, 'auth'], 'give auth or an authorization header, not both');
    authorization = 'bearer' in s.auth
      ? `Bearer ${s.auth.bearer}`
      : `Basic ${Buffer.from(`${s.auth.basic.username}:${s.auth.basic.password}`).toString('base64')}`;
    // (a ${ENV} from a Secret made --from-file keeps the file's last newline)
    const a = s.auth;
    const bad: [PathSegment[], string | null][] = 'bearer' in a
      ? [[['bearer'], unsendableSecret(a.bearer, 'an Authorization: Bearer header', { visibleAscii: true })]]
      : (['username', 'password'] as const).map((f) => [['basic', f], unsendableSecret(a.basic[f], 'Basic credentials (RFC 7617)', { edges: false })]);
    for (const [at, why] of bad) if (why) fail([...sp, 'auth', ...at], why);
  }
  let body: JsonTemplate | null = null;
  if (s.body !== undefined) {
    const errors: string[] = [];
    body = parseJsonTemplate(s.body, scope, errors);
    for (const e of errors) fail([...sp, 'body'], e);
  }
  const retries = s.retries ?? 0;
  if (retries > 0 && !IDEMPOTENT.has(method)) fail([...sp, 'retries'], `${method} is not idempotent: retries apply to GET, HEAD, OPTIONS, PUT and DELETE`);
  let cache: StepCache | null = null;
  if (s.cache !== undefined) {
    if (method !== 'GET' && method !== 'HEAD') fail([...sp, 'cache'], 'only GET and HEAD steps can be cached');
    const ttl = parseDuration(s.cache.ttl);
    if (ttl < 1) fail([...sp, 'cache', 'ttl'], 'must be at least 1ms');
    else cache = new StepCache(ttl, s.cache.max_entries ?? COMPOSE_DEFAULTS.cache_entries, Math.max(1, parseSize(s.cache.max_bytes ?? COMPOSE_DEFAULTS.cache_bytes)));
  }
  const timeout = s.timeout === undefined ? null : timerMs(s.timeout, [...sp, 'timeout'], fail);
  const tooBig = s.max_body !== undefined ? jsonBodyProblem(s.max_body) : null;
  if (tooBig !== null) fail([...sp, 'max_body'], tooBig);
  if (timeout !== null && timeout < 1) fail([...sp, 'timeout'], 'must be at least 1ms');
  return {
    name: s.name,
    index,
    key: s.as ?? s.name,
    method,
    service,
    url,
    path,
    queryText: qt,
    query,
    headers,
    body,
    deps: [],
    optional: s.optional ?? false,
    timeout,
    connectTimeout,
    retries,
    fallback: s.fallback === undefined ? null : { value: s.fallback },
    cache,
    maxBody: s.max_body === undefined ? maxBodyDefault : parseSize(s.max_body),
    select: s.select === undefined ? null : s.select.split('.'),
    hidden: s.hidden ?? false,
    authorization,
  };
}
