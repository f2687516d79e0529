/**
 * The admin REST API under `/api/` (docs/admin-api.md): CRUD of the config document's
 * entities, export / import of the whole document, revisions and rollback, the OpenAPI
 * document. `createApiHandler(deps)` answers every request whose path starts with `/api/`;
 * the admin listener mounts it (its own token check does not apply: this one checks roles).
 *
 * Every write is one store write: the change function reads the current document, applies
 * the request to a copy, validates the whole result with `deps.validate` (the same schema and
 * compile as the config file) and returns it; anything wrong aborts the write (nothing is
 * partially applied). Preconditions (If-Match) are checked inside the change function, against
 * the head revision the store locked for the write and the item as it is there, so they hold
 * for the document actually written: the list matches (RFC 9110 §13.1.1) when any of its tags
 * does — a revision tag ("r12") when the config is at that revision, an item's ETag when the
 * item is unchanged. A write that loses a race without If-Match is retried.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { randomUUID } from 'node:crypto';
import { Document as YamlDocument, visit as yamlVisit } from 'yaml';
import type { Logger } from '../core/log.js';
import { problemBody, PROBLEMS, type ProblemCode } from '../core/problem.js';
import type { PathSegment } from '../config/errors.js';
import { RevisionConflict, type ConfigDocument, type ConfigStore, type StoredConfig } from '../config/stores/types.js';
import { ApiError, invalid, parsePath, pointerOf, type FieldError } from './errors.js';
import { authenticate, authorizationOf, authorize, type ApiToken, type AuthFailures, type Caller } from './auth.js';
import { ACCEPT_PATCH, DEFAULT_MAX_BODY, checkMediaType, parseJson, parseYaml, readBody, type LineOf } from './body.js';
import { allowed, route, type Endpoint } from './router.js';
import { bodyTag, canonicalJson, etagKey, itemTag, noneMatch, parseIfMatch, revisionTag, splitTags, type Precondition } from './etag.js';
import { findEntry, requireObject, type Collection, type Entry } from './collection.js';
import { COLLECTIONS, apiErrors } from './resources.js';
import { mergePatch } from './merge-patch.js';
import { DOCUMENT_ORDER, NODE_LOCAL_KEYS, isObj, samePath, type Obj } from './document.js';
import { MASK, MAX_PLAIN_PASSWORDS, hashPlainPasswords, maskSecrets, plainPasswordCost, plainPasswordCount, restoreMasked, restoreSecrets, stripSecrets } from './secrets.js';
import { configChanges, unifiedDiff } from './diff.js';
import { openApiDocument } from './openapi.js';
import { approveDeveloper, awaitsAdmin, keepDevelopers, listDevelopers, rejectDeveloper } from './developers.js';

export type ValidationResult = { ok: true } | { ok: false; errors: { path: string | readonly PathSegment[]; message: string }[] };

export interface ApiDeps {
  store: ConfigStore;
  /**
   * Validates a whole document as the gateway would run it (merged with the node's own
   * config; the same schema and compile as the file). Gets a copy it may change. Must not
   * substitute `${VAR}`: values are stored as given.
   */
  validate(document: ConfigDocument): ValidationResult | Promise<ValidationResult>;
  /** The admin tokens (a function: read on every request, so a reload takes effect). Empty: no auth. */
  tokens: readonly ApiToken[] | (() => readonly ApiToken[]);
  log: Pick<Logger, 'info' | 'warn' | 'error'>;
  /** Where the API is mounted (default /api). */
  base?: string;
  /** Largest request body (default 8 MB). */
  maxBodyBytes?: number;
  /**
   * After every write, before the answer: e.g. the node applies the new revision, so a client
   * that gets the answer finds its change live on this node (read your writes). A failure is
   * logged, not answered (the write is committed).
   */
  onWritten?(stored: StoredConfig): Promise<unknown>;
  /** How long a write's answer waits for onWritten (default 30 s): past it the write (committed) is answered, and the wait logged. */
  applyWaitMs?: number;
  /**
   * The caller a request's console session stands for (undefined: none, so the bearer token
   * decides); throws an ApiError (403) for a change without the session's CSRF token.
   */
  sessionCaller?(req: IncomingMessage, method: string): Caller | undefined;
  /** Wrong tokens per client (shared with the rest of the admin listener and the console's sign-in): 429 past the limit. */
  failures?: AuthFailures;
}

export type ApiHandler = (req: IncomingMessage, res: ServerResponse) => Promise<void>;

interface Ctx {
  req: IncomingMessage;
  res: ServerResponse;
  method: string;
  path: string;
  query: URLSearchParams;
  caller: Caller;
  requestId: string;
  key: Buffer;
}

interface Staged {
  doc: Obj;
  /** Where the written item is in `doc` (null: none, e.g. a delete). */
  at: PathSegment[] | null;
  coll?: Collection;
  /** Errors are told in document terms (PUT /api/config, rollback). */
  documentTerms?: boolean;
  /** The document is not the request's body (a rollback): its errors point nowhere in it. */
  noBody?: boolean;
  /** A YAML body's lines (PUT /api/config): each error in it names its line too. */
  lineOf?: LineOf;
}

class Unchanged extends Error {
  constructor(readonly staged: Staged) {
    super('unchanged');
  }
}

const RETRIES = 8;
const LIST_LIMIT = 100;
const MAX_LIMIT = 1000;
const DEVELOPER_STATUSES: readonly string[] = ['unverified', 'pending-approval', 'active'];
const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;

const isPromise = <T>(v: T | Promise<T>): v is Promise<T> => typeof (v as { then?: unknown })?.then === 'function';
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function isRevisionConflict(err: unknown): err is RevisionConflict {
  return err instanceof RevisionConflict || (err as Error)?.name === 'RevisionConflict';
}

/** Top-level keys in export order. */
function ordered(doc: Obj): Obj {
  const out: Obj = {};
  for (const k of DOCUMENT_ORDER) if (doc[k] !== undefined) out[k] = doc[k];
  for (const [k, v] of Object.entries(doc)) if (!(k in out)) out[k] = v;
  return out;
}

/** Whether an Accept header allows application/json (absent: anything goes). */
function acceptsJson(accept: string | undefined): boolean {
  if (accept === undefined || accept.trim() === '') return true;
  for (const part of accept.split(',')) {
    const [t, ...params] = part.trim().toLowerCase().split(';');
    const qp = params.map((p) => p.trim()).find((p) => p.startsWith('q='));
    if (qp && !(Number(qp.slice(2)) > 0)) continue;
    const type = t!.trim();
    if (type === 'application/json' || type === 'application/*' || type === '*/*') return true;
  }
  return false;
}

export function toYaml(doc: Obj): string {
  const d = new YamlDocument(ordered(doc), { aliasDuplicateObjects: false });
  // A string that is one `${VAR}` reference is written quoted: read back unquoted (an export
  // applied again), it would take the type of the variable's value (typeUnquotedRefs).
  yamlVisit(d, {
    Scalar(key, node) {
      if (key !== 'key' && typeof node.value === 'string' && /^\$\{[^}]+\}$/.test(node.value)) node.type = 'QUOTE_DOUBLE';
    },
  });
  return d.toString({ lineWidth: 0 });
}

/** How long a write's answer waits for this node to apply it (onWritten). */
const APPLY_WAIT_MS = 30_000;

export function createApiHandler(deps: ApiDeps): ApiHandler {
  const base = deps.base ?? '/api';
  const maxBody = deps.maxBodyBytes ?? DEFAULT_MAX_BODY;
  let openapi: { body: string; tag: string } | null = null;

  // ---- responses ----

  function send(ctx: Ctx, status: number, body: string | null, type: string, headers: Record<string, string> = {}): void {
    const { req, res } = ctx;
    const etag = headers['etag'];
    // If-Match on a read (RFC 9110 §13.2.2: evaluated first, for every method): 412 unless it
    // holds — `*`, the answer's strong tag, or the revision the answer is of ("rN").
    if (status === 200 && etag && (ctx.method === 'GET' || ctx.method === 'HEAD') && req.headers['if-match'] !== undefined) {
      const pre = ifMatch(ctx)!;
      const revision = Number(headers['x-config-revision'] ?? /^"r([0-9]+)"$/.exec(etag)?.[1] ?? NaN);
      if (!pre.any && !pre.tags.includes(etag) && !pre.revisions.includes(revision)) {
        throw new ApiError('precondition-failed', `If-Match: the ${ctx.path} answered now has the tag ${etag}${Number.isFinite(revision) ? ` (revision ${revision})` : ''}`);
      }
    }
    if (status === 200 && etag && (ctx.method === 'GET' || ctx.method === 'HEAD') && noneMatch(req.headers['if-none-match'], etag)) {
      // (RFC 9110 §15.4.5: a 304 carries the ETag, Vary... a 200 would have had)
      res.writeHead(304, { 'cache-control': 'no-store', 'x-request-id': ctx.requestId, ...headers });
      res.end();
      return;
    }
    const out: Record<string, string | number> = { 'cache-control': 'no-store', 'x-request-id': ctx.requestId, ...headers };
    if (body !== null) {
      out['content-type'] = type;
      out['content-length'] = Buffer.byteLength(body);
    }
    res.writeHead(status, out);
    res.end(body === null || ctx.method === 'HEAD' ? undefined : body);
  }

  const sendJson = (ctx: Ctx, status: number, value: unknown, headers: Record<string, string> = {}) =>
    send(ctx, status, JSON.stringify(value), 'application/json', headers);

  function sendProblem(ctx: Ctx | { req: IncomingMessage; res: ServerResponse; method: string; requestId: string }, code: ProblemCode, detail: string, extra?: Record<string, unknown>, headers: Record<string, string> = {}): void {
    const { res } = ctx;
    if (res.headersSent || res.writableEnded) {
      res.destroy();
      return;
    }
    const body = problemBody(code, detail, ctx.requestId, extra);
    res.writeHead(PROBLEMS[code].status, {
      'content-type': 'application/problem+json',
      'content-length': Buffer.byteLength(body),
      'cache-control': 'no-store',
      'x-request-id': ctx.requestId,
      ...headers,
    });
    res.end(ctx.method === 'HEAD' ? undefined : body);
  }

  function fail(ctx: { req: IncomingMessage; res: ServerResponse; method: string; requestId: string }, err: unknown): void {
    if (err instanceof ApiError) return sendProblem(ctx, err.code, err.detail, err.extra, err.headers);
    const name = (err as Error)?.name;
    if (name === 'StoreUnavailable') return sendProblem(ctx, 'service-unavailable', `the config store is unavailable: ${(err as Error).message}`, undefined, { 'retry-after': '5' });
    if (name === 'StoreReadOnly') return sendProblem(ctx, 'read-only', `the config store does not take writes: ${(err as Error).message}`);
    if (isRevisionConflict(err)) return sendProblem(ctx, 'precondition-failed', err.message);
    deps.log.error({ err, request_id: ctx.requestId }, 'admin API request failed');
    sendProblem(ctx, 'internal-error', 'the admin API failed on this request (the log has the details)');
  }

  // ---- query parameters ----

  function checkQuery(ctx: Ctx, names: readonly string[]): void {
    for (const k of new Set(ctx.query.keys())) {
      if (!names.includes(k)) throw new ApiError('bad-request', `unknown query parameter "${k}"${names.length ? ` (this endpoint takes ${names.join(', ')})` : ''}`);
      if (ctx.query.getAll(k).length > 1) throw new ApiError('bad-request', `the query parameter "${k}" is given more than once`);
    }
  }

  function int(ctx: Ctx, name: string, def: number, min: number, max: number): number {
    const v = ctx.query.get(name);
    if (v === null) return def;
    if (!/^[0-9]{1,15}$/.test(v) || Number(v) < min || Number(v) > max) throw new ApiError('bad-request', `${name} must be an integer from ${min} to ${max}`);
    return Number(v);
  }

  function bool(ctx: Ctx, name: string): boolean {
    const v = ctx.query.get(name);
    if (v === null || v === 'false' || v === '0') return false;
    if (v === '' || v === 'true' || v === '1') return true;
    throw new ApiError('bad-request', `${name} must be true or false`);
  }

  function ifMatch(ctx: Ctx): Precondition | undefined {
    try {
      return parseIfMatch(ctx.req.headers['if-match']);
    } catch (err) {
      throw new ApiError('bad-request', `If-Match: ${(err as Error).message}`);
    }
  }

  /** A malformed If-None-Match on a write is a 400 (before anything is read or written). */
  function ifNoneMatchSyntax(ctx: Ctx): void {
    const h = ctx.req.headers['if-none-match'];
    if (h === undefined || h.trim() === '*') return;
    try {
      splitTags(h);
    } catch (err) {
      throw new ApiError('bad-request', `If-None-Match: ${(err as Error).message}`);
    }
  }

  /**
   * If-None-Match on a write (RFC 9110 §13.1.2): the write is not made (412) when the target
   * exists and the header is `*` (a PUT meant to create, not to overwrite), or one of its tags
   * matches the target's current one (weak comparison). `current` null: no target (it holds).
   */
  function checkIfNoneMatch(ctx: Ctx, current: string | null, what: string): void {
    const h = ctx.req.headers['if-none-match'];
    if (h === undefined || current === null || !noneMatch(h, current)) return;
    throw new ApiError('precondition-failed', h.trim() === '*' ? `If-None-Match: *: ${what} exists` : `If-None-Match: ${what} is still at ${current}`);
  }

  /**
   * Checks an If-Match list (RFC 9110 §13.1.1: it holds when *any* listed tag matches) against
   * the head revision a write was given (locked) and, for a write of an existing item, that
   * item's tag there (null: no item — a POST, or the whole config). `*` holds (whether the
   * target exists is the caller's). Throws the 412.
   */
  function checkIfMatch(pre: Precondition | undefined, revision: number, item: { tag: string; what: string } | null): void {
    if (!pre || pre.any) return;
    if (pre.revisions.includes(revision)) return;
    if (item && pre.tags.includes(item.tag)) return;
    const listed = pre.revisions.join(' or ');
    const atRevision = pre.revisions.length > 0 ? `the config changed: it is at revision ${revision}, not ${listed}` : '';
    const extra = pre.revisions.length > 0 ? { current_revision: revision } : undefined;
    if (pre.tags.length === 0) throw new ApiError('precondition-failed', `${atRevision} (If-Match)`, extra);
    const tagged = item ? `${item.what} has changed (its ETag is ${item.tag})` : 'a new item has no entity tag yet (use a revision tag "rN" or none)';
    throw new ApiError('precondition-failed', `If-Match: ${tagged}${atRevision ? `, and ${atRevision}` : ''}`, extra);
  }

  // ---- the store ----

  async function current(): Promise<{ doc: Obj; revision: number; stored: StoredConfig | null }> {
    const stored = await deps.store.current();
    return { doc: (stored?.document ?? {}) as Obj, revision: stored?.revision ?? 0, stored };
  }

  /** Validation errors in API terms, pointing into the request body where they are in it (give them to invalid(..., false)). */
  function errorsOf(staged: Staged, errors: readonly { path: string | readonly PathSegment[]; message: string }[]): FieldError[] {
    if (staged.documentTerms) {
      return errors.map((e) => {
        const path = typeof e.path === 'string' ? e.path : e.path.map((s) => (typeof s === 'number' ? `[${s}]` : `.${s}`)).join('').replace(/^\./, '');
        const segs = staged.noBody ? null : typeof e.path === 'string' ? parsePath(e.path) : e.path;
        if (segs === null) return { path, message: String(e.message) };
        const line = segs.length > 0 ? staged.lineOf?.(segs) : undefined;
        return line === undefined ? { path, message: String(e.message), pointer: pointerOf(segs) } : { path, message: String(e.message), pointer: pointerOf(segs), line };
      });
    }
    return apiErrors(staged.doc, errors, staged.at && staged.coll ? { at: staged.at, coll: staged.coll } : undefined);
  }

  function runValidate(doc: Obj): ValidationResult | Promise<ValidationResult> {
    const asResult = (err: unknown): ValidationResult => {
      const issues = (err as { issues?: unknown })?.issues;
      if (Array.isArray(issues)) return { ok: false, errors: issues as { path: string; message: string }[] };
      throw err;
    };
    try {
      const r = deps.validate(structuredClone(doc));
      return isPromise(r) ? r.catch(asResult) : r;
    } catch (err) {
      return asResult(err);
    }
  }

  /**
   * One store write: `stage` builds the next document from the current one and its revision
   * (throws to abort: a precondition, a bad request), it is validated, and written. A lost race
   * (another writer came first) is tried again.
   */
  async function commit(ctx: Ctx, action: string, stage: (current: Obj | null, revision: number) => Staged, opts: { skipUnchanged?: boolean } = {}): Promise<{ stored: StoredConfig | null; staged: Staged }> {
    let staged: Staged | undefined;
    const change = (cur: ConfigDocument | null, revision: number): ConfigDocument | Promise<ConfigDocument> => {
      staged = undefined;
      const s = stage(cur === null ? null : (cur as Obj), revision);
      // A secret read as MASK and written back keeps its stored value (nothing else may say MASK).
      const unresolved = restoreMasked(s.doc, cur);
      if (unresolved.length) throw invalid(errorsOf(s, unresolved.map((p) => ({ path: p, message: `"${MASK}" stands for a stored secret, and none is stored here: give the value` }))), undefined, false);
      const checked = (): ConfigDocument | Promise<ConfigDocument> => {
        if (opts.skipUnchanged && canonicalJson(s.doc) === canonicalJson(cur ?? {})) throw new Unchanged(s);
        const done = (r: ValidationResult): ConfigDocument => {
          if (!r.ok) throw invalid(errorsOf(s, r.errors), undefined, false);
          staged = s;
          return s.doc;
        };
        const v = runValidate(s.doc);
        return isPromise(v) ? v.then(done) : done(v);
      };
      // No plain basic-auth password is stored (nor hashed by the validation's compile, on the event loop)
      return plainPasswordCount(s.doc) === 0 ? checked() : hashStaged(s.doc, cur as Obj | null).then(checked);
    };
    for (let attempt = 0; ; attempt++) {
      try {
        const stored = await deps.store.write({ actor: ctx.caller.name, action }, change);
        deps.log.info({ actor: ctx.caller.name, action, revision: stored.revision, request_id: ctx.requestId }, 'config written through the admin API');
        if (deps.onWritten) {
          // Bounded: an apply that hangs (a store read that never answers) must not hold the
          // answer to a write that is committed — the client would retry a write that was made.
          const applied = deps.onWritten(stored).then(() => true, (err: unknown) => {
            deps.log.error({ err: String(err), revision: stored.revision }, 'a written revision was not applied on this node');
            return true;
          });
          let timer: NodeJS.Timeout | undefined;
          const waited = await Promise.race([applied, new Promise<false>((r) => { timer = setTimeout(() => r(false), deps.applyWaitMs ?? APPLY_WAIT_MS); })]);
          clearTimeout(timer);
          if (!waited) deps.log.warn({ revision: stored.revision, waited_ms: deps.applyWaitMs ?? APPLY_WAIT_MS }, 'a written revision is not applied on this node yet: the write is answered (it is stored)');
        }
        return { stored, staged: staged! };
      } catch (err) {
        if (err instanceof Unchanged) return { stored: null, staged: err.staged };
        if (!isRevisionConflict(err)) throw err;
        if (attempt >= RETRIES) throw new ApiError('service-unavailable', 'the config kept changing under this write; try again', undefined, { 'retry-after': '1' });
        await sleep(2 + Math.random() * 10 * (attempt + 1));
      }
    }
  }

  const revisionHeader = (n: number): Record<string, string> => ({ 'x-config-revision': String(n) });

  /**
   * The plain basic-auth passwords of a document to be written, replaced by scrypt hashes on the
   * thread pool (the stored one kept where the password still verifies: hashPlainPasswords);
   * past MAX_PLAIN_PASSWORDS of them the write is refused (each is a scrypt run).
   */
  async function hashStaged(doc: Obj, cur: Obj | null): Promise<void> {
    if (plainPasswordCount(doc) === 0) return;
    // (counted are the scrypt runs: the plain passwords an older release stored, which this
    // node hashed when it compiled them, do not make every later write a 400)
    const n = plainPasswordCost(doc, cur);
    if (n > MAX_PLAIN_PASSWORDS) throw new ApiError('bad-request', `${n} basic-auth credentials give a plain password to hash or check (at most ${MAX_PLAIN_PASSWORDS} in one write, each is a scrypt run): give password_hash (npx turnpike hash-password) for the others`);
    await hashPlainPasswords(doc, cur);
  }

  // ---- resources ----

  function itemUrl(coll: Collection, id: string, parent: string | undefined): string {
    const enc = encodeURIComponent;
    if (coll.name === 'credentials') return `${base}/consumers/${enc(parent!)}/credentials/${enc(id)}`;
    if (coll.name === 'targets') return `${base}/upstreams/${enc(parent!)}/targets/${enc(id)}`;
    return `${base}/${coll.name}/${enc(id)}`;
  }

  function filterTags(entries: Entry[], spec: string | null): Entry[] {
    if (spec === null) return entries;
    const all = spec.includes(',');
    const any = spec.includes('/');
    if (all && any) throw new ApiError('bad-request', 'tags: give a,b (every tag) or a/b (any tag), not both');
    const wanted = spec.split(any ? '/' : ',').map((t) => t.trim()).filter(Boolean);
    if (wanted.length === 0) throw new ApiError('bad-request', 'tags: give at least one tag');
    return entries.filter((e) => (any ? wanted.some((t) => e.tags.includes(t)) : wanted.every((t) => e.tags.includes(t))));
  }

  async function list(ctx: Ctx, e: Extract<Endpoint, { kind: 'collection' }>): Promise<void> {
    const coll = COLLECTIONS[e.collection];
    checkQuery(ctx, ['limit', 'offset', 'tags', ...coll.filters]);
    const limit = int(ctx, 'limit', LIST_LIMIT, 1, MAX_LIMIT);
    const offset = int(ctx, 'offset', 0, 0, Number.MAX_SAFE_INTEGER);
    const { doc, revision } = await current();
    let entries = coll.list(doc, e.parent);
    for (const f of coll.filters) {
      const v = ctx.query.get(f);
      if (v !== null) entries = entries.filter((x) => x.attrs[f] === v || (v === '' && x.attrs[f] === undefined));
    }
    entries = filterTags(entries, ctx.query.get('tags'));
    const page = entries.slice(offset, offset + limit);
    let next: string | null = null;
    if (offset + limit < entries.length) {
      const q = new URLSearchParams(ctx.query);
      q.set('offset', String(offset + limit));
      q.set('limit', String(limit));
      next = `${ctx.path}?${q.toString()}`;
    }
    const body = JSON.stringify({ data: page.map((x) => maskSecrets(x.view)), total: entries.length, offset, limit, next });
    send(ctx, 200, body, 'application/json', { etag: bodyTag(body), ...revisionHeader(revision) });
  }

  async function getItem(ctx: Ctx, e: Extract<Endpoint, { kind: 'item' }>): Promise<void> {
    checkQuery(ctx, []);
    const coll = COLLECTIONS[e.collection];
    const { doc, revision } = await current();
    const entry = findEntry(coll.list(doc, e.parent), e.id, coll.one);
    sendJson(ctx, 200, maskSecrets(entry.view), { etag: itemTag(ctx.key, entry.tagged), ...revisionHeader(revision) });
  }

  async function writeItem(ctx: Ctx, e: Endpoint & { kind: 'collection' | 'item' }): Promise<void> {
    const coll = COLLECTIONS[e.collection];
    const op = ctx.method as 'POST' | 'PUT' | 'PATCH' | 'DELETE';
    checkQuery(ctx, op === 'DELETE' ? ['cascade'] : []);
    const cascade = op === 'DELETE' && bool(ctx, 'cascade');
    const pre = ifMatch(ctx);
    ifNoneMatchSyntax(ctx);
    let body: Obj | undefined;
    if (op !== 'DELETE') {
      checkMediaType(ctx.req.headers['content-type'], op === 'PATCH' ? ['merge-patch', 'json'] : ['json']);
      body = requireObject(parseJson(await readBody(ctx.req, maxBody)), op === 'PATCH' ? `merge patch of a ${coll.one}` : coll.one);
      if (coll.prepare) body = await coll.prepare(body, op as 'POST' | 'PUT' | 'PATCH');
    }
    const id = e.kind === 'item' ? e.id : undefined;
    const stage = (cur: Obj | null, revision: number): Staged => {
      const doc = structuredClone(cur ?? {});
      let entry: Entry | undefined;
      if (id !== undefined) {
        try {
          entry = findEntry(coll.list(doc, e.parent), id, coll.one);
        } catch (err) {
          if (pre && err instanceof ApiError && err.code === 'not-found') throw new ApiError('precondition-failed', `If-Match: ${err.detail}`);
          throw err;
        }
        checkIfMatch(pre, revision, pre && pre.tags.length > 0 ? { tag: itemTag(ctx.key, entry.tagged), what: `the ${coll.one} "${entry.name}"` } : null);
        checkIfNoneMatch(ctx, itemTag(ctx.key, entry.tagged), `the ${coll.one} "${entry.name}"`);
      } else {
        checkIfMatch(pre, revision, null);
      }
      let at: PathSegment[] | null = null;
      if (op === 'POST') at = coll.create(doc, body!, e.parent);
      else if (op === 'PUT') at = coll.replace(doc, entry!, body!, e.parent);
      else if (op === 'PATCH') {
        const merged = mergePatch(coll.patchBase ? coll.patchBase(doc, entry!, e.parent) : entry!.view, body);
        at = coll.replace(doc, entry!, requireObject(merged, coll.one), e.parent);
      } else coll.remove(doc, entry!, { cascade }, e.parent);
      return { doc, at, coll };
    };
    const action = `${op} ${ctx.path}`;
    const { stored, staged } = await commit(ctx, action, stage, { skipUnchanged: op === 'PUT' || op === 'PATCH' });
    const revision = stored?.revision ?? (await current()).revision;
    if (op === 'DELETE') {
      send(ctx, 204, null, '', revisionHeader(revision));
      return;
    }
    const after = coll.list(staged.doc, e.parent).find((x) => samePath(x.at, staged.at!));
    if (!after) throw new Error(`the ${coll.one} written is not where it was put (${JSON.stringify(staged.at)})`);
    const headers: Record<string, string> = { etag: itemTag(ctx.key, after.tagged), ...revisionHeader(revision) };
    if (op === 'POST') headers['location'] = itemUrl(coll, after.id, e.parent);
    else if (after.id !== id) headers['content-location'] = itemUrl(coll, after.id, e.parent);
    sendJson(ctx, op === 'POST' ? 201 : 200, maskSecrets(after.view), headers);
  }

  // ---- the whole document ----

  /** YAML unless the client prefers JSON (Accept) or says ?format=. */
  function wantsJson(ctx: Ctx, preferJson: boolean): boolean {
    const f = ctx.query.get('format');
    if (f !== null) {
      if (f !== 'json' && f !== 'yaml') throw new ApiError('bad-request', 'format is json or yaml');
      return f === 'json';
    }
    const accept = ctx.req.headers.accept;
    if (!accept) return preferJson;
    let best: { json: boolean; q: number } | null = null;
    for (const part of accept.split(',')) {
      const [t, ...params] = part.trim().toLowerCase().split(';');
      const qp = params.map((p) => p.trim()).find((p) => p.startsWith('q='));
      const q = qp ? Number(qp.slice(2)) : 1;
      if (!(q > 0)) continue;
      let json: boolean | null = null;
      if (t === 'application/json') json = true;
      else if (t === 'application/yaml' || t === 'application/x-yaml' || t === 'text/yaml' || t === 'text/x-yaml') json = false;
      else if (t === '*/*' || t === 'application/*') json = preferJson;
      else if (t === 'text/*') json = false;
      if (json !== null && (!best || q > best.q)) best = { json, q };
    }
    if (!best) throw new ApiError('not-acceptable', 'this endpoint answers application/yaml or application/json');
    return best.json;
  }

  function secretsWanted(ctx: Ctx): boolean {
    const want = bool(ctx, 'secrets');
    if (want && ctx.caller.role !== 'admin') throw new ApiError('forbidden', `the token "${ctx.caller.name}" is read-only: secrets need an admin token`);
    return want;
  }

  function sendDocument(ctx: Ctx, doc: Obj, revision: number, json: boolean): void {
    const headers = { etag: revisionTag(revision), vary: 'Accept', ...revisionHeader(revision) };
    if (json) send(ctx, 200, JSON.stringify(ordered(doc), null, 2) + '\n', 'application/json', headers);
    else send(ctx, 200, toYaml(doc), 'application/yaml', headers);
  }

  async function getConfig(ctx: Ctx): Promise<void> {
    checkQuery(ctx, ['secrets', 'format']);
    const json = wantsJson(ctx, false);
    const secrets = secretsWanted(ctx);
    const { doc, revision } = await current();
    sendDocument(ctx, secrets ? doc : maskSecrets(stripSecrets(doc)), revision, json);
  }

  /** A config body (YAML or JSON) as a document: a mapping without node-local keys. */
  async function readDocument(ctx: Ctx): Promise<{ doc: Obj; lineOf?: LineOf }> {
    const kind = checkMediaType(ctx.req.headers['content-type'], ['yaml', 'json']);
    const buf = await readBody(ctx.req, maxBody);
    const located: { lineOf?: LineOf } = {};
    const value = kind === 'json' ? parseJson(buf) : parseYaml(buf, located);
    if (!isObj(value)) throw new ApiError('bad-request', 'the config must be a mapping (key: value) at the top level');
    const doc = { ...value };
    delete doc['$schema'];
    const local = Object.keys(doc).filter((k) => NODE_LOCAL_KEYS.includes(k));
    if (local.length) {
      throw invalid(local.map((k) => {
        const line = located.lineOf?.([k]);
        const e = { path: k, message: 'is node-local: it is set in the node\'s --config file, not in the stored document' };
        return line === undefined ? e : { ...e, line };
      }));
    }
    return { doc, lineOf: located.lineOf };
  }

  function diffOf(before: Obj, after: Obj, labels: [string, string]) {
    return { changes: configChanges(before, after), diff: unifiedDiff(toYaml(maskSecrets(stripSecrets(before))), toYaml(maskSecrets(stripSecrets(after))), labels) };
  }

  async function putConfig(ctx: Ctx): Promise<void> {
    checkQuery(ctx, ['dry_run']);
    const dryRun = bool(ctx, 'dry_run');
    const pre = ifMatch(ctx);
    ifNoneMatchSyntax(ctx);
    const { doc: next, lineOf } = await readDocument(ctx);
    if (pre && (pre.tags.length > 0 && pre.revisions.length === 0)) throw new ApiError('precondition-failed', 'If-Match: the config is tagged by its revision ("rN")');
    const stage = (cur: Obj | null): Staged => {
      const doc = structuredClone(next);
      restoreSecrets(doc, cur);
      keepDevelopers(doc, cur, 'put');
      return { doc, at: null, documentTerms: true, lineOf };
    };
    // If-Match: * holds only when the config has a current revision (RFC 9110 §13.1.1)
    const configExists = (revision: number) => {
      if (pre?.any && revision === 0) throw new ApiError('precondition-failed', 'If-Match: *: the config has no revision yet (If-None-Match: * creates it)');
    };
    if (dryRun) {
      const { doc, revision } = await current();
      configExists(revision);
      checkIfMatch(pre, revision, null);
      checkIfNoneMatch(ctx, revision > 0 ? revisionTag(revision) : null, 'the config');
      const s = stage(doc);
      await hashStaged(s.doc, doc);
      const v = await runValidate(s.doc);
      if (!v.ok) throw invalid(errorsOf(s, v.errors), undefined, false);
      const d = diffOf(doc, s.doc, [`revision ${revision}`, 'proposed']);
      sendJson(ctx, 200, { dry_run: true, valid: true, revision, changed: d.diff !== '' || canonicalJson(doc) !== canonicalJson(s.doc), ...d }, revisionHeader(revision));
      return;
    }
    let before: Obj = {};
    const { stored, staged } = await commit(ctx, `PUT ${ctx.path}`, (cur, revision) => {
      configExists(revision);
      checkIfMatch(pre, revision, null);
      checkIfNoneMatch(ctx, revision > 0 ? revisionTag(revision) : null, 'the config');
      before = cur ?? {};
      return stage(cur);
    }, { skipUnchanged: true });
    if (!stored) {
      const { revision } = await current();
      sendJson(ctx, 200, { revision, changed: false }, { etag: revisionTag(revision), ...revisionHeader(revision) });
      return;
    }
    sendJson(ctx, 200, { revision: stored.revision, changed: true, changes: configChanges(before, staged.doc) }, { etag: revisionTag(stored.revision), ...revisionHeader(stored.revision) });
  }

  // ---- revisions ----

  async function listRevisions(ctx: Ctx): Promise<void> {
    checkQuery(ctx, ['limit', 'before']);
    const limit = int(ctx, 'limit', 50, 1, MAX_LIMIT);
    const beforeQ = ctx.query.get('before');
    const before = beforeQ === null ? undefined : int(ctx, 'before', 0, 1, Number.MAX_SAFE_INTEGER);
    const data = await deps.store.history(limit, before);
    const last = data[data.length - 1];
    const next = data.length === limit && last && last.revision > 1 ? `${base}/revisions?limit=${limit}&before=${last.revision}` : null;
    const body = JSON.stringify({ data: data.map((r) => ({ revision: r.revision, at: r.at, actor: r.actor, action: r.action })), next });
    send(ctx, 200, body, 'application/json', { etag: bodyTag(body) });
  }

  async function getRevision(ctx: Ctx, n: number): Promise<void> {
    checkQuery(ctx, ['secrets', 'format']);
    const json = wantsJson(ctx, true);
    const secrets = secretsWanted(ctx);
    const r = await deps.store.revision(n);
    if (!r) throw new ApiError('not-found', `revision ${n} does not exist`);
    const doc = secrets ? (r.document as Obj) : maskSecrets(stripSecrets(r.document as Obj));
    if (!json) return sendDocument(ctx, doc, r.revision, false);
    sendJson(ctx, 200, { revision: r.revision, at: r.at, actor: r.actor, action: r.action, document: ordered(doc) }, { etag: revisionTag(r.revision), vary: 'Accept' });
  }

  async function rollback(ctx: Ctx, n: number): Promise<void> {
    checkQuery(ctx, ['dry_run']);
    const dryRun = bool(ctx, 'dry_run');
    const pre = ifMatch(ctx);
    if (pre && pre.tags.length > 0 && pre.revisions.length === 0) throw new ApiError('precondition-failed', 'If-Match: the config is tagged by its revision ("rN")');
    const target = await deps.store.revision(n);
    if (!target) throw new ApiError('not-found', `revision ${n} does not exist`);
    const stage = (cur: Obj | null): Staged => {
      const doc = structuredClone(target.document as Obj);
      keepDevelopers(doc, cur, 'rollback');
      return { doc, at: null, documentTerms: true, noBody: true };
    };
    if (dryRun) {
      const { doc, revision } = await current();
      // (a dry run answers what the real one would: 412 when its precondition fails)
      checkIfMatch(pre, revision, null);
      const s = stage(doc);
      await hashStaged(s.doc, doc);
      const v = await runValidate(s.doc);
      if (!v.ok) throw invalid(errorsOf(s, v.errors), undefined, false);
      sendJson(ctx, 200, { dry_run: true, valid: true, revision, rolled_back_to: n, ...diffOf(doc, s.doc, [`revision ${revision}`, `revision ${n}`]) }, revisionHeader(revision));
      return;
    }
    let before: Obj = {};
    const { stored, staged } = await commit(ctx, `rollback to ${n}`, (cur, revision) => {
      checkIfMatch(pre, revision, null);
      before = cur ?? {};
      return stage(cur);
    });
    const rev = stored!.revision;
    sendJson(ctx, 201, { revision: rev, rolled_back_to: n, changes: configChanges(before, staged.doc) }, { location: `${base}/revisions/${rev}`, etag: revisionTag(rev), ...revisionHeader(rev) });
  }

  // ---- developers (the portal's accounts) ----

  async function developers(ctx: Ctx): Promise<void> {
    checkQuery(ctx, ['status', 'pending', 'limit', 'offset']);
    const status = ctx.query.get('status');
    if (status !== null && !DEVELOPER_STATUSES.includes(status)) throw new ApiError('bad-request', `status is one of ${DEVELOPER_STATUSES.join(', ')}`);
    const pending = bool(ctx, 'pending');
    // (paged as every list is: sign-ups are not bounded)
    const limit = int(ctx, 'limit', LIST_LIMIT, 1, MAX_LIMIT);
    const offset = int(ctx, 'offset', 0, 0, Number.MAX_SAFE_INTEGER);
    const { doc, revision } = await current();
    const all = listDevelopers(doc).filter((d) => (status === null || d.status === status) && (!pending || awaitsAdmin(d)));
    let next: string | null = null;
    if (offset + limit < all.length) {
      const q = new URLSearchParams(ctx.query);
      q.set('offset', String(offset + limit));
      q.set('limit', String(limit));
      next = `${ctx.path}?${q.toString()}`;
    }
    sendJson(ctx, 200, { data: all.slice(offset, offset + limit), total: all.length, offset, limit, next }, revisionHeader(revision));
  }

  async function decide(ctx: Ctx, name: string, decision: 'approve' | 'reject'): Promise<void> {
    checkQuery(ctx, []);
    // (If-Match "rN": decide only on what was read at that revision — a plan the developer
    // asked for since, a sign-up changed since, is a 412, not approved unseen)
    const pre = ifMatch(ctx);
    if (pre && pre.tags.length > 0 && pre.revisions.length === 0) throw new ApiError('precondition-failed', 'If-Match: developers are tagged by the config\'s revision ("rN")');
    let decided: string[] = [];
    const { stored, staged } = await commit(ctx, `developer ${name}: ${decision}`, (cur, revision) => {
      checkIfMatch(pre, revision, null);
      const doc = structuredClone(cur ?? {});
      decided = decision === 'approve' ? approveDeveloper(doc, name) : rejectDeveloper(doc, name);
      return { doc, at: null };
    });
    const after = listDevelopers(staged.doc).find((d) => d.consumer === name) ?? null;
    sendJson(ctx, 200, { [decision === 'approve' ? 'approved' : 'rejected']: decided, developer: after }, revisionHeader(stored!.revision));
  }

  // ---- dispatch ----

  async function handle(ctx: Ctx, endpoint: Endpoint): Promise<void> {
    const m = ctx.method === 'HEAD' ? 'GET' : ctx.method;
    // A read answered in JSON only (the config and a revision negotiate YAML too): 406 when
    // Accept rules JSON out (RFC 9110 §12.5.1), as GET /api/config does, not JSON regardless.
    if (m === 'GET' && endpoint.kind !== 'config' && endpoint.kind !== 'revision' && !acceptsJson(ctx.req.headers.accept)) {
      throw new ApiError('not-acceptable', `${ctx.path} answers application/json only`);
    }
    switch (endpoint.kind) {
      case 'openapi': {
        checkQuery(ctx, []);
        openapi ??= (() => {
          const body = JSON.stringify(openApiDocument(base));
          return { body, tag: bodyTag(body) };
        })();
        return send(ctx, 200, openapi.body, 'application/json', { etag: openapi.tag });
      }
      case 'config':
        return m === 'GET' ? getConfig(ctx) : putConfig(ctx);
      case 'revisions':
        return listRevisions(ctx);
      case 'revision':
        return getRevision(ctx, endpoint.n);
      case 'rollback':
        return rollback(ctx, endpoint.n);
      case 'developers':
        return developers(ctx);
      case 'developer-decision':
        return decide(ctx, endpoint.name, endpoint.decision);
      case 'collection':
        return m === 'GET' ? list(ctx, endpoint) : writeItem(ctx, endpoint);
      case 'item':
        return m === 'GET' ? getItem(ctx, endpoint) : writeItem(ctx, endpoint);
    }
  }

  return async (req, res) => {
    const given = req.headers['x-request-id'];
    const requestId = typeof given === 'string' && REQUEST_ID.test(given) ? given : randomUUID();
    const method = (req.method ?? 'GET').toUpperCase();
    const base0 = { req, res, method, requestId };
    try {
      let url: URL;
      try {
        url = new URL(req.url ?? '/', 'http://admin.invalid');
      } catch {
        throw new ApiError('bad-request', 'the request target is not a valid URL');
      }
      const tokens = typeof deps.tokens === 'function' ? deps.tokens() : deps.tokens;
      // A console session (cookie + CSRF token, src/console/) stands for its token when no Authorization is given.
      const authorization = tokens.length > 0 ? authorizationOf(req) : undefined;
      const caller = (authorization === undefined ? deps.sessionCaller?.(req, method) : undefined) ?? authenticate(authorization, tokens, deps.failures ? { failures: deps.failures, ip: deps.failures.clientOf(req) } : undefined);
      const endpoint = route(url.pathname, base);
      if (!endpoint) throw new ApiError('not-found', `no admin API endpoint ${url.pathname} (see ${base}/openapi.json)`);
      const allow = allowed(endpoint);
      if (method === 'OPTIONS') {
        res.writeHead(204, { allow: [...allow, 'OPTIONS'].join(', '), ...(allow.includes('PATCH') ? { 'accept-patch': ACCEPT_PATCH } : {}), 'cache-control': 'no-store', 'x-request-id': requestId });
        res.end();
        return;
      }
      if (!allow.includes(method)) {
        throw new ApiError('method-not-allowed', `${method} is not allowed on ${url.pathname} (allowed: ${allow.join(', ')})`, undefined, { allow: allow.join(', ') });
      }
      authorize(caller, method);
      const ctx: Ctx = { req, res, method, path: url.pathname, query: url.searchParams, caller, requestId, key: etagKey(tokens) };
      await handle(ctx, endpoint);
    } catch (err) {
      fail(base0, err);
    }
  };
}
