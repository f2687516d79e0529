/**
 * The plugin interface. A plugin is a folder under src/plugins/<name>/ with index.ts (the
 * definition), schema.ts (its TypeBox config schema: types, validation and docs), README.md and
 * its tests. `create()` runs once per binding per config snapshot, never per request; the
 * instance's phase functions run per request and may return a value or a Promise (the request
 * path stays synchronous until a plugin actually needs to wait).
 */
import type { IncomingMessage } from 'node:http';
import type { Transform } from 'node:stream';
import type { Static, TSchema } from '@sinclair/typebox';
import type { ProblemCode } from '../core/problem.js';
import type { Logger } from '../core/log.js';
import type { CounterStore } from '../state/types.js';
import type { CacheStores } from './cache/stores.js';

/** encodeResponse's answer for a body-less answer (HEAD): its fields say encoded; there is nothing to encode. */
export const HEADERS_ONLY = 'headers-only';

export type Scope = 'global' | 'service' | 'route' | 'consumer';
export type MaybePromise<T> = T | Promise<T>;

/** A consumer as compiled from `consumers:` (frozen). */
export interface Consumer {
  id: string;
  name: string;
  groups: readonly string[];
  plan: string | undefined;
}

/** An answer made by a plugin instead of the upstream's (stops the request phases). */
export interface Reply {
  /** A problem from the catalogue (problem+json), or a raw body with `status`. */
  code?: ProblemCode;
  detail?: string;
  status?: number;
  body?: string | Buffer;
  headers?: Record<string, string | string[]>;
  /** With `code`: members added to the problem object (e.g. `errors` of a validation). */
  extra?: Record<string, unknown>;
}

/**
 * A whole response held by the gateway before it goes to the client (some plugin asked for it
 * with bufferResponse, or the gateway made it: a composition, a problem). Response plugins may
 * change any part in place; Content-Length is set from the final body.
 */
export interface BufferedResponse {
  status: number;
  /** Flat list: name, value, name, value... (names as received; compare lower-cased). */
  headers: string[];
  body: Buffer;
  /** Who made it: the upstream, or the gateway itself (a problem+json, a composition). */
  origin: 'upstream' | 'gateway';
  /** A composition's merged answer (origin 'gateway'): response-transform shapes it like an upstream's. */
  composed?: true;
  /** For a gateway problem made because the upstream failed: its code (e.g. bad-gateway, gateway-timeout). */
  error?: string;
}

/** What an auth plugin found. */
export type AuthOutcome =
  /** Authenticated: a configured consumer, or (consumer null) an identity the IdP vouches for without one here. */
  | { ok: true; consumer: Consumer | null; identity: string; credential: string; scopes?: readonly string[]; claims?: Readonly<Record<string, unknown>> }
  /** No credential of this kind in the request. */
  | { ok: false; missing: true; challenge: string }
  /**
   * A credential was there and is not good: `detail` is for the client, never the token's content.
   * `anonymous: false`: refused even where an `anonymous` consumer is set (a client that presented
   * a credential that failed verification is not anonymous: mtls-auth's untrusted certificate).
   */
  | { ok: false; missing: false; challenge: string; detail: string; status?: 400 | 401 | 403; anonymous?: false }
  /**
   * The credential cannot be judged now (the identity provider's keys or its introspection
   * endpoint are unreachable): 503 with Retry-After, never the anonymous consumer, and never
   * `invalid_token`, which would send clients to refresh tokens that are fine (RFC 6750 §3.1).
   */
  | { ok: false; missing: false; challenge: string; detail: string; status: 503 };

/** The request as plugins see it (one per request; `vars` is for plugins to talk to each other). */
export interface RequestCtx {
  readonly req: IncomingMessage;
  readonly requestId: string;
  readonly method: string;
  /** Normalized path as received (before strip_path). */
  readonly path: string;
  /** Raw query string including '?', or ''. */
  readonly query: string;
  readonly host: string;
  readonly clientIp: string;
  /** counterId: what `by: route` counts by (the name; for an unnamed route, see CompiledRoute.counterId). */
  readonly route: { readonly name: string; readonly counterId?: string };
  readonly service: { readonly name: string };
  consumer: Consumer | null;
  /** Identity of the caller when authenticated (consumer name, or e.g. a JWT claim value). */
  identity: string | null;
  credential: string | null;
  /**
   * The query parameter an auth plugin read a credential from (or removed from the upstream
   * query, hide_credentials): caches leave it out of their keys, so no key is stored with one.
   */
  credentialParam: string | null;
  /**
   * The request field an auth plugin found a credential in (key-auth's header), whether it took
   * it or not: a cache must not share what an upstream answered to it unless the caller is in its key.
   */
  credentialHeader: string | null;
  /** Scopes granted to the caller (JWT scope / scp, introspection scope). */
  scopes: readonly string[] | null;
  claims: Readonly<Record<string, unknown>> | null;
  anonymous: boolean;
  /**
   * On the anonymous path only: the challenges of the auth plugins that found no credential
   * (a WWW-Authenticate value), for a later plugin refusing the anonymous caller with a 401
   * (acl); null otherwise.
   */
  challenge: string | null;
  vars: Record<string, unknown>;
  /** A request header (lower-case name), joined when repeated. */
  header(name: string): string | undefined;
  /** A copy of the header list going upstream so far (name, value, ...; Host is the gateway's and not in it). */
  upstreamHeaderList(): string[];
  /** Changes what goes upstream. */
  removeUpstreamHeader(name: string): void;
  setUpstreamHeader(name: string, value: string): void;
  /** Adds a field upstream without looking for an earlier one (the gateway's own fields). */
  appendUpstreamHeader(name: string, value: string): void;
  removeUpstreamQueryParam(name: string): void;
  /** Edits the header list sent upstream in place (name, value, ...; Host is the gateway's and not in it). */
  editUpstreamHeaders(edit: (list: string[]) => void): void;
  /** Path parameters the route captured ({name} segments), or an empty object. */
  readonly params: Readonly<Record<string, string>>;
  /**
   * Reads the whole request body, at most `maxBytes` (past it, or past a declared larger
   * Content-Length: a ProblemError payload-too-large, answered 413). Resolves to an empty Buffer
   * for a request without a body. Later calls resolve to the same bytes, or to what
   * setUpstreamBody set since.
   */
  readBody(maxBytes: number): Promise<Buffer>;
  /** Replaces the body sent upstream (Content-Length follows it). */
  setUpstreamBody(body: Buffer | string): void;
  /** The method sent upstream (initially the request's). */
  upstreamMethod: string;
  /** The path sent upstream without the query (initially after strip_path). */
  upstreamPath: string;
  /** The query string sent upstream, with its '?' (or ''). */
  upstreamQuery: string;
  /** A CORS preflight (OPTIONS with Origin and Access-Control-Request-Method), routed as the method it asks about. */
  readonly preflight: boolean;
  /** Caps the request body (bytes): past it, 413 (or a cut connection once the response started). */
  limitBody(maxBytes: number): void;
  /** A header for the response to the client, whoever answers (upstream or a local reply). */
  addResponseHeader(name: string, value: string): void;
  /** The headers added with addResponseHeader so far (name, value, ...): per request, never worth storing. */
  readonly responseHeaders: readonly string[];
  /** Reports a limit's decision (turnpike_limit_decisions_total). */
  limited(plugin: string, allowed: boolean): void;
  /** Internal: opens a trace span around a phase that waits (null when the request is not traced). */
  readonly trace: ((plugin: string, phase: string) => (error?: unknown) => void) | null;
}

export interface LogInfo {
  status: number;
  durationMs: number;
}

export interface PluginInstance {
  onRequest?(ctx: RequestCtx): MaybePromise<Reply | void>;
  authenticate?(ctx: RequestCtx): MaybePromise<AuthOutcome>;
  access?(ctx: RequestCtx): MaybePromise<Reply | void>;
  /** Upstream response headers (flat name/value list) before they go to the client; edit in place. */
  responseHeaders?(ctx: RequestCtx, status: number, headers: string[]): void;
  /** Each response body chunk on its way to the client (streaming). */
  responseBody?(ctx: RequestCtx, chunk: Buffer): Buffer;
  /**
   * Asks for the whole response before anything goes to the client, once the upstream's status
   * and headers are in (after responseHeaders):
   * - a number: the most bytes to hold; past it the client gets a 502 upstream-response-too-large
   *   (a transform that cannot work on part of a body);
   * - `{max, fallback: 'stream'}`: whole if it is at most `max` bytes, else it streams on and
   *   the `response` phase is skipped for it (a cache that just does not store big ones);
   * - null: let it stream.
   * With several plugins asking, the smallest hard cap wins, else the largest soft one.
   */
  bufferResponse?(ctx: RequestCtx, status: number, headers: readonly string[]): number | { max: number; fallback: 'stream' } | null;
  /**
   * The whole response (when a plugin asked for it, or the gateway made it): may change status,
   * headers and body, or wait. Runs in response order (ascending priority). A ProblemError
   * thrown here answers with that problem instead.
   */
  response?(ctx: RequestCtx, r: BufferedResponse): MaybePromise<void>;
  /**
   * The last step before the client: may return a stream the body goes through (compression)
   * and edit the headers for it (Content-Encoding, Vary; Content-Length is dropped when a
   * stream is returned). null: the body goes as it is. A 304 comes here too, for its fields
   * only (the ETag and Vary its 200 would carry): a stream returned for it is discarded.
   * HEADERS_ONLY: the headers say encoded, with no stream to build (a HEAD answer has no body).
   */
  encodeResponse?(ctx: RequestCtx, status: number, headers: string[]): Transform | typeof HEADERS_ONLY | null;
  /** After the response ended; cannot change it. */
  log?(ctx: RequestCtx, info: LogInfo): void;
  /** The snapshot that created it retired: release timers, caches. */
  close?(): void;
}

/** What a plugin gets at create(): never a connection opened at import time. */
export interface PluginDeps {
  log: Logger;
  /** Consumers by name, and the credentials of this plugin's type (validated against `credential`). */
  consumers: ReadonlyMap<string, Consumer>;
  credentials: readonly { consumer: Consumer; credential: Readonly<Record<string, unknown>> }[];
  /**
   * Consumers that declare credentials (of any type, a portal login too, and also when they are
   * held: approved / verified false): a plugin that may name a consumer by a claim or
   * certificate name matches these by their credentials only, never by their name.
   */
  credentialed: ReadonlySet<Consumer>;
  /** Where the binding is (for messages): its position in the config, e.g. services.4.plugins.0. */
  where: string;
  /**
   * Who the binding is, for counter keys (rate-limit, quota): the owner's kind and name
   * (global, service:NAME, route:NAME, consumer:NAME, plan:NAME), the plugin, and the consumer a
   * service or route binding is for. Not its position: adding, removing or reordering other
   * services, routes, consumers or bindings keeps the counts; renaming the owner starts fresh.
   * An unnamed route is route:~SERVICE~HASH, the hash of its hosts, paths, methods and headers.
   */
  counterScope: string;
  /** The config file's directory (relative file paths in a plugin's config are relative to it). */
  baseDir: string;
  /**
   * Reads a file a plugin's config names (relative to baseDir; throws as readFileSync does):
   * its digest joins the snapshot's hash and it is watched, so a reload sees it change.
   */
  readFile(f: string): Buffer;
  /** Facts about the listeners (mtls-auth needs a client CA). */
  listeners: { clientCa: boolean };
  /** Counter stores: this node's (shared by its workers), and Redis when `redis` is configured. */
  counters: { local: CounterStore; redis: CounterStore | null };
  /**
   * Response caches that outlive config snapshots (the cache plugin's memory zones, Redis zones
   * and requests in flight), made by the gateway; absent in a compile without one (validate).
   */
  caches?: CacheStores;
  /** Names of the consumer headers sent upstream (consumer_headers). */
  consumerHeaders: Readonly<{ id: string; name: string; groups: string; credential: string; anonymous: string }>;
}

export interface PluginDef<S extends TSchema = TSchema> {
  name: string;
  /** Higher runs first in request phases, last in response phases (Kong's numbers: auth ~1000-1500, limits ~900). */
  priority: number;
  description: string;
  schema: S;
  scopes: readonly Scope[];
  /** Answers CORS preflights: a route with such a plugin gets preflights routed as the method they ask about. */
  handlesPreflight?: boolean;
  /** Auth plugins: the schema of `consumers[].credentials[]` entries of `type: <name>` (besides `type`). */
  credential?: TSchema;
  /**
   * Runs once per config over all credentials of this type (schema-valid), whether or not the
   * plugin is bound anywhere: may rewrite them in place (basic-auth hashes plain passwords) and
   * returns problems by index into the list (duplicates...).
   */
  prepareCredentials?(list: { consumer: Consumer; credential: Record<string, unknown> }[]): { index: number; field?: string; message: string }[];
  /**
   * Work prepareCredentials would do on the event loop, done before an asynchronous compile
   * (a reload) off it: given the credentials of this type as the config has them (not checked
   * yet), it may remember results prepareCredentials then finds (basic-auth: the scrypt hashes
   * of plain passwords, ~250 ms of CPU each).
   */
  precomputeCredentials?(list: readonly unknown[]): Promise<void>;
  /**
   * Semantic checks beyond the schema: messages for the binding's config, or for one of its
   * fields (`path` inside `config`: the error names that field and its line).
   */
  check?(config: Static<S>, deps: PluginDeps): (string | { path: readonly (string | number)[]; message: string })[];
  create(config: Static<S>, deps: PluginDeps): PluginInstance;
}

export function definePlugin<S extends TSchema>(def: PluginDef<S>): PluginDef<S> {
  return def;
}
