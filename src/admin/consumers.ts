/**
 * /api/consumers, /api/consumers/{name}/credentials and /api/plans.
 *
 * A consumer is shown as `{id, name, groups?, plan?, tags?}` (its id: the configured one, or
 * the one the gateway derives from its name); its credentials and plugins are separate
 * resources, and a body may carry `credentials` / `plugins` to set them in the same write
 * (absent: kept). Deleting a consumer deletes its credentials and consumer plugins; a service
 * or route binding that names it (`consumer:`) makes the delete a 409 unless ?cascade=true,
 * which removes those bindings too.
 *
 * Credentials are write-only (see secrets.ts): GET shows `{id, type, username? | subject? |
 * subject_name?}`. A key-auth credential created without an `id` gets a random one, so that
 * its id stays put when other keys are deleted. PATCH merges into the stored credential (a
 * patch without the key keeps the key).
 *
 * Plans (the `plans` map of the document) are `{id, name, plugins?, services?, routes?,
 * description?}`; deleting a plan that consumers use is a 409 unless ?cascade=true (which
 * takes the plan off them).
 */
import { randomUUID } from 'node:crypto';
import { consumerId } from '../plugins/pipeline.js';
import { badRequest, conflict, invalid, notFound } from './errors.js';
import { requireString, type Collection, type Entry } from './collection.js';
import { NAME_PATTERN, assign, derivedId, isObj, items, listAt, omit, tagsOf, type Obj } from './document.js';
import { MAX_PLAIN_PASSWORDS, credentialIds, credentialView, hashCredentialAsync } from './secrets.js';

const CHILDREN = ['credentials', 'plugins'] as const;

/** Service and route bindings that name consumer `name` (`plugins/<where>` descriptions). */
function bindingsFor(doc: Obj, name: string): { list: unknown[]; index: number; where: string }[] {
  const out: { list: unknown[]; index: number; where: string }[] = [];
  const scan = (list: unknown, where: string) => {
    if (!Array.isArray(list)) return;
    list.forEach((b, index) => { if (isObj(b) && b['consumer'] === name) out.push({ list, index, where: `${where} ${String(b['name'])}` }); });
  };
  for (const s of items(doc['services'])) {
    scan(s['plugins'], `service ${String(s['name'])}:`);
    items(s['routes']).forEach((r, ri) => scan(r['plugins'], `route ${typeof r['name'] === 'string' ? r['name'] : `${String(s['name'])}.${ri}`}:`));
  }
  for (const r of items(doc['routes'])) scan(r['plugins'], `route ${String(r['name'])}:`);
  return out;
}

async function prepareConsumer(body: Obj): Promise<Obj> {
  if (!Array.isArray(body['credentials'])) return body;
  const plain = body['credentials'].filter((c) => isObj(c) && c['type'] === 'basic-auth' && typeof c['password'] === 'string').length;
  if (plain > MAX_PLAIN_PASSWORDS) throw badRequest(`${plain} basic-auth credentials give a plain password (at most ${MAX_PLAIN_PASSWORDS} in one write, each is hashed with scrypt): give password_hash (npx turnpike hash-password) for the others`);
  // (one at a time: hashCredentialAsync runs scrypt on the thread pool, which it leaves to others)
  const credentials: unknown[] = [];
  for (const c of body['credentials']) credentials.push(await prepareCredential(c));
  return { ...body, credentials };
}

async function prepareCredential(c: unknown): Promise<unknown> {
  const hashed = await hashCredentialAsync(c);
  if (isObj(hashed) && hashed['type'] === 'key-auth' && hashed['id'] === undefined) return { ...hashed, id: randomUUID() };
  return hashed;
}

/** The consumer's stored id, or nothing when it is the derived one. */
function idToStore(body: Obj, name: unknown): Obj {
  if (body['id'] !== undefined && typeof name === 'string' && body['id'] === consumerId(name)) return omit(body, ['id']);
  return body;
}

export const consumers: Collection = {
  name: 'consumers',
  one: 'consumer',
  filters: [],
  list(doc) {
    return items(doc['consumers']).map((c, i): Entry => {
      const name = String(c['name']);
      const id = typeof c['id'] === 'string' ? c['id'] : consumerId(name);
      const view = { id, name, ...omit(c, ['id', 'name', ...CHILDREN]) };
      return { id, name, view, tagged: view, at: ['consumers', i], tags: tagsOf(c), attrs: {} };
    });
  },
  create(doc, body) {
    const name = requireString(body, 'name');
    const existing = consumers.list(doc);
    if (existing.some((e) => e.name === name)) throw conflict(`a consumer named "${name}" exists`);
    const next = idToStore(body, name);
    const id = typeof next['id'] === 'string' ? next['id'] : consumerId(name);
    if (existing.some((e) => e.id === id)) throw conflict(`a consumer with the id "${id}" exists`);
    const list = listAt(doc, 'consumers');
    list.push(next);
    return ['consumers', list.length - 1];
  },
  replace(doc, entry, body) {
    const i = entry.at[1] as number;
    const list = listAt(doc, 'consumers');
    const old = items(list)[i]!;
    let next: Obj = body;
    if (next['name'] === undefined) next = { name: old['name'], ...next };
    const name = next['name'];
    const others = consumers.list(doc).filter((e) => e.at[1] !== i);
    if (others.some((e) => e.name === name)) throw conflict(`a consumer named "${String(name)}" exists`);
    // the id stays unless the body changes it (a rename keeps a derived id only if it was stored)
    if (next['id'] === undefined && old['id'] !== undefined) next = { ...next, id: old['id'] };
    next = idToStore(next, name);
    const id = typeof next['id'] === 'string' ? next['id'] : typeof name === 'string' ? consumerId(name) : '';
    if (others.some((e) => e.id === id)) throw conflict(`a consumer with the id "${id}" exists`);
    for (const k of CHILDREN) if (!(k in body) && old[k] !== undefined) next = { ...next, [k]: old[k] };
    list[i] = next;
    return ['consumers', i];
  },
  remove(doc, entry, opts) {
    const refs = bindingsFor(doc, entry.name);
    if (refs.length && !opts.cascade) {
      throw conflict(`plugin bindings name the consumer "${entry.name}" (${refs.map((r) => r.where).join('; ')}): remove them first, or delete with ?cascade=true`, { bindings: refs.map((r) => r.where) });
    }
    // from the last, so earlier indexes stay right
    for (const r of refs.sort((a, b) => b.index - a.index)) r.list.splice(r.index, 1);
    listAt(doc, 'consumers').splice(entry.at[1] as number, 1);
  },
  prepare: prepareConsumer,
};

function consumerIndex(doc: Obj, key: string): number {
  const list = consumers.list(doc);
  let e = list.find((x) => x.id === key);
  e ??= list.find((x) => x.name === key);
  if (!e) throw notFound(`consumer "${key}"`);
  return e.at[1] as number;
}

export const credentials: Collection = {
  name: 'credentials',
  one: 'credential',
  filters: ['type'],
  parentKind: 'consumer',
  list(doc, parent) {
    const ci = consumerIndex(doc, parent!);
    const c = items(doc['consumers'])[ci]!;
    const ids = credentialIds(c);
    return items(c['credentials']).map((cr, i): Entry => {
      const id = ids[i]!;
      return { id, name: id, view: credentialView(cr, id), tagged: cr, at: ['consumers', ci, 'credentials', i], tags: [], attrs: { type: String(cr['type']) } };
    });
  },
  create(doc, body, parent) {
    requireString(body, 'type', 'the auth plugin that checks it, e.g. key-auth');
    const ci = consumerIndex(doc, parent!);
    const c = items(doc['consumers'])[ci]!;
    const list = listAt(c, 'credentials');
    list.push(body);
    const ids = credentialIds(c);
    const id = ids[ids.length - 1]!;
    if (ids.slice(0, -1).includes(id)) throw conflict(`the consumer "${String(c['name'])}" has a credential "${id}"`);
    return ['consumers', ci, 'credentials', list.length - 1];
  },
  replace(doc, entry, body, parent) {
    const ci = consumerIndex(doc, parent!);
    const c = items(doc['consumers'])[ci]!;
    const list = listAt(c, 'credentials');
    const i = entry.at[3] as number;
    const old = items(list)[i]!;
    let next = body;
    if (next['type'] === undefined) next = { type: old['type'], ...next };
    if (next['type'] === 'key-auth') {
      if (next['id'] === undefined && old['id'] !== undefined) next = { ...next, id: old['id'] };
    } else if (next['id'] === entry.id) next = omit(next, ['id']); // only key-auth stores an id
    list[i] = next;
    const ids = credentialIds(c);
    if (ids.filter((x) => x === ids[i]).length > 1) throw conflict(`the consumer "${String(c['name'])}" has a credential "${ids[i]}"`);
    return entry.at;
  },
  remove(doc, entry, _opts, parent) {
    const ci = consumerIndex(doc, parent!);
    listAt(items(doc['consumers'])[ci]!, 'credentials').splice(entry.at[3] as number, 1);
  },
  patchBase(_doc, entry) {
    return structuredClone(entry.tagged as Obj);
  },
  async prepare(body, method) {
    if (method === 'PATCH' || (method === 'PUT' && body['type'] === undefined)) {
      // a new password in a patch (it merges over the stored password_hash), or in a PUT that
      // keeps the stored type (only basic-auth has one), is hashed too
      if (typeof body['password'] !== 'string' || body['password_hash'] !== undefined || (body['type'] !== undefined && body['type'] !== 'basic-auth')) return body;
      const hashed = await hashCredentialAsync({ ...body, type: 'basic-auth' }) as Obj;
      if (hashed['password_hash'] === undefined) return body;
      const out = body['type'] === undefined ? omit(hashed, ['type']) : hashed;
      // (null: a plain password stored before goes; the hash replaces it)
      return method === 'PATCH' ? { ...out, password: null } : out;
    }
    const hashed = await hashCredentialAsync(body) as Obj;
    if (method === 'POST' && hashed['type'] === 'key-auth' && hashed['id'] === undefined) return { ...hashed, id: randomUUID() };
    return hashed;
  },
};

export const plans: Collection = {
  name: 'plans',
  one: 'plan',
  filters: [],
  list(doc) {
    const map = isObj(doc['plans']) ? doc['plans'] : {};
    return Object.entries(map).map(([name, p]): Entry => {
      const id = derivedId('plan', name);
      const view = { id, name, ...(isObj(p) ? omit(p, ['id', 'name']) : {}) };
      return { id, name, view, tagged: view, at: ['plans', name], tags: [], attrs: {} };
    });
  },
  create(doc, body) {
    const name = requireString(body, 'name');
    if (!NAME_PATTERN.test(name) || name.length > 128) throw invalid([{ path: 'name', message: `invalid plan name "${name}": letters, digits and . _ ~ - (not first)` }]);
    const map = planMap(doc);
    if (Object.hasOwn(map, name)) throw conflict(`a plan named "${name}" exists`);
    assign(map, { [name]: omit(body, ['id', 'name']) });
    return ['plans', name];
  },
  replace(doc, entry, body) {
    const name = body['name'] === undefined ? entry.name : body['name'];
    if (typeof name !== 'string' || !NAME_PATTERN.test(name) || name.length > 128) throw invalid([{ path: 'name', message: 'must be a plan name: letters, digits and . _ ~ - (not first)' }]);
    const map = planMap(doc);
    if (name !== entry.name && Object.hasOwn(map, name)) throw conflict(`a plan named "${name}" exists`);
    const rebuilt: Obj = {};
    for (const [k, v] of Object.entries(map)) assign(rebuilt, { [k === entry.name ? name : k]: k === entry.name ? omit(body, ['id', 'name']) : v });
    doc['plans'] = rebuilt;
    return ['plans', name];
  },
  remove(doc, entry, opts) {
    const users = items(doc['consumers']).filter((c) => c['plan'] === entry.name);
    if (users.length && !opts.cascade) {
      const names = users.map((c) => String(c['name']));
      throw conflict(`consumers are on the plan "${entry.name}" (${names.join(', ')}): move them first, or delete with ?cascade=true`, { consumers: names });
    }
    for (const c of users) delete c['plan'];
    const map = planMap(doc);
    delete map[entry.name];
    if (Object.keys(map).length === 0) delete doc['plans'];
  },
};

function planMap(doc: Obj): Obj {
  if (!isObj(doc['plans'])) doc['plans'] = {};
  return doc['plans'] as Obj;
}
