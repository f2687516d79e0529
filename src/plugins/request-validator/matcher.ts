/**
 * Finds the OpenAPI path template a request path belongs to: `/users/{id}`, `/files/{name}.{ext}`.
 * A segment trie: a literal segment beats a templated one (OpenAPI: "concrete paths are matched
 * before templated ones"), templated segments with more literal text first. Each trie node is
 * visited at most once per lookup, and a templated segment is matched in linear time (no
 * regular expression: `{a}-{b}-{c}.json` as a lazy regex backtracked in cubic time on a hostile
 * segment), so a hostile path costs at most the size of the trie times its length.
 */

interface TemplateSeg {
  /** Literal characters in the segment (ordering). */
  literal: number;
  /** The literal text around the parameters: names.length + 1 pieces (maybe empty). */
  lits: string[];
  /** lits joined, to tell the same shape under other names. */
  key: string;
  names: string[];
  node: Node;
}

/** Splits a templated segment: `{a}-{b}.json` -> lits ['', '-', '.json'], names ['a', 'b']. */
function parseSegment(seg: string): { lits: string[]; names: string[] } {
  const lits: string[] = [''];
  const names: string[] = [];
  let i = 0;
  while (i < seg.length) {
    const open = seg.indexOf('{', i);
    const close = open < 0 ? -1 : seg.indexOf('}', open + 1);
    if (open < 0 || close < 0) {
      lits[lits.length - 1] += seg.slice(i);
      break;
    }
    lits[lits.length - 1] += seg.slice(i, open);
    names.push(seg.slice(open + 1, close));
    lits.push('');
    i = close + 1;
  }
  return { lits, names };
}

/**
 * The parameter values of `seg` under a template segment, or null. Each parameter takes at
 * least one character, the shortest that lets the rest match (each literal at its leftmost
 * place: as the lazy `([^/]+?)` of a regex would, without its backtracking).
 */
function matchSegment(t: TemplateSeg, seg: string): string[] | null {
  const { lits } = t;
  const n = t.names.length;
  if (seg.length < t.literal + n) return null;
  const head = lits[0]!;
  const tail = lits[n]!;
  if (!seg.startsWith(head) || !seg.endsWith(tail)) return null;
  const end = seg.length - tail.length;
  const out: string[] = [];
  let pos = head.length;
  for (let k = 1; k < n; k++) {
    const lit = lits[k]!;
    const at = lit === '' ? pos + 1 : seg.indexOf(lit, pos + 1);
    // (the leftmost place leaves the most room: if it does not fit, no later one does)
    if (at < 0 || at + lit.length >= end) return null;
    out.push(seg.slice(pos, at));
    pos = at + lit.length;
  }
  if (end - pos < 1) return null;
  out.push(seg.slice(pos, end));
  return out;
}

class Node {
  literal = new Map<string, Node>();
  /** The literal children by lower-cased segment, built on the first folded match. */
  folded: Map<string, Node[]> | null = null;
  templated: TemplateSeg[] = [];
  /** Templates ending here: method (upper case) -> value. */
  leaf: Map<string, unknown> | null = null;
  /** The template of the leaf (for messages). */
  template = '';
}

export interface PathMatch<T> {
  value: T;
  template: string;
  /** Raw (percent-encoded) parameter values by name. */
  params: Record<string, string>;
}

export type MatchOutcome<T> = PathMatch<T> | { allow: string[] } | null;

function segments(path: string): string[] {
  const s = path.split('/');
  s.shift();
  return s;
}

export class PathMatcher<T> {
  private readonly root = new Node();
  /** Some literal segment has a letter (another case of it is possible). */
  private letters = false;
  /** Some literal segment has a capital letter (then a path in lower case can be another case of it). */
  private mixedCase = false;

  /** Adds a template (`/users/{id}`) for a method. Returns false when that method is there already. */
  add(template: string, method: string, value: T): boolean {
    let node = this.root;
    for (const seg of segments(template)) {
      if (!seg.includes('{')) {
        let next = node.literal.get(seg);
        if (!next) {
          node.literal.set(seg, (next = new Node()));
          node.folded = null;
          if (/[A-Za-z]/.test(seg)) this.letters = true;
          if (seg !== seg.toLowerCase()) this.mixedCase = true;
        }
        node = next;
        continue;
      }
      const { lits, names } = parseSegment(seg);
      const key = lits.join('{}');
      let t = node.templated.find((x) => x.key === key);
      if (!t) {
        t = { literal: key.length - 2 * names.length, lits, key, names, node: new Node() };
        node.templated.push(t);
        node.templated.sort((a, b) => b.literal - a.literal);
      }
      node = t.node;
    }
    node.leaf ??= new Map();
    node.template ||= template;
    if (node.leaf.has(method)) return false;
    node.leaf.set(method, value);
    return true;
  }

  /**
   * The template and value for a path and method; `{allow}` when the path matches templates
   * of other methods only (HEAD among them where GET is); null when it matches none. HEAD
   * falls back to GET.
   */
  match(path: string, method: string, fold = false): MatchOutcome<T> {
    const segs = segments(path);
    const allow = new Set<string>();
    const params: string[] = [];
    const names: string[] = [];
    const found = this.walk(this.root, segs, 0, method, allow, params, names, fold);
    if (found) return found;
    return allow.size ? { allow: [...allow].sort() } : null;
  }

  /**
   * Whether `path` could be, in another case, a path of literal segments here: a server that
   * matches paths case-insensitively (ASP.NET, IIS, Express by default) may read it so. Then
   * match(..., fold = true) says which operation that would be.
   */
  caseVariant(path: string): boolean {
    return this.letters && (this.mixedCase || /[A-Z]/.test(path));
  }

  private walk(node: Node, segs: string[], i: number, method: string, allow: Set<string>, params: string[], names: string[], fold: boolean): PathMatch<T> | null {
    if (i === segs.length) {
      if (!node.leaf) return null;
      const v = node.leaf.get(method) ?? (method === 'HEAD' ? node.leaf.get('GET') : undefined);
      if (v === undefined) {
        for (const m of node.leaf.keys()) allow.add(m);
        // (HEAD is served wherever GET is: above; the Allow of a 405 says so, RFC 9110 §9.3.2)
        if (node.leaf.has('GET')) allow.add('HEAD');
        return null;
      }
      const p: Record<string, string> = Object.create(null) as Record<string, string>;
      names.forEach((n, k) => (p[n] = params[k]!));
      return { value: v as T, template: node.template, params: p };
    }
    const seg = segs[i]!;
    const lit = node.literal.get(seg);
    if (lit) {
      const r = this.walk(lit, segs, i + 1, method, allow, params, names, fold);
      if (r) return r;
    }
    // (folded: the literal spelled as the segment first, then its other cases)
    if (fold && node.literal.size > 0) {
      if (node.folded === null) {
        node.folded = new Map();
        for (const [k, n] of node.literal) {
          const low = k.toLowerCase();
          node.folded.set(low, [...(node.folded.get(low) ?? []), n]);
        }
      }
      for (const n of node.folded.get(seg.toLowerCase()) ?? []) {
        if (n === lit) continue;
        const r = this.walk(n, segs, i + 1, method, allow, params, names, fold);
        if (r) return r;
      }
    }
    if (seg === '') return null;
    for (const t of node.templated) {
      const m = matchSegment(t, seg);
      if (m === null) continue;
      const depth = params.length;
      t.names.forEach((n, k) => {
        names.push(n);
        params.push(m[k]!);
      });
      const r = this.walk(t.node, segs, i + 1, method, allow, params, names, fold);
      if (r) return r;
      params.length = depth;
      names.length = depth;
    }
    return null;
  }
}
