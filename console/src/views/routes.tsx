/** Routes: the list from the admin API, and an edit form (paths, methods) saved with PATCH + If-Match. */
import { useEffect, useRef, useState } from 'preact/hooks';
import type { Ref } from 'preact';
import { ApiError, describe, request, type FieldError } from '../api.js';
import { DASH, list } from '../format.js';

interface Route {
  id?: string;
  name?: string;
  service?: string;
  paths?: string[];
  methods?: string[];
  hosts?: string[];
  compose?: unknown;
}
interface Page<T> { data: T[]; total: number }

const keyOf = (r: Route) => r.name ?? r.id ?? '';
const split = (v: string) => v.split(',').map((s) => s.trim()).filter((s) => s !== '');
const same = (a: string[] | undefined, b: string[]) => (a ?? []).length === b.length && b.every((v, i) => a![i] === v);

type Field = 'paths' | 'methods';
/** `paths[0]`, `paths`, `routes/x.paths[1]` -> paths; null for errors about anything else. */
function fieldOf(path: string): Field | null {
  const m = /^(?:routes\/[^.]+\.)?(paths|methods)(?:$|[[.])/.exec(path);
  return m ? (m[1] as Field) : null;
}

export function Routes({ readOnly, titleRef }: { readOnly: boolean; titleRef: Ref<HTMLHeadingElement> }) {
  const [routes, setRoutes] = useState<Route[] | null>(null);
  const [total, setTotal] = useState(0);
  const [loadError, setLoadError] = useState<string | null>(null);
  const [editing, setEditing] = useState<string | null>(null);

  const load = async () => {
    setLoadError(null);
    try {
      const { body } = await request<Page<Route>>('GET', '/api/routes?limit=1000');
      setRoutes(body.data);
      setTotal(body.total);
    } catch (err) {
      setLoadError(describe(err));
    }
  };
  useEffect(() => void load(), []);

  const close = (name: string) => {
    setEditing(null);
    // Back to the Edit button that opened the form.
    requestAnimationFrame(() => document.querySelector<HTMLElement>(`[data-testid="edit-route-${CSS.escape(name)}"]`)?.focus());
  };

  return (
    <>
      <h2 id="view-title" tabIndex={-1} ref={titleRef}>Routes</h2>
      {readOnly ? <p class="note">Your token is read-only: routes can be viewed, not changed.</p> : null}
      {editing !== null ? (
        <EditRoute key={editing} name={editing} onClose={() => close(editing)} onSaved={(r) => setRoutes((rs) => rs && rs.map((x) => (keyOf(x) === editing ? r : x)))} />
      ) : null}
      <section class="panel" aria-labelledby="h-route-list">
        <h3 id="h-route-list">All routes{routes ? ` (${total})` : ''}</h3>
        {loadError ? <p class="error" role="alert">{loadError} <button type="button" onClick={() => void load()}>Try again</button></p> : null}
        {routes === null && !loadError ? <p class="empty">Loading…</p> : null}
        {routes && routes.length === 0 ? <p class="empty">No routes yet.</p> : null}
        {routes && routes.length ? (
          <div class="table-wrap">
            <table aria-labelledby="h-route-list" data-testid="routes-table">
              <thead>
                <tr><th scope="col">Name</th><th scope="col">Service</th><th scope="col">Paths</th><th scope="col">Methods</th><th scope="col">Hosts</th><th scope="col"><span class="sr-only">Actions</span></th></tr>
              </thead>
              <tbody>
                {routes.map((r) => (
                  <tr key={keyOf(r)} data-testid={`route-row-${keyOf(r)}`} class={editing === keyOf(r) ? 'selected' : undefined}>
                    <th scope="row">{r.name ?? <span class="muted">{r.id}</span>}</th>
                    <td>{r.service ?? (r.compose ? 'composition' : DASH)}</td>
                    <td class="mono">{list(r.paths)}</td>
                    <td>{list(r.methods)}</td>
                    <td>{list(r.hosts)}</td>
                    <td>
                      {readOnly ? null : (
                        <button type="button" data-testid={`edit-route-${keyOf(r)}`} onClick={() => setEditing(keyOf(r))}>
                          Edit<span class="sr-only"> route {keyOf(r)}</span>
                        </button>
                      )}
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        ) : null}
      </section>
    </>
  );
}

function EditRoute({ name, onClose, onSaved }: { name: string; onClose: () => void; onSaved: (r: Route) => void }) {
  const [route, setRoute] = useState<Route | null>(null);
  const [etag, setEtag] = useState<string | null>(null);
  const [paths, setPaths] = useState('');
  const [methods, setMethods] = useState('');
  const [busy, setBusy] = useState(false);
  const [fieldErrors, setFieldErrors] = useState<Record<Field, string[]>>({ paths: [], methods: [] });
  const [formError, setFormError] = useState<{ text: string; others: FieldError[]; stale: boolean } | null>(null);
  const [saved, setSaved] = useState<string | null>(null);
  const first = useRef<HTMLInputElement>(null);
  const url = `/api/routes/${encodeURIComponent(name)}`;

  const fetchRoute = async () => {
    setFormError(null);
    setFieldErrors({ paths: [], methods: [] });
    try {
      const { body, headers } = await request<Route>('GET', url);
      setRoute(body);
      setEtag(headers.get('etag'));
      setPaths((body.paths ?? []).join(', '));
      setMethods((body.methods ?? []).join(', '));
      requestAnimationFrame(() => first.current?.focus());
    } catch (err) {
      setFormError({ text: describe(err), others: [], stale: false });
    }
  };
  useEffect(() => void fetchRoute(), [name]);

  const save = async (e: Event) => {
    e.preventDefault();
    if (!route || busy) return;
    setBusy(true);
    setSaved(null);
    setFormError(null);
    setFieldErrors({ paths: [], methods: [] });
    const p = split(paths);
    const m = split(methods).map((s) => s.toUpperCase());
    const patch: Record<string, unknown> = {};
    if (!same(route.paths, p)) patch.paths = p;
    if (!same(route.methods, m)) patch.methods = m.length ? m : null;
    try {
      const headers: Record<string, string> = { 'content-type': 'application/merge-patch+json' };
      if (etag) headers['if-match'] = etag;
      const res = await request<Route>('PATCH', url, { body: patch, headers });
      const revision = res.headers.get('x-config-revision');
      setSaved(Object.keys(patch).length === 0 && !revision ? 'Nothing changed.' : `Saved. Configuration revision ${revision ?? DASH}.`);
      if (res.body && typeof res.body === 'object') {
        setRoute(res.body);
        setPaths((res.body.paths ?? []).join(', '));
        setMethods((res.body.methods ?? []).join(', '));
        onSaved(res.body);
      }
      setEtag(res.headers.get('etag'));
    } catch (err) {
      if (err instanceof ApiError && err.status === 412) {
        setFormError({ text: 'This route was changed by someone else since you opened it: reload it, then make your change again.', others: [], stale: true });
      } else if (err instanceof ApiError && err.status === 400 && Array.isArray(err.problem.errors)) {
        const fe: Record<Field, string[]> = { paths: [], methods: [] };
        const others: FieldError[] = [];
        for (const x of err.problem.errors) {
          const f = fieldOf(String(x.path));
          if (f) fe[f].push(`${x.path}: ${x.message}`);
          else others.push(x);
        }
        setFieldErrors(fe);
        setFormError({ text: describe(err), others, stale: false });
      } else {
        setFormError({ text: describe(err), others: [], stale: false });
      }
    } finally {
      setBusy(false);
    }
  };

  const fieldError = (f: Field) =>
    fieldErrors[f].length ? (
      <div class="field-error" id={`route-${f}-error`} role="alert" data-testid={`error-${f}`}>
        {fieldErrors[f].map((m) => <p key={m}>{m}</p>)}
      </div>
    ) : null;
  const describedBy = (f: Field) => [`route-${f}-hint`, fieldErrors[f].length ? `route-${f}-error` : ''].filter(Boolean).join(' ');

  return (
    <section class="panel edit" aria-labelledby="h-edit" data-testid="route-form">
      <h3 id="h-edit">Edit route {name}</h3>
      {formError ? (
        <div class="error" role="alert" data-testid="form-error">
          <p>{formError.text}</p>
          {formError.others.length ? <ul>{formError.others.map((x) => <li key={x.path + x.message}>{x.path}: {x.message}</li>)}</ul> : null}
          {formError.stale ? <button type="button" data-testid="reload-route" onClick={() => void fetchRoute()}>Reload route</button> : null}
        </div>
      ) : null}
      {route === null && !formError ? <p class="empty">Loading…</p> : null}
      {route !== null ? (
        <form onSubmit={save} noValidate>
          <div class="field">
            <label for="route-paths">Paths</label>
            <input id="route-paths" name="paths" type="text" ref={first} value={paths} autoComplete="off" spellcheck={false}
              aria-invalid={fieldErrors.paths.length ? 'true' : undefined} aria-describedby={describedBy('paths')}
              onInput={(e) => setPaths((e.currentTarget as HTMLInputElement).value)} />
            <p class="hint" id="route-paths-hint">Comma-separated, e.g. /orders, /v2/orders</p>
            {fieldError('paths')}
          </div>
          <div class="field">
            <label for="route-methods">Methods</label>
            <input id="route-methods" name="methods" type="text" value={methods} autoComplete="off" spellcheck={false}
              aria-invalid={fieldErrors.methods.length ? 'true' : undefined} aria-describedby={describedBy('methods')}
              onInput={(e) => setMethods((e.currentTarget as HTMLInputElement).value)} />
            <p class="hint" id="route-methods-hint">Comma-separated, e.g. GET, POST. Empty: every method.</p>
            {fieldError('methods')}
          </div>
          <div class="actions">
            <button type="submit" class="primary" disabled={busy} aria-busy={busy ? 'true' : undefined}>Save</button>
            <button type="button" onClick={onClose}>Cancel</button>
          </div>
          {saved ? <p class="success" role="status" data-testid="save-result">{saved}</p> : null}
        </form>
      ) : null}
    </section>
  );
}
