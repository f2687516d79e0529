/** A line diff (LCS after trimming the common head and tail) and its hunks with context. */
export type Op = { t: ' ' | '-' | '+'; s: string };
export type Piece = Op | { t: 'skip'; n: number };

const MAX_CELLS = 4_000_000;

export function diffLines(a: string[], b: string[]): Op[] {
  let start = 0;
  while (start < a.length && start < b.length && a[start] === b[start]) start++;
  let ea = a.length, eb = b.length;
  while (ea > start && eb > start && a[ea - 1] === b[eb - 1]) { ea--; eb--; }
  const x = a.slice(start, ea), y = b.slice(start, eb);
  const mid: Op[] = [];
  if ((x.length + 1) * (y.length + 1) > MAX_CELLS) {
    // Too large for the table: the changed block as removed, then added.
    for (const s of x) mid.push({ t: '-', s });
    for (const s of y) mid.push({ t: '+', s });
  } else {
    const w = y.length + 1;
    const L = new Uint32Array((x.length + 1) * w); // L[i][j]: LCS of x[i..], y[j..]
    for (let i = x.length - 1; i >= 0; i--)
      for (let j = y.length - 1; j >= 0; j--)
        L[i * w + j] = x[i] === y[j] ? L[(i + 1) * w + j + 1]! + 1 : Math.max(L[(i + 1) * w + j]!, L[i * w + j + 1]!);
    let i = 0, j = 0;
    while (i < x.length && j < y.length) {
      if (x[i] === y[j]) { mid.push({ t: ' ', s: x[i]! }); i++; j++; }
      else if (L[(i + 1) * w + j]! >= L[i * w + j + 1]!) mid.push({ t: '-', s: x[i++]! });
      else mid.push({ t: '+', s: y[j++]! });
    }
    while (i < x.length) mid.push({ t: '-', s: x[i++]! });
    while (j < y.length) mid.push({ t: '+', s: y[j++]! });
  }
  return [...a.slice(0, start).map((s): Op => ({ t: ' ', s })), ...mid, ...a.slice(ea).map((s): Op => ({ t: ' ', s }))];
}

/** Unchanged runs longer than 2*context collapse into a skip marker. */
export function hunks(ops: Op[], context = 3): Piece[] {
  const out: Piece[] = [];
  let i = 0;
  while (i < ops.length) {
    if (ops[i]!.t !== ' ') { out.push(ops[i++]!); continue; }
    let j = i;
    while (j < ops.length && ops[j]!.t === ' ') j++;
    const head = i === 0 ? 0 : context, tail = j === ops.length ? 0 : context;
    if (j - i > head + tail + 1) {
      out.push(...ops.slice(i, i + head), { t: 'skip', n: j - i - head - tail }, ...ops.slice(j - tail, j));
    } else out.push(...ops.slice(i, j));
    i = j;
  }
  return out;
}
