/**
 * Consumers: the list (name, plan, groups, how many credentials — never their secrets), a form
 * creating one (POST), and delete with a confirm dialog (DELETE + If-Match).
 */
import { useEffect, useState } from 'preact/hooks';
import type { Ref } from 'preact';
import { describe, freshEtag, ifMatch, request, revisionOf } from '../api.js';
import { FormError, Fields, Submit, useForm, type FieldDef, type Values } from '../form.js';
import { DASH, list } from '../format.js';
import { ConfirmDialog, ListPanel, Outcome, ViewTitle, focusLater, useList } from '../ui.js';

interface Consumer { id?: string; name: string; plan?: string; groups?: string[] }

type Field = 'name' | 'plan';
const NEW: readonly FieldDef<Field>[] = [
  { name: 'name', label: 'Name', hint: 'Letters, digits and . _ ~ - (not first).' },
  { name: 'plan', label: 'Plan (optional)' },
];
const BLANK: Values<Field> = { name: '', plan: '' };

/**
 * Credentials per consumer, counted in the config export: one request, and the export never
 * carries credentials' secrets (only `?secrets=true` would, which the console never asks for).
 */
async function credentialCounts(): Promise<Map<string, number>> {
  const { body } = await request<{ consumers?: { name?: string; credentials?: unknown[] }[] }>('GET', '/api/config?format=json');
  return new Map((body.consumers ?? []).map((c) => [String(c.name), c.credentials?.length ?? 0]));
}

export function Consumers({ readOnly, titleRef }: { readOnly: boolean; titleRef: Ref<HTMLHeadingElement> }) {
  const consumers = useList<Consumer>('consumers', (c) => c.name);
  const [counts, setCounts] = useState<Map<string, number> | null>(null);
  const [deleting, setDeleting] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const [done, setDone] = useState<string | null>(null);
  const [error, setError] = useState<string | null>(null);

  useEffect(() => {
    if (consumers.items) credentialCounts().then(setCounts, () => setCounts(null));
  }, [consumers.items]);

  const remove = async () => {
    if (deleting === null || busy) return;
    const name = deleting;
    const url = `/api/consumers/${encodeURIComponent(name)}`;
    setBusy(true);
    setDone(null);
    setError(null);
    try {
      const res = await request('DELETE', url, { headers: ifMatch(await freshEtag(url)) });
      setDone(`Consumer ${name} deleted. ${revisionOf(res.headers)}`);
      await consumers.load();
    } catch (err) {
      setError(`Consumer ${name} was not deleted: ${describe(err)}`);
    } finally {
      setBusy(false);
      setDeleting(null);
      focusLater(`delete-consumer-${name}`, 'h-consumer-list');
    }
  };

  return (
    <>
      <ViewTitle title="Consumers" titleRef={titleRef} readOnly={readOnly} noun="consumers" />
      <Outcome error={error} done={done} testId="consumer-result" />
      {readOnly ? null : (
        <NewConsumer onCreated={(name, headers) => {
          setError(null);
          setDone(`Consumer ${name} created. ${revisionOf(headers)}`);
          void consumers.load();
        }} />
      )}
      <ListPanel id="h-consumer-list" title="All consumers" empty="No consumers yet." list={consumers} testId="consumers-table"
        head={<><th scope="col">Name</th><th scope="col">Plan</th><th scope="col">Groups</th><th scope="col" class="n">Credentials</th><th scope="col"><span class="sr-only">Actions</span></th></>}
        row={(c) => (
          <tr key={c.name} data-testid={`consumer-row-${c.name}`}>
            <th scope="row">{c.name}</th>
            <td>{c.plan ?? DASH}</td>
            <td>{list(c.groups)}</td>
            <td class="n">{counts?.get(c.name) ?? DASH}</td>
            <td>
              {readOnly ? null : (
                <button type="button" class="danger" data-testid={`delete-consumer-${c.name}`} onClick={() => setDeleting(c.name)}>
                  Delete<span class="sr-only"> consumer {c.name}</span>
                </button>
              )}
            </td>
          </tr>
        )} />
      {readOnly ? null : (
        <ConfirmDialog open={deleting !== null} name="consumer-delete" title={`Delete consumer ${deleting ?? ''}?`} confirm="Delete consumer"
          busy={busy} onConfirm={() => void remove()} onCancel={() => setDeleting(null)} testId="delete-dialog" confirmTestId="confirm-delete">
          Its credentials and its own plugin bindings go with it, so its keys stop working. The deletion is a new revision, which can be rolled back.
        </ConfirmDialog>
      )}
    </>
  );
}

function NewConsumer({ onCreated }: { onCreated: (name: string, headers: Headers) => void }) {
  const form = useForm('consumers', NEW.map((f) => f.name));
  const [values, setValues] = useState<Values<Field>>(BLANK);

  const create = async (e: Event) => {
    e.preventDefault();
    const name = values.name.trim();
    const plan = values.plan.trim();
    await form.run(async () => {
      const res = await request('POST', '/api/consumers', { body: plan ? { name, plan } : { name } });
      setValues(BLANK);
      onCreated(name, res.headers);
    });
  };

  return (
    <section class="panel edit" aria-labelledby="h-new-consumer">
      <h3 id="h-new-consumer">New consumer</h3>
      <FormError problem={form.problem} />
      <form onSubmit={create} noValidate data-testid="new-consumer-form">
        <Fields kind="consumer" defs={NEW} values={values} errors={form.errors} set={(f, v) => setValues((vs) => ({ ...vs, [f]: v }))} />
        <div class="actions"><Submit busy={form.busy}>Create consumer</Submit></div>
      </form>
    </section>
  );
}
