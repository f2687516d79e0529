/**
 * The admin API's paths: which endpoint a request is for, with its parameters. Segments are
 * percent-decoded after splitting, so an id with a slash (`acme/key-auth/1`) is given as
 * `acme%2Fkey-auth%2F1` (a credential id may also be written with its slashes: it is the rest
 * of the path). A trailing slash is ignored.
 */
import { ApiError } from './errors.js';

export type Endpoint =
  | { kind: 'openapi' }
  | { kind: 'config' }
  | { kind: 'revisions' }
  | { kind: 'revision'; n: number }
  | { kind: 'rollback'; n: number }
  | { kind: 'developers' }
  | { kind: 'developer-decision'; name: string; decision: 'approve' | 'reject' }
  | { kind: 'collection'; collection: CollectionName; parent?: string }
  | { kind: 'item'; collection: CollectionName; id: string; parent?: string };

export const TOP_COLLECTIONS = ['services', 'routes', 'upstreams', 'consumers', 'plugins', 'plans'] as const;
export type CollectionName = (typeof TOP_COLLECTIONS)[number] | 'credentials' | 'targets';

/** Methods per endpoint kind (the Allow header of a 405). */
export function allowed(e: Endpoint): string[] {
  switch (e.kind) {
    case 'openapi': case 'revisions': case 'revision': return ['GET', 'HEAD'];
    case 'config': return ['GET', 'HEAD', 'PUT'];
    case 'rollback': case 'developer-decision': return ['POST'];
    case 'developers': return ['GET', 'HEAD'];
    case 'collection': return e.collection === 'upstreams' ? ['GET', 'HEAD'] : ['GET', 'HEAD', 'POST'];
    case 'item': return e.collection === 'upstreams' ? ['GET', 'HEAD', 'PUT', 'PATCH'] : ['GET', 'HEAD', 'PUT', 'PATCH', 'DELETE'];
  }
}

const REVISION = /^[1-9][0-9]{0,14}$/;

function decode(seg: string): string {
  try {
    return decodeURIComponent(seg);
  } catch {
    throw new ApiError('bad-request', `bad percent-encoding in the path segment "${seg.slice(0, 64)}"`);
  }
}

/** The endpoint for a path under the API's base (`/api`), or null (404). */
export function route(path: string, base = '/api'): Endpoint | null {
  if (path !== base && !path.startsWith(`${base}/`)) return null;
  let rest = path.slice(base.length + 1);
  if (rest.endsWith('/')) rest = rest.slice(0, -1);
  const raw = rest === '' ? [] : rest.split('/');
  if (raw.some((s) => s === '')) return null;
  const seg = raw.map(decode);
  const [a, b, c, d] = seg;
  if (a === undefined) return null;
  if (seg.length === 1 && a === 'openapi.json') return { kind: 'openapi' };
  if (seg.length === 1 && a === 'config') return { kind: 'config' };
  if (a === 'revisions') {
    if (seg.length === 1) return { kind: 'revisions' };
    if (!REVISION.test(b!)) return null;
    if (seg.length === 2) return { kind: 'revision', n: Number(b) };
    if (seg.length === 3 && c === 'rollback') return { kind: 'rollback', n: Number(b) };
    return null;
  }
  if (a === 'developers') {
    if (seg.length === 1) return { kind: 'developers' };
    if (seg.length === 3 && (c === 'approve' || c === 'reject')) return { kind: 'developer-decision', name: b!, decision: c };
    return null;
  }
  if (!(TOP_COLLECTIONS as readonly string[]).includes(a)) return null;
  const collection = a as CollectionName;
  if (seg.length === 1) return { kind: 'collection', collection };
  if (seg.length === 2) return { kind: 'item', collection, id: b! };
  const sub = a === 'consumers' ? 'credentials' : a === 'upstreams' ? 'targets' : null;
  if (sub === null || c !== sub) return null;
  if (seg.length === 3) return { kind: 'collection', collection: sub, parent: b! };
  if (seg.length === 4 || sub === 'credentials') return { kind: 'item', collection: sub, parent: b!, id: seg.length === 4 ? d! : seg.slice(3).join('/') };
  return null;
}
