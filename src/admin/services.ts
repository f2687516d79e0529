/**
 * /api/services and /api/routes.
 *
 * A service is shown without its routes and plugins (they are /api/routes?service=NAME and
 * /api/plugins?service=NAME); a body may still carry `routes` / `plugins` to set them in the
 * same write (PUT / PATCH without them keep the existing ones). Deleting a service that has
 * routes is a 409 unless ?cascade=true.
 *
 * Routes are nested under their service in the document; the API flattens them: a route
 * names its service with `service: NAME`. A route without `service` but with `compose` is a
 * top-level composing route. A PUT that changes `service` moves the route. Routes created
 * through the API need a name (a route of the file without one goes by `<service>.<index>`,
 * as the compiler calls it).
 */
import type { PathSegment } from '../config/errors.js';
import { conflict, invalid } from './errors.js';
import { findEntry, requireString, type Collection, type Entry } from './collection.js';
import { derivedId, items, listAt, omit, routeName, tagsOf, type Obj } from './document.js';

const CHILDREN = ['routes', 'plugins'] as const;

export const services: Collection = {
  name: 'services',
  one: 'service',
  filters: [],
  list(doc) {
    return items(doc['services']).map((s, i): Entry => {
      const name = String(s['name']);
      const id = derivedId('service', name);
      const view = { id, ...omit(s, ['id', ...CHILDREN]) };
      return { id, name, view, tagged: view, at: ['services', i], tags: tagsOf(s), attrs: {} };
    });
  },
  create(doc, body) {
    const name = requireString(body, 'name');
    if (items(doc['services']).some((s) => s['name'] === name)) throw conflict(`a service named "${name}" exists`);
    const list = listAt(doc, 'services');
    list.push(omit(body, ['id']));
    return ['services', list.length - 1];
  },
  replace(doc, entry, body) {
    const i = entry.at[1] as number;
    const list = listAt(doc, 'services');
    const old = items(list)[i]!;
    let next = omit(body, ['id']);
    if (next['name'] === undefined) next = { name: old['name'], ...next };
    if (next['name'] !== old['name'] && items(list).some((s, j) => j !== i && s['name'] === next['name'])) {
      throw conflict(`a service named "${String(next['name'])}" exists`);
    }
    for (const k of CHILDREN) if (!(k in body) && old[k] !== undefined) next[k] = old[k];
    list[i] = next;
    return ['services', i];
  },
  remove(doc, entry, opts) {
    const i = entry.at[1] as number;
    const list = listAt(doc, 'services');
    const s = items(list)[i]!;
    const routes = items(s['routes']).map((r, ri) => routeName(s, r, ri));
    if (routes.length && !opts.cascade) {
      throw conflict(`the service "${entry.name}" has ${routes.length} route${routes.length > 1 ? 's' : ''} (${routes.join(', ')}): delete them first, or delete with ?cascade=true`, { routes });
    }
    list.splice(i, 1);
  },
};

interface RoutePlace {
  /** The service's index, or null for a top-level (composing) route. */
  service: number | null;
}

function routeEntries(doc: Obj): Entry[] {
  const out: Entry[] = [];
  items(doc['services']).forEach((s, si) => {
    items(s['routes']).forEach((r, ri) => {
      const name = routeName(s, r, ri);
      const id = derivedId('route', name);
      const view = { id, name, service: String(s['name']), ...omit(r, ['id', 'name', 'service', 'plugins']) };
      out.push({ id, name, view, tagged: view, at: ['services', si, 'routes', ri], tags: tagsOf(r), attrs: { service: String(s['name']) } });
    });
  });
  items(doc['routes']).forEach((r, ri) => {
    const name = String(r['name']);
    const id = derivedId('route', name);
    const view = { id, name, ...omit(r, ['id', 'name', 'plugins']) };
    out.push({ id, name, view, tagged: view, at: ['routes', ri], tags: tagsOf(r), attrs: { service: undefined } });
  });
  return out;
}

/** Where a route body goes: its `service` (by name or id), else top-level when it composes. */
function placeOf(doc: Obj, body: Obj, current: RoutePlace | null): RoutePlace {
  const svc = body['service'];
  if (svc === undefined || svc === null) {
    if (body['compose'] !== undefined) return { service: null };
    if (current) return current; // PUT / PATCH without service: it stays where it is
    throw invalid([{ path: 'service', message: 'is required (the service the route proxies to), unless the route composes (compose)' }]);
  }
  if (typeof svc !== 'string' || svc === '') throw invalid([{ path: 'service', message: 'must be the name (or id) of a service' }]);
  if (body['compose'] !== undefined) throw invalid([{ path: 'compose', message: 'a composing route has no service (leave service out)' }]);
  const list = items(doc['services']);
  let i = list.findIndex((s) => s['name'] === svc);
  if (i < 0) i = list.findIndex((s) => derivedId('service', String(s['name'])) === svc);
  if (i < 0) throw invalid([{ path: 'service', message: `unknown service "${svc}"` }]);
  return { service: i };
}

function targetList(doc: Obj, place: RoutePlace): unknown[] {
  return place.service === null ? listAt(doc, 'routes') : listAt(items(doc['services'])[place.service]!, 'routes');
}

const placeOfEntry = (e: Entry): RoutePlace => ({ service: e.at[0] === 'services' ? (e.at[1] as number) : null });

export const routes: Collection = {
  name: 'routes',
  one: 'route',
  filters: ['service'],
  list: routeEntries,
  create(doc, body) {
    const name = requireString(body, 'name', 'routes created through the API are named');
    if (routeEntries(doc).some((e) => e.name === name)) throw conflict(`a route named "${name}" exists`);
    const place = placeOf(doc, body, null);
    const list = targetList(doc, place);
    list.push(omit(body, ['id', 'service']));
    return place.service === null ? ['routes', list.length - 1] : ['services', place.service, 'routes', list.length - 1];
  },
  replace(doc, entry, body) {
    const before = placeOfEntry(entry);
    const place = placeOf(doc, body, before);
    const oldList = targetList(doc, before);
    const oi = entry.at[entry.at.length - 1] as number;
    const old = items(oldList)[oi]!;
    const name = body['name'] === undefined ? entry.name : body['name'];
    if (name !== entry.name && routeEntries(doc).some((e) => e.name === name)) throw conflict(`a route named "${String(name)}" exists`);
    const same = place.service === before.service;
    let next = omit(body, ['id', 'service', 'name']);
    // A route of the file without a name keeps going by <service>.<index> while it stays put.
    if (!(same && old['name'] === undefined && name === entry.name)) next = { name, ...next };
    if (!('plugins' in body) && old['plugins'] !== undefined) next['plugins'] = old['plugins'];
    if (same) {
      oldList[oi] = next;
      return entry.at;
    }
    oldList.splice(oi, 1);
    const list = targetList(doc, place);
    list.push(next);
    return place.service === null ? ['routes', list.length - 1] : ['services', place.service, 'routes', list.length - 1];
  },
  remove(doc, entry) {
    targetList(doc, placeOfEntry(entry)).splice(entry.at[entry.at.length - 1] as number, 1);
  },
};

/** The route entry `key` names (by name or id), for plugins bound to routes. */
export function findRoute(doc: Obj, key: string): Entry {
  return findEntry(routeEntries(doc), key, 'route');
}

/** The object of the route at `at` (for writes). */
export function routeObject(doc: Obj, at: readonly PathSegment[]): Obj {
  if (at[0] === 'routes') return items(doc['routes'])[at[1] as number]!;
  return items(items(doc['services'])[at[1] as number]!['routes'])[at[3] as number]!;
}
