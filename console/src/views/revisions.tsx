/** Revisions: the audit log, a revision's diff against the current config, and rollback (confirmed in a <dialog>). */
import { useEffect, useRef, useState } from 'preact/hooks';
import type { Ref } from 'preact';
import { describe, request } from '../api.js';
import { diffLines, hunks, type Piece } from '../diff.js';
import { when } from '../format.js';
import { ConfirmDialog } from '../ui.js';

interface Revision { revision: number; at: string; actor: string; action: string }
interface RevisionPage { data: Revision[]; next: string | null }
interface Compared { revision: number; current: number | null; pieces: Piece[]; changed: boolean }

const pretty = (doc: unknown) => JSON.stringify(doc ?? null, null, 2).split('\n');

export function Revisions({ readOnly, titleRef }: { readOnly: boolean; titleRef: Ref<HTMLHeadingElement> }) {
  const [items, setItems] = useState<Revision[] | null>(null);
  const [next, setNext] = useState<string | null>(null);
  const [loadError, setLoadError] = useState<string | null>(null);
  const [selected, setSelected] = useState<number | null>(null);
  const [compared, setCompared] = useState<Compared | null>(null);
  const [diffError, setDiffError] = useState<string | null>(null);
  const [result, setResult] = useState<string | null>(null);
  const [rollbackError, setRollbackError] = useState<string | null>(null);
  const [confirming, setConfirming] = useState(false);
  const [busy, setBusy] = useState(false);
  const diffTitle = useRef<HTMLHeadingElement>(null);

  const load = async (more = false) => {
    setLoadError(null);
    try {
      const { body } = await request<RevisionPage>('GET', more && next ? next : '/api/revisions?limit=50');
      setItems((old) => (more && old ? [...old, ...body.data] : body.data));
      setNext(body.next ?? null);
    } catch (err) {
      setLoadError(describe(err));
    }
  };
  useEffect(() => void load(), []);

  const show = async (n: number, focus = true) => {
    setSelected(n);
    setCompared(null);
    setDiffError(null);
    setRollbackError(null);
    try {
      const [rev, cur] = await Promise.all([
        request<{ document: unknown }>('GET', `/api/revisions/${n}`),
        request<unknown>('GET', '/api/config?format=json'),
      ]);
      const m = /^(?:W\/)?"r(\d+)"$/.exec(cur.headers.get('etag') ?? '');
      const ops = diffLines(pretty(cur.body), pretty(rev.body.document));
      setCompared({ revision: n, current: m ? Number(m[1]) : null, pieces: hunks(ops), changed: ops.some((o) => o.t !== ' ') });
    } catch (err) {
      setDiffError(describe(err));
    }
    if (focus) requestAnimationFrame(() => diffTitle.current?.focus());
  };

  const rollback = async () => {
    if (selected === null || busy) return;
    const n = selected;
    setBusy(true);
    setResult(null);
    setRollbackError(null);
    try {
      const { body } = await request<{ revision: number; rolled_back_to: number }>('POST', `/api/revisions/${n}/rollback`);
      setResult(`Rolled back to revision ${body.rolled_back_to ?? n}: the configuration is now at revision ${body.revision}.`);
      setConfirming(false);
      await load();
      await show(n, false);
    } catch (err) {
      setConfirming(false);
      setRollbackError(describe(err));
    } finally {
      setBusy(false);
      requestAnimationFrame(() => document.getElementById('rollback-button')?.focus());
    }
  };

  return (
    <>
      <h2 id="view-title" tabIndex={-1} ref={titleRef}>Revisions</h2>
      {result ? <p class="success" role="status" data-testid="rollback-result">{result}</p> : null}
      <div class="columns revisions">
        <section class="panel" aria-labelledby="h-revision-list">
          <h3 id="h-revision-list">History</h3>
          {loadError ? <p class="error" role="alert">{loadError} <button type="button" onClick={() => void load()}>Try again</button></p> : null}
          {items === null && !loadError ? <p class="empty">Loading…</p> : null}
          {items && items.length === 0 ? <p class="empty">No revisions yet.</p> : null}
          {items && items.length ? (
            <div class="table-wrap">
              <table aria-labelledby="h-revision-list" data-testid="revisions-table">
                <thead><tr><th scope="col" class="n">Revision</th><th scope="col">When</th><th scope="col">Who</th><th scope="col">What</th><th scope="col"><span class="sr-only">Actions</span></th></tr></thead>
                <tbody>
                  {items.map((r) => (
                    <tr key={r.revision} data-testid={`revision-row-${r.revision}`} class={selected === r.revision ? 'selected' : undefined}>
                      <th scope="row" class="n">{r.revision}</th>
                      <td><time dateTime={r.at}>{when(r.at)}</time></td>
                      <td>{r.actor}</td>
                      <td class="mono">{r.action}</td>
                      <td>
                        <button type="button" data-testid={`show-revision-${r.revision}`} onClick={() => void show(r.revision)}>
                          Show diff<span class="sr-only"> of revision {r.revision}</span>
                        </button>
                      </td>
                    </tr>
                  ))}
                </tbody>
              </table>
            </div>
          ) : null}
          {next ? <button type="button" onClick={() => void load(true)}>Older revisions</button> : null}
        </section>

        <section class="panel" aria-labelledby="h-diff" data-testid="revision-detail">
          <h3 id="h-diff" tabIndex={-1} ref={diffTitle}>{selected === null ? 'Compare' : `Revision ${selected} against the current configuration`}</h3>
          {selected === null ? <p class="empty">Choose a revision to see how it differs from the current configuration.</p> : null}
          {diffError ? <p class="error" role="alert">{diffError}</p> : null}
          {selected !== null && !compared && !diffError ? <p class="empty">Loading…</p> : null}
          {compared ? (
            <>
              {compared.changed ? (
                <>
                  <p class="note">
                    Lines marked <span class="del-key">−</span> are in the current configuration{compared.current !== null ? ` (revision ${compared.current})` : ''};
                    lines marked <span class="add-key">+</span> are in revision {compared.revision}. Rolling back makes these changes.
                  </p>
                  <pre class="diff" data-testid="revision-diff" tabIndex={0} aria-label={`Differences between the current configuration and revision ${compared.revision}`}>
                    {compared.pieces.map((p, i) =>
                      p.t === 'skip'
                        ? <span key={i} class="line skip">{`  … ${p.n} unchanged line${p.n === 1 ? '' : 's'}\n`}</span>
                        : <span key={i} class={`line ${p.t === '+' ? 'add' : p.t === '-' ? 'del' : 'same'}`}>{`${p.t === '-' ? '−' : p.t} ${p.s}\n`}</span>,
                    )}
                  </pre>
                </>
              ) : (
                <p data-testid="revision-diff" class="note">Revision {compared.revision} is the same as the current configuration.</p>
              )}
              {readOnly ? null : (
                <p class="actions">
                  <button type="button" id="rollback-button" data-testid="rollback-button" class="danger" onClick={() => setConfirming(true)}>
                    Roll back to revision {compared.revision}
                  </button>
                </p>
              )}
            </>
          ) : null}
          {rollbackError ? <p class="error" role="alert" data-testid="rollback-error">{rollbackError}</p> : null}
        </section>
      </div>

      <ConfirmDialog open={confirming} name="rollback" title={`Roll back to revision ${selected}?`} confirm="Confirm rollback" busy={busy}
        onConfirm={() => void rollback()} onCancel={() => setConfirming(false)} testId="rollback-dialog" confirmTestId="confirm-rollback">
        This writes a new revision holding revision {selected}'s configuration. The gateway applies it at once; the rollback can itself be rolled back.
      </ConfirmDialog>
    </>
  );
}
