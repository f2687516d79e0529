/**
 * The resources by name, and validation errors told in the API's terms: a path under the
 * item being written is given relative to the body (`paths[0]`); any other names the
 * resource it is in (`routes/orders-api.paths[0]`, `consumers/acme/credentials/acme%2Fkey-auth%2F1.key`).
 */
import { formatPath, type PathSegment } from '../config/errors.js';
import type { FieldError } from './errors.js';
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

/** Parses a formatted path (`services[0].routes[1]["a b"]`); null when it is not one. */
export function parsePath(text: string): PathSegment[] | null {
  if (text === '(root)' || text === '') return [];
  const out: PathSegment[] = [];
  const re = /(?:^|\.)([A-Za-z_$][A-Za-z0-9_$-]*)|\[([0-9]+)\]|\[("(?:[^"\\]|\\.)*")\]/y;
  let i = 0;
  while (i < text.length) {
    re.lastIndex = i;
    const m = re.exec(text);
    if (!m) return null;
    if (m[1] !== undefined) out.push(m[1]);
    else if (m[2] !== undefined) out.push(Number(m[2]));
    else {
      try {
        out.push(JSON.parse(m[3]!) as string);
      } catch {
        return null;
      }
    }
    i = re.lastIndex;
  }
  return out;
}

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
  if (item) {
    const at = item.coll === upstreams ? item.at.slice(0, 2) : item.at;
    if (startsWith(path, at)) {
      let rel = path.slice(at.length);
      if (item.coll.relative) rel = item.coll.relative(rel);
      return rel.length ? formatPath(rel) : '(root)';
    }
  }
  const all = index ?? locate(doc);
  let best: Located | undefined;
  for (const l of all) if (startsWith(path, l.at) && (!best || l.at.length > best.at.length)) best = l;
  if (!best) return formatPath(path);
  const rel = path.slice(best.at.length);
  const field = fieldPath(rel);
  return field ? `${best.label}${field.startsWith('[') ? '' : '.'}${field}` : best.label;
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
    const message = String(e.message).replace(DOC_PATH, (m) => {
      const p = parsePath(m);
      return p === null ? m : describe(doc, p, undefined, index);
    });
    const key = `${path}\0${message}`;
    if (seen.has(key)) continue;
    seen.add(key);
    out.push({ path, message });
  }
  return out;
}
