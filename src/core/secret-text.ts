/**
 * Secrets compared with what a request carries (an admin token, a key-auth key, a basic-auth
 * password) that no request can carry as written: the usual one is a Kubernetes Secret made
 * with `--from-file`, whose value keeps the file's last newline. Such a value passed `validate`
 * and `start` and then answered every request 401; it is refused at load, with the reason.
 * The same goes for secrets the gateway sends as written (an introspection client secret, a
 * composition step's credentials, an access-log receiver's header).
 */

const NAMES: Record<string, string> = { '\n': 'a newline', '\r': 'a carriage return', '\t': 'a tab', ' ': 'a space' };

function named(c: string): string {
  return NAMES[c] ?? `the character U+${c.codePointAt(0)!.toString(16).toUpperCase().padStart(4, '0')}`;
}

// (C0 controls and DEL; \s at the edges: spaces, tabs, NBSP, line separators)
const CONTROL = /[\x00-\x1f\x7f]/;

/**
 * Why `value` can never match what a request carries (null: it can). `carrier` names what
 * carries it ("a header value"); `edges`: blanks at either end count (a header value's are
 * stripped by the HTTP parser); `visibleAscii`: only \x21-\x7e can be carried (a Bearer token).
 */
export function unsendableSecret(value: string, carrier: string, opts: { edges?: boolean; visibleAscii?: boolean } = {}): string | null {
  const edges = opts.edges ?? true;
  const why = `${carrier} cannot carry it; trim the secret`;
  const last = value.charAt(value.length - 1);
  const first = value.charAt(0);
  if (CONTROL.test(last) || (edges && /\s/.test(last))) return `ends with ${named(last)}: ${why}`;
  if (CONTROL.test(first) || (edges && /\s/.test(first))) return `starts with ${named(first)}: ${why}`;
  const inner = CONTROL.exec(value) ?? (opts.visibleAscii ? /[^\x21-\x7e]/.exec(value) : null);
  if (inner) return `contains ${named(inner[0])}: ${carrier} cannot carry it`;
  return null;
}
