/**
 * /api/developers: the developer portal's accounts (src/portal/accounts.ts) as an admin sees
 * them: consumers with a `portal` credential. GET lists them (`?status=` unverified |
 * pending-approval | active, `?pending=true`: sign-ups or plan requests awaiting an admin);
 * POST /api/developers/{consumer}/approve approves what awaits (the sign-up: `approved` drops
 * to its default true; a requested plan becomes the consumer's plan); .../reject refuses it (a
 * sign-up not approved yet deletes the consumer; a plan request is dropped).
 */
import { conflict, notFound } from './errors.js';
import { items, type Obj } from './document.js';

export interface DeveloperView {
  consumer: string;
  email: string;
  status: 'unverified' | 'pending-approval' | 'active';
  plan: string | null;
  requested_plan?: string;
  created_at: string | null;
  keys: number;
}

function portalCredential(c: Obj): Obj | undefined {
  return items(c['credentials']).find((cr) => cr['type'] === 'portal');
}

export function developerView(c: Obj, cr: Obj): DeveloperView {
  return {
    consumer: String(c['name']),
    email: String(cr['email']),
    status: cr['verified'] === false ? 'unverified' : cr['approved'] === false ? 'pending-approval' : 'active',
    plan: typeof c['plan'] === 'string' ? c['plan'] : null,
    ...(typeof cr['requested_plan'] === 'string' ? { requested_plan: cr['requested_plan'] } : {}),
    created_at: typeof cr['created_at'] === 'string' ? cr['created_at'] : null,
    keys: items(c['credentials']).filter((x) => x['type'] === 'key-auth').length,
  };
}

export function listDevelopers(doc: Obj): DeveloperView[] {
  const out: DeveloperView[] = [];
  for (const c of items(doc['consumers'])) {
    const cr = portalCredential(c);
    if (cr && typeof cr['email'] === 'string') out.push(developerView(c, cr));
  }
  return out;
}

/** Whether the developer waits for an admin (a sign-up or a plan request). */
export const awaitsAdmin = (d: DeveloperView): boolean => d.status === 'pending-approval' || d.requested_plan !== undefined;

function find(doc: Obj, name: string): { c: Obj; cr: Obj; index: number } {
  const list = items(doc['consumers']);
  const index = list.findIndex((c) => c['name'] === name && portalCredential(c) !== undefined);
  if (index === -1) throw notFound(`developer "${name}"`);
  return { c: list[index]!, cr: portalCredential(list[index]!)!, index };
}

/** Approves what awaits in `doc` (mutated); returns what was approved. */
export function approveDeveloper(doc: Obj, name: string): string[] {
  const { c, cr } = find(doc, name);
  const done: string[] = [];
  if (cr['approved'] === false) {
    delete cr['approved'];
    done.push('sign-up');
  }
  if (typeof cr['requested_plan'] === 'string') {
    c['plan'] = cr['requested_plan'];
    delete cr['requested_plan'];
    done.push(`plan ${String(c['plan'])}`);
  }
  if (!done.length) throw conflict(`developer "${name}" awaits nothing`);
  return done;
}

/** Refuses what awaits in `doc` (mutated): a pending sign-up removes the consumer, a plan request is dropped. */
export function rejectDeveloper(doc: Obj, name: string): string[] {
  const { cr, index } = find(doc, name);
  if (cr['approved'] === false) {
    (doc['consumers'] as unknown[]).splice(index, 1);
    return ['sign-up'];
  }
  if (typeof cr['requested_plan'] === 'string') {
    const plan = cr['requested_plan'];
    delete cr['requested_plan'];
    return [`plan ${plan}`];
  }
  throw conflict(`developer "${name}" awaits nothing`);
}

const isDeveloper = (c: Obj): boolean => portalCredential(c) !== undefined;

/**
 * Developer accounts are live data the portal owns (sign-ups, verified emails, issued, rotated
 * and revoked keys), not configuration: a whole-document write must not turn them back.
 * In `doc` (mutated), every consumer whose name is an account — a developer in the current
 * document or in `doc` — is the current document's consumer of that name, in `doc`'s place
 * (an account deleted since is not brought back; a consumer that stopped being a developer
 * stays as it is now); current developers `doc` does not name are appended. Always for a
 * rollback (an old revision would bring back revoked keys and drop newer accounts); for
 * PUT /api/config only when the document carries no developer at all (a GitOps file does not
 * hold the accounts and would otherwise delete them). Returns whether it changed anything.
 */
export function keepDevelopers(doc: Obj, current: Obj | null, mode: 'rollback' | 'put'): boolean {
  const own = items(doc['consumers']);
  if (mode === 'put' && own.some(isDeveloper)) return false;
  const cur = items(current?.['consumers']);
  const accounts = new Set<string>();
  for (const c of [...cur, ...own]) if (isDeveloper(c)) accounts.add(String(c['name']));
  if (accounts.size === 0) return false;
  const now = new Map<string, Obj>();
  for (const c of cur) if (!now.has(String(c['name']))) now.set(String(c['name']), c);
  const out: Obj[] = [];
  const placed = new Set<string>();
  for (const c of own) {
    const name = String(c['name']);
    if (!accounts.has(name)) out.push(c);
    else if (!placed.has(name)) {
      placed.add(name);
      const kept = now.get(name);
      if (kept) out.push(structuredClone(kept));
    }
  }
  for (const c of cur) {
    const name = String(c['name']);
    if (isDeveloper(c) && !placed.has(name)) {
      placed.add(name);
      out.push(structuredClone(c));
    }
  }
  doc['consumers'] = out;
  return true;
}
