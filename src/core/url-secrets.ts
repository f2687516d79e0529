/**
 * Secrets a URL can carry, masked wherever a URL is shown (logs, config errors, /status, admin
 * API problem details): the password of its userinfo (`postgres://u:PASSWORD@host`) and the
 * value of every query parameter whose name holds a secret (`?password=`, `?sslpassword=` —
 * pg and libpq take both there —, `?access_token=`, `?api_key=`...; in a fragment too).
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
/** One query (or fragment) parameter: `?`, `&` or `#`, name, `=`, value (up to the next `&` or `#`). */
const PARAM = /([?&#])([^=?&#]*)=([^&#]*)/g;

/** One URL (as written, parsable or not) with its password and secret parameter values masked. */
function maskOne(url: string): string {
  return url
    .replace(USERINFO_PASSWORD, `$1${URL_MASK}@`)
    .replace(PARAM, (all, sep: string, name: string, value: string) => (value !== '' && isSecretParam(name) ? `${sep}${name}=${URL_MASK}` : all));
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
