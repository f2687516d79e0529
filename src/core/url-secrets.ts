/**
 * Secrets a URL can carry, masked wherever a URL is shown (logs, config errors, /status, admin
 * API problem details): the password of its userinfo (`postgres://u:PASSWORD@host`) and the
 * value of every query parameter whose name holds a secret (`?password=`, `?sslpassword=` —
 * pg and libpq take both there —, `?access_token=`, `?api_key=`...; after a `;` as after a `&`;
 * in a fragment too).
 *
 * The rule for a parameter (isSecretParam): its name, decoded, contains `pass`, `pwd`,
 * `secret`, `token` or `key` in any case. Broad on purpose: masking a harmless value (an
 * `sslkey` file path) costs nothing, showing a password costs a rotation.
 */

const SECRET_PARAM = /pass|pwd|secret|token|key/i;

/** Whether a query parameter named `name` (raw, as written: decoded here) holds a secret. */
export function isSecretParam(name: string): boolean {
  let n = name;
  try {
    n = decodeURIComponent(name.replace(/\+/g, ' '));
  } catch {
    /* (a malformed escape: judge it as written) */
  }
  return SECRET_PARAM.test(n);
}

export const URL_MASK = '***';

/** Every `scheme://...` run in a text (up to a blank or a quote); `scheme:/` and `scheme:` too (a slash left out: `postgres:/u:PW@db`). */
const URL_IN_TEXT = /\b[a-z][a-z0-9+.-]*:[^\s"'`]*/gi;
/** The userinfo password: it runs to the last `@` before a `/`, `?` or `#` (after `scheme://`, or `scheme:/`, `scheme:` as mistyped). */
const USERINFO_PASSWORD = /^([a-z][a-z0-9+.-]*:\/{0,2}[^/?#@:]*:)[^/?#]*@/i;
/**
 * A URL (as written) with the values of its query (and fragment) parameters `f` replaces: `f`
 * gets each parameter's name (raw) and value, and returns the value to put instead, or null.
 * Parameters follow a `?`, `&`, `#` or `;` — a `;` separates them to Rack before 3, Python's
 * parse_qs before 3.9.2 and others (`?a=1;token=T` has a token there). A value runs to the
 * next `&` or `#` (a password with a `;` in it is one value to a server that splits on `&`
 * only): what `f` replaces is all of it; when `f` keeps it, a parameter after a `;` in it is
 * offered next. The admin API's masking and restoring share it, so they agree.
 */
export function mapUrlParams(url: string, f: (name: string, value: string) => string | null): string {
  const parts = url.split(/([?&;#])/); // (separators at the odd indexes; part 0 is no parameter)
  if (parts.length === 1) return url;
  let changed = false;
  for (let i = 2; i < parts.length; i += 2) {
    const part = parts[i]!;
    const eq = part.indexOf('=');
    if (eq === -1) continue;
    let end = i; // the last part of the value: to the next `&` or `#`
    while (end + 2 < parts.length && parts[end + 1] !== '&' && parts[end + 1] !== '#') end += 2;
    const value = part.slice(eq + 1) + parts.slice(i + 1, end + 1).join('');
    const v = f(part.slice(0, eq), value);
    if (v === null) continue;
    parts[i] = `${part.slice(0, eq + 1)}${v}`;
    for (let j = i + 1; j <= end; j++) parts[j] = '';
    changed = true;
    i = end;
  }
  return changed ? parts.join('') : url;
}

/** One URL (as written, parsable or not) with its password and secret parameter values masked. */
function maskOne(url: string): string {
  return mapUrlParams(url.replace(USERINFO_PASSWORD, `$1${URL_MASK}@`), (name, value) => (value !== '' && isSecretParam(name) ? URL_MASK : null));
}

/**
 * Masks the secrets (isSecretParam, and the userinfo password) of every URL quoted in `text`
 * (`http://u:secret@host/?token=t` -> `http://u:***@host/?token=***`): config errors and logs
 * reach terminals, and a URL there may be one that does not even parse — or lack a slash
 * (`postgres:/u:secret@db`: quoted back by the schema error it causes). A URL ends at a blank
 * or a quote.
 */
export function maskUrlSecrets(text: string): string {
  return text.includes(':') ? text.replace(URL_IN_TEXT, maskOne) : text;
}

/**
 * A URL setting (a store, redis) as it may be shown: secrets masked (maskUrlSecrets); one that
 * does not parse is not shown at all (`(unparsable URL)`), as nothing says where its secrets end.
 */
export function redactUrl(url: string): string {
  try {
    new URL(url);
  } catch {
    return '(unparsable URL)';
  }
  return maskOne(url);
}

/**
 * Why a URL setting that carries credentials (a store, redis) cannot be used as written, or
 * null. A password with `/`, `?` or `#` that is not percent-encoded ends the authority early:
 * the URL then does not parse (`postgres://u:ab#c@db/x`: port "ab"), or worse parses with
 * another host and the rest of the password in its path, query or fragment
 * (`postgres://u:12/3@db/x`: host "u", port 12) — a client that connects there fails as
 * "unreachable" forever, and every message showing the URL shows that part of the password
 * (it is no userinfo, so nothing masks it). Nothing of the URL is quoted here.
 */
export function credentialUrlProblem(url: string): string | null {
  const encode = 'a password (or user name) with @ : / ? # % or a blank must be percent-encoded (@ as %40, / as %2F, ? as %3F, # as %23, % as %25)';
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    return `does not parse as a URL (a host, and a port up to 65535?): ${encode}`;
  }
  if (u.pathname.includes('@') || u.hash.includes('@') || (u.username === '' && u.password === '' && u.search.includes('@'))) {
    return `has an @ after its host (is part of a password outside the user info?): ${encode}`;
  }
  return null;
}

/** credentialUrlProblem() of a URL as pg reads it (pg-connection-string: blanks and stray %s escaped; an empty host is allowed). */
export function postgresUrlProblem(url: string): string | null {
  let s = url;
  if (/ |%[^a-f0-9]|%[a-f0-9][^a-f0-9]/i.test(s)) s = encodeURI(s).replace(/%25(\d\d)/g, '%$1');
  const problem = credentialUrlProblem(s);
  if (problem === null || !s.includes('@/')) return problem;
  return credentialUrlProblem(s.replace('@/', '@___DUMMY___/')) === null ? null : problem;
}
