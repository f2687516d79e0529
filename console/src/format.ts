/** Number formats used by the tiles and tables (fixed decimals, so the text is easy to read and parse). */
const ok = (v: number | null | undefined): v is number => typeof v === 'number' && Number.isFinite(v);

export const DASH = '—';
export const num = (v: number | null | undefined, digits: number): string => (ok(v) ? v.toFixed(digits) : DASH);
export const rate = (v: number | null | undefined): string => num(v, 2);
export const ms = (v: number | null | undefined): string => num(v, 1);
export const percent = (v: number | null | undefined): string => (ok(v) ? (v * 100).toFixed(1) : DASH);
export const int = (v: number | null | undefined): string => (ok(v) ? String(Math.round(v)) : DASH);

export function when(iso: string | undefined): string {
  if (!iso) return DASH;
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleString(undefined, { dateStyle: 'short', timeStyle: 'medium' });
}

export const list = (v: unknown): string => (Array.isArray(v) && v.length > 0 ? v.join(', ') : DASH);
