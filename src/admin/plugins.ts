/**
 * /api/plugins: every plugin binding of the document in one list.
 *
 *   {id, name, enabled, config, scope, service?, route?, consumer?}
 *
 * | scope    | in the document                                  | id                                |
 * |----------|--------------------------------------------------|-----------------------------------|
 * | global   | plugins[]                                        | global:NAME                       |
 * | service  | services[].plugins[] (consumer: on the binding)  | service:SERVICE:NAME[@CONSUMER]   |
 * | route    | services[].routes[].plugins[], routes[].plugins[] | route:ROUTE:NAME[@CONSUMER]      |
 * | consumer | consumers[].plugins[]                            | consumer:CONSUMER:NAME            |
 *
 * Writing: `route` (by name or id) puts the binding on that route, else `service`, else
 * `consumer` alone makes it a consumer binding, else it is global; `consumer` beside a service
 * or route makes the binding apply to that consumer only (most specific wins). A PUT or PATCH
 * without any of service / route / consumer / scope leaves the binding where it is; with
 * them it may move (its id changes with its place). A plugin is bound at most once per
 * place and consumer (409). Plan bindings are part of /api/plans. `enabled` and `config` are
 * shown with their defaults (true, {}) and stored only when they say something.
 */
import type { PathSegment } from '../config/errors.js';
import { conflict, invalid } from './errors.js';
import { requireString, type Collection, type Entry } from './collection.js';
import { consumerId } from '../plugins/pipeline.js';
import { derivedId, isObj, items, listAt, omit, routeName, type Obj } from './document.js';
import { findRoute, routeObject } from './services.js';

type Scope = 'global' | 'service' | 'route' | 'consumer';

interface Place {
  scope: Scope;
  /** The owner's document path (empty for global). */
  owner: PathSegment[];
  ownerName?: string;
  service?: string;
  route?: string;
  /** The consumer filter of a service / route binding, or the owner of a consumer binding. */
  consumer?: string;
}

const idOf = (p: Place, plugin: string): string =>
  p.scope === 'global' ? `global:${plugin}` : p.scope === 'consumer' ? `consumer:${p.ownerName}:${plugin}` : `${p.scope}:${p.ownerName}:${plugin}${p.consumer !== undefined ? `@${p.consumer}` : ''}`;

function entriesOf(list: unknown, base: Omit<Place, 'consumer'>, seen: Map<string, number>, out: Entry[]): void {
  items(list).forEach((b, i) => {
    const name = String(b['name']);
    const filter = base.scope === 'consumer' ? base.ownerName : typeof b['consumer'] === 'string' ? b['consumer'] : undefined;
    const place: Place = { ...base, consumer: filter };
    let id = idOf(place, name);
    const n = (seen.get(id) ?? 0) + 1;
    seen.set(id, n);
    if (n > 1) id = `${id}#${n}`; // (an invalid document binds a plugin twice in one place)
    const view: Obj = {
      id,
      name,
      enabled: b['enabled'] ?? true,
      config: b['config'] ?? {},
      scope: place.scope,
      ...(place.service !== undefined ? { service: place.service } : {}),
      ...(place.route !== undefined ? { route: place.route } : {}),
      ...(filter !== undefined ? { consumer: filter } : {}),
      ...omit(b, ['name', 'enabled', 'config', 'consumer', 'id', 'scope', 'service', 'route']),
    };
    out.push({
      id, name, view, tagged: view, at: [...base.owner, 'plugins', i], tags: [],
      attrs: { name, scope: place.scope, service: place.service, route: place.route, consumer: filter },
    });
  });
}

function pluginEntries(doc: Obj): Entry[] {
  const out: Entry[] = [];
  const seen = new Map<string, number>();
  entriesOf(doc['plugins'], { scope: 'global', owner: [] }, seen, out);
  items(doc['services']).forEach((s, si) => {
    const service = String(s['name']);
    entriesOf(s['plugins'], { scope: 'service', owner: ['services', si], ownerName: service, service }, seen, out);
    items(s['routes']).forEach((r, ri) => {
      const route = routeName(s, r, ri);
      entriesOf(r['plugins'], { scope: 'route', owner: ['services', si, 'routes', ri], ownerName: route, service, route }, seen, out);
    });
  });
  items(doc['routes']).forEach((r, ri) => {
    const route = String(r['name']);
    entriesOf(r['plugins'], { scope: 'route', owner: ['routes', ri], ownerName: route, route }, seen, out);
  });
  items(doc['consumers']).forEach((c, ci) => {
    entriesOf(c['plugins'], { scope: 'consumer', owner: ['consumers', ci], ownerName: String(c['name']) }, seen, out);
  });
  return out;
}

const PLACEMENT = ['service', 'route', 'consumer', 'scope'] as const;

function str(body: Obj, field: string): string | undefined {
  const v = body[field];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'string' || v === '') throw invalid([{ path: field, message: 'must be a name (or id)' }]);
  return v;
}

/** Where a binding body goes (see the table above). */
function placeOf(doc: Obj, body: Obj): Place {
  const service = str(body, 'service');
  const route = str(body, 'route');
  const consumer = str(body, 'consumer');
  const scope = body['scope'];
  if (scope !== undefined && scope !== 'global' && scope !== 'service' && scope !== 'route' && scope !== 'consumer') {
    throw invalid([{ path: 'scope', message: 'is one of global, service, route, consumer' }]);
  }
  let place: Place;
  if (route !== undefined) {
    let r: Entry;
    try {
      r = findRoute(doc, route);
    } catch {
      throw invalid([{ path: 'route', message: `unknown route "${route}"` }]);
    }
    const svc = r.attrs['service'];
    if (service !== undefined && service !== svc && service !== derivedId('service', svc ?? '')) {
      throw invalid([{ path: 'service', message: `the route "${r.name}" belongs to ${svc === undefined ? 'no service (it composes)' : `the service "${svc}"`}` }]);
    }
    place = { scope: 'route', owner: r.at, ownerName: r.name, route: r.name, service: svc, consumer };
  } else if (service !== undefined) {
    const list = items(doc['services']);
    let si = list.findIndex((s) => s['name'] === service);
    if (si < 0) si = list.findIndex((s) => derivedId('service', String(s['name'])) === service);
    if (si < 0) throw invalid([{ path: 'service', message: `unknown service "${service}"` }]);
    const name = String(list[si]!['name']);
    place = { scope: 'service', owner: ['services', si], ownerName: name, service: name, consumer };
  } else if (consumer !== undefined) {
    const list = items(doc['consumers']);
    let ci = list.findIndex((c) => c['name'] === consumer);
    if (ci < 0) ci = list.findIndex((c) => (typeof c['id'] === 'string' ? c['id'] : consumerId(String(c['name']))) === consumer);
    if (ci < 0) throw invalid([{ path: 'consumer', message: `unknown consumer "${consumer}"` }]);
    const name = String(list[ci]!['name']);
    place = { scope: 'consumer', owner: ['consumers', ci], ownerName: name, consumer: name };
  } else {
    place = { scope: 'global', owner: [] };
  }
  if (scope !== undefined && scope !== place.scope) {
    throw invalid([{ path: 'scope', message: `a binding with ${place.scope === 'global' ? 'no service, route or consumer' : `this ${place.scope}`} is ${place.scope}, not ${String(scope)}` }]);
  }
  return place;
}

/** The binding as stored: defaults left out, the consumer filter on service / route bindings. */
function binding(body: Obj, place: Place): Obj {
  const b = omit(body, ['id', 'scope', 'service', 'route', 'consumer']);
  if (b['enabled'] === true) delete b['enabled'];
  if (isObj(b['config']) && Object.keys(b['config']).length === 0) delete b['config'];
  if ((place.scope === 'service' || place.scope === 'route') && place.consumer !== undefined) b['consumer'] = place.consumer;
  return b;
}

function ownerList(doc: Obj, place: Place): unknown[] {
  if (place.scope === 'global') return listAt(doc, 'plugins');
  if (place.scope === 'route') return listAt(routeObject(doc, place.owner), 'plugins');
  const [key, i] = place.owner as [string, number];
  return listAt(items(doc[key])[i]!, 'plugins');
}

const samePlace = (a: Place, b: Place) => a.owner.length === b.owner.length && a.owner.every((s, i) => s === b.owner[i]);

function placeOfEntry(e: Entry): Place {
  const owner = e.at.slice(0, -2);
  const v = e.view;
  return {
    scope: v['scope'] as Scope, owner, ownerName: v['scope'] === 'route' ? (v['route'] as string) : v['scope'] === 'service' ? (v['service'] as string) : (v['consumer'] as string | undefined),
    service: v['service'] as string | undefined, route: v['route'] as string | undefined, consumer: v['consumer'] as string | undefined,
  };
}

export const plugins: Collection = {
  name: 'plugins',
  one: 'plugin binding',
  filters: ['name', 'scope', 'service', 'route', 'consumer'],
  list: pluginEntries,
  create(doc, body) {
    const name = requireString(body, 'name', 'the plugin, e.g. rate-limit');
    const place = placeOf(doc, body);
    const id = idOf(place, name);
    if (pluginEntries(doc).some((e) => e.id === id)) throw conflict(`the plugin "${name}" is bound there already (${id})`, { id });
    const list = ownerList(doc, place);
    list.push(binding(body, place));
    return [...place.owner, 'plugins', list.length - 1];
  },
  replace(doc, entry, body) {
    const current = placeOfEntry(entry);
    const moves = PLACEMENT.some((k) => body[k] !== undefined);
    const place = moves ? placeOf(doc, body) : current;
    const name = body['name'] === undefined ? entry.name : requireString(body, 'name');
    const full = body['name'] === undefined ? { name, ...body } : body;
    const id = idOf(place, name);
    if (pluginEntries(doc).some((e) => e.id === id && !(e.at.length === entry.at.length && e.at.every((s, i) => s === entry.at[i])))) {
      throw conflict(`the plugin "${name}" is bound there already (${id})`, { id });
    }
    const oldList = ownerList(doc, current);
    const i = entry.at[entry.at.length - 1] as number;
    if (samePlace(place, current)) {
      oldList[i] = binding(full, place);
      return entry.at;
    }
    oldList.splice(i, 1);
    const list = ownerList(doc, place);
    list.push(binding(full, place));
    return [...place.owner, 'plugins', list.length - 1];
  },
  remove(doc, entry) {
    ownerList(doc, placeOfEntry(entry)).splice(entry.at[entry.at.length - 1] as number, 1);
  },
  patchBase(_doc, entry) {
    // with its placement: a patch that leaves service / route / consumer alone keeps it
    return omit(entry.view, ['id', 'scope']);
  },
};
