/**
 * Forms over the admin API: text fields with their validation errors shown at the field, the
 * form's own error (with the errors that name no field, and a reload after a 412), and the edit
 * panel used by Routes and Services (GET the item, PATCH a merge patch with If-Match).
 */
import { useEffect, useRef, useState } from 'preact/hooks';
import type { ComponentChildren, Ref } from 'preact';
import { ApiError, describe, ifMatch, request, type FieldError } from './api.js';
import { DASH } from './format.js';

export type Values<F extends string> = Record<F, string>;
type Errors<F extends string> = Record<F, string[]>;
interface Problem { text: string; others: FieldError[]; stale: boolean }

export interface FieldDef<F extends string> {
  name: F;
  label: string;
  hint?: string;
  inputMode?: 'numeric' | 'url';
}

/** `paths[0]`, `paths`, `routes/x.paths[1]` -> paths (for collection `routes`); null for errors about anything else. */
function fieldOf<F extends string>(collection: string, fields: readonly F[], path: string): F | null {
  const own = path.startsWith(`${collection}/`) ? path.replace(/^[^.]*\./, '') : path;
  const head = /^([A-Za-z_]+)(?:$|[[.])/.exec(own)?.[1];
  return fields.find((f) => f === head) ?? null;
}

/** A form's errors and busy state; `run` makes a change, and shows its failure. */
export function useForm<F extends string>(collection: string, fields: readonly F[]) {
  const none = () => Object.fromEntries(fields.map((f) => [f, []])) as unknown as Errors<F>;
  const [errors, setErrors] = useState<Errors<F>>(none);
  const [problem, setProblem] = useState<Problem | null>(null);
  const [busy, setBusy] = useState(false);

  const clear = () => {
    setProblem(null);
    setErrors(none());
  };
  /** A 400's errors go to their fields (the rest are listed in the form's error); a 412 is `stale` when `staleText` is given. */
  const fail = (err: unknown, staleText?: string) => {
    const fe = none();
    const others: FieldError[] = [];
    if (staleText && err instanceof ApiError && err.status === 412) return setProblem({ text: staleText, others, stale: true });
    if (err instanceof ApiError && err.status === 400 && Array.isArray(err.problem.errors)) {
      for (const x of err.problem.errors) {
        const f = fieldOf(collection, fields, String(x.path));
        if (f) fe[f].push(`${x.path}: ${x.message}`);
        else others.push(x);
      }
    }
    setErrors(fe);
    setProblem({ text: describe(err), others, stale: false });
  };
  /** Runs `change` (one at a time); true when it succeeded. */
  const run = async (change: () => Promise<void>, staleText?: string): Promise<boolean> => {
    if (busy) return false;
    setBusy(true);
    clear();
    try {
      await change();
      return true;
    } catch (err) {
      fail(err, staleText);
      return false;
    } finally {
      setBusy(false);
    }
  };
  return { errors, problem, busy, clear, fail, run };
}

/** The form's own error, role=alert: the message, errors that name no field, and (after a 412) a reload button. */
export function FormError({ problem, reload }: { problem: Problem | null; reload?: { label: string; testId: string; run: () => void } }) {
  if (!problem) return null;
  return (
    <div class="error" role="alert" data-testid="form-error">
      <p>{problem.text}</p>
      {problem.others.length ? <ul>{problem.others.map((x) => <li key={x.path + x.message}>{x.path}: {x.message}</li>)}</ul> : null}
      {problem.stale && reload ? <button type="button" data-testid={reload.testId} onClick={reload.run}>{reload.label}</button> : null}
    </div>
  );
}

/** Labelled text inputs `<kind>-<name>`, each with its hint and its errors (`error-<name>`, role=alert, aria-invalid). */
export function Fields<F extends string>({ kind, defs, values, errors, set, firstRef }: {
  kind: string; defs: readonly FieldDef<F>[]; values: Values<F>; errors: Errors<F>;
  set: (field: F, value: string) => void; firstRef?: Ref<HTMLInputElement>;
}) {
  return (
    <>
      {defs.map((d, i) => {
        const id = `${kind}-${d.name}`;
        const errs = errors[d.name];
        return (
          <div class="field" key={d.name}>
            <label for={id}>{d.label}</label>
            <input id={id} name={d.name} type="text" ref={i === 0 ? firstRef : undefined} value={values[d.name]} autoComplete="off" spellcheck={false}
              inputMode={d.inputMode} aria-invalid={errs.length ? 'true' : undefined}
              aria-describedby={[d.hint ? `${id}-hint` : '', errs.length ? `${id}-error` : ''].filter(Boolean).join(' ') || undefined}
              onInput={(e) => set(d.name, (e.currentTarget as HTMLInputElement).value)} />
            {d.hint ? <p class="hint" id={`${id}-hint`}>{d.hint}</p> : null}
            {errs.length ? (
              <div class="field-error" id={`${id}-error`} role="alert" data-testid={`error-${d.name}`}>
                {errs.map((m) => <p key={m}>{m}</p>)}
              </div>
            ) : null}
          </div>
        );
      })}
    </>
  );
}

export function Submit({ busy, children }: { busy: boolean; children: ComponentChildren }) {
  return <button type="submit" class="primary" disabled={busy} aria-busy={busy ? 'true' : undefined}>{children}</button>;
}

export interface EditSpec<T, F extends string> {
  /** 'route': ids `route-<field>`, test ids `route-form`, `reload-route`. */
  kind: string;
  /** The admin API collection: `/api/<collection>/<name>`. */
  collection: string;
  fields: readonly FieldDef<F>[];
  toValues: (item: T) => Values<F>;
  /** The merge patch for the changed fields. */
  toPatch: (item: T, values: Values<F>) => Record<string, unknown>;
}

/** Edit an item: GET it (and its ETag), PATCH the changes with If-Match; validation errors at their fields. */
export function EditItem<T extends object, F extends string>({ spec, name, onClose, onSaved }: {
  spec: EditSpec<T, F>; name: string; onClose: () => void; onSaved: (item: T) => void;
}) {
  const { kind, collection } = spec;
  const form = useForm(collection, spec.fields.map((f) => f.name));
  const [item, setItem] = useState<T | null>(null);
  const [values, setValues] = useState<Values<F> | null>(null);
  const [etag, setEtag] = useState<string | null>(null);
  const [saved, setSaved] = useState<string | null>(null);
  const first = useRef<HTMLInputElement>(null);
  const url = `/api/${collection}/${encodeURIComponent(name)}`;

  const show = (x: T) => {
    setItem(x);
    setValues(spec.toValues(x));
  };
  const fetchItem = async () => {
    form.clear();
    try {
      const { body, headers } = await request<T>('GET', url);
      show(body);
      setEtag(headers.get('etag'));
      requestAnimationFrame(() => first.current?.focus());
    } catch (err) {
      form.fail(err);
    }
  };
  useEffect(() => void fetchItem(), [name]);

  const save = async (e: Event) => {
    e.preventDefault();
    if (!item || !values || form.busy) return;
    setSaved(null);
    const patch = spec.toPatch(item, values);
    await form.run(async () => {
      const res = await request<T>('PATCH', url, { body: patch, headers: { 'content-type': 'application/merge-patch+json', ...ifMatch(etag) } });
      const revision = res.headers.get('x-config-revision');
      setSaved(Object.keys(patch).length === 0 && !revision ? 'Nothing changed.' : `Saved. Configuration revision ${revision ?? DASH}.`);
      if (res.body && typeof res.body === 'object') {
        show(res.body);
        onSaved(res.body);
      }
      setEtag(res.headers.get('etag'));
    }, `This ${kind} was changed by someone else since you opened it: reload it, then make your change again.`);
  };

  return (
    <section class="panel edit" aria-labelledby="h-edit" data-testid={`${kind}-form`}>
      <h3 id="h-edit">Edit {kind} {name}</h3>
      <FormError problem={form.problem} reload={{ label: `Reload ${kind}`, testId: `reload-${kind}`, run: () => void fetchItem() }} />
      {item === null && !form.problem ? <p class="empty">Loading…</p> : null}
      {values !== null ? (
        <form onSubmit={save} noValidate>
          <Fields kind={kind} defs={spec.fields} values={values} errors={form.errors} firstRef={first}
            set={(f, v) => setValues((vs) => vs && { ...vs, [f]: v })} />
          <div class="actions">
            <Submit busy={form.busy}>Save</Submit>
            <button type="button" onClick={onClose}>Cancel</button>
          </div>
          {saved ? <p class="success" role="status" data-testid="save-result">{saved}</p> : null}
        </form>
      ) : null}
    </section>
  );
}
