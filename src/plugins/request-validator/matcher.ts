/**
 * Finds the OpenAPI path template a request path belongs to: `/users/{id}`, `/files/{name}.{ext}`.
 * A segment trie: a literal segment beats a templated one (OpenAPI: "concrete paths are matched
 * before templated ones"), templated segments with more literal text first. Each trie node is
 * visited at most once per lookup, so a hostile path costs at most the size of the trie.
 */

interface TemplateSeg {
  /** Literal characters in the segment (ordering). */
  literal: number;
  regex: RegExp;
  names: string[];
  node: Node;
}

class Node {
  literal = new Map<string, Node>();
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

const escapeRe = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

function segments(path: string): string[] {
  const s = path.split('/');
  s.shift();
  return s;
}

export class PathMatcher<T> {
  private readonly root = new Node();

  /** Adds a template (`/users/{id}`) for a method. Returns false when that method is there already. */
  add(template: string, method: string, value: T): boolean {
    let node = this.root;
    for (const seg of segments(template)) {
      if (!seg.includes('{')) {
        let next = node.literal.get(seg);
        if (!next) node.literal.set(seg, (next = new Node()));
        node = next;
        continue;
      }
      const names: string[] = [];
      let literal = 0;
      const source = seg.replace(/\{([^}]*)\}|([^{]+)/g, (_m, name: string | undefined, lit: string | undefined) => {
        if (name !== undefined) {
          names.push(name);
          return '([^/]+?)';
        }
        literal += lit!.length;
        return escapeRe(lit!);
      });
      let t = node.templated.find((x) => x.regex.source === `^${source}$`);
      if (!t) {
        t = { literal, regex: new RegExp(`^${source}$`), names, node: new Node() };
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
   * of other methods only; null when it matches none. HEAD falls back to GET.
   */
  match(path: string, method: string): MatchOutcome<T> {
    const segs = segments(path);
    const allow = new Set<string>();
    const params: string[] = [];
    const names: string[] = [];
    const found = this.walk(this.root, segs, 0, method, allow, params, names);
    if (found) return found;
    return allow.size ? { allow: [...allow].sort() } : null;
  }

  private walk(node: Node, segs: string[], i: number, method: string, allow: Set<string>, params: string[], names: string[]): PathMatch<T> | null {
    if (i === segs.length) {
      if (!node.leaf) return null;
      const v = node.leaf.get(method) ?? (method === 'HEAD' ? node.leaf.get('GET') : undefined);
      if (v === undefined) {
        for (const m of node.leaf.keys()) allow.add(m);
        return null;
      }
      const p: Record<string, string> = Object.create(null) as Record<string, string>;
      names.forEach((n, k) => (p[n] = params[k]!));
      return { value: v as T, template: node.template, params: p };
    }
    const seg = segs[i]!;
    const lit = node.literal.get(seg);
    if (lit) {
      const r = this.walk(lit, segs, i + 1, method, allow, params, names);
      if (r) return r;
    }
    if (seg === '') return null;
    for (const t of node.templated) {
      const m = t.regex.exec(seg);
      if (!m) continue;
      const depth = params.length;
      t.names.forEach((n, k) => {
        names.push(n);
        params.push(m[k + 1]!);
      });
      const r = this.walk(t.node, segs, i + 1, method, allow, params, names);
      if (r) return r;
      params.length = depth;
      names.length = depth;
    }
    return null;
  }
}
