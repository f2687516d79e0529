/** Query string helpers (a query is the raw string with its '?', or ''). */

/**
 * The query without the parameter `name` (compared decoded, `+` as space), a parameter after a
 * `;` as well as one after a `&` (splitQuery: `a=1;apikey=K` holds an apikey to some servers);
 * the other parameters keep their exact bytes, order and separators.
 */
export function withoutQueryParam(query: string, name: string): string {
  if (query.length <= 1) return query;
  const parts = splitQuery(query.slice(1));
  let out = '';
  let any = false;
  for (let i = 0; i < parts.length; i += 2) {
    if (paramName(parts[i]!) === name) continue;
    // (a kept parameter keeps the separator before it, the first one none)
    out += any ? parts[i - 1]! + parts[i]! : parts[i]!;
    any = true;
  }
  return any ? `?${out}` : '';
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
