/**
 * A URL's user and password (`http://user:pass@host/...`) as the Basic credentials of the
 * requests made to it, the way curl and Kong's http-log use them (undici ignores them).
 */

export interface UrlTarget {
  /** The URL without its user and password (safe to request, and to log without query). */
  url: URL;
  /** `Basic base64(user:password)` (RFC 7617, UTF-8), or null when the URL names neither. */
  authorization: string | null;
}

/**
 * Splits the credentials off a URL. Throws (a message naming neither of them) when it is not a
 * URL or its user or password has a malformed percent-encoding.
 */
export function urlTarget(u: string): UrlTarget {
  let url: URL;
  try {
    url = new URL(u);
  } catch {
    throw new Error('not a valid URL');
  }
  if (url.username === '' && url.password === '') return { url, authorization: null };
  let pair: string;
  try {
    pair = `${decodeURIComponent(url.username)}:${decodeURIComponent(url.password)}`;
  } catch {
    throw new Error('the user or password in the URL has a malformed percent-encoding');
  }
  url.username = '';
  url.password = '';
  return { url, authorization: `Basic ${Buffer.from(pair, 'utf8').toString('base64')}` };
}
