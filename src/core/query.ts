/** Query string helpers (a query is the raw string with its '?', or ''). */

/**
 * The query without the parameter `name` (compared decoded, `+` as space); the other
 * parameters keep their exact bytes and order.
 */
export function withoutQueryParam(query: string, name: string): string {
  if (query.length <= 1) return query;
  const kept = query.slice(1).split('&').filter((part) => {
    const eq = part.indexOf('=');
    const key = eq === -1 ? part : part.slice(0, eq);
    try {
      return decodeURIComponent(key.replace(/\+/g, ' ')) !== name;
    } catch {
      return true;
    }
  });
  return kept.length ? `?${kept.join('&')}` : '';
}

/**
 * A query's text (without its '?') as parameters with the separators between them at the odd
 * indexes (`a=1;b=2&c` is `['a=1', ';', 'b=2', '&', 'c']`): a `;` separates parameters as a `&`
 * does, as Rack before 3, Python's parse_qs before 3.9.2, old Java servlet containers and others
 * read it. A parameter any of them could read must be seen here (redacted, removed, renamed).
 */
export function splitQuery(text: string): string[] {
  return text.split(/([&;])/);
}

/** A query parameter's name decoded (`+` as space); as written when it has a malformed escape. */
export function paramName(part: string): string {
  const eq = part.indexOf('=');
  const raw = eq === -1 ? part : part.slice(0, eq);
  try {
    return decodeURIComponent(raw.replace(/\+/g, ' '));
  } catch {
    return raw;
  }
}
