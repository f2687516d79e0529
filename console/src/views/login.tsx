/** Sign-in with an admin token: POST /console/api/login; the session lives in an httpOnly cookie. */
import { useEffect, useRef, useState } from 'preact/hooks';
import { ApiError, describe, request, type SessionInfo } from '../api.js';

export function Login({ notice, onSignedIn }: { notice: string | null; onSignedIn: (s: SessionInfo) => void }) {
  const [token, setToken] = useState('');
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const input = useRef<HTMLInputElement>(null);
  useEffect(() => input.current?.focus(), []);

  const submit = async (e: Event) => {
    e.preventDefault();
    if (busy) return;
    setBusy(true);
    setError(null);
    try {
      const res = await request<Partial<SessionInfo> | null>('POST', '/console/api/login', { body: { token }, own401: true });
      let s = res.body;
      // A 204 (or a body without the CSRF token): the session tells it.
      if (!s || typeof s.csrf !== 'string') s = (await request<SessionInfo>('GET', '/console/api/session', { own401: true })).body;
      setToken('');
      onSignedIn(s as SessionInfo);
    } catch (err) {
      setError(err instanceof ApiError && err.status === 401 ? (err.problem.detail || 'Unknown token.') : describe(err));
      setBusy(false);
      requestAnimationFrame(() => input.current?.select());
    }
  };

  return (
    <main id="main" class="login" tabIndex={-1}>
      <section class="panel" aria-labelledby="view-title">
        <h2 id="view-title">Sign in</h2>
        {notice ? <p class="note" role="status">{notice}</p> : null}
        <form onSubmit={submit} noValidate>
          <div class="field">
            <label for="token">Admin token</label>
            <input id="token" name="token" type="password" ref={input} value={token} required autoComplete="current-password"
              aria-invalid={error ? 'true' : undefined} aria-describedby={error ? 'login-error' : 'token-hint'}
              onInput={(e) => setToken((e.currentTarget as HTMLInputElement).value)} />
            <p class="hint" id="token-hint">An admin API token (admin.token or admin.tokens in the gateway's config).</p>
          </div>
          {error ? <p class="error" id="login-error" role="alert" data-testid="login-error">{error}</p> : null}
          <div class="actions">
            <button type="submit" class="primary" disabled={busy} aria-busy={busy ? 'true' : undefined}>Sign in</button>
          </div>
        </form>
      </section>
    </main>
  );
}
