/**
 * /api/upstreams and /api/upstreams/{service}/targets.
 *
 * Every service has one upstream, addressed by the service's name (or the upstream's id):
 * `{id, name, service, targets, balancer?, hash_on?, healthcheck?}` — the service's
 * `upstream` block, or its `url` shorthand shown as one target. Writing an upstream writes the
 * service's `upstream` (and drops `url`); a single target without a weight or anything else
 * is kept as (or turned back into) the `url` shorthand when the service used it. Upstreams
 * are created and deleted with their service (POST / DELETE answer 405).
 *
 * Targets are `{id, url, weight?}`, addressed by id or URL; adding one to a `url` service
 * turns its shorthand into an upstream block.
 */
import type { PathSegment } from '../config/errors.js';
import { conflict, invalid, notFound } from './errors.js';
import { requireString, type Collection, type Entry } from './collection.js';
import { derivedId, isObj, items, listAt, omit, replaceKey, tagsOf, type Obj } from './document.js';

function upstreamOf(s: Obj): Obj {
  if (isObj(s['upstream'])) return s['upstream'];
  if (typeof s['url'] === 'string') return { targets: [{ url: s['url'] }] };
  return { targets: [] };
}

/** The service at `i` with `upstream` set to `up` (or the url shorthand when it fits). */
function withUpstream(s: Obj, up: Obj): Obj {
  const targets = Array.isArray(up['targets']) ? up['targets'] : undefined;
  const only = targets?.length === 1 && isObj(targets[0]) ? targets[0] : undefined;
  const shorthand = Object.keys(up).length === 1 && only !== undefined && Object.keys(only).length === 1 && typeof only['url'] === 'string';
  if (shorthand && s['upstream'] === undefined) return replaceKey(s, 'url', 'url', only['url']);
  if (s['url'] !== undefined) return replaceKey(s, 'url', 'upstream', up);
  return replaceKey(s, 'upstream', 'upstream', up);
}

function serviceIndex(doc: Obj, key: string): number {
  const list = items(doc['services']);
  let i = list.findIndex((s) => s['name'] === key);
  if (i < 0) i = list.findIndex((s) => derivedId('upstream', String(s['name'])) === key || derivedId('service', String(s['name'])) === key);
  if (i < 0) throw notFound(`upstream "${key}" (an upstream is addressed by its service's name)`);
  return i;
}

export const upstreams: Collection = {
  name: 'upstreams',
  one: 'upstream',
  filters: [],
  list(doc) {
    return items(doc['services']).map((s, i): Entry => {
      const name = String(s['name']);
      const id = derivedId('upstream', name);
      const view = { id, name, service: name, ...structuredClone(upstreamOf(s)) };
      return { id, name, view, tagged: view, at: ['services', i], tags: tagsOf(s), attrs: {} };
    });
  },
  create() {
    throw conflict('an upstream is created with its service (POST /api/services)');
  },
  replace(doc, entry, body) {
    const i = entry.at[1] as number;
    for (const k of ['name', 'service'] as const) {
      if (body[k] !== undefined && body[k] !== entry.name) throw invalid([{ path: k, message: `an upstream belongs to its service ("${entry.name}") and cannot move` }]);
    }
    const list = listAt(doc, 'services');
    list[i] = withUpstream(items(list)[i]!, omit(body, ['id', 'name', 'service']));
    return entry.at;
  },
  remove() {
    throw conflict('an upstream is deleted with its service (DELETE /api/services/NAME)');
  },
  relative(rel) {
    if (rel[0] === 'upstream') return rel.slice(1);
    if (rel[0] === 'url') return ['targets', 0, 'url', ...rel.slice(1)];
    return rel;
  },
};

function targetEntries(doc: Obj, parent: string): Entry[] {
  const i = serviceIndex(doc, parent);
  const s = items(doc['services'])[i]!;
  const shorthand = !isObj(s['upstream']) && typeof s['url'] === 'string';
  return items(upstreamOf(s)['targets']).map((t, ti): Entry => {
    const url = String(t['url']);
    const id = derivedId('target', url);
    const view = { id, ...t };
    const at: PathSegment[] = shorthand ? ['services', i, 'url'] : ['services', i, 'upstream', 'targets', ti];
    return { id, name: url, view, tagged: view, at, tags: [], attrs: {} };
  });
}

/** The service's targets as a list to edit, and a function that writes them back. */
function editTargets(doc: Obj, parent: string): { targets: unknown[]; commit(): PathSegment[]; service: number } {
  const i = serviceIndex(doc, parent);
  const list = listAt(doc, 'services');
  const s = items(list)[i]!;
  const up = structuredClone(upstreamOf(s));
  const targets = listAt(up, 'targets');
  return {
    targets,
    service: i,
    commit() {
      list[i] = withUpstream(s, up);
      return isObj((list[i] as Obj)['upstream']) ? ['services', i, 'upstream', 'targets'] : ['services', i, 'url'];
    },
  };
}

export const targets: Collection = {
  name: 'targets',
  one: 'target',
  filters: [],
  parentKind: 'upstream',
  list: (doc, parent) => targetEntries(doc, parent!),
  create(doc, body, parent) {
    const url = requireString(body, 'url');
    const e = editTargets(doc, parent!);
    if (items(e.targets).some((t) => t['url'] === url)) throw conflict(`the target ${url} exists (give it a weight instead)`);
    e.targets.push(omit(body, ['id']));
    const base = e.commit();
    return base[base.length - 1] === 'url' ? base : [...base, e.targets.length - 1];
  },
  replace(doc, entry, body, parent) {
    const e = editTargets(doc, parent!);
    const ti = items(e.targets).findIndex((t) => t['url'] === entry.name);
    const next = omit(body, ['id']);
    if (next['url'] === undefined) next['url'] = entry.name;
    if (next['url'] !== entry.name && items(e.targets).some((t) => t['url'] === next['url'])) throw conflict(`the target ${String(next['url'])} exists`);
    e.targets[ti] = { url: next['url'], ...next };
    const base = e.commit();
    return base[base.length - 1] === 'url' ? base : [...base, ti];
  },
  remove(doc, entry, _opts, parent) {
    const e = editTargets(doc, parent!);
    e.targets.splice(items(e.targets).findIndex((t) => t['url'] === entry.name), 1);
    e.commit();
  },
  relative(rel) {
    return rel[0] === undefined ? ['url'] : rel;
  },
};

/** Whether `key` names a service's upstream (for the targets' parent check). */
export function upstreamExists(doc: Obj, key: string): boolean {
  try {
    serviceIndex(doc, key);
    return true;
  } catch {
    return false;
  }
}
