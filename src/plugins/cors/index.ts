/**
 * cors: the CORS protocol (Fetch standard §3.2) at the gateway. Preflights (ctx.preflight:
 * OPTIONS with Origin and Access-Control-Request-Method, routed as the method they ask about)
 * are answered in onRequest, before authentication: 204, with the Access-Control-Allow-* fields
 * when the origin and the method asked for are allowed and none when not (the preflight is
 * answered, as Kong does; the browser refuses the cross-origin request). Actual requests from an allowed origin get
 * Access-Control-Allow-Origin / -Credentials / -Expose-Headers on the response, whoever makes
 * it (ctx.addResponseHeader: a 401 from an auth plugin too); on upstream responses they replace
 * the upstream's own, also for origins not allowed. Upstream responses carry Vary: Origin.
 */
import { definePlugin, type RequestCtx } from '../types.js';
import { parseDuration } from '../../config/units.js';
import { CorsConfig, DEFAULT_METHODS } from './schema.js';

const ACAO = 'access-control-allow-origin';
const ACAC = 'access-control-allow-credentials';
const ACEH = 'access-control-expose-headers';
/** The fields the gateway decides on actual responses (the upstream's copies are dropped). */
const OWNED = new Set([ACAO, ACAC, ACEH]);
const TOKEN_RE = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
/** A gRPC-Web request (its content type, any case). */
const GRPC_WEB_RE = /^application\/grpc-web/i;
const GRPC_WEB_EXPOSED = ['grpc-status', 'grpc-message', 'grpc-status-details-bin'];
/**
 * Fields a page reads without Access-Control-Expose-Headers (CORS-safelisted response-header
 * names), those it never reads (Set-Cookie), and the CORS fields: not worth listing.
 */
const NOT_EXPOSED = new Set(['cache-control', 'content-language', 'content-length', 'content-type', 'expires', 'last-modified', 'pragma', 'set-cookie', 'set-cookie2']);
/** What a page may need from the gateway's own answers (401, 429, 503...) when exposing "every" field. */
const GATEWAY_FIELDS = ['retry-after', 'www-authenticate', 'ratelimit', 'ratelimit-policy', 'x-request-id'];
/** scheme://host[:port], nothing after it (an origin's serialization). */
const ORIGIN_RE = /^[a-z][a-z0-9+.-]*:\/\/[^/?#@\s]+$/i;

type OriginRule = { kind: 'any' } | { kind: 'exact'; origin: string } | { kind: 'regex'; re: RegExp };

/** Parses one `origins` entry; throws with the reason. */
function parseOrigin(entry: string): OriginRule {
  if (entry === '*') return { kind: 'any' };
  if (entry.startsWith('~')) {
    const src = entry.slice(1);
    if (src === '') throw new Error('an empty regular expression');
    try {
      // Matched against the whole origin, whatever anchors the pattern has.
      return { kind: 'regex', re: new RegExp(`^(?:${src})$`) };
    } catch (e) {
      throw new Error(`an invalid regular expression (${(e as Error).message})`);
    }
  }
  if (entry === 'null') return { kind: 'exact', origin: 'null' };
  // (a browser never sends a "*" in an origin: as an exact origin it would silently match nothing)
  if (entry.includes('*')) throw new Error(`"${entry}": a wildcard inside an origin is not a pattern (it would match nothing); use "~" and a regular expression, e.g. "~^https://[a-z0-9-]+\\.example\\.com$"`);
  if (!ORIGIN_RE.test(entry)) throw new Error(`"${entry}" is not an origin (scheme://host[:port], no path; "*"; or "~" and a regular expression)`);
  let origin = entry.toLowerCase();
  if (/^https?:/.test(origin)) {
    // As browsers serialize it: default port dropped, host in its ASCII form.
    try {
      origin = new URL(origin).origin;
    } catch {
      throw new Error(`"${entry}" is not an origin`);
    }
  }
  return { kind: 'exact', origin };
}

/** Appends a token to Vary unless there already (or Vary is `*`). */
function addVary(headers: string[], token: string): void {
  let last = -1;
  const lower = token.toLowerCase();
  for (let i = 0; i < headers.length; i += 2) {
    if (headers[i]!.toLowerCase() !== 'vary') continue;
    last = i;
    for (const t of headers[i + 1]!.split(',')) {
      const v = t.trim().toLowerCase();
      if (v === '*' || v === lower) return;
    }
  }
  if (last === -1) headers.push('vary', token);
  else headers[last + 1] = headers[last + 1]!.trim() === '' ? token : `${headers[last + 1]}, ${token}`;
}

export default definePlugin({
  name: 'cors',
  handlesPreflight: true,
  priority: 2000,
  description: 'CORS: answers preflights at the gateway (before authentication) and adds the Access-Control-* fields to responses for allowed origins.',
  schema: CorsConfig,
  scopes: ['global', 'service', 'route'],
  check(config) {
    const problems: string[] = [];
    config.origins.forEach((o, i) => {
      try {
        parseOrigin(o);
      } catch (e) {
        problems.push(`origins[${i}]: ${(e as Error).message}`);
      }
    });
    return problems;
  },
  create(config, deps) {
    const rules = config.origins.map(parseOrigin);
    const any = rules.some((r) => r.kind === 'any');
    const exact = new Set(rules.flatMap((r) => (r.kind === 'exact' ? [r.origin] : [])));
    const regexes = rules.flatMap((r) => (r.kind === 'regex' ? [r.re] : []));
    const credentials = config.credentials === true;
    if (any && credentials) {
      // Legal (Kong does the same), but it lets every web page read this API with its users'
      // cookies: said once per binding, at load.
      deps.log.warn({ plugin: 'cors', where: deps.where }, 'cors: origins "*" with credentials: true reflects every origin: any web page can make credentialed reads; list the origins instead');
    }
    /** `*` without credentials: the answer is the same for every origin. */
    const wildcard = any && !credentials;
    const methodList = (config.methods ?? DEFAULT_METHODS).map((m) => m.toUpperCase());
    const methods = methodList.join(', ');
    /** Methods a preflight may ask for (null: any). */
    const methodSet = methodList.includes('*') ? null : new Set(methodList);
    // A browser reads `*` in Access-Control-Allow-Methods / -Headers as a wildcard only for a
    // request without credentials (Fetch §4.8): with credentials, what was asked for is named.
    const reflectMethod = methodSet === null && credentials;
    const headersStar = config.headers?.includes('*') === true;
    const allowHeaders = config.headers !== undefined && !(headersStar && credentials) ? config.headers.join(', ') : null;
    const exposed = config.exposed_headers?.length ? config.exposed_headers.join(', ') : null;
    // A gRPC-Web client reads the call's status from these fields when it comes in the headers
    // (Trailers-Only: an error before any message, the gateway's own included): exposed with the rest.
    const exposedGrpcWeb = [...new Set([...(config.exposed_headers ?? []).map((h) => h.toLowerCase()), ...GRPC_WEB_EXPOSED])].join(', ');
    const exposedFor = (ctx: RequestCtx): string | null => (GRPC_WEB_RE.test(ctx.header('content-type') ?? '') ? exposedGrpcWeb : exposed);
    // A browser takes `*` in Access-Control-Expose-Headers literally on a credentialed request
    // (Fetch §3.2.3): with credentials, "every field" is said by naming them.
    const exposeAllNamed = credentials && config.exposed_headers?.includes('*') === true;
    const namedExposed = (config.exposed_headers ?? []).filter((h) => h !== '*').map((h) => h.toLowerCase());
    /** The names of `headers` (a response's fields) a page may read, with the configured ones. */
    const exposeNames = (ctx: RequestCtx, headers: readonly string[]): string => {
      const names = new Set(namedExposed);
      if (GRPC_WEB_RE.test(ctx.header('content-type') ?? '')) for (const h of GRPC_WEB_EXPOSED) names.add(h);
      for (let i = 0; i < headers.length; i += 2) {
        const n = headers[i]!.toLowerCase();
        if (!NOT_EXPOSED.has(n) && !n.startsWith('access-control-')) names.add(n);
      }
      return [...names].join(', ');
    };
    const preflightVary = `Origin, Access-Control-Request-Method, Access-Control-Request-Headers${config.private_network ? ', Access-Control-Request-Private-Network' : ''}`;
    const maxAge = config.max_age !== undefined ? String(Math.floor(parseDuration(config.max_age) / 1000)) : null;

    /** The Access-Control-Allow-Origin value for this request's origin, or null when not allowed. */
    const allowOrigin = (origin: string | undefined): string | null => {
      if (origin === undefined || origin === '') return null;
      if (wildcard) return '*';
      // The opaque origin (sandboxed documents, file:) only when listed as such: a regex or "*"
      // with credentials must not hand credentialed access to any sandboxed page.
      if (origin === 'null') return exact.has('null') ? 'null' : null;
      if (any || exact.has(origin) || regexes.some((re) => re.test(origin))) return origin;
      return null;
    };

    return {
      onRequest(ctx: RequestCtx) {
        if (!ctx.preflight || config.preflight_continue) {
          // Whoever answers (an auth plugin's 401 included), an allowed origin can read it.
          // (On upstream responses, responseHeaders below makes the final list.)
          const origin = allowOrigin(ctx.header('origin'));
          if (origin !== null) {
            ctx.addResponseHeader(ACAO, origin);
            if (credentials) ctx.addResponseHeader(ACAC, 'true');
            // (the gateway's own answers: the fields they may carry; an upstream's answer gets
            // its own names in responseHeaders)
            const expose = exposeAllNamed ? exposeNames(ctx, GATEWAY_FIELDS.flatMap((h) => [h, ''])) : exposedFor(ctx);
            if (expose !== null) ctx.addResponseHeader(ACEH, expose);
          }
          // The gateway's own answers (401, 429...) vary by Origin too, or a shared cache could
          // hand one origin's answer to another (upstream answers: responseHeaders below).
          if (!wildcard) ctx.addResponseHeader('vary', 'Origin');
          return undefined;
        }
        const headers: Record<string, string> = {};
        // A method not in `methods` is refused like an origin not allowed: no Access-Control-*
        // field (the browser fails the preflight; nothing tells the page what would pass).
        const asked = ctx.header('access-control-request-method')?.trim().toUpperCase() ?? '';
        const origin = methodSet === null || methodSet.has(asked) ? allowOrigin(ctx.header('origin')) : null;
        if (origin !== null) {
          headers[ACAO] = origin;
          if (credentials) headers[ACAC] = 'true';
          // (the method as asked: a browser compares a method it does not normalize, such as
          // "patch", case-sensitively)
          const askedRaw = ctx.header('access-control-request-method')!.trim();
          headers['access-control-allow-methods'] = reflectMethod && TOKEN_RE.test(askedRaw) ? askedRaw : methods;
          if (allowHeaders !== null) {
            // `*` does not take Authorization (a CORS non-wildcard request-header name): named
            // when asked for.
            const auth = headersStar && /(^|,)\s*authorization\s*(,|$)/i.test(ctx.header('access-control-request-headers') ?? '');
            if (allowHeaders !== '') headers['access-control-allow-headers'] = auth ? `${allowHeaders}, Authorization` : allowHeaders;
          } else {
            // Echoed, field names only (the value goes back into a response header).
            const names = (ctx.header('access-control-request-headers') ?? '').split(',').map((s) => s.trim()).filter((s) => TOKEN_RE.test(s));
            if (names.length) headers['access-control-allow-headers'] = names.join(', ');
          }
          if (maxAge !== null) headers['access-control-max-age'] = maxAge;
          // Private Network Access: a public page reaching this (private) gateway asks first.
          if (config.private_network && ctx.header('access-control-request-private-network')?.trim().toLowerCase() === 'true') {
            headers['access-control-allow-private-network'] = 'true';
          }
        }
        // Every preflight answer names every field any of them depends on (the same list whether
        // allowed or not: a cache keys on the Vary of the answer it stored, and an answer for a
        // method or headers not allowed must not be reused for ones that are, or the reverse).
        headers['vary'] = preflightVary;
        return { status: 204, headers };
      },
      responseHeaders(ctx, _status, headers) {
        // A preflight this plugin answered is complete (should response phases ever run on replies).
        if (ctx.preflight && !config.preflight_continue) return;
        addVary(headers, 'Origin');
        const requestOrigin = ctx.header('origin');
        if (requestOrigin === undefined) return;
        // A CORS request: the gateway's answer is the only one.
        for (let i = headers.length - 2; i >= 0; i -= 2) if (OWNED.has(headers[i]!.toLowerCase())) headers.splice(i, 2);
        const origin = allowOrigin(requestOrigin);
        if (origin === null) return;
        headers.push(ACAO, origin);
        if (credentials) headers.push(ACAC, 'true');
        const expose = exposeAllNamed ? exposeNames(ctx, headers) : exposedFor(ctx);
        if (expose !== null && expose !== '') headers.push(ACEH, expose);
      },
    };
  },
});
