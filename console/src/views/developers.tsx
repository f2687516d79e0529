/**
 * Developers: the developer portal's accounts (GET /api/developers — consumers with a `portal`
 * credential), with Approve / Reject for those awaiting an admin (a sign-up under
 * `approval: manual`, or a requested plan). Reject is confirmed in a dialog: a pending sign-up's
 * consumer is deleted.
 */
import { useEffect, useState } from 'preact/hooks';
import type { Ref } from 'preact';
import { describe, request, revisionOf } from '../api.js';
import { DASH, when } from '../format.js';
import { ConfirmDialog, ListPanel, Outcome, ViewTitle, focusLater, type List } from '../ui.js';

type Status = 'unverified' | 'pending-approval' | 'active';
interface Developer {
  consumer: string;
  email: string;
  status: Status;
  plan: string | null;
  requested_plan?: string;
  created_at: string | null;
  keys: number;
}

const STATUS: Record<Status, string> = { unverified: 'Unverified', 'pending-approval': 'Awaiting approval', active: 'Active' };

/** What awaits an admin for `d` ('' if nothing), e.g. "sign-up" or "plan pro". */
function awaiting(d: Developer): string {
  const parts = [d.status === 'pending-approval' ? 'sign-up' : '', d.requested_plan !== undefined ? `plan ${d.requested_plan}` : ''];
  return parts.filter(Boolean).join(' and ');
}

const who = (d: Developer): string => `${d.email} (${d.consumer})`;

function useDevelopers(pendingOnly: boolean): List<Developer> {
  const [items, setItems] = useState<Developer[] | null>(null);
  const [total, setTotal] = useState(0);
  const [error, setError] = useState<string | null>(null);
  const load = async () => {
    setError(null);
    try {
      const { body } = await request<{ data: Developer[]; total: number }>('GET', `/api/developers?limit=1000${pendingOnly ? '&pending=true' : ''}`);
      setItems(body.data);
      setTotal(body.total);
    } catch (err) {
      setError(describe(err));
    }
  };
  useEffect(() => void load(), [pendingOnly]);
  const replace = (key: string, item: Developer) => setItems((xs) => xs && xs.map((x) => (x.consumer === key ? item : x)));
  return { items, total, error, load, replace };
}

export function Developers({ readOnly, titleRef }: { readOnly: boolean; titleRef: Ref<HTMLHeadingElement> }) {
  const [pendingOnly, setPendingOnly] = useState(false);
  const developers = useDevelopers(pendingOnly);
  const [acting, setActing] = useState<string | null>(null);
  const [rejecting, setRejecting] = useState<Developer | null>(null);
  const [done, setDone] = useState<string | null>(null);
  const [error, setError] = useState<string | null>(null);

  const decide = async (d: Developer, decision: 'approve' | 'reject') => {
    if (acting !== null) return;
    const what = awaiting(d) || 'the request';
    setActing(d.consumer);
    setDone(null);
    setError(null);
    try {
      const res = await request<{ approved?: string[]; rejected?: string[]; developer: Developer | null }>(
        'POST', `/api/developers/${encodeURIComponent(d.consumer)}/${decision}`);
      const decided = (decision === 'approve' ? res.body.approved : res.body.rejected)?.join(' and ') || what;
      const gone = decision === 'reject' && res.body.developer === null ? ` Consumer ${d.consumer} deleted.` : '';
      setDone(`${decision === 'approve' ? 'Approved' : 'Rejected'} ${decided} for ${who(d)}.${gone} ${revisionOf(res.headers)}`);
    } catch (err) {
      setError(`${decision === 'approve' ? 'Approving' : 'Rejecting'} ${what} for ${who(d)} failed: ${describe(err)}`);
    } finally {
      await developers.load();
      setActing(null);
      setRejecting(null);
      // The row's buttons go once nothing awaits (and the row, if filtered or deleted): then the list's heading.
      focusLater(`${decision}-developer-${d.consumer}`, 'h-developer-list');
    }
  };

  const empty = pendingOnly ? 'No developer awaits approval.' : 'No developer accounts yet (developers sign up on the portal).';

  return (
    <>
      <ViewTitle title="Developers" titleRef={titleRef} readOnly={readOnly} noun="developers" />
      <p class="note">Developer portal accounts: sign-ups awaiting approval (<code>approval: manual</code>) and requested plans are approved or rejected here.</p>
      <Outcome error={error} done={done} testId="developer-result" />
      <p class="field-inline">
        <label>
          <input type="checkbox" checked={pendingOnly} data-testid="developers-pending-only"
            onChange={(e) => setPendingOnly((e.currentTarget as HTMLInputElement).checked)} />
          {' '}Only awaiting approval
        </label>
      </p>
      <ListPanel id="h-developer-list" title={pendingOnly ? 'Developers awaiting approval' : 'All developers'} empty={empty} list={developers} testId="developers-table"
        head={<>
          <th scope="col">Email</th><th scope="col">Consumer</th><th scope="col">Status</th><th scope="col">Plan</th>
          <th scope="col">Requested plan</th><th scope="col" class="n">Keys</th><th scope="col">Signed up</th>
          {readOnly ? null : <th scope="col"><span class="sr-only">Actions</span></th>}
        </>}
        row={(d) => {
          const what = awaiting(d);
          const busy = acting === d.consumer;
          return (
            <tr key={d.consumer} data-testid={`developer-row-${d.consumer}`}>
              <th scope="row">{d.email}</th>
              <td class="mono">{d.consumer}</td>
              <td data-testid={`developer-status-${d.consumer}`}>{STATUS[d.status] ?? d.status}</td>
              <td data-testid={`developer-plan-${d.consumer}`}>{d.plan ?? DASH}</td>
              <td>{d.requested_plan ?? DASH}</td>
              <td class="n">{d.keys}</td>
              <td>{d.created_at ? <time dateTime={d.created_at}>{when(d.created_at)}</time> : DASH}</td>
              {readOnly ? null : (
                <td>
                  {what ? (
                    <>
                      <button type="button" data-testid={`approve-developer-${d.consumer}`} aria-label={`Approve ${what} for ${who(d)}`}
                        disabled={acting !== null} aria-busy={busy ? 'true' : undefined} onClick={() => void decide(d, 'approve')}>
                        Approve
                      </button>{' '}
                      <button type="button" class="danger" data-testid={`reject-developer-${d.consumer}`} aria-label={`Reject ${what} for ${who(d)}`}
                        disabled={acting !== null} onClick={() => setRejecting(d)}>
                        Reject
                      </button>
                    </>
                  ) : null}
                </td>
              )}
            </tr>
          );
        }} />
      {readOnly ? null : (
        <ConfirmDialog open={rejecting !== null} name="developer-reject"
          title={rejecting ? `Reject ${awaiting(rejecting)} for ${rejecting.email}?` : ''}
          confirm={rejecting?.status === 'pending-approval' ? 'Reject and delete' : 'Reject plan request'}
          busy={acting !== null} onConfirm={() => rejecting && void decide(rejecting, 'reject')}
          onCancel={() => {
            if (acting !== null) return;
            if (rejecting) focusLater(`reject-developer-${rejecting.consumer}`);
            setRejecting(null);
          }}
          testId="reject-dialog" confirmTestId="confirm-reject">
          {rejecting?.status === 'pending-approval'
            ? `The sign-up is refused: consumer ${rejecting.consumer} is deleted with its credentials, so ${rejecting.email} can no longer log in. The deletion is a new revision, which can be rolled back.`
            : `The request for plan ${rejecting?.requested_plan ?? ''} is dropped; ${rejecting?.email ?? ''} stays on ${rejecting?.plan ? `plan ${rejecting.plan}` : 'no plan'}.`}
        </ConfirmDialog>
      )}
    </>
  );
}
