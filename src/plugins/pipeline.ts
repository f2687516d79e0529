/**
 * Plugin bindings -> per-route chains (compiled once per snapshot), and the request phases run
 * per request.
 *
 * Precedence (Kong's): for each plugin name the most specific binding wins:
 * route+consumer > service+consumer > consumer > route > service > global. Auth plugins can only
 * be bound where the consumer is not known yet (global, service, route). Request phases run by
 * descending priority; response phases (responseHeaders, responseBody, log) by ascending.
 *
 * Phases per request: onRequest (before authentication: CORS preflights, IP rules, size
 * limits; a consumer binding cannot take part), authenticate (the route's auth plugins, any-of:
 * the first success wins; all failing -> 401/403, or the `anonymous` consumer when one is set),
 * access (the chain for the authenticated consumer), then the upstream. A plugin that throws or
 * rejects answers that request with a 500 problem; the gateway carries on.
 */
import { ConfigInputs } from '../config/inputs.js';
import { createHash } from 'node:crypto';
import { Value } from '@sinclair/typebox/value';
import type { PathSegment } from '../config/errors.js';
import { schemaIssues } from '../config/schema-issues.js';
import type { Logger } from '../core/log.js';
import type { AuthOutcome, Consumer, PluginDef, PluginDeps, PluginInstance, Reply, RequestCtx, Scope } from './types.js';
import type { CacheStores } from './cache/stores.js';

export interface Bound {
  name: string;
  priority: number;
  inst: PluginInstance;
  /** `anonymous` consumer of an auth plugin's config. */
  anonymous: Consumer | null;
}

/** The plugins a request runs, by phase, in order. */
export interface Chain {
  onRequest: readonly Bound[];
  authenticate: readonly Bound[];
  access: readonly Bound[];
  responseHeaders: readonly Bound[];
  responseBody: readonly Bound[];
  /** bufferResponse, response and encodeResponse phases (response order). */
  bufferResponse: readonly Bound[];
  response: readonly Bound[];
  encodeResponse: readonly Bound[];
  log: readonly Bound[];
  /** No plugin at all: the request path skips the pipeline. */
  empty: boolean;
  /** A plugin here answers CORS preflights (cors). */
  preflight: boolean;
  /** The consumer's plan does not include this route or service (403). */
  denied?: string;
}

/** A route's chains: the base one (no consumer), and per consumer when consumer bindings apply. */
export interface RouteChains {
  base: Chain;
  /** Some chain of the route (base, or a consumer's) has log plugins. */
  anyLog: boolean;
  forConsumer(c: Consumer): Chain;
}

export interface BindingInput {
  name: string;
  enabled?: boolean;
  config?: Record<string, unknown>;
  consumer?: string;
}

export interface Binding {
  def: PluginDef;
  inst: PluginInstance;
  consumer: string | null;
  anonymous: Consumer | null;
}

/** No bindings (a route without plugins of its own). */
export const NO_BINDINGS: Binding[] = Object.freeze([]) as unknown as Binding[];

const byPriorityDesc = (a: Bound, b: Bound) => b.priority - a.priority || (a.name < b.name ? -1 : 1);

function deepFreeze<T>(v: T): T {
  if (v !== null && typeof v === 'object' && !Object.isFrozen(v)) {
    Object.freeze(v);
    for (const k of Object.keys(v)) deepFreeze((v as Record<string, unknown>)[k]);
  }
  return v;
}

/** Deterministic consumer id (UUID-shaped) from its name, when the config gives none. */
export function consumerId(name: string): string {
  const h = createHash('sha256').update(`turnpike-consumer:${name}`).digest('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-5${h.slice(13, 16)}-${((parseInt(h[16]!, 16) & 0x3) | 0x8).toString(16)}${h.slice(17, 20)}-${h.slice(20, 32)}`;
}

function chainOf(bindings: Iterable<Binding>): Chain {
  let preflight = false;
  const onRequest: Bound[] = [];
  const auth: Bound[] = [];
  const access: Bound[] = [];
  const rh: Bound[] = [];
  const rb: Bound[] = [];
  const buf: Bound[] = [];
  const resp: Bound[] = [];
  const enc: Bound[] = [];
  const log: Bound[] = [];
  for (const b of bindings) {
    const bound: Bound = { name: b.def.name, priority: b.def.priority, inst: b.inst, anonymous: b.anonymous };
    if (b.def.handlesPreflight) preflight = true;
    if (b.inst.onRequest) onRequest.push(bound);
    if (b.inst.authenticate) auth.push(bound);
    if (b.inst.access) access.push(bound);
    if (b.inst.responseHeaders) rh.push(bound);
    if (b.inst.responseBody) rb.push(bound);
    if (b.inst.bufferResponse) buf.push(bound);
    if (b.inst.response) resp.push(bound);
    if (b.inst.encodeResponse) enc.push(bound);
    if (b.inst.log) log.push(bound);
  }
  onRequest.sort(byPriorityDesc);
  auth.sort(byPriorityDesc);
  access.sort(byPriorityDesc);
  for (const l of [rh, rb, buf, resp, enc, log]) l.sort((a, b) => -byPriorityDesc(a, b));
  return {
    onRequest, authenticate: auth, access, responseHeaders: rh, responseBody: rb, bufferResponse: buf, response: resp, encodeResponse: enc, log,
    empty: onRequest.length + auth.length + access.length + rh.length + rb.length + buf.length + resp.length + enc.length + log.length === 0,
    preflight,
  };
}

/**
 * Builds every binding of a config: validates each config against its plugin's schema (errors
 * carry the binding's path), applies defaults, freezes it and creates the instance.
 */
export class PluginCompiler {
  readonly instances: PluginInstance[] = [];
  /** Names of the plugins bound somewhere (enabled). */
  readonly used = new Set<string>();
  private readonly global: Binding[] = [];
  private readonly consumerBindings = new Map<string, Binding[]>();
  private readonly plans = new Map<string, { bindings: Binding[]; services: ReadonlySet<string> | null; routes: ReadonlySet<string> | null }>();
  /** Per service bindings: the merged bindings and base chain of its routes that bind nothing themselves (and their whole chains when no consumer can change them). */
  private readonly serviceChains = new Map<Binding[], { merged: Map<string, Binding>; base: Chain; chains: RouteChains | null }>();

  constructor(
    private readonly registry: ReadonlyMap<string, PluginDef>,
    private readonly consumers: ReadonlyMap<string, Consumer>,
    private readonly credentials: ReadonlyMap<string, { consumer: Consumer; credential: Readonly<Record<string, unknown>> }[]>,
    /** Consumers that declare credentials of any type (held ones too): PluginDeps.credentialed. */
    private readonly credentialed: ReadonlySet<Consumer>,
    private readonly listeners: PluginDeps['listeners'],
    private readonly counters: PluginDeps['counters'],
    private readonly consumerHeaders: ConsumerHeaders,
    private readonly log: Logger,
    private readonly fail: (path: PathSegment[], message: string) => void,
    private readonly inputs: ConfigInputs = new ConfigInputs(process.cwd()),
    private readonly caches?: CacheStores,
  ) {}

  /**
   * Compiles the bindings at one place; `scope` decides which plugins may be bound there.
   * `owner` names the place by what it is, not where it is (global, service:NAME, route:NAME,
   * consumer:NAME, plan:NAME): counter keys are made of it (PluginDeps.counterScope).
   */
  bind(list: readonly BindingInput[] | undefined, scope: Scope, path: PathSegment[], owner: string): Binding[] {
    const out: Binding[] = [];
    const seen = new Map<string, number>();
    list?.forEach((b, i) => {
      const bp = [...path, i];
      const def = this.registry.get(b.name);
      if (!def) {
        this.fail([...bp, 'name'], `unknown plugin "${b.name}" (known: ${[...this.registry.keys()].sort().join(', ')})`);
        return;
      }
      const key = `${b.name}|${b.consumer ?? ''}`;
      if (seen.has(key)) {
        this.fail([...bp, 'name'], `plugin "${b.name}" is bound twice here (also [${seen.get(key)}])${b.consumer ? ` for consumer "${b.consumer}"` : ''}`);
        return;
      }
      seen.set(key, i);
      if (b.consumer !== undefined) {
        if (scope === 'global' || scope === 'consumer') {
          this.fail([...bp, 'consumer'], 'a consumer on a binding is for service and route bindings (use consumers[].plugins for a consumer alone)');
          return;
        }
        if (!this.consumers.has(b.consumer)) {
          this.fail([...bp, 'consumer'], `unknown consumer "${b.consumer}"`);
          return;
        }
      }
      const effective: Scope = b.consumer !== undefined ? 'consumer' : scope;
      if (!def.scopes.includes(effective)) {
        this.fail([...bp, 'name'], `plugin "${b.name}" cannot be bound ${effective === 'consumer' ? 'to a consumer' : `at ${effective} scope`} (allowed: ${def.scopes.join(', ')})`);
        return;
      }
      const raw = structuredClone(b.config ?? {});
      const config = Value.Default(def.schema, raw) as Record<string, unknown>;
      // (worded as the config's own keys are: the same message builder)
      const errors = schemaIssues(Value.Errors(def.schema, config));
      if (errors.length) {
        for (const e of errors.slice(0, 5)) this.fail([...bp, 'config', ...e.path], e.message);
        return;
      }
      // A disabled binding is checked like any (Kong does too), then left out.
      if (b.enabled === false) return;
      deepFreeze(config);
      const deps: PluginDeps = {
        log: this.log,
        consumers: this.consumers,
        credentials: this.credentials.get(def.name) ?? [],
        credentialed: this.credentialed,
        where: bp.join('.'),
        // (a plugin is bound once per place and consumer: the rest is checked above)
        counterScope: `${owner}|${def.name}${b.consumer !== undefined ? `|consumer:${b.consumer}` : ''}`,
        baseDir: this.inputs.baseDir,
        readFile: (f: string) => this.inputs.read(f),
        ...(this.caches ? { caches: this.caches } : {}),
        listeners: this.listeners,
        counters: this.counters,
        consumerHeaders: this.consumerHeaders,
      };
      let problems: ReturnType<NonNullable<PluginDef['check']>> = [];
      try {
        problems = def.check?.(config as never, deps) ?? [];
      } catch (e) {
        problems = [(e as Error).message];
      }
      let anonymous: Consumer | null = null;
      const anon = config['anonymous'];
      if (typeof anon === 'string') {
        anonymous = this.consumers.get(anon) ?? null;
        if (!anonymous) this.fail([...bp, 'config', 'anonymous'], `unknown consumer "${anon}"`);
      }
      if (typeof anon === 'string' && !anonymous) return;
      if (problems.length) {
        for (const p of problems) {
          if (typeof p === 'string') this.fail([...bp, 'config'], p);
          else this.fail([...bp, 'config', ...p.path], p.message);
        }
        return;
      }
      let inst: PluginInstance;
      try {
        inst = def.create(config as never, deps);
      } catch (e) {
        this.fail([...bp, 'config'], (e as Error).message);
        return;
      }
      this.instances.push(inst);
      this.used.add(def.name);
      out.push({ def, inst, consumer: b.consumer ?? null, anonymous });
    });
    return out;
  }

  setGlobal(list: readonly BindingInput[] | undefined): void {
    this.global.push(...this.bind(list, 'global', ['plugins'], 'global'));
  }

  setConsumer(name: string, list: readonly BindingInput[] | undefined, path: PathSegment[]): void {
    const bound = this.bind(list, 'consumer', path, `consumer:${name}`);
    if (bound.length) this.consumerBindings.set(name, bound);
  }

  /** A plan: bindings every consumer on it gets (below the consumer's own), and what it may reach. */
  setPlan(name: string, plan: { plugins?: readonly BindingInput[]; services?: readonly string[]; routes?: readonly string[] }, path: PathSegment[]): void {
    this.plans.set(name, {
      bindings: this.bind(plan.plugins, 'consumer', [...path, 'plugins'], `plan:${name}`),
      services: plan.services ? new Set(plan.services) : null,
      routes: plan.routes ? new Set(plan.routes) : null,
    });
  }

  /** The chains of a route, given its service's and its own bindings. */
  route(service: Binding[], route: Binding[], names: { route: string; service: string }): RouteChains {
    // Routes without bindings of their own share their service's chains (10,000 routes of one
    // service: one chain, not 10,000 — less to build and to collect on every reload).
    const shared = route.length === 0 ? this.serviceChains.get(service) : undefined;
    if (shared?.chains) return shared.chains;
    let merged = shared?.merged;
    let base = shared?.base;
    if (merged === undefined || base === undefined) {
      merged = new Map<string, Binding>();
      for (const layer of [this.global, service.filter((b) => b.consumer === null), route.filter((b) => b.consumer === null)]) {
        for (const b of layer) merged.set(b.def.name, b);
      }
      base = chainOf(merged.values());
    }
    const serviceFor = service.filter((b) => b.consumer !== null);
    const routeFor = route.filter((b) => b.consumer !== null);
    if (this.consumerBindings.size === 0 && this.plans.size === 0 && serviceFor.length === 0 && routeFor.length === 0) {
      const fixed = base;
      const chains: RouteChains = { base, anyLog: base.log.length > 0, forConsumer: () => fixed };
      if (route.length === 0) this.serviceChains.set(service, { merged, base, chains });
      return chains;
    }
    if (route.length === 0 && !shared) this.serviceChains.set(service, { merged, base, chains: null });
    const cache = new Map<string, Chain>();
    const logs = (list: Iterable<Binding>) => { for (const b of list) if (b.inst.log) return true; return false; };
    let anyLog = base.log.length > 0 || logs(serviceFor) || logs(routeFor);
    for (const l of this.consumerBindings.values()) anyLog ||= logs(l);
    for (const p of this.plans.values()) anyLog ||= logs(p.bindings);
    return {
      base,
      anyLog,
      forConsumer: (c) => {
        let chain = cache.get(c.name);
        if (chain) return chain;
        const own = this.consumerBindings.get(c.name) ?? [];
        const plan = c.plan !== undefined ? this.plans.get(c.plan) : undefined;
        const planned = plan?.bindings ?? [];
        const sf = serviceFor.filter((b) => b.consumer === c.name);
        const rf = routeFor.filter((b) => b.consumer === c.name);
        if (own.length + planned.length + sf.length + rf.length === 0) chain = base!;
        else {
          // route+consumer > service+consumer > consumer > plan > route > service > global
          const m = new Map(merged!);
          for (const layer of [planned, own, sf, rf]) for (const b of layer) m.set(b.def.name, b);
          chain = chainOf(m.values());
        }
        if (plan && ((plan.services && !plan.services.has(names.service)) || (plan.routes && !plan.routes.has(names.route)))) {
          chain = { ...chain, denied: `the ${c.plan} plan does not include this API` };
        }
        cache.set(c.name, chain);
        return chain;
      },
    };
  }
}

/** Names of the consumer headers sent upstream (and stripped from every client request). */
export interface ConsumerHeaders {
  id: string;
  name: string;
  groups: string;
  credential: string;
  anonymous: string;
}

export const DEFAULT_CONSUMER_HEADERS: ConsumerHeaders = {
  id: 'x-consumer-id', name: 'x-consumer-name', groups: 'x-consumer-groups', credential: 'x-credential-identifier', anonymous: 'x-anonymous-consumer',
};

const isThenable = <T>(v: unknown): v is PromiseLike<T> => v !== null && typeof v === 'object' && typeof (v as { then?: unknown }).then === 'function';

/** A plugin failed (threw or rejected): carries its name for the log. */
export class PluginError extends Error {
  constructor(readonly plugin: string, override readonly cause: unknown) {
    super(`plugin ${plugin} failed: ${cause instanceof Error ? cause.message : String(cause)}`);
  }
}

/** Calls a phase function: its value, or a promise of it; a throw or rejection becomes a PluginError. */
function call<T>(b: Bound, f: () => T | PromiseLike<T>, ctx: RequestCtx, phase: string): T | PromiseLike<T> {
  let r: T | PromiseLike<T>;
  try {
    r = f();
  } catch (e) {
    throw new PluginError(b.name, e);
  }
  if (!isThenable<T>(r)) return r;
  // A phase that waits gets its own span in a traced request.
  const end = ctx.trace?.(b.name, phase);
  return Promise.resolve(r).then(
    (v) => { end?.(); return v; },
    (e: unknown) => { end?.(e); throw new PluginError(b.name, e); },
  );
}

/**
 * Runs a generator that yields plugin results: synchronously for as long as they are plain
 * values, asynchronously from the first promise on (a route whose plugins never wait costs no
 * promise at all).
 */
function drive<T>(gen: Generator<unknown, T, unknown>): T | Promise<T> {
  let r = gen.next();
  while (!r.done) {
    if (isThenable(r.value)) {
      const first = r.value;
      return (async () => {
        let step = await Promise.resolve(first).then((v) => gen.next(v), (e: unknown) => gen.throw(e));
        while (!step.done) {
          const v = step.value;
          step = isThenable(v) ? await Promise.resolve(v).then((x) => gen.next(x), (e: unknown) => gen.throw(e)) : gen.next(v);
        }
        return step.value;
      })();
    }
    r = gen.next(r.value);
  }
  return r.value;
}

/**
 * Runs onRequest, authenticate and access. Resolves with the reply that ends the request, or
 * null to go upstream (with `ctx` updated: consumer, identity, upstream headers); the chain to
 * use for the response phases is returned too. Rejects with PluginError.
 */
export function runRequestPhases(
  ctx: RequestCtx, chains: RouteChains, headers: ConsumerHeaders,
): PhaseResult | Promise<PhaseResult> {
  return drive(phases(ctx, chains, headers));
}

export interface PhaseResult { reply: Reply | null; chain: Chain }

/**
 * An identity as a header value: printable ASCII as it is; anything else (a token's
 * `preferred_username: 张伟`, a certificate CN) as its UTF-8 bytes, the way nginx-based gateways
 * pass it on, and control characters (CR, LF, NUL...) percent-encoded, so that no claim can
 * break the upstream request or inject a field.
 */
export function fieldValue(v: string): string {
  if (/^[\x20-\x7e]*$/.test(v)) return v;
  const bytes = Buffer.from(v.replace(/[\x00-\x1f\x7f]/g, (ch) => `%${ch.charCodeAt(0).toString(16).padStart(2, '0').toUpperCase()}`), 'utf8');
  return bytes.toString('latin1');
}

function* phases(ctx: RequestCtx, chains: RouteChains, headers: ConsumerHeaders): Generator<unknown, PhaseResult, unknown> {
  const base = chains.base;
  for (const b of base.onRequest) {
    const r = (yield call(b, () => b.inst.onRequest!(ctx), ctx, 'onRequest')) as Reply | void;
    if (r) return { reply: r, chain: base };
  }
  if (base.authenticate.length > 0) {
    let won: Extract<AuthOutcome, { ok: true }> | null = null;
    let firstInvalid: Extract<AuthOutcome, { ok: false; missing: false; status?: 400 | 401 | 403 }> | null = null;
    let unavailable: Extract<AuthOutcome, { status: 503 }> | null = null;
    let refused: Extract<AuthOutcome, { ok: false; missing: false; status?: 400 | 401 | 403 }> | null = null;
    const challenges: string[] = [];
    for (const b of base.authenticate) {
      const r = (yield call(b, () => b.inst.authenticate!(ctx), ctx, 'authenticate')) as AuthOutcome;
      if (r.ok) {
        won = r;
        break;
      }
      if (!challenges.includes(r.challenge)) challenges.push(r.challenge);
      if (!r.missing) {
        if (r.status === 503) unavailable ??= r;
        else {
          firstInvalid ??= r;
          if (r.anonymous === false) refused ??= r;
        }
      }
    }
    if (won !== null) {
      ctx.consumer = won.consumer;
      ctx.identity = won.identity;
      ctx.credential = won.credential;
      ctx.scopes = won.scopes ?? null;
      ctx.claims = won.claims ?? null;
    } else if (unavailable !== null) {
      // Not judged (the identity provider is down): neither refused nor let in as anonymous.
      return { reply: { code: 'auth-unavailable', detail: unavailable.detail, headers: { 'retry-after': '5' } }, chain: base };
    } else {
      const anon = refused !== null ? null : base.authenticate.find((b) => b.anonymous !== null)?.anonymous ?? null;
      if (anon === null) {
        if (refused !== null) firstInvalid = refused;
        const status = firstInvalid?.status ?? 401;
        return {
          reply: {
            code: status === 403 ? 'forbidden' : status === 400 ? 'bad-request' : 'unauthorized',
            detail: firstInvalid?.detail ?? 'credentials are required',
            // Several schemes: one WWW-Authenticate each is allowed (RFC 9110 §11.6.1); joined here.
            // 403 (insufficient scope), 400 (malformed): the failing scheme's challenge says why (RFC 6750 §3.1).
            headers: { 'www-authenticate': status === 401 ? challenges.join(', ') : firstInvalid!.challenge },
          },
          chain: base,
        };
      }
      ctx.consumer = anon;
      ctx.identity = anon.name;
      ctx.anonymous = true;
      ctx.challenge = challenges.join(', ');
    }
    const c = ctx.consumer;
    if (c !== null) {
      // (client copies of these were stripped when the request was read: appended, not replaced)
      ctx.appendUpstreamHeader(headers.id, fieldValue(c.id));
      ctx.appendUpstreamHeader(headers.name, fieldValue(c.name));
      if (c.groups.length) ctx.appendUpstreamHeader(headers.groups, fieldValue(c.groups.join(', ')));
    } else if (ctx.identity !== null) {
      ctx.appendUpstreamHeader(headers.name, fieldValue(ctx.identity));
    }
    if (ctx.credential !== null) ctx.appendUpstreamHeader(headers.credential, fieldValue(ctx.credential));
    if (ctx.anonymous) ctx.appendUpstreamHeader(headers.anonymous, 'true');
  }
  const chain = ctx.consumer !== null ? chains.forConsumer(ctx.consumer) : base;
  if (chain.denied !== undefined) return { reply: { code: 'forbidden', detail: chain.denied }, chain };
  for (const b of chain.access) {
    const r = (yield call(b, () => b.inst.access!(ctx), ctx, 'access')) as Reply | void;
    if (r) return { reply: r, chain };
  }
  return { reply: null, chain };
}
