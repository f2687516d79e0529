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
