/**
 * What a config change does: a structured diff by entity (added / removed / changed names of
 * services, routes, upstreams, consumers, credentials, plugins, plans, and other top-level
 * keys) and a unified text diff of the YAML (Myers' O(ND) algorithm; credentials' secrets
 * never appear in it, a changed key shows as a changed credential).
 */
import { canonicalJson } from './etag.js';
import { COLLECTIONS } from './resources.js';
import { items, type Obj } from './document.js';
import type { Entry } from './collection.js';

export interface EntityChanges {
  added: string[];
  removed: string[];
  changed: string[];
}

export type ConfigChanges = Record<'services' | 'routes' | 'upstreams' | 'consumers' | 'credentials' | 'plugins' | 'plans' | 'other', EntityChanges>;

const KNOWN = new Set(['services', 'routes', 'consumers', 'plugins', 'plans']);

function safeList(f: () => Entry[]): Entry[] {
  try {
    return f();
  } catch {
    return [];
  }
}

function byKey(list: Entry[], key: (e: Entry) => string): Map<string, string> {
  const out = new Map<string, string>();
  for (const e of list) out.set(key(e), canonicalJson(e.tagged));
  return out;
}

function compare(before: Map<string, string>, after: Map<string, string>): EntityChanges {
  const out: EntityChanges = { added: [], removed: [], changed: [] };
  for (const [k, v] of after) {
    const old = before.get(k);
    if (old === undefined) out.added.push(k);
    else if (old !== v) out.changed.push(k);
  }
  for (const k of before.keys()) if (!after.has(k)) out.removed.push(k);
  return out;
}

function credentialMap(doc: Obj): Map<string, string> {
  const out = new Map<string, string>();
  for (const c of items(doc['consumers'])) {
    const name = String(c['name']);
    for (const e of safeList(() => COLLECTIONS.credentials.list(doc, name))) out.set(`${name}/credentials/${e.id}`, canonicalJson(e.tagged));
  }
  return out;
}

/** The structured diff of two documents. */
export function configChanges(before: Obj, after: Obj): ConfigChanges {
  const of = (name: 'services' | 'routes' | 'upstreams' | 'consumers' | 'plugins' | 'plans', doc: Obj) =>
    byKey(safeList(() => COLLECTIONS[name].list(doc)), (e) => (name === 'plugins' ? e.id : e.name));
  const changes = {} as ConfigChanges;
  for (const name of ['services', 'routes', 'upstreams', 'consumers', 'plugins', 'plans'] as const) changes[name] = compare(of(name, before), of(name, after));
  changes.credentials = compare(credentialMap(before), credentialMap(after));
  const other = (doc: Obj) => new Map(Object.entries(doc).filter(([k]) => !KNOWN.has(k)).map(([k, v]) => [k, canonicalJson(v)]));
  changes.other = compare(other(before), other(after));
  return changes;
}

/** Whether a structured diff has anything in it. */
export const hasChanges = (c: ConfigChanges): boolean => Object.values(c).some((x) => x.added.length + x.removed.length + x.changed.length > 0);

type Op = { t: ' ' | '-' | '+'; line: string };

/** The edit script from a to b (null when more than maxD edits are needed). */
function myers(a: readonly string[], b: readonly string[], maxD: number): Op[] | null {
  const n = a.length;
  const m = b.length;
  const limit = Math.min(n + m, maxD);
  const off = limit + 1;
  const v = new Int32Array(2 * off + 1);
  const trace: Int32Array[] = [];
  let found = -1;
  for (let d = 0; d <= limit && found < 0; d++) {
    for (let k = -d; k <= d; k += 2) {
      let x = k === -d || (k !== d && v[off + k - 1]! < v[off + k + 1]!) ? v[off + k + 1]! : v[off + k - 1]! + 1;
      let y = x - k;
      while (x < n && y < m && a[x] === b[y]) {
        x++;
        y++;
      }
      v[off + k] = x;
      if (x >= n && y >= m) {
        found = d;
        break;
      }
    }
    trace.push(v.slice(off - d, off + d + 1));
  }
  if (found < 0) return null;
  const ops: Op[] = [];
  let x = n;
  let y = m;
  for (let d = found; d > 0; d--) {
    const prev = trace[d - 1]!;
    const at = (k: number) => prev[k + d - 1]!;
    const k = x - y;
    const down = k === -d || (k !== d && at(k - 1) < at(k + 1));
    const pk = down ? k + 1 : k - 1;
    const px = at(pk);
    const py = px - pk;
    const sx = down ? px : px + 1;
    const sy = down ? py + 1 : py;
    while (x > sx && y > sy) {
      ops.push({ t: ' ', line: a[x - 1]! });
      x--;
      y--;
    }
    ops.push(down ? { t: '+', line: b[py]! } : { t: '-', line: a[px]! });
    x = px;
    y = py;
  }
  while (x > 0 && y > 0) {
    ops.push({ t: ' ', line: a[x - 1]! });
    x--;
    y--;
  }
  return ops.reverse();
}

const linesOf = (s: string): string[] => {
  if (s === '') return [];
  const l = s.split('\n');
  if (l[l.length - 1] === '') l.pop();
  return l;
};

/**
 * A unified diff (`diff -u`) of two texts, with `context` lines around each change. A change
 * needing more than `maxEdits` line edits is shown as one hunk replacing the differing middle.
 */
export function unifiedDiff(before: string, after: string, labels: [string, string], context = 3, maxEdits = 1000): string {
  const a = linesOf(before);
  const b = linesOf(after);
  let pre = 0;
  while (pre < a.length && pre < b.length && a[pre] === b[pre]) pre++;
  let suf = 0;
  while (suf < a.length - pre && suf < b.length - pre && a[a.length - 1 - suf] === b[b.length - 1 - suf]) suf++;
  if (pre === a.length && pre === b.length) return '';
  const midA = a.slice(pre, a.length - suf);
  const midB = b.slice(pre, b.length - suf);
  const mid = myers(midA, midB, maxEdits) ?? [...midA.map((line): Op => ({ t: '-', line })), ...midB.map((line): Op => ({ t: '+', line }))];
  const ops: Op[] = [
    ...a.slice(0, pre).map((line): Op => ({ t: ' ', line })),
    ...mid,
    ...a.slice(a.length - suf).map((line): Op => ({ t: ' ', line })),
  ];
  // positions (1-based) of each op in a and b
  const posA: number[] = [];
  const posB: number[] = [];
  let ia = 1;
  let ib = 1;
  for (const op of ops) {
    posA.push(ia);
    posB.push(ib);
    if (op.t !== '+') ia++;
    if (op.t !== '-') ib++;
  }
  const out: string[] = [`--- ${labels[0]}`, `+++ ${labels[1]}`];
  let i = 0;
  while (i < ops.length) {
    if (ops[i]!.t === ' ') {
      i++;
      continue;
    }
    const start = Math.max(0, i - context);
    let end = i;
    // extend while the next change is within 2*context lines
    for (;;) {
      while (end < ops.length && ops[end]!.t !== ' ') end++;
      let next = end;
      while (next < ops.length && ops[next]!.t === ' ') next++;
      if (next < ops.length && next - end <= 2 * context) {
        end = next;
        continue;
      }
      end = Math.min(ops.length, end + context);
      break;
    }
    const hunk = ops.slice(start, end);
    const aLen = hunk.filter((o) => o.t !== '+').length;
    const bLen = hunk.filter((o) => o.t !== '-').length;
    const aStart = aLen ? posA[start]! : posA[start]! - 1;
    const bStart = bLen ? posB[start]! : posB[start]! - 1;
    out.push(`@@ -${aStart},${aLen} +${bStart},${bLen} @@`);
    for (const o of hunk) out.push(`${o.t}${o.line}`);
    i = end;
  }
  return out.join('\n') + '\n';
}

