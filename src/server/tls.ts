/**
 * TLS termination: certificates picked by SNI (exact name, then a one-label wildcard, then the
 * default), built into SecureContexts when a config compiles (so `validate` and a reload reject
 * a missing file, a bad PEM or a key that does not match its certificate, with the config path),
 * and re-read when their files change on disk (stat polling: it also sees the rename-into-place
 * and symlink swaps of certbot and Kubernetes secrets). A changed file that does not load keeps
 * the certificate in use and logs why.
 */
import { constants as cryptoConstants, createHash, verify, X509Certificate } from 'node:crypto';
import { watchFile, unwatchFile, type Stats } from 'node:fs';
import { readRegularFile } from '../core/files.js';
import { isIP } from 'node:net';
import { checkServerIdentity, createSecureContext, type PeerCertificate, type SecureContext, type SecureContextOptions } from 'node:tls';
import type { PathSegment } from '../config/errors.js';
import type { Logger } from '../core/log.js';

/**
 * TLS 1.3 suites plus forward-secret AEAD suites for TLS 1.2 (Mozilla's "intermediate" profile).
 * Node sends the TLS_* names to TLS 1.3 and the rest to TLS 1.2.
 */
export const DEFAULT_CIPHERS = [
  'TLS_AES_128_GCM_SHA256', 'TLS_AES_256_GCM_SHA384', 'TLS_CHACHA20_POLY1305_SHA256',
  'ECDHE-ECDSA-AES128-GCM-SHA256', 'ECDHE-RSA-AES128-GCM-SHA256', 'ECDHE-ECDSA-AES256-GCM-SHA384',
  'ECDHE-RSA-AES256-GCM-SHA384', 'ECDHE-ECDSA-CHACHA20-POLY1305', 'ECDHE-RSA-CHACHA20-POLY1305',
  'DHE-RSA-AES128-GCM-SHA256', 'DHE-RSA-AES256-GCM-SHA384',
].join(':');

export interface CertSpec {
  hosts: string[];
  certFile: string;
  keyFile: string;
  isDefault: boolean;
  /** Where it is in the config (for errors). */
  path: PathSegment[];
}

export interface TlsOptions {
  minVersion: 'TLSv1.2' | 'TLSv1.3';
  ciphers: string;
  /** CA bundle file for client certificates (requested, verified, but not required: mtls-auth decides). */
  clientCaFile: string | null;
  /** PEM CRL file(s) for client certificates: a revoked one is not verified (needs clientCaFile). */
  clientCrlFile?: string | null;
  /**
   * An unknown server name is refused (no certificate served), and so is a client without one
   * unless a certificate is marked default (it serves those).
   */
  strictSni?: boolean;
}

/**
 * Client-initiated renegotiation (TLS 1.2) is refused, as nginx, Envoy and HAProxy do: it costs
 * the server a handshake per request of the client's choosing and serves no purpose here.
 */
const NO_RENEGOTIATION = cryptoConstants.SSL_OP_NO_RENEGOTIATION;

/**
 * Why a CA bundle cannot be used, or null. Node's `ca` option takes what it can read and skips
 * the rest without a word: a file with no certificate in it (a key, a DER file, an empty or
 * truncated Secret) would trust nothing, and a bundle with a broken block trusts only the
 * certificates before it — every peer refused at run time while the config looked valid.
 */
export function caBundleProblem(pem: Buffer): string | null {
  const blocks = pem.toString('latin1').match(/-----BEGIN (?:TRUSTED |X509 )?CERTIFICATE-----[^]*?-----END (?:TRUSTED |X509 )?CERTIFICATE-----/g);
  if (blocks === null) return 'holds no PEM certificate (-----BEGIN CERTIFICATE-----)';
  for (let i = 0; i < blocks.length; i++) {
    const b = blocks[i]!;
    if (!b.startsWith('-----BEGIN CERTIFICATE-----')) continue; // (OpenSSL's TRUSTED form: X509Certificate does not read it)
    try {
      new X509Certificate(b);
    } catch (e) {
      return `certificate ${i + 1} of ${blocks.length} does not parse (${(e as Error).message})`;
    }
  }
  return null;
}

/**
 * How an upstream connection names its peer for a configured TLS name (`services[].tls.server_name`,
 * or the name an address was resolved from): a host name is sent as SNI and is the name the
 * certificate must carry; an IP address is never sent as SNI (RFC 6066 §3: Node sent it, with a
 * deprecation warning) — the certificate must carry that address.
 */
export function upstreamTlsName(name: string | undefined): { servername?: string; checkServerIdentity?: (host: string, cert: PeerCertificate) => Error | undefined } {
  if (name === undefined || name === '') return {};
  const address = name.charCodeAt(0) === 0x5b /* [ */ && name.endsWith(']') ? name.slice(1, -1) : name;
  if (isIP(address) === 0) return { servername: name };
  return { checkServerIdentity: (_host, cert) => checkServerIdentity(address, cert) };
}

/**
 * Why a CRL file cannot be used, or null (Node would take a file without a CRL in it silently: no
 * certificate ever revoked). With a CRL, Node has OpenSSL check every CA of a chain (CRL_CHECK_ALL):
 * a CA of the client CA bundle without a CRL it signed (a CRL of another CA, or one whose
 * signature is not the CA's) refuses every client certificate under it, UNABLE_TO_GET_CRL — so
 * each CA of the bundle must have one here. CRLs of other issuers (intermediates) may be beside.
 */
export function crlProblem(pem: Buffer, ca: Buffer | undefined): string | null {
  const blocks = pem.toString('latin1').match(/-----BEGIN X509 CRL-----[^]*?-----END X509 CRL-----/g);
  if (blocks === null) return 'holds no PEM certificate revocation list (-----BEGIN X509 CRL-----)';
  try {
    createSecureContext({ ...(ca ? { ca } : {}), crl: blocks });
  } catch (e) {
    return `does not load (${(e as Error).message})`;
  }
  if (ca === undefined) return null;
  const crls = blocks.map(signedParts);
  // (a CRL signed in a way not checked here, RSA-PSS say, could be anyone's: no verdict)
  if (crls.some((c) => c === null)) return null;
  for (const block of ca.toString('latin1').match(/-----BEGIN CERTIFICATE-----[^]*?-----END CERTIFICATE-----/g) ?? []) {
    let x: X509Certificate;
    try {
      x = new X509Certificate(block);
    } catch {
      continue; // (said at client_ca)
    }
    if (!x.ca) continue;
    const signed = crls.some((c) => {
      try {
        return verify(c!.hash, c!.tbs, x.publicKey, c!.signature);
      } catch {
        return false;
      }
    });
    if (!signed) {
      return `holds no revocation list signed by the client CA ${x.subject.replace(/\n/g, ', ')} (tls.client_ca): with client_crl every client certificate that CA issued would be refused (OpenSSL wants a CRL from each CA of a chain)`;
    }
  }
  return null;
}

/** Signature algorithms of CRLs (DER OID content, hex) and the digest to verify them with (null: the key's own, EdDSA). */
const SIG_HASH: Record<string, string | null> = {
  '2a864886f70d010105': 'sha1', '2a864886f70d01010b': 'sha256', '2a864886f70d01010c': 'sha384', '2a864886f70d01010d': 'sha512',
  '2a8648ce3d0401': 'sha1', '2a8648ce3d040302': 'sha256', '2a8648ce3d040303': 'sha384', '2a8648ce3d040304': 'sha512',
  '2b6570': null, '2b6571': null,
};

/** One DER element at `at`: where its content starts and where it ends. */
function derElement(der: Buffer, at: number): { tag: number; start: number; end: number } {
  const tag = der[at]!;
  let len = der[at + 1]!;
  let start = at + 2;
  if (len & 0x80) {
    const n = len & 0x7f;
    if (n === 0 || n > 4) throw new Error('DER length');
    len = 0;
    for (let i = 0; i < n; i++) len = len * 256 + der[start + i]!;
    start += n;
  }
  if (start + len > der.length) throw new Error('DER overrun');
  return { tag, start, end: start + len };
}

/** A PEM CRL's signed part, digest and signature (RFC 5280 §5.1: CertificateList), or null for an algorithm not known here. */
function signedParts(pem: string): { tbs: Buffer; hash: string | null; signature: Buffer } | null {
  try {
    const der = Buffer.from(pem.replace(/-----[^-]+-----/g, '').replace(/\s+/g, ''), 'base64');
    const list = derElement(der, 0);
    const tbs = derElement(der, list.start);
    const alg = derElement(der, tbs.end);
    const oid = derElement(der, alg.start);
    const sig = derElement(der, alg.end);
    if (list.tag !== 0x30 || tbs.tag !== 0x30 || alg.tag !== 0x30 || oid.tag !== 0x06 || sig.tag !== 0x03) return null;
    const hash = SIG_HASH[der.subarray(oid.start, oid.end).toString('hex')];
    if (hash === undefined) return null;
    return { tbs: der.subarray(list.start, tbs.end), hash, signature: der.subarray(sig.start + 1, sig.end) };
  } catch {
    return null;
  }
}

/**
 * When each CRL of a PEM file was issued and is due to be replaced (its thisUpdate and nextUpdate,
 * RFC 5280 §5.1.2.4-5), in file order; null for one that does not parse here (nextUpdate null:
 * none). Before the one or past the other, OpenSSL refuses every certificate the CRL's issuer
 * signed (CRL_NOT_YET_VALID, CRL_HAS_EXPIRED): nothing else says so.
 */
export function crlDates(pem: Buffer): ({ thisUpdate: Date | null; nextUpdate: Date | null } | null)[] {
  const blocks = pem.toString('latin1').match(/-----BEGIN X509 CRL-----[^]*?-----END X509 CRL-----/g) ?? [];
  return blocks.map((block) => {
    try {
      const der = Buffer.from(block.replace(/-----[^-]+-----/g, '').replace(/\s+/g, ''), 'base64');
      const tbs = derElement(der, derElement(der, 0).start);
      let e = derElement(der, tbs.start);
      if (e.tag === 0x02) e = derElement(der, e.end); // version
      const issuer = derElement(der, e.end); // (e: the signature algorithm)
      const at = derElement(der, issuer.end);
      if (at.tag !== 0x17 && at.tag !== 0x18) return null;
      const thisUpdate = derTime(der.subarray(at.start, at.end).toString('latin1'), at.tag === 0x17);
      const next = at.end < tbs.end ? derElement(der, at.end) : null;
      const nextUpdate = next !== null && (next.tag === 0x17 || next.tag === 0x18) ? derTime(der.subarray(next.start, next.end).toString('latin1'), next.tag === 0x17) : null;
      return { thisUpdate, nextUpdate };
    } catch {
      return null;
    }
  });
}

/** A DER UTCTime (YYMMDDHHMMSSZ: 50-99 are 19xx, RFC 5280 §4.1.2.5.1) or GeneralizedTime (YYYYMMDDHHMMSSZ), or null. */
function derTime(t: string, utc: boolean): Date | null {
  const m = (utc ? /^(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})Z$/ : /^(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})Z$/).exec(t);
  if (m === null) return null;
  const y = Number(m[1]);
  const d = new Date(Date.UTC(utc ? (y >= 50 ? 1900 + y : 2000 + y) : y, Number(m[2]) - 1, Number(m[3]), Number(m[4]), Number(m[5]), Number(m[6])));
  return Number.isNaN(d.getTime()) ? null : d;
}

/** Upstream TLS material already checked (by its digest): a reload does not parse it again. */
const checkedUpstream = new Map<string, { field: 'ca' | 'cert'; message: string } | null>();

/**
 * Whether a service's upstream TLS material loads: a CA bundle with certificates in it, and a
 * client certificate whose key matches it. `id` is the digest of the material.
 */
export function upstreamTlsProblem(id: string, ca: Buffer | undefined, cert: Buffer | undefined, key: Buffer | undefined): { field: 'ca' | 'cert'; message: string } | null {
  const known = checkedUpstream.get(id);
  if (known !== undefined) return known;
  let problem: { field: 'ca' | 'cert'; message: string } | null = null;
  const caProblem = ca !== undefined ? caBundleProblem(ca) : null;
  if (caProblem !== null) problem = { field: 'ca', message: caProblem };
  else if (cert !== undefined && key !== undefined) {
    try {
      createSecureContext({ cert, key });
    } catch (e) {
      // OpenSSL's words: "key values mismatch", "no start line", ...
      problem = { field: 'cert', message: (e as Error).message };
    }
  }
  if (checkedUpstream.size >= 256) checkedUpstream.clear();
  checkedUpstream.set(id, problem);
  return problem;
}

/** The certificates of one config, as loaded: a SecureContext per certificate. */
export class CertSet {
  private readonly exact = new Map<string, SecureContext>();
  private readonly wildcard = new Map<string, SecureContext>();
  private defaultContext: SecureContext | null = null;
  readonly contexts: (SecureContext | null)[] = [];
  /** PEM of each loaded certificate and key (the default one also seeds the listener: clients without SNI). */
  private readonly material: ({ cert: Buffer; key: Buffer } | null)[] = [];
  /** The (leaf) certificate of each context, for the names it covers. */
  private readonly x509 = new Map<SecureContext, X509Certificate>();
  private ca: Buffer | undefined;
  private crl: Buffer | undefined;
  private defaultIndex = -1;

  constructor(readonly specs: CertSpec[], readonly options: TlsOptions) {}

  /**
   * Loads every certificate; returns the problems (path + message) instead of throwing.
   * `readCa` reads the client CA (the config's inputs: a change of the file reloads the config).
   */
  load(readCa: (file: string) => Buffer = readPem): { path: PathSegment[]; message: string }[] {
    const issues: { path: PathSegment[]; message: string }[] = [];
    let ca: Buffer | undefined;
    if (this.options.clientCaFile !== null) {
      try {
        ca = readCa(this.options.clientCaFile);
        const problem = caBundleProblem(ca);
        if (problem !== null) issues.push({ path: ['tls', 'client_ca'], message: `${this.options.clientCaFile} ${problem}` });
      } catch (e) {
        issues.push({ path: ['tls', 'client_ca'], message: `cannot read ${this.options.clientCaFile}: ${(e as Error).message}` });
      }
    }
    this.ca = ca;
    let crl: Buffer | undefined;
    const crlFile = this.options.clientCrlFile ?? null;
    if (crlFile !== null) {
      try {
        crl = readCa(crlFile);
        const problem = crlProblem(crl, ca);
        if (problem !== null) {
          issues.push({ path: ['tls', 'client_crl'], message: `${crlFile} ${problem}` });
          crl = undefined; // (said once, where it is: not again for every certificate)
        }
      } catch (e) {
        issues.push({ path: ['tls', 'client_crl'], message: `cannot read ${crlFile}: ${(e as Error).message}` });
      }
    }
    this.crl = crl;
    if (this.options.ciphers !== DEFAULT_CIPHERS) {
      // A list OpenSSL cannot use fails every certificate alike: said once, where it is.
      try {
        createSecureContext({ ciphers: this.options.ciphers, minVersion: this.options.minVersion });
      } catch (e) {
        issues.push({ path: ['tls', 'ciphers'], message: `OpenSSL takes none of these ciphers (${(e as Error).message})` });
        this.index();
        return issues;
      }
    }
    this.specs.forEach((spec, i) => {
      const r = buildContext(spec, this.options, ca, crl);
      const uncovered = typeof r === 'string' ? null : hostsProblem(spec, r.cert);
      if (typeof r === 'string' || uncovered !== null) {
        issues.push(typeof r === 'string' ? { path: spec.path, message: r } : { path: [...spec.path, 'hosts', uncovered!.index], message: uncovered!.message });
        this.contexts[i] = null;
        this.material[i] = null;
      } else {
        this.contexts[i] = r.ctx;
        this.material[i] = { cert: r.cert, key: r.key };
      }
    });
    this.index();
    return issues;
  }

  /** The client CA this set was loaded with (a certificate reloaded later keeps it). */
  get clientCa(): Buffer | undefined {
    return this.ca;
  }

  /** The client CRL this set was loaded with (likewise kept by a certificate reloaded later). */
  get clientCrl(): Buffer | undefined {
    return this.crl;
  }

  /** When each CRL of the client CRL file was issued and is due (null: not read here), in file order. */
  crlDates(): ReturnType<typeof crlDates> {
    return this.crl ? crlDates(this.crl) : [];
  }

  /** Digest of what client certificates are verified against (client CA and CRL): another one makes earlier verdicts stale. */
  trustDigest(): string {
    const h = createHash('sha256');
    h.update(this.ca ?? '-').update('|').update(this.crl ?? '-');
    return h.digest('hex');
  }

  /** Digest of what was read from disk (CA, certificates, keys): part of the snapshot's hash, so a reload re-reads them. */
  digest(): string {
    const h = createHash('sha256');
    if (this.ca) h.update(this.ca);
    if (this.crl) h.update('crl').update(this.crl);
    for (const m of this.material) {
      h.update(m ? 'm' : '-');
      if (m) h.update(m.cert).update(m.key);
    }
    return h.digest('hex');
  }

  /** Replaces certificate i (after its files changed). */
  replace(i: number, r: Built): void {
    this.contexts[i] = r.ctx;
    this.material[i] = { cert: r.cert, key: r.key };
    this.index();
  }

  /**
   * Options for the listener's own context: the default certificate, versions, ciphers, client
   * CA. With strictSni and no certificate marked default, no certificate: a client without a
   * server name (the SNI callback is not asked) fails the handshake, a handshake_failure alert.
   */
  defaultOptions(): SecureContextOptions {
    const m = this.options.strictSni === true && !this.specs[this.defaultIndex]?.isDefault ? undefined : this.material[this.defaultIndex];
    return {
      minVersion: this.options.minVersion,
      ciphers: this.options.ciphers,
      honorCipherOrder: true,
      secureOptions: NO_RENEGOTIATION,
      ...(m ? { cert: m.cert, key: m.key } : {}),
      ...(this.ca ? { ca: this.ca } : {}),
      ...(this.crl ? { crl: this.crl } : {}),
    };
  }

  private index(): void {
    this.exact.clear();
    this.wildcard.clear();
    this.defaultContext = null;
    // The first certificate naming a host wins; the default is the one marked so, else the first.
    this.specs.forEach((spec, i) => {
      const ctx = this.contexts[i];
      if (!ctx) return;
      for (const h of spec.hosts) {
        // (a fully qualified `example.com.` names what a client's SNI names without the dot)
        const host = h.toLowerCase().replace(/\.$/, '');
        const map = host.startsWith('*.') ? this.wildcard : this.exact;
        const key = host.startsWith('*.') ? host.slice(1) : host;
        if (!map.has(key)) map.set(key, ctx);
      }
    });
    const d = this.specs.findIndex((s) => s.isDefault);
    this.defaultIndex = d >= 0 && this.contexts[d] ? d : this.contexts.findIndex((c) => c);
    this.defaultContext = this.contexts[this.defaultIndex] ?? null;
    this.x509.clear();
    this.contexts.forEach((ctx, i) => {
      const m = this.material[i];
      if (!ctx || !m) return;
      try {
        this.x509.set(ctx, new X509Certificate(m.cert));
      } catch {
        // (OpenSSL took it: its first block is the leaf; X509Certificate reads that too)
      }
    });
  }

  /** The context for a server name (SNI), or the default (none for a name no certificate is for, with strictSni). */
  contextFor(servername: string | undefined): SecureContext | null {
    return (servername ? this.named(servername.toLowerCase().replace(/\.$/, '')) : null) ?? (this.options.strictSni === true ? null : this.defaultContext);
  }

  /** The context of the certificate that names `name` (lower case, no trailing dot): exact, then a one-label wildcard; null for none. */
  private named(name: string): SecureContext | null {
    const exact = this.exact.get(name);
    if (exact) return exact;
    const dot = name.indexOf('.');
    return dot > 0 ? this.wildcard.get(name.slice(dot)) ?? null : null;
  }

  /**
   * Whether a request for `host` (a Host name: lower case, no port nor trailing dot) came on a
   * connection that is not for it: the certificate the handshake's server name (none: the
   * default) chose neither lists `host` in its `hosts` nor covers it (its subjectAltNames, RFC
   * 6125: what a client checks, and what lets a browser reuse a connection for another name),
   * and `host` is not the server name itself. An address is not judged: clients send none as
   * SNI (RFC 6066 §3).
   */
  misdirected(servername: string | false | null | undefined, host: string): boolean {
    if (host === '' || host.charCodeAt(0) === 0x5b /* [ */ || isIP(host) !== 0) return false;
    const sni = servername ? servername.toLowerCase().replace(/\.$/, '') : '';
    if (host === sni) return false;
    const ctx = (sni !== '' ? this.named(sni) : null) ?? this.defaultContext;
    if (ctx === null || this.named(host) === ctx) return false;
    const x = this.x509.get(ctx);
    return x !== undefined && x.checkHost(host) === undefined;
  }
}

interface Built { ctx: SecureContext; cert: Buffer; key: Buffer }

/**
 * The first of a certificate's `hosts` that the certificate itself does not cover, or null: a
 * name is covered as a client checks it (its subjectAltNames, RFC 6125: a DNS name, exactly or by
 * a one-label wildcard; an address by an IP entry), a wildcard host by that same wildcard. Served
 * for such a name, the certificate fails every client's check (Kong refuses an SNI its
 * certificate does not match as well).
 */
export function hostsProblem(spec: CertSpec, pem: Buffer): { index: number; message: string } | null {
  let x: X509Certificate;
  try {
    x = new X509Certificate(pem);
  } catch {
    return null; // (OpenSSL took it: judged by what it took)
  }
  const sans = (x.subjectAltName ?? '').split(', ');
  const dnsSans = new Set(sans.filter((v) => v.startsWith('DNS:')).map((v) => v.slice(4).toLowerCase().replace(/\.$/, '')));
  for (let i = 0; i < spec.hosts.length; i++) {
    const host = spec.hosts[i]!.toLowerCase().replace(/\.$/, '');
    const covered = host.startsWith('*.') ? dnsSans.has(host)
      : isIP(host) !== 0 ? x.checkIP(host) !== undefined
      : x.checkHost(host, { subject: 'never', multiLabelWildcards: false, singleLabelSubdomains: false }) !== undefined;
    if (!covered) {
      const names = sans.filter((v) => /^(DNS|IP Address):/.test(v)).join(', ');
      return { index: i, message: `certificate ${spec.certFile} is not for ${spec.hosts[i]} (its subjectAltNames: ${names || 'none'}): clients connecting for that name would refuse it` };
    }
  }
  return null;
}

/** A PEM file of the TLS settings (a certificate chain, a key, a CA bundle): a regular file of at most 16 MiB (a FIFO there hung the process, /dev/zero exhausted it). */
const readPem = (file: string): Buffer => readRegularFile(file, 16 * 1024 * 1024);

function buildContext(spec: CertSpec, o: TlsOptions, ca: Buffer | undefined, crl: Buffer | undefined): Built | string {
  let cert: Buffer;
  let key: Buffer;
  try {
    cert = readPem(spec.certFile);
  } catch (e) {
    return `cannot read certificate ${spec.certFile}: ${(e as Error).message}`;
  }
  try {
    key = readPem(spec.keyFile);
  } catch (e) {
    return `cannot read key ${spec.keyFile}: ${(e as Error).message}`;
  }
  try {
    return { ctx: createSecureContext({ cert, key, minVersion: o.minVersion, ciphers: o.ciphers, honorCipherOrder: true, secureOptions: NO_RENEGOTIATION, ...(ca ? { ca } : {}), ...(crl ? { crl } : {}) }), cert, key };
  } catch (e) {
    // OpenSSL's words: "key values mismatch", "no start line", ...
    return `certificate ${spec.certFile} with key ${spec.keyFile} does not load: ${(e as Error).message}`;
  }
}

/** How long before a client CRL's nextUpdate its coming expiry is warned of. */
const CRL_WARN_AHEAD_MS = 24 * 3600_000;

/** What `turnpike validate` says of a client CRL not in force now, or due within a day (one line each; none: fine). */
export function crlWarnings(set: CertSet, now = Date.now()): string[] {
  const dates = set.crlDates();
  const out: string[] = [];
  dates.forEach((x, i) => {
    const which = dates.length > 1 ? ` (CRL ${i + 1} of ${dates.length})` : '';
    if (x?.thisUpdate != null && x.thisUpdate.getTime() > now) out.push(`${set.options.clientCrlFile}${which} is not valid until its thisUpdate ${x.thisUpdate.toISOString()}: until then every client certificate of its issuer is refused (CRL_NOT_YET_VALID)`);
    const d = x?.nextUpdate ?? null;
    if (d === null) return;
    if (d.getTime() <= now) out.push(`${set.options.clientCrlFile}${which} has expired (nextUpdate ${d.toISOString()}): every client certificate of its issuer is refused (CRL_HAS_EXPIRED) until a current CRL is in place`);
    else if (d.getTime() - now <= CRL_WARN_AHEAD_MS) out.push(`${set.options.clientCrlFile}${which} expires within a day (nextUpdate ${d.toISOString()})`);
  });
  return out;
}

/**
 * The live certificates of a TLS listener: swapped whole on a config reload, and per
 * certificate when its files change (polled every `intervalMs`).
 */
export class CertStore {
  /** Files polled, with this store's listener (other watchers of the same file — the config's input watcher — are not ours to remove). */
  private watched: [string, (cur: Stats, prev: Stats) => void][] = [];
  private timers = new Set<NodeJS.Timeout>();
  /** Wakes checkCrl when a client CRL comes within a day of its nextUpdate, or passes it. */
  private crlTimer: NodeJS.Timeout | null = null;
  /** Called after a certificate or the whole set changed (the listener refreshes its default). */
  onChange: (() => void) | null = null;

  constructor(private set: CertSet, private readonly log: Logger, private readonly intervalMs = 1000) {}

  get current(): CertSet {
    return this.set;
  }

  /** SNICallback for tls.createServer. */
  readonly sni = (servername: string, cb: (err: Error | null, ctx?: SecureContext) => void): void => {
    const ctx = this.set.contextFor(servername);
    if (ctx) cb(null, ctx);
    // (the handshake ends, the connection is closed: Node's SNI hook has no alert to send)
    else cb(new Error(`no certificate for the server name ${JSON.stringify(servername.slice(0, 253))}`));
  };

  /** A new config's certificates (already loaded). */
  swap(next: CertSet, watch: boolean): void {
    this.set = next;
    this.unwatch();
    if (watch) this.watch();
    this.onChange?.();
  }

  watch(): void {
    this.set.specs.forEach((spec, i) => {
      for (const file of [spec.certFile, spec.keyFile]) {
        const listener = (cur: Stats, prev: Stats) => {
          if (cur.mtimeMs === prev.mtimeMs && cur.size === prev.size && cur.ino === prev.ino) return;
          // cert and key are often written one after the other: settle before reading.
          const t = setTimeout(() => {
            this.timers.delete(t);
            this.reloadOne(i);
          }, 200);
          this.timers.add(t);
        };
        watchFile(file, { interval: this.intervalMs, persistent: false }, listener);
        this.watched.push([file, listener]);
      }
    });
  }

  private reloadOne(i: number): void {
    const set = this.set;
    const spec = set.specs[i];
    if (!spec) return;
    // The client CA stays the one the set was loaded with: every context trusts the same CA (a
    // CA file unreadable at this moment must never leave a context trusting the system's roots
    // instead); a changed CA applies by a reload, to all contexts at once.
    const r = buildContext(spec, set.options, set.clientCa, set.clientCrl);
    const error = typeof r === 'string' ? r : hostsProblem(spec, r.cert)?.message;
    if (typeof r === 'string' || error !== undefined) {
      this.log.error({ hosts: spec.hosts, error }, 'certificate changed on disk but does not load; keeping the one in use');
      return;
    }
    set.replace(i, r);
    this.onChange?.();
    this.log.info({ hosts: spec.hosts, cert: spec.certFile }, 'certificate reloaded');
  }

  private unwatch(): void {
    for (const [f, listener] of this.watched) unwatchFile(f, listener);
    this.watched = [];
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
  }

  /**
   * Warns of a client CRL past its nextUpdate (OpenSSL then refuses every client certificate its
   * issuer signed, CRL_HAS_EXPIRED, until a current CRL is in place) or due within a day; called at
   * start and on each reload, and again by itself when one comes within the day or passes it.
   */
  checkCrl(now = Date.now()): void {
    if (this.crlTimer !== null) clearTimeout(this.crlTimer);
    this.crlTimer = null;
    const file = this.set.options.clientCrlFile ?? null;
    const dates = this.set.crlDates();
    let wake = Infinity;
    dates.forEach((x, i) => {
      const which = dates.length > 1 ? { crl: `${i + 1} of ${dates.length}` } : {};
      if (x?.thisUpdate != null && x.thisUpdate.getTime() > now) {
        this.log.warn({ setting: 'tls.client_crl', file, ...which, this_update: x.thisUpdate.toISOString() }, 'client CRL is not valid yet (its thisUpdate is ahead of this clock): until then every client certificate of its issuer is refused (CRL_NOT_YET_VALID)');
      }
      const d = x?.nextUpdate ?? null;
      if (d === null) return;
      const at = d.getTime();
      if (at <= now) {
        this.log.warn({ setting: 'tls.client_crl', file, ...which, next_update: d.toISOString() }, 'client CRL has expired (past its nextUpdate): every client certificate of its issuer is refused (CRL_HAS_EXPIRED) until a current CRL is in place');
        return;
      }
      if (at - now <= CRL_WARN_AHEAD_MS) {
        this.log.warn({ setting: 'tls.client_crl', file, ...which, next_update: d.toISOString() }, 'client CRL expires within a day (its nextUpdate): past it, every client certificate of its issuer is refused until a current CRL is in place');
        wake = Math.min(wake, at - now);
      } else wake = Math.min(wake, at - now - CRL_WARN_AHEAD_MS);
    });
    if (wake === Infinity) return;
    // (a timer takes at most 2^31 - 1 ms: a later one checks again then)
    const t = setTimeout(() => this.checkCrl(), Math.min(wake + 1000, 0x7fffffff));
    t.unref();
    this.crlTimer = t;
  }

  close(): void {
    this.unwatch();
    if (this.crlTimer !== null) clearTimeout(this.crlTimer);
    this.crlTimer = null;
  }
}

/** Strict-Transport-Security value from the config (null: not sent). */
export function hstsValue(maxAgeSeconds: number, includeSubdomains: boolean, preload: boolean): string {
  return `max-age=${maxAgeSeconds}${includeSubdomains ? '; includeSubDomains' : ''}${preload ? '; preload' : ''}`;
}
