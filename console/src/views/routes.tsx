/** Routes: the list from the admin API, and an edit form (paths, methods) saved with PATCH + If-Match. */
import type { Ref } from 'preact';
import { EditItem, type EditSpec } from '../form.js';
import { DASH, list } from '../format.js';
import { EditButton, ListPanel, ViewTitle, useEditing, useList } from '../ui.js';

interface Route {
  id?: string;
  name?: string;
  service?: string;
  paths?: string[];
  methods?: string[];
  hosts?: string[];
  compose?: unknown;
}

const keyOf = (r: Route) => r.name ?? r.id ?? '';
const split = (v: string) => v.split(',').map((s) => s.trim()).filter((s) => s !== '');
const same = (a: string[] | undefined, b: string[]) => (a ?? []).length === b.length && b.every((v, i) => a![i] === v);

const EDIT: EditSpec<Route, 'paths' | 'methods'> = {
  kind: 'route',
  collection: 'routes',
  fields: [
    { name: 'paths', label: 'Paths', hint: 'Comma-separated, e.g. /orders, /v2/orders' },
    { name: 'methods', label: 'Methods', hint: 'Comma-separated, e.g. GET, POST. Empty: every method.' },
  ],
  toValues: (r) => ({ paths: (r.paths ?? []).join(', '), methods: (r.methods ?? []).join(', ') }),
  toPatch(route, values) {
    const p = split(values.paths);
    const m = split(values.methods).map((s) => s.toUpperCase());
    const patch: Record<string, unknown> = {};
    if (!same(route.paths, p)) patch.paths = p;
    if (!same(route.methods, m)) patch.methods = m.length ? m : null;
    return patch;
  },
};

export function Routes({ readOnly, titleRef }: { readOnly: boolean; titleRef: Ref<HTMLHeadingElement> }) {
  const routes = useList<Route>('routes', keyOf);
  const { editing, open, close } = useEditing('route');

  return (
    <>
      <ViewTitle title="Routes" titleRef={titleRef} readOnly={readOnly} noun="routes" />
      {editing !== null ? (
        <EditItem key={editing} spec={EDIT} name={editing} onClose={close} onSaved={(r) => routes.replace(editing, r)} />
      ) : null}
      <ListPanel id="h-route-list" title="All routes" empty="No routes yet." list={routes} testId="routes-table"
        head={<><th scope="col">Name</th><th scope="col">Service</th><th scope="col">Paths</th><th scope="col">Methods</th><th scope="col">Hosts</th><th scope="col"><span class="sr-only">Actions</span></th></>}
        row={(r) => (
          <tr key={keyOf(r)} data-testid={`route-row-${keyOf(r)}`} class={editing === keyOf(r) ? 'selected' : undefined}>
            <th scope="row">{r.name ?? <span class="muted">{r.id}</span>}</th>
            <td>{r.service ?? (r.compose ? 'composition' : DASH)}</td>
            <td class="mono">{list(r.paths)}</td>
            <td>{list(r.methods)}</td>
            <td>{list(r.hosts)}</td>
            <td>
              {readOnly ? null : <EditButton kind="route" name={keyOf(r)} onClick={() => open(keyOf(r))} />}
            </td>
          </tr>
        )} />
    </>
  );
}
