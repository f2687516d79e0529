/** The console shell: session check, sign-in, navigation (hash routes) and the live feed. */
import { useEffect, useMemo, useRef, useState } from 'preact/hooks';
import { describe, onUnauthorized, request, setCsrf, ApiError, type SessionInfo } from './api.js';
import { Live } from './live.js';
import { Login } from './views/login.js';
import { Dashboard } from './views/dashboard.js';
import { Routes } from './views/routes.js';
import { Services } from './views/services.js';
import { Consumers } from './views/consumers.js';
import { Developers } from './views/developers.js';
import { Plugins } from './views/plugins.js';
import { Revisions } from './views/revisions.js';

type View = 'dashboard' | 'routes' | 'services' | 'consumers' | 'developers' | 'plugins' | 'revisions';
const VIEWS: { view: View; href: string; label: string }[] = [
  { view: 'dashboard', href: '#/', label: 'Dashboard' },
  { view: 'routes', href: '#/routes', label: 'Routes' },
  { view: 'services', href: '#/services', label: 'Services' },
  { view: 'consumers', href: '#/consumers', label: 'Consumers' },
  { view: 'developers', href: '#/developers', label: 'Developers' },
  { view: 'plugins', href: '#/plugins', label: 'Plugins' },
  { view: 'revisions', href: '#/revisions', label: 'Revisions' },
];

function viewOf(hash: string): View {
  return VIEWS.find((v) => v.view !== 'dashboard' && hash.startsWith(v.href))?.view ?? 'dashboard';
}

type Phase = { kind: 'checking' } | { kind: 'out'; notice: string | null } | { kind: 'in'; session: SessionInfo };

export function App() {
  const [phase, setPhase] = useState<Phase>({ kind: 'checking' });
  const [view, setView] = useState<View>(() => viewOf(location.hash));
  const [signOutError, setSignOutError] = useState<string | null>(null);
  const title = useRef<HTMLHeadingElement>(null);
  const moved = useRef(false);

  const signedOut = (notice: string | null) => {
    setCsrf(null);
    setSignOutError(null);
    setPhase({ kind: 'out', notice });
  };
  const signedIn = (session: SessionInfo) => {
    setCsrf(session.csrf);
    setPhase({ kind: 'in', session });
    requestAnimationFrame(() => title.current?.focus());
  };

  const checkSession = async (): Promise<'in' | 'out' | 'unknown'> => {
    try {
      const { body } = await request<SessionInfo>('GET', '/console/api/session', { own401: true });
      setCsrf(body.csrf);
      return 'in';
    } catch (err) {
      return err instanceof ApiError && err.status === 401 ? 'out' : 'unknown';
    }
  };

  useEffect(() => {
    onUnauthorized(() => signedOut('Your session has ended. Sign in again.'));
    void (async () => {
      try {
        const { body } = await request<SessionInfo>('GET', '/console/api/session', { own401: true });
        signedIn(body);
      } catch (err) {
        signedOut(err instanceof ApiError && err.status === 401 ? null : 'The gateway could not be reached. Sign in to try again.');
      }
    })();
    const onHash = () => setView(viewOf(location.hash));
    addEventListener('hashchange', onHash);
    return () => removeEventListener('hashchange', onHash);
  }, []);

  // The live feed runs while signed in (its history survives switching views).
  const session = phase.kind === 'in' ? phase.session : null;
  const readOnly = session?.role === 'read-only';
  const live = useMemo(() => {
    if (!session) return null;
    let checking = false;
    const l: Live = new Live('/console/api/events', (closed) => {
      if (checking) return;
      checking = true;
      void checkSession().then((state) => {
        checking = false;
        if (l.stopped) return;
        if (state === 'out') {
          l.stop();
          signedOut('Your session has ended. Sign in again.');
        } else if (closed) l.restartLater();
      });
    });
    return l;
  }, [session]);
  useEffect(() => {
    if (!live) return;
    live.start();
    return () => live.stop();
  }, [live]);

  // Moving between views: focus the new view's heading (not on the first render).
  useEffect(() => {
    if (!moved.current) {
      moved.current = true;
      return;
    }
    title.current?.focus();
  }, [view]);

  const signOut = async () => {
    setSignOutError(null);
    try {
      await request('POST', '/console/api/logout', { own401: true });
    } catch (err) {
      // (401: the session had already ended.) Otherwise the gateway did not end it and the
      // cookie still signs this browser in: say so rather than "You have signed out.".
      if (!(err instanceof ApiError && err.status === 401)) {
        setSignOutError(`Not signed out: ${describe(err)} You are still signed in.`);
        return;
      }
    }
    live?.stop();
    signedOut('You have signed out.');
  };

  const skip = (e: Event) => {
    e.preventDefault();
    document.getElementById('main')?.focus();
  };

  return (
    <>
      <a class="skip-link" href="#main" onClick={skip}>Skip to content</a>
      <header class="top">
        <h1>Turnpike console</h1>
        {session ? (
          <>
            <nav aria-label="Main">
              <ul>
                {VIEWS.map((v) => (
                  <li key={v.view}>
                    <a href={v.href} aria-current={view === v.view ? 'page' : undefined}>{v.label}</a>
                  </li>
                ))}
              </ul>
            </nav>
            <div class="who">
              <span data-testid="signed-in-as">Signed in as <strong>{session.name}</strong> ({session.role})</span>
              <button type="button" onClick={() => void signOut()}>Sign out</button>
              {signOutError ? <span class="error" role="alert" data-testid="signout-error">{signOutError}</span> : null}
            </div>
          </>
        ) : null}
      </header>
      {phase.kind === 'checking' ? <main id="main" tabIndex={-1}><p class="empty">Loading…</p></main> : null}
      {phase.kind === 'out' ? <Login notice={phase.notice} onSignedIn={signedIn} /> : null}
      {session && live ? (
        <main id="main" tabIndex={-1}>
          {view === 'dashboard' ? <Dashboard live={live} titleRef={title} /> : null}
          {view === 'routes' ? <Routes readOnly={readOnly} titleRef={title} /> : null}
          {view === 'services' ? <Services readOnly={readOnly} titleRef={title} /> : null}
          {view === 'consumers' ? <Consumers readOnly={readOnly} titleRef={title} /> : null}
          {view === 'developers' ? <Developers readOnly={readOnly} titleRef={title} /> : null}
          {view === 'plugins' ? <Plugins readOnly={readOnly} titleRef={title} /> : null}
          {view === 'revisions' ? <Revisions readOnly={readOnly} titleRef={title} /> : null}
        </main>
      ) : null}
    </>
  );
}
