/**
 * What every resource of the admin API is: a view of part of the config document. A
 * collection lists its entries (each with its id, name, what GET shows, where it sits in the
 * document) and writes bodies back into a copy of the document. Writes throw ApiError
 * (404, 409, 400) and never touch the store: the caller validates the whole new document
 * and commits it in one store write.
 */
import type { PathSegment } from '../config/errors.js';
import { ApiError, conflict, invalid, notFound } from './errors.js';
import type { CollectionName } from './router.js';
import type { Obj } from './document.js';

export interface Entry {
  id: string;
  /** What the item is called (services, routes, consumers, plans: the name). */
  name: string;
  /** What GET answers. */
  view: Obj;
  /** What the item's ETag covers (the view; for credentials the stored object, secrets included). */
  tagged: unknown;
  /** Where the item sits in the document. */
  at: PathSegment[];
  tags: readonly string[];
  /** Values the list can be filtered by (`?service=orders`). */
  attrs: Readonly<Record<string, string | undefined>>;
}

export interface WriteOptions {
  /** DELETE ?cascade=true */
  cascade: boolean;
}

export interface Collection {
  name: CollectionName;
  /** Singular, for messages. */
  one: string;
  /** Query parameters that filter the list (besides limit, offset, tags). */
  filters: readonly string[];
  /** The parent's kind (credentials: consumers; targets: upstreams). */
  parentKind?: string;
  /** Entries in document order; throws 404 when the parent does not exist. */
  list(doc: Obj, parent?: string): Entry[];
  /** Adds the item to `doc`; returns where it landed. */
  create(doc: Obj, body: Obj, parent?: string): PathSegment[];
  /** Replaces the item in `doc`; returns where it is now. */
  replace(doc: Obj, entry: Entry, body: Obj, parent?: string): PathSegment[];
  remove(doc: Obj, entry: Entry, opts: WriteOptions, parent?: string): void;
  /** What a merge patch applies to (default: the view). */
  patchBase?(doc: Obj, entry: Entry, parent?: string): Obj;
  /** Error paths under the item, as the body names them (default: unchanged). */
  relative?(rel: PathSegment[]): PathSegment[];
  /** Rewrites a body before the write, outside the store's transaction (hashing passwords...). */
  prepare?(body: Obj, method: 'POST' | 'PUT' | 'PATCH'): Obj | Promise<Obj>;
}

/** The entry `key` names: its id, else its name; 404 when none, 409 when the name is ambiguous. */
export function findEntry(entries: readonly Entry[], key: string, what: string): Entry {
  const byId = entries.find((e) => e.id === key);
  if (byId) return byId;
  const byName = entries.filter((e) => e.name === key);
  if (byName.length === 1) return byName[0]!;
  if (byName.length > 1) throw conflict(`"${key}" names ${byName.length} ${what}s: use an id (${byName.map((e) => e.id).join(', ')})`, { ids: byName.map((e) => e.id) });
  throw notFound(`${what} "${key}"`);
}

/** The body's `field` as a non-empty string (400 otherwise). */
export function requireString(body: Obj, field: string, hint?: string): string {
  const v = body[field];
  if (v === undefined) throw invalid([{ path: field, message: `is required${hint ? ` (${hint})` : ''}` }]);
  if (typeof v !== 'string' || v === '') throw invalid([{ path: field, message: 'must be a non-empty string' }]);
  return v;
}

/** A body must be a JSON object. */
export function requireObject(body: unknown, what: string): Obj {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) {
    throw new ApiError('bad-request', `the body must be a JSON object (a ${what})`);
  }
  return body as Obj;
}
