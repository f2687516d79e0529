/**
 * mtls-auth: the client certificate of a TLS connection, verified against `tls.client_ca` by the
 * listener, names the consumer: a credential pinning it (fingerprint_sha256), else one whose subject_name is the certificate's subject CN
 * or one of its DNS / email subjectAltNames, or — a subject_name written as a URI — one of its URI SANs, else a consumer named like the CN.
 * No certificate: 401 (or anonymous); an untrusted one: 401 saying so. forward_client_cert tells
 * the upstream the certificate (RFC 9440, XFCC); no one else's client-certificate fields go upstream.
 */
import { hash } from 'node:crypto';
import type { TLSSocket, PeerCertificate, DetailedPeerCertificate } from 'node:tls';
import { definePlugin, type Consumer, type RequestCtx } from '../types.js';
import { MtlsAuthConfig, MtlsAuthCredential } from './schema.js';
import { uniqueField } from '../auth-common.js';
import { fieldValue } from '../pipeline.js';

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
 * A subject_name written as a URI (a scheme, then `//`, or a URN): it names a URI SAN (a SPIFFE
 * id), never a CN, DNS name or email address spelled like it; and any other name never a URI SAN.
 */
export const isUriName = (n: string): boolean => /^[A-Za-z][A-Za-z0-9+.-]*:\/\/|^urn:/i.test(n);

/**
 * Subject CN and subjectAltName values (DNS:, email:, URI:) of a certificate (`names`: the DNS
 * names and email addresses, `uris` the URIs, in order); `folded`: the DNS
 * names in lower case and the email addresses with their domain in lower case (compared without
 * case: RFC 5280 §7.2, §7.5, RFC 4343), for a second look-up.
 */
export function certificateNames(cert: PeerCertificate): { cn: string | null; sans: string[]; names: string[]; folded: string[]; uris: string[]; dns: string[] } {
  const cnRaw = cert.subject?.CN as string | string[] | undefined;
  const cn = Array.isArray(cnRaw) ? cnRaw[0] ?? null : cnRaw ?? null;
  const sans: string[] = [];
  const names: string[] = [];
  const folded: string[] = [];
  const uris: string[] = [];
  const dns: string[] = [];
  // (a comma inside a quoted value is printed \u002c: ", " only ever separates entries)
  for (const part of (cert.subjectaltname ?? '').split(', ')) {
    const m = /^(DNS|email|URI):(.+)$/.exec(part);
    const v = m ? altNameValue(m[2]!) : null;
    if (!v) continue;
    sans.push(v);
    if (m![1] === 'DNS') {
      names.push(v);
      folded.push(v.toLowerCase());
      dns.push(v);
    } else if (m![1] === 'email') {
      names.push(v);
      folded.push(foldEmail(v));
    } else uris.push(v);
  }
  return { cn, sans, names, folded, uris, dns };
}

/**
 * Client-certificate fields of TLS terminators (RFC 9440's Client-Cert(-Chain), Envoy's XFCC,
 * Traefik's, nginx's and HAProxy's X-SSL-*, SSL-Client-*, X-Client-*, ALB's X-Amzn-Mtls-*, IIS's
 * X-ARR-ClientCert). The gateway drops a client's copies everywhere, but passes a trusted
 * proxy's on; on an mtls-auth route the certificate is this connection's own, so no copy of
 * anyone's goes upstream, where it could stand for another identity.
 */
const CERT_FIELD = /^(?:client-cert(?:-chain)?|x-forwarded-client-cert|x-forwarded-tls-client-cert(?:-info)?|x-client-(?:cert(?:ificate|-chain)?|verify|dn)|x-ssl-(?:client-.*|cert|subject.*|issuer.*)|ssl-client-.+|x-amzn-mtls-.+|x-arr-clientcert)$/i;

/** Drops every client-certificate field from what goes upstream (looked for in the request first: most requests carry none). */
function dropCertFields(ctx: RequestCtx): void {
  const raw = ctx.req.rawHeaders;
  let found = false;
  for (let i = 0; i < raw.length; i += 2) {
    const n = raw[i]!;
    if (n.length >= 7 && CERT_FIELD.test(n)) {
      found = true;
      break;
    }
  }
  if (!found) return;
  ctx.editUpstreamHeaders((list) => {
    for (let i = list.length - 2; i >= 0; i -= 2) if (CERT_FIELD.test(list[i]!)) list.splice(i, 2);
  });
}

/** A value of an XFCC pair: as it is, or in double quotes (with \\ and \" escaped) when it holds a separator. */
const xfccQuote = (v: string, always = false): string => (always || /[,;="\\]/.test(v) ? `"${v.replace(/["\\]/g, '\\$&')}"` : v);

/** The fields (name, value, ...) that tell the upstream a verified client certificate, per forward_client_cert. */
function certFields(socket: TLSSocket, cert: PeerCertificate, forward: ReadonlySet<string>): string[] {
  const out: string[] = [];
  // RFC 9440 §2: a Structured Field Byte Sequence (RFC 8941 §3.3.5), the DER in base64.
  if (forward.has('client-cert')) out.push('client-cert', `:${cert.raw.toString('base64')}:`);
  if (forward.has('client-cert-chain')) {
    // The issuers above the leaf (Node's chain: what the client sent, then what the CA store
    // completed it with), the trust anchor left out (RFC 9440 §2.3: the recipient has it).
    const chain: string[] = [];
    let c = (socket.getPeerCertificate(true) as DetailedPeerCertificate).issuerCertificate;
    const seen = new Set<string>([cert.fingerprint256]);
    while (c && c.raw && !seen.has(c.fingerprint256) && c.issuerCertificate && c.issuerCertificate !== c && c.issuerCertificate.fingerprint256 !== c.fingerprint256) {
      seen.add(c.fingerprint256);
      chain.push(`:${c.raw.toString('base64')}:`);
      c = c.issuerCertificate;
    }
    if (chain.length > 0) out.push('client-cert-chain', chain.join(', '));
  }
  if (forward.has('x-forwarded-client-cert')) {
    // Envoy's element for the client certificate: Hash (SHA-256 of the DER, hex), Subject (the
    // RFC 2253 form: last RDN first), URI and DNS (each subjectAltName so).
    const x = socket.getPeerX509Certificate?.();
    const parts = [`Hash=${hash('sha256', cert.raw, 'hex')}`];
    if (x) parts.push(`Subject=${xfccQuote(x.subject.split('\n').reverse().join(','), true)}`);
    const { uris, dns } = certificateNames(cert);
    for (const u of uris) parts.push(`URI=${xfccQuote(u)}`);
    for (const d of dns) parts.push(`DNS=${xfccQuote(d)}`);
    out.push('x-forwarded-client-cert', fieldValue(parts.join(';')));
  }
  return out;
}


/** A SHA-256 fingerprint as compared: hex digits in lower case, no colons. */
const fingerprintKey = (f: string): string => f.replace(/:/g, '').toLowerCase();

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
  prepareCredentials(list) {
    const problems: { index: number; field?: string; message: string }[] = [];
    const seen = new Map<string, string>();
    list.forEach(({ consumer, credential }, index) => {
      if ((credential['subject_name'] === undefined) === (credential['fingerprint_sha256'] === undefined)) {
        problems.push({ index, message: 'give one of subject_name and fingerprint_sha256' });
        return;
      }
      if (credential['fingerprint_sha256'] === undefined) return;
      const f = fingerprintKey(String(credential['fingerprint_sha256']));
      const other = seen.get(f);
      if (other !== undefined) problems.push({ index, field: 'fingerprint_sha256', message: `the same certificate as consumer "${other}"'s` });
      else seen.set(f, consumer.name);
    });
    const named = list.filter(({ credential }) => credential['subject_name'] !== undefined);
    for (const p of uniqueField('subject_name')(named)) problems.push({ ...p, index: list.indexOf(named[p.index]!) });
    return problems;
  },
  check(_config, deps) {
    return deps.listeners.clientCa ? [] : ['mtls-auth needs tls.client_ca (the CA that client certificates are verified against)'];
  },
  create(config, deps) {
    const names = new Map<string, Consumer>();
    // Consumers that declare credentials (their certificate names, or keys of another type) are
    // matched by those only: a certificate whose CN happens to be such a consumer's name does
    // not stand for it (deps.credentialed).
    // Certificates pinned by their SHA-256 (Kong users' way): matched before any name.
    const pinned = new Map<string, Consumer>();
    // Names by kind (Kong matches the CN and DNS / email SANs): a URI SAN reading `app-1` is no
    // CN app-1, a CN reading `spiffe://...` no SPIFFE id (a CA that lets a client choose one kind
    // of name must not let it choose an identity written as another).
    const uriNames = new Map<string, Consumer>();
    for (const { consumer, credential } of deps.credentials) {
      if (credential['subject_name'] !== undefined) {
        const n = String(credential['subject_name']);
        (isUriName(n) ? uriNames : names).set(n, consumer);
      } else if (credential['fingerprint_sha256'] !== undefined) pinned.set(fingerprintKey(String(credential['fingerprint_sha256'])), consumer);
    }
    // The same names as certificates' DNS names and email addresses compare: without case (the
    // domain of an address). Exact matches come first.
    const foldedNames = new Map<string, Consumer>();
    for (const { consumer, credential } of deps.credentials) {
      if (credential['subject_name'] === undefined) continue;
      const n = String(credential['subject_name']);
      if (isUriName(n)) continue;
      const f = n.includes('@') ? foldEmail(n) : n.toLowerCase();
      if (!foldedNames.has(f)) foldedNames.set(f, consumer);
    }
    const requireConsumer = config.require_consumer ?? true;
    const forward: ReadonlySet<string> = new Set(config.forward_client_cert ?? []);
    // Per connection: its certificate's fields, made once (a TLS connection keeps its certificate: no renegotiation).
    const fieldsOf = new WeakMap<object, { raw: Buffer; fields: string[] }>();
    return {
      onRequest(ctx) {
        dropCertFields(ctx);
      },
      authenticate(ctx) {
        const socket = ctx.req.socket as TLSSocket;
        if (socket.encrypted !== true) return { ok: false, missing: true, challenge: CHALLENGE };
        const cert = socket.getPeerCertificate();
        if (!cert || Object.keys(cert).length === 0) return { ok: false, missing: true, challenge: CHALLENGE };
        // A certificate presented and not trusted is refused where `anonymous` is set too (as
        // Envoy and nginx's optional verification refuse it; Kong lets it through as anonymous):
        // a client that shows a certificate is not anonymous, and one that could not pass as
        // itself must not pass as nobody with a stolen, forged, revoked or expired one.
        if (!socket.authorized) return { ok: false, missing: false, challenge: CHALLENGE, detail: untrustedDetail(socket.authorizationError), anonymous: false };
        // Verified at the handshake, but a connection outlives that: a kept-alive one, an HTTP/2
        // session for hours, a certificate issued for minutes — it must not outlive the certificate.
        if (Date.parse(cert.valid_to) <= Date.now()) return { ok: false, missing: false, challenge: CHALLENGE, detail: untrustedDetail('CERT_HAS_EXPIRED'), anonymous: false };
        const { cn, names: certNames, uris, folded } = certificateNames(cert);
        let consumer: Consumer | null = pinned.size > 0 ? pinned.get(hash('sha256', cert.raw, 'hex')) ?? null : null;
        if (consumer === null) for (const n of [...(cn !== null ? [cn] : []), ...certNames]) {
          consumer = names.get(n) ?? null;
          if (consumer) break;
        }
        if (consumer === null && uriNames.size > 0) {
          for (const u of uris) {
            consumer = uriNames.get(u) ?? null;
            if (consumer) break;
          }
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
        if (forward.size > 0) {
          let f = fieldsOf.get(socket);
          if (f === undefined || !f.raw.equals(cert.raw)) fieldsOf.set(socket, (f = { raw: cert.raw, fields: certFields(socket, cert, forward) }));
          for (let i = 0; i < f.fields.length; i += 2) ctx.setUpstreamHeader(f.fields[i]!, f.fields[i + 1]!);
        }
        return { ok: true, consumer, identity, credential: `mtls:${cert.fingerprint256?.replace(/:/g, '').slice(0, 16) ?? identity}` };
      },
    };
  },
});
