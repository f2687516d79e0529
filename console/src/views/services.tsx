/** Services: the list from the admin API, and an edit form (url, retries) saved with PATCH + If-Match. */
import type { Ref } from 'preact';
import { EditItem, type EditSpec, type Values } from '../form.js';
import { DASH, list } from '../format.js';
import { EditButton, ListPanel, ViewTitle, useEditing, useList } from '../ui.js';

interface Service {
  id?: string;
  name: string;
  url?: string;
  upstream?: { targets?: { url?: string }[] };
  retries?: number;
  tags?: string[];
}

type Field = 'url' | 'retries';
const toValues = (s: Service): Values<Field> => ({ url: s.url ?? '', retries: s.retries === undefined ? '' : String(s.retries) });

const EDIT: EditSpec<Service, Field> = {
  kind: 'service',
  collection: 'services',
  fields: [
    { name: 'url', label: 'URL', inputMode: 'url', hint: 'The upstream, http:// or https://, e.g. http://10.0.0.5:8080. A service with upstream targets has no URL: its targets are edited through /api/upstreams.' },
    { name: 'retries', label: 'Retries', inputMode: 'numeric', hint: 'Retries of a failed attempt on another target, 0 to 10. Empty: the default (0).' },
  ],
  toValues,
  toPatch(service, values) {
    const old = toValues(service);
    const patch: Record<string, unknown> = {};
    const url = values.url.trim();
    if (url !== old.url) patch.url = url === '' ? null : url;
    const retries = values.retries.trim();
    // Not a number: sent as typed, so the API's validation message shows at the field.
    if (retries !== old.retries) patch.retries = retries === '' ? null : /^-?\d+(\.\d+)?$/.test(retries) ? Number(retries) : retries;
    return patch;
  },
};

const targets = (s: Service) => s.url ?? list(s.upstream?.targets?.map((t) => t.url));

export function Services({ readOnly, titleRef }: { readOnly: boolean; titleRef: Ref<HTMLHeadingElement> }) {
  const services = useList<Service>('services', (s) => s.name);
  const { editing, open, close } = useEditing('service');

  return (
    <>
      <ViewTitle title="Services" titleRef={titleRef} readOnly={readOnly} noun="services" />
      {editing !== null ? (
        <EditItem key={editing} spec={EDIT} name={editing} onClose={close} onSaved={(s) => services.replace(editing, s)} />
      ) : null}
      <ListPanel id="h-service-list" title="All services" empty="No services yet." list={services} testId="services-table"
        head={<><th scope="col">Name</th><th scope="col">URL / targets</th><th scope="col" class="n">Retries</th><th scope="col">Tags</th><th scope="col"><span class="sr-only">Actions</span></th></>}
        row={(s) => (
          <tr key={s.name} data-testid={`service-admin-row-${s.name}`} class={editing === s.name ? 'selected' : undefined}>
            <th scope="row">{s.name}</th>
            <td class="mono">{targets(s)}</td>
            <td class="n">{s.retries ?? DASH}</td>
            <td>{list(s.tags)}</td>
            <td>{readOnly ? null : <EditButton kind="service" name={s.name} onClick={() => open(s.name)} />}</td>
          </tr>
        )} />
    </>
  );
}
