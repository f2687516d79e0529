/**
 * The resources by name, and validation errors told in the API's terms: a path under the
 * item being written is given relative to the body (`paths[0]`); any other names the
 * resource it is in (`routes/orders-api.paths[0]`, `consumers/acme/credentials/acme%2Fkey-auth%2F1.key`).
 */
import { formatPath, type PathSegment } from '../config/errors.js';
import { parsePath, pointerOf, type FieldError } from './errors.js';
import type { Collection, Entry } from './collection.js';
import type { CollectionName } from './router.js';
import { items, type Obj } from './document.js';
import { routes, services } from './services.js';
import { targets, upstreams } from './upstreams.js';
import { consumers, credentials, plans } from './consumers.js';
import { plugins } from './plugins.js';

export const COLLECTIONS: Readonly<Record<CollectionName, Collection>> = {
  services, routes, upstreams, targets, consumers, credentials, plugins, plans,
};

export { parsePath };

const startsWith = (p: readonly PathSegment[], prefix: readonly PathSegment[]) => prefix.length <= p.length && prefix.every((s, i) => p[i] === s);

interface Located { label: string; at: PathSegment[]; coll: Collection }

/** Every entry of the document with the label that names it in messages. */
function locate(doc: Obj): Located[] {
  const out: Located[] = [];
  const add = (coll: Collection, list: Entry[], prefix: string) => {
    for (const e of list) out.push({ label: `${prefix}/${encodeURIComponent(e.name)}`, at: e.at, coll });
  };
  const safe = (f: () => Entry[]) => {
    try {
      return f();
    } catch {
      return [];
    }
  };
  add(services, safe(() => services.list(doc)), 'services');
  add(routes, safe(() => routes.list(doc)), 'routes');
  add(consumers, safe(() => consumers.list(doc)), 'consumers');
  add(plans, safe(() => plans.list(doc)), 'plans');
  for (const e of safe(() => plugins.list(doc))) out.push({ label: `plugins/${encodeURIComponent(e.id)}`, at: e.at, coll: plugins });
  for (const c of items(doc['consumers'])) {
    const name = String(c['name']);
    for (const e of safe(() => credentials.list(doc, name))) out.push({ label: `consumers/${encodeURIComponent(name)}/credentials/${encodeURIComponent(e.id)}`, at: e.at, coll: credentials });
  }
  for (const e of safe(() => upstreams.list(doc))) out.push({ label: `upstreams/${encodeURIComponent(e.name)}`, at: [...e.at, 'upstream'], coll: upstreams });
  return out;
}

function fieldPath(rel: readonly PathSegment[]): string {
  return rel.length ? formatPath(rel) : '';
}

/**
 * The API's name for a document path: relative to the written item (`item`) when under it,
 * else `<collection>/<name>.<field>`, else the document path itself.
 */
export function describe(doc: Obj, path: readonly PathSegment[], item?: { at: readonly PathSegment[]; coll: Collection }, index?: Located[]): string {
  const own = item ? inItem(path, item) : null;
  if (own !== null) return own.length ? formatPath(own) : '(root)';
  const all = index ?? locate(doc);
  let best: Located | undefined;
  for (const l of all) if (startsWith(path, l.at) && (!best || l.at.length > best.at.length)) best = l;
  if (!best) return formatPath(path);
  const rel = path.slice(best.at.length);
  const field = fieldPath(rel);
  return field ? `${best.label}${field.startsWith('[') ? '' : '.'}${field}` : best.label;
}

/** A document path under the written item, relative to its body (null: elsewhere). */
function inItem(path: readonly PathSegment[], item: { at: readonly PathSegment[]; coll: Collection }): PathSegment[] | null {
  const at = item.coll === upstreams ? item.at.slice(0, 2) : item.at;
  if (!startsWith(path, at)) return null;
  const rel = path.slice(at.length);
  return item.coll.relative ? item.coll.relative(rel) : rel;
}

const DOC_PATH = /\b(?:services|routes|consumers|plugins|plans)(?:\[[0-9]+\]|\["(?:[^"\\]|\\.)*"\]|\.[A-Za-z_][A-Za-z0-9_-]*)+/g;

/**
 * Validation errors (document paths, as the validator gives them) in the API's terms; the
 * document paths inside messages ("also services[0]") are rewritten too.
 */
export function apiErrors(doc: Obj, errors: readonly { path: string | readonly PathSegment[]; message: string }[], item?: { at: readonly PathSegment[]; coll: Collection }): FieldError[] {
  const index = locate(doc);
  const seen = new Set<string>();
  const out: FieldError[] = [];
  for (const e of errors) {
    const segs = typeof e.path === 'string' ? parsePath(e.path) : [...e.path];
    const path = segs === null ? String(e.path) : describe(doc, segs, item, index);
    // (a field of the body written points into it, RFC 9457 §3; one elsewhere in the config does not)
    const rel = segs !== null && item ? inItem(segs, item) : null;
    const message = String(e.message).replace(DOC_PATH, (m) => {
      const p = parsePath(m);
      return p === null ? m : describe(doc, p, undefined, index);
    });
    const key = `${path}\0${message}`;
    if (seen.has(key)) continue;
    seen.add(key);
    out.push(rel === null ? { path, message } : { path, message, pointer: pointerOf(rel) });
  }
  return out;
}
