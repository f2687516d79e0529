/**
 * The router: hosts (exact, then `*.suffix` wildcards longest first, then any host), then path
 * patterns in a segment trie (prefix on segment boundaries, `{param}` captures one segment),
 * then methods and header matches.
 *
 * Precedence, most specific wins, decided in this order:
 *  1. host: an exact host beats a wildcard (longer suffix first), which beats routes with no host;
 *     when no route of a host class matches the request, the next class is tried;
 *  2. path, compared segment by segment from the left: a literal segment beats `{param}`, which
 *     beats the pattern ending there (so `/a/b` > `/a/{x}` > `/a`);
 *  3. a route that lists methods beats one that accepts any method;
 *  4. more header matches beat fewer;
 *  5. remaining ties go to the route defined first — except two routes with the same host,
 *     path, header matches and overlapping methods, which is a config error (reported by compile).
 */

export interface RouteSpec<T> {
  hosts?: readonly string[] | undefined;
  paths?: readonly string[] | undefined;
  methods?: readonly string[] | undefined;
  headers?: Readonly<Record<string, string | readonly string[]>> | undefined;
  data: T;
}

export interface RouteMatch<T> {
  data: T;
  /** Captured `{param}` values (raw, still percent-encoded), or null when the pattern has none. */
  params: Record<string, string> | null;
  /** Length of the request path that the pattern matched (for strip_path). */
  prefixLength: number;
  /** The pattern that matched. */
  pattern: string;
}

export type MatchResult<T> = RouteMatch<T> | { methodNotAllowed: string[] } | null;

interface Entry<T> {
  data: T;
  order: number;
  pattern: string;
  /** (segment index, param name) pairs. */
  params: [number, string][];
  methods: ReadonlySet<string> | null;
  headers: [string, Set<string>][];
  depth: number;
}

/** The entries of a node that ends no pattern (most inner nodes): one shared empty array. */
const NO_ENTRIES: never[] = [];

class TrieNode<T> {
  /** The only literal child while there is just one (most nodes of a large table): no Map. */
  key: string | null = null;
  child: TrieNode<T> | null = null;
  /** Literal children once there are two or more. */
  literal: Map<string, TrieNode<T>> | null = null;
  param: TrieNode<T> | null = null;
  entries: Entry<T>[] = NO_ENTRIES;
  /** The literal children by lower-cased segment, built on a case-folded match's first visit. */
  folded: Map<string, TrieNode<T>[]> | null = null;

  /** The literal child for `seg`, created when missing. */
  literalChild(seg: string): TrieNode<T> {
    if (this.literal !== null) {
      let next = this.literal.get(seg);
      if (!next) this.literal.set(seg, (next = new TrieNode<T>()));
      return next;
    }
    if (this.key === null) {
      this.key = seg;
      return (this.child = new TrieNode<T>());
    }
    if (this.key === seg) return this.child!;
    const next = new TrieNode<T>();
    this.literal = new Map([[this.key, this.child!], [seg, next]]);
    this.key = null;
    this.child = null;
    return next;
  }
}

interface HostTable<T> {
  exact: Map<string, TrieNode<T>>;
  wildcard: { suffix: string; trie: TrieNode<T> }[];
  any: TrieNode<T> | null;
}

export interface RouteConflict {
  a: number;
  b: number;
  host: string;
  path: string;
}

const PARAM = /^\{([A-Za-z_][A-Za-z0-9_]*)\}$/;
const LETTER = /[A-Za-z]/;
const UPPER = /[A-Z]/;
const NO_NODES: never[] = [];
const NO_HEADER_MATCH: [string, Set<string>][] = [];
const NO_PARAMS: [number, string][] = [];

export function patternSegments(pattern: string): string[] {
  const segs = pattern.split('/').slice(1);
  if (segs.length && segs[segs.length - 1] === '') segs.pop();
  return segs;
}

/** Lower-cases a Host value and strips its port: `API.Example.com:8080` -> `api.example.com`, `[::1]:80` -> `[::1]`. */
export function hostName(host: string): string {
  let h = host;
  if (h.charCodeAt(0) === 0x5b /* [ */) {
    const end = h.indexOf(']');
    h = end === -1 ? h : h.slice(0, end + 1);
  } else {
    const colon = h.indexOf(':');
    if (colon !== -1) h = h.slice(0, colon);
  }
  if (h.endsWith('.')) h = h.slice(0, -1);
  return h.toLowerCase();
}

const usesHeaders = (specs: readonly RouteSpec<unknown>[]) => specs.some((s) => s.headers && Object.keys(s.headers).length > 0);

export class Router<T> {
  private readonly table: HostTable<T> = { exact: new Map(), wildcard: [], any: null };
  readonly conflicts: RouteConflict[] = [];
  readonly size: number;
  /** Whether any route matches on headers (otherwise match() never reads them). */
  readonly usesHeaders: boolean;

  constructor(specs: readonly RouteSpec<T>[]) {
    specs.forEach((spec, order) => this.add(spec, order));
    this.size = specs.length;
    this.usesHeaders = usesHeaders(specs);
    this.finish();
  }

  /** Builds a router, yielding every 64 routes (see compileAsync). */
  static *build<T>(specs: readonly RouteSpec<T>[]): Generator<void, Router<T>, void> {
    const r = new Router<T>([]);
    for (let order = 0; order < specs.length; order++) {
      r.add(specs[order]!, order);
      if ((order & 63) === 63) yield;
    }
    (r as { size: number }).size = specs.length;
    (r as { usesHeaders: boolean }).usesHeaders = usesHeaders(specs);
    r.finish();
    return r;
  }

  /** Literal pattern segments with a letter, lower-cased, to their spelling (null: several spellings). See caseVariant. */
  private readonly foldable = new Map<string, string | null>();
  /** Some literal pattern segment has a capital letter (then a path in lower case can be another case of it). */
  private mixedCase = false;

  /** Method sets shared between routes with the same methods (10,000 routes, a handful of sets). */
  private readonly methodSets = new Map<string, ReadonlySet<string>>();

  private add(spec: RouteSpec<T>, order: number): void {
    let methods: ReadonlySet<string> | null = null;
    if (spec.methods?.length) {
      const key = spec.methods.join(',').toUpperCase();
      methods = this.methodSets.get(key) ?? null;
      if (methods === null) this.methodSets.set(key, (methods = new Set(key.split(','))));
    }
    const headers: [string, Set<string>][] = spec.headers === undefined ? NO_HEADER_MATCH : Object.entries(spec.headers).map(([k, v]) => [
      k.toLowerCase(),
      new Set(typeof v === 'string' ? [v] : v),
    ]);
    for (const host of spec.hosts?.length ? spec.hosts : [null]) {
      // (as hostName reads a request's: `api.example.com.` is `api.example.com`; kept, the route
      // never matched and its requests fell to a route with no host, past its plugins)
      const trie = this.trieFor(host === null ? null : host.endsWith('.') ? host.slice(0, -1).toLowerCase() : host.toLowerCase());
      for (const pattern of spec.paths?.length ? spec.paths : ['/']) {
        const segs = patternSegments(pattern);
        let params = NO_PARAMS;
        let node = trie;
        for (let i = 0; i < segs.length; i++) {
          const seg = segs[i]!;
          const p = seg.charCodeAt(0) === 0x7b /* { */ ? PARAM.exec(seg) : null;
          if (p) {
            if (params === NO_PARAMS) params = [];
            params.push([i, p[1]!]);
            node = node.param ??= new TrieNode<T>();
          } else {
            if (LETTER.test(seg)) {
              const low = seg.toLowerCase();
              const prev = this.foldable.get(low);
              if (prev === undefined) this.foldable.set(low, seg);
              else if (prev !== seg) this.foldable.set(low, null);
              if (low !== seg) this.mixedCase = true;
            }
            node = node.literalChild(seg);
          }
        }
        const entry: Entry<T> = { data: spec.data, order, pattern, params, methods, headers, depth: segs.length };
        for (const other of node.entries) {
          if (other.order !== order && sameHeaders(other.headers, headers) && methodsOverlap(other.methods, methods)) {
            this.conflicts.push({ a: other.order, b: order, host: host ?? '*', path: pattern });
          }
        }
        if (node.entries === NO_ENTRIES) node.entries = [entry];
        else {
          node.entries.push(entry);
          node.entries.sort(compareEntries);
        }
      }
    }
  }

  private finish(): void {
    this.table.wildcard.sort((a, b) => b.suffix.length - a.suffix.length);
  }

  private trieFor(host: string | null): TrieNode<T> {
    if (host === null) return (this.table.any ??= new TrieNode<T>());
    if (host.startsWith('*.')) {
      const suffix = host.slice(1);
      let w = this.table.wildcard.find((x) => x.suffix === suffix);
      if (!w) this.table.wildcard.push((w = { suffix, trie: new TrieNode<T>() }));
      return w.trie;
    }
    let t = this.table.exact.get(host);
    if (!t) this.table.exact.set(host, (t = new TrieNode<T>()));
    return t;
  }

  /** Methods of routes that matched all but the method, collected during one match() call. */
  private allowed: string[] | null = null;

  /**
   * Finds the most specific route. `path` must be normalized (see normalizePath) and start
   * with `/`; `host` is the Host without port, lower-cased. Walks the path string in place:
   * no segment array is built.
   */
  match(method: string, host: string, path: string, headers: Record<string, string | string[] | undefined>, fold = false): MatchResult<T> {
    this.allowed = null;
    const t = this.table;
    const exact = t.exact.size ? t.exact.get(host) : undefined;
    if (exact) {
      const m = this.search(exact, path, 0, method, headers, fold);
      if (m) return this.result(m, path);
    }
    for (const w of t.wildcard) {
      if (host.length > w.suffix.length && host.endsWith(w.suffix)) {
        const m = this.search(w.trie, path, 0, method, headers, fold);
        if (m) return this.result(m, path);
      }
    }
    if (t.any) {
      const m = this.search(t.any, path, 0, method, headers, fold);
      if (m) return this.result(m, path);
    }
    const allowed = this.allowed as string[] | null;
    if (allowed === null) return null;
    const set = new Set(allowed);
    if (set.has('GET')) set.add('HEAD');
    return { methodNotAllowed: [...set].sort() };
  }

  /**
   * Whether a segment of `path` (normalized) is, in another case, a literal segment of a route
   * pattern: a server matching paths case-insensitively (Express's and ASP.NET's default, IIS)
   * may read it as that route's. Then match(..., fold = true) says which route that would be.
   */
  caseVariant(path: string): boolean {
    if (this.foldable.size === 0 || (!this.mixedCase && !UPPER.test(path))) return false;
    for (let pos = 0; pos < path.length - 1; ) {
      let end = path.indexOf('/', pos + 1);
      if (end === -1) end = path.length;
      const seg = path.slice(pos + 1, end);
      // (a segment spelled as the one literal of its letters matches as it would folded: `/pkg.Echo/Say`)
      const spelled = this.foldable.get(seg.toLowerCase());
      if (spelled !== undefined && spelled !== seg) return true;
      pos = end;
    }
    return false;
  }

  /** `pos` is the index of the '/' that starts the next segment; `fold`: literals compared case-insensitively. */
  private search(
    node: TrieNode<T>, path: string, pos: number, method: string,
    headers: Record<string, string | string[] | undefined>, fold: boolean,
  ): Entry<T> | null {
    // a trailing '/' is no segment of its own
    if (pos < path.length - 1) {
      let end = path.indexOf('/', pos + 1);
      if (end === -1) end = path.length;
      if (fold) {
        // The literal spelled as the segment first: a route of its own is no other case of it.
        const seg = path.slice(pos + 1, end);
        const own = node.literal !== null ? node.literal.get(seg) : node.key === seg ? node.child! : undefined;
        if (own) {
          const m = this.search(own, path, end, method, headers, fold);
          if (m) return m;
        }
        for (const next of foldedChildren(node, seg.toLowerCase())) {
          if (next === own) continue;
          const m = this.search(next, path, end, method, headers, fold);
          if (m) return m;
        }
      } else if (node.literal !== null) {
        const lit = node.literal.get(path.slice(pos + 1, end));
        if (lit) {
          const m = this.search(lit, path, end, method, headers, fold);
          if (m) return m;
        }
      } else if (node.key !== null && node.key.length === end - pos - 1 && path.startsWith(node.key, pos + 1)) {
        const m = this.search(node.child!, path, end, method, headers, fold);
        if (m) return m;
      }
      if (node.param !== null && end > pos + 1) {
        const m = this.search(node.param, path, end, method, headers, fold);
        if (m) return m;
      }
    }
    // HEAD is GET without content (RFC 9110 §9.3.2; §9.1: a server supports both): a route
    // listing GET takes HEAD too, unless one listing HEAD itself is there.
    let getRoute: Entry<T> | null = null;
    for (const e of node.entries) {
      if (e.headers.length && !headersMatch(e.headers, headers)) continue;
      if (e.methods !== null && !e.methods.has(method)) {
        if (method === 'HEAD' && e.methods.has('GET')) getRoute ??= e;
        else (this.allowed ??= []).push(...e.methods);
        continue;
      }
      // (one listing methods beats one taking any: entries come sorted so)
      return getRoute !== null && e.methods === null ? getRoute : e;
    }
    return getRoute;
  }

  private result(e: Entry<T>, path: string): RouteMatch<T> {
    let params: Record<string, string> | null = null;
    let pos = 0;
    let p = 0;
    for (let i = 0; i < e.depth; i++) {
      let end = path.indexOf('/', pos + 1);
      if (end === -1) end = path.length;
      const param = e.params[p];
      if (param !== undefined && param[0] === i) {
        (params ??= {})[param[1]] = path.slice(pos + 1, end);
        p++;
      }
      pos = end;
    }
    return { data: e.data, params, prefixLength: pos, pattern: e.pattern };
  }
}

/** The literal children of `node` whose segment is `low` in any case. */
function foldedChildren<T>(node: TrieNode<T>, low: string): readonly TrieNode<T>[] {
  if (node.literal !== null) {
    if (node.folded === null) {
      const f = new Map<string, TrieNode<T>[]>();
      for (const [k, child] of node.literal) {
        const l = k.toLowerCase();
        const list = f.get(l);
        if (list) list.push(child);
        else f.set(l, [child]);
      }
      node.folded = f;
    }
    return node.folded.get(low) ?? NO_NODES;
  }
  return node.key !== null && node.key.toLowerCase() === low ? [node.child!] : NO_NODES;
}

function compareEntries<T>(a: Entry<T>, b: Entry<T>): number {
  if (!!a.methods !== !!b.methods) return a.methods ? -1 : 1;
  if (a.headers.length !== b.headers.length) return b.headers.length - a.headers.length;
  return a.order - b.order;
}

function sameHeaders(a: [string, Set<string>][], b: [string, Set<string>][]): boolean {
  if (a.length !== b.length) return false;
  return a.every(([k, v]) => {
    const o = b.find(([k2]) => k2 === k);
    return !!o && o[1].size === v.size && [...v].every((x) => o[1].has(x));
  });
}

function methodsOverlap(a: ReadonlySet<string> | null, b: ReadonlySet<string> | null): boolean {
  if (!a || !b) return !a && !b ? true : false;
  for (const m of a) if (b.has(m)) return true;
  return false;
}

function headersMatch(want: [string, Set<string>][], headers: Record<string, string | string[] | undefined>): boolean {
  for (const [name, values] of want) {
    const got = headers[name];
    if (got === undefined) return false;
    if (typeof got === 'string') {
      if (!values.has(got)) return false;
    } else if (!got.some((g) => values.has(g))) return false;
  }
  return true;
}
