/**
 * mtls-auth: the client certificate of a TLS connection, verified against `tls.client_ca` by the
 * listener, names the consumer: a credential whose subject_name is the certificate's subject CN
 * or one of its subjectAltNames (DNS, email, URI), else a consumer named like the CN.
 * No certificate: 401 (or anonymous); an untrusted one: 401 saying so.
 */
import type { TLSSocket, PeerCertificate } from 'node:tls';
import { definePlugin, type Consumer } from '../types.js';
import { MtlsAuthConfig, MtlsAuthCredential } from './schema.js';
import { uniqueField } from '../auth-common.js';

const CHALLENGE = 'MutualTLS realm="turnpike"';

/**
 * A subjectAltName value as Node prints it: as it is, or — when it holds a comma, a quote, a
 * backslash or a byte outside printable ASCII — a JSON string whose \u00XX escapes are its bytes
 * (`URI:"https://a.example/x\u002cy"`): decoded to the value itself.
 */
function altNameValue(printed: string): string | null {
  if (!printed.startsWith('"')) return printed;
  try {
    const v = JSON.parse(printed) as unknown;
    if (typeof v !== 'string') return null;
    return /[\x80-\xff]/.test(v) ? Buffer.from(v, 'latin1').toString('utf8') : v;
  } catch {
    return null;
  }
}

/**
 * Subject CN and subjectAltName values (DNS:, email:, URI:) of a certificate; `folded`: the DNS
 * names in lower case and the email addresses with their domain in lower case (compared without
 * case: RFC 5280 §7.2, §7.5, RFC 4343), for a second look-up.
 */
export function certificateNames(cert: PeerCertificate): { cn: string | null; sans: string[]; folded: string[] } {
  const cnRaw = cert.subject?.CN as string | string[] | undefined;
  const cn = Array.isArray(cnRaw) ? cnRaw[0] ?? null : cnRaw ?? null;
  const sans: string[] = [];
  const folded: string[] = [];
  // (a comma inside a quoted value is printed \u002c: ", " only ever separates entries)
  for (const part of (cert.subjectaltname ?? '').split(', ')) {
    const m = /^(DNS|email|URI):(.+)$/.exec(part);
    const v = m ? altNameValue(m[2]!) : null;
    if (!v) continue;
    sans.push(v);
    if (m![1] === 'DNS') folded.push(v.toLowerCase());
    else if (m![1] === 'email') folded.push(foldEmail(v));
  }
  return { cn, sans, folded };
}

/** An email address with its domain in lower case (the local part is the mailbox's own). */
const foldEmail = (v: string): string => {
  const at = v.lastIndexOf('@');
  return at === -1 ? v : v.slice(0, at + 1) + v.slice(at + 1).toLowerCase();
};

/**
 * Why the listener did not accept a client certificate, in words a client can act on: an
 * expired (or not yet valid) certificate says so, as a renewal fixes it, and so does one revoked
 * (tls.client_crl); anything else (another
 * CA, a broken chain, a certificate not meant for clients) is "not trusted", with OpenSSL's code.
 */
function untrustedDetail(error: Error | string | null | undefined): string {
  const code = typeof error === 'string' ? error : ((error as { code?: string } | null | undefined)?.code ?? error?.message);
  if (code === 'CERT_HAS_EXPIRED') return 'the client certificate is not trusted: it has expired';
  if (code === 'CERT_NOT_YET_VALID') return 'the client certificate is not trusted: it is not valid yet';
  if (code === 'CERT_REVOKED') return 'the client certificate is not trusted: it has been revoked';
  return `the client certificate is not trusted${code ? ` (${code})` : ''}`;
}

export default definePlugin({
  name: 'mtls-auth',
  priority: 1600,
  description: 'Client certificates (mutual TLS) on the TLS listener, mapped to consumers.',
  schema: MtlsAuthConfig,
  credential: MtlsAuthCredential,
  scopes: ['global', 'service', 'route'],
  prepareCredentials: uniqueField('subject_name'),
  check(_config, deps) {
    return deps.listeners.clientCa ? [] : ['mtls-auth needs tls.client_ca (the CA that client certificates are verified against)'];
  },
  create(config, deps) {
    const names = new Map<string, Consumer>();
    // Consumers that declare credentials (their certificate names, or keys of another type) are
    // matched by those only: a certificate whose CN happens to be such a consumer's name does
    // not stand for it (deps.credentialed).
    for (const { consumer, credential } of deps.credentials) names.set(String(credential['subject_name']), consumer);
    // The same names as certificates' DNS names and email addresses compare: without case (the
    // domain of an address). Exact matches come first.
    const foldedNames = new Map<string, Consumer>();
    for (const { consumer, credential } of deps.credentials) {
      const n = String(credential['subject_name']);
      const f = n.includes('@') ? foldEmail(n) : n.toLowerCase();
      if (!foldedNames.has(f)) foldedNames.set(f, consumer);
    }
    const requireConsumer = config.require_consumer ?? true;
    return {
      authenticate(ctx) {
        const socket = ctx.req.socket as TLSSocket;
        if (socket.encrypted !== true) return { ok: false, missing: true, challenge: CHALLENGE };
        const cert = socket.getPeerCertificate();
        if (!cert || Object.keys(cert).length === 0) return { ok: false, missing: true, challenge: CHALLENGE };
        if (!socket.authorized) return { ok: false, missing: false, challenge: CHALLENGE, detail: untrustedDetail(socket.authorizationError) };
        // Verified at the handshake, but a connection outlives that: a kept-alive one, an HTTP/2
        // session for hours, a certificate issued for minutes — it must not outlive the certificate.
        if (Date.parse(cert.valid_to) <= Date.now()) return { ok: false, missing: false, challenge: CHALLENGE, detail: untrustedDetail('CERT_HAS_EXPIRED') };
        const { cn, sans, folded } = certificateNames(cert);
        let consumer: Consumer | null = null;
        for (const n of [...(cn !== null ? [cn] : []), ...sans]) {
          consumer = names.get(n) ?? null;
          if (consumer) break;
        }
        if (consumer === null) {
          for (const n of folded) {
            consumer = foldedNames.get(n) ?? null;
            if (consumer) break;
          }
        }
        if (consumer === null && cn !== null) {
          const byName = deps.consumers.get(cn) ?? null;
          if (byName !== null && !deps.credentialed.has(byName)) consumer = byName;
        }
        if (consumer === null && (requireConsumer || cn === null)) return { ok: false, missing: false, challenge: CHALLENGE, detail: 'the client certificate is not for a known consumer' };
        const identity = consumer?.name ?? cn!;
        return { ok: true, consumer, identity, credential: `mtls:${cert.fingerprint256?.replace(/:/g, '').slice(0, 16) ?? identity}` };
      },
    };
  },
});
