/**
 * Entity tags of the admin API.
 *
 * - An item (a service, a route, a credential...) is tagged by an HMAC of its canonical JSON
 *   (keys sorted, so a store that reorders keys, like PostgreSQL's jsonb, gives the same tag).
 *   A credential's tag covers its secrets (a changed key is a changed credential) without
 *   revealing them: the HMAC key is derived from the admin tokens, so a read-only caller
 *   cannot test guesses of a password against a tag. Every node with the same tokens computes
 *   the same tags.
 * - The whole config (GET /api/config, revisions) is tagged by its revision: `"r12"`. A
 *   revision tag in If-Match is also accepted on any write: it matches while the config is at
 *   that revision (412 if anything changed since). An If-Match list holds when any of its tags
 *   matches — a revision tag or, on an item, the item's tag (checked in the write's transaction).
 * - Lists and other documents are tagged by a hash of their body.
 */
import { createHash, createHmac } from 'node:crypto';

/** JSON with object keys sorted (arrays keep their order). */
export function canonicalJson(value: unknown): string {
  if (value === null || typeof value !== 'object') return JSON.stringify(value) ?? 'null';
  if (Array.isArray(value)) return `[${value.map((v) => (v === undefined ? 'null' : canonicalJson(v))).join(',')}]`;
  const keys = Object.keys(value).filter((k) => (value as Record<string, unknown>)[k] !== undefined).sort();
  return `{${keys.map((k) => `${JSON.stringify(k)}:${canonicalJson((value as Record<string, unknown>)[k])}`).join(',')}}`;
}

/** The HMAC key for item tags, from the admin tokens (a constant when there are none). */
export function etagKey(tokens: readonly { token: string }[]): Buffer {
  const h = createHash('sha256').update('turnpike-admin-etag\0');
  for (const t of [...tokens.map((x) => x.token)].sort()) h.update(t).update('\0');
  return h.digest();
}

/** Strong tag of an item. */
export function itemTag(key: Buffer, value: unknown): string {
  return `"${createHmac('sha256', key).update(canonicalJson(value)).digest('base64url').slice(0, 22)}"`;
}

/** Strong tag of a response body. */
export function bodyTag(body: string | Buffer): string {
  return `"${createHash('sha256').update(body).digest('base64url').slice(0, 22)}"`;
}

export const revisionTag = (revision: number): string => `"r${revision}"`;

export interface Precondition {
  /** `*`: the target must exist. */
  any: boolean;
  /** Opaque strong tags (weak ones never match If-Match). */
  tags: string[];
  /** Revisions named by `"rN"` tags. */
  revisions: number[];
}

/** Stands for If-Match tags none of which can match (weak ones): no item or revision has it. */
const NEVER_MATCHES = 'W/"never"';

/**
 * Parses If-Match (RFC 9110 13.1.1). undefined: no header. Throws on syntax errors
 * (the caller answers 400).
 */
export function parseIfMatch(header: string | string[] | undefined): Precondition | undefined {
  if (header === undefined) return undefined;
  const text = Array.isArray(header) ? header.join(',') : header;
  if (text.trim() === '*') return { any: true, tags: [], revisions: [] };
  const out: Precondition = { any: false, tags: [], revisions: [] };
  let weak = false;
  for (const tag of splitTags(text)) {
    if (tag.startsWith('W/')) { // strong comparison: a weak tag never matches
      weak = true;
      continue;
    }
    const m = /^"r([0-9]{1,15})"$/.exec(tag);
    if (m) out.revisions.push(Number(m[1]));
    else out.tags.push(tag);
  }
  // Only weak tags (a proxy that compresses weakens ETags): a condition nothing can meet,
  // never no condition at all (412, not a blind write).
  if (weak && out.tags.length === 0 && out.revisions.length === 0) out.tags.push(NEVER_MATCHES);
  return out;
}

/** The entity tags of an If-Match / If-None-Match list; throws Error on bad syntax. */
export function splitTags(text: string): string[] {
  const tags: string[] = [];
  const re = /\s*((?:W\/)?"[\x21\x23-\x7e\x80-\xff]*")\s*(?:,|$)/gy;
  let m: RegExpExecArray | null;
  let at = 0;
  const s = text.trim();
  if (s === '') throw new Error('an empty entity-tag list');
  re.lastIndex = 0;
  while (at < s.length && (m = re.exec(s)) !== null) {
    tags.push(m[1]!);
    at = re.lastIndex;
    if (m[0].trim() === '') break;
  }
  if (at < s.length) throw new Error(`bad entity tag at "${s.slice(at, at + 20)}"`);
  return tags;
}

/** Whether If-None-Match (weak comparison) matches `tag`: the GET answers 304. */
export function noneMatch(header: string | string[] | undefined, tag: string): boolean {
  if (header === undefined) return false;
  const text = Array.isArray(header) ? header.join(',') : header;
  if (text.trim() === '*') return true;
  let tags: string[];
  try {
    tags = splitTags(text);
  } catch {
    return false;
  }
  const bare = (t: string) => (t.startsWith('W/') ? t.slice(2) : t);
  return tags.some((t) => bare(t) === bare(tag));
}
