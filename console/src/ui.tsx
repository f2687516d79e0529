/** Pieces shared by the admin views: the view title, a collection's table panel, the confirm dialog, focus helpers. */
import { useEffect, useRef, useState } from 'preact/hooks';
import type { ComponentChildren, Ref } from 'preact';
import { describe, request } from './api.js';

/** A test id part for any string: characters other than [A-Za-z0-9_-] become '_'. */
export const tid = (s: string): string => s.replace(/[^A-Za-z0-9_-]/g, '_');

/** Focus the element with this test id (or else the element with id `fallback`) after the next render. */
export function focusLater(testId: string, fallback?: string): void {
  requestAnimationFrame(() =>
    (document.querySelector<HTMLElement>(`[data-testid="${CSS.escape(testId)}"]`) ?? (fallback ? document.getElementById(fallback) : null))?.focus());
}

export function ViewTitle({ title, titleRef, readOnly, noun }: { title: string; titleRef: Ref<HTMLHeadingElement>; readOnly: boolean; noun: string }) {
  return (
    <>
      <h2 id="view-title" tabIndex={-1} ref={titleRef}>{title}</h2>
      {readOnly ? <p class="note">Your token is read-only: {noun} can be viewed, not changed.</p> : null}
    </>
  );
}

export interface List<T> {
  items: T[] | null;
  total: number;
  error: string | null;
  load: () => Promise<void>;
  /** Put `item` in place of the one whose key is `key`. */
  replace: (key: string, item: T) => void;
}

/** `GET /api/<collection>?limit=1000`, loaded on mount. */
export function useList<T>(collection: string, keyOf: (item: T) => string): List<T> {
  const [items, setItems] = useState<T[] | null>(null);
  const [total, setTotal] = useState(0);
  const [error, setError] = useState<string | null>(null);
  const load = async () => {
    setError(null);
    try {
      const { body } = await request<{ data: T[]; total: number }>('GET', `/api/${collection}?limit=1000`);
      setItems(body.data);
      setTotal(body.total);
    } catch (err) {
      setError(describe(err));
    }
  };
  useEffect(() => void load(), [collection]);
  const replace = (key: string, item: T) => setItems((xs) => xs && xs.map((x) => (keyOf(x) === key ? item : x)));
  return { items, total, error, load, replace };
}

/** Which item's edit form is open; closing it returns focus to its Edit button (`edit-<kind>-<key>`). */
export function useEditing(kind: string) {
  const [editing, setEditing] = useState<string | null>(null);
  const close = () => {
    if (editing !== null) focusLater(`edit-${kind}-${editing}`);
    setEditing(null);
  };
  return { editing, open: setEditing, close };
}

/** A panel with a collection's table: loading, error (with retry), empty and truncated states. */
export function ListPanel<T>({ id, title, empty, list, testId, head, row }: {
  id: string; title: string; empty: string; list: List<T>; testId: string;
  head: ComponentChildren; row: (item: T) => ComponentChildren;
}) {
  const { items, total, error } = list;
  return (
    <section class="panel" aria-labelledby={id}>
      <h3 id={id} tabIndex={-1}>{title}{items ? ` (${total})` : ''}</h3>
      {error ? <p class="error" role="alert">{error} <button type="button" onClick={() => void list.load()}>Try again</button></p> : null}
      {items === null && !error ? <p class="empty">Loading…</p> : null}
      {items && items.length === 0 ? <p class="empty">{empty}</p> : null}
      {items && items.length ? (
        <div class="table-wrap">
          <table aria-labelledby={id} data-testid={testId}>
            <thead><tr>{head}</tr></thead>
            <tbody>{items.map(row)}</tbody>
          </table>
        </div>
      ) : null}
      {items && total > items.length ? <p class="note">Showing the first {items.length} of {total}.</p> : null}
    </section>
  );
}

/** A modal confirmation (<dialog>: focus is kept inside, Escape cancels; Cancel has the focus first). */
export function ConfirmDialog({ open, name, title, confirm, busy, onConfirm, onCancel, testId, confirmTestId, children }: {
  open: boolean; name: string; title: ComponentChildren; confirm: ComponentChildren; busy: boolean;
  onConfirm: () => void; onCancel: () => void; testId: string; confirmTestId: string; children: ComponentChildren;
}) {
  const dialog = useRef<HTMLDialogElement>(null);
  useEffect(() => {
    const d = dialog.current;
    if (!d) return;
    if (open && !d.open) d.showModal();
    if (!open && d.open) d.close();
  }, [open]);
  return (
    <dialog ref={dialog} aria-labelledby={`${name}-title`} aria-describedby={`${name}-text`} data-testid={testId} onClose={onCancel}>
      <h3 id={`${name}-title`}>{title}</h3>
      <p id={`${name}-text`}>{children}</p>
      <div class="actions">
        <button type="button" class="danger" data-testid={confirmTestId} disabled={busy} aria-busy={busy ? 'true' : undefined} onClick={onConfirm}>
          {confirm}
        </button>
        <button type="button" autoFocus onClick={onCancel}>Cancel</button>
      </div>
    </dialog>
  );
}

/** An alert for a failed action (role=alert) or a status line for a done one (role=status). */
export function Outcome({ error, done, testId }: { error: string | null; done: string | null; testId: string }) {
  if (error) return <p class="error" role="alert" data-testid={`${testId}-error`}>{error}</p>;
  return done ? <p class="success" role="status" data-testid={testId}>{done}</p> : null;
}

/** The Edit button of a row (`edit-<kind>-<key>`), named for screen readers. */
export function EditButton({ kind, name, onClick }: { kind: string; name: string; onClick: () => void }) {
  return (
    <button type="button" data-testid={`edit-${kind}-${name}`} onClick={onClick}>
      Edit<span class="sr-only"> {kind} {name}</span>
    </button>
  );
}
