/** Plugins: every binding (read-only), with an Enabled checkbox saved as a merge patch with If-Match. */
import { useState } from 'preact/hooks';
import type { Ref } from 'preact';
import { describe, freshEtag, ifMatch, request, revisionOf } from '../api.js';
import { ListPanel, Outcome, ViewTitle, tid, useList } from '../ui.js';

interface Plugin { id: string; name: string; scope: string; enabled?: boolean }

export function Plugins({ readOnly, titleRef }: { readOnly: boolean; titleRef: Ref<HTMLHeadingElement> }) {
  const plugins = useList<Plugin>('plugins', (p) => p.id);
  const [busy, setBusy] = useState<string | null>(null);
  const [done, setDone] = useState<string | null>(null);
  const [error, setError] = useState<string | null>(null);

  const toggle = async (p: Plugin, enabled: boolean) => {
    const url = `/api/plugins/${encodeURIComponent(p.id)}`;
    setBusy(p.id);
    setDone(null);
    setError(null);
    plugins.replace(p.id, { ...p, enabled }); // shown at once; put back from the API if the change fails
    try {
      const res = await request<Plugin>('PATCH', url, { body: { enabled }, headers: { 'content-type': 'application/merge-patch+json', ...ifMatch(await freshEtag(url)) } });
      plugins.replace(p.id, res.body);
      setDone(`${p.id} ${res.body.enabled === false ? 'disabled' : 'enabled'}. ${revisionOf(res.headers)}`);
    } catch (err) {
      setError(`${p.id} was not changed: ${describe(err)}`);
      await plugins.load();
    } finally {
      setBusy(null);
    }
  };

  return (
    <>
      <ViewTitle title="Plugins" titleRef={titleRef} readOnly={readOnly} noun="plugins" />
      <Outcome error={error} done={done} testId="plugin-result" />
      <ListPanel id="h-plugin-list" title="All plugin bindings" empty="No plugins are bound." list={plugins} testId="plugins-table"
        head={<><th scope="col">Id</th><th scope="col">Plugin</th><th scope="col">Scope</th><th scope="col">Enabled</th></>}
        row={(p) => (
          <tr key={p.id} data-testid={`plugin-row-${tid(p.id)}`}>
            <th scope="row" class="mono">{p.id}</th>
            <td>{p.name}</td>
            <td>{p.scope}</td>
            <td>
              {readOnly ? (p.enabled === false ? 'no' : 'yes') : (
                <label class="check">
                  {/* aria-disabled, not disabled, while a change is saved: a disabled box would lose the keyboard focus */}
                  <input type="checkbox" checked={p.enabled !== false} aria-disabled={busy !== null ? 'true' : undefined} aria-busy={busy === p.id ? 'true' : undefined}
                    onChange={(e) => {
                      const box = e.currentTarget as HTMLInputElement;
                      if (busy === null) void toggle(p, box.checked);
                      else box.checked = !box.checked;
                    }} />
                  <span class="sr-only">Enabled {p.id}</span>
                </label>
              )}
            </td>
          </tr>
        )} />
    </>
  );
}
