/**
 * Test certificates made with the openssl command line: a CA, and leaf certificates for given
 * DNS names (or a client certificate), signed by it. Each call writes into a fresh temp dir.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface Pem {
  certFile: string;
  keyFile: string;
  cert: Buffer;
  key: Buffer;
}

export interface TestCa extends Pem {
  dir: string;
  /** A leaf certificate signed by this CA (server: SANs for the names; client: clientAuth, and `sans` as written, e.g. DNS:a.example). */
  issue(name: string, opts?: { dns?: string[]; client?: boolean; sans?: string[]; file?: string; days?: number; expired?: boolean; notAfter?: Date }): Pem;
  /** A PEM CRL signed by this CA listing the given certificates as revoked (written to `file` in the CA's dir; its path); due in 2 days unless `nextUpdate` says when (then issued at `thisUpdate`, else an hour before it, or before now). */
  crl(revoked: Pem[], file?: string, opts?: { nextUpdate?: Date; thisUpdate?: Date }): string;
  /** An intermediate CA signed by this one (a TestCa of its own: its own temp dir, to clean up too). */
  intermediate(cn: string): TestCa;
  cleanup(): void;
}

const openssl = (args: string[], cwd: string) => execFileSync('openssl', args, { cwd, stdio: ['ignore', 'ignore', 'pipe'] });

export function makeCa(cn = 'Turnpike Test CA', parent?: TestCa): TestCa {
  const dir = mkdtempSync(join(tmpdir(), 'turnpike-certs-'));
  if (parent === undefined) {
    openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2', '-subj', `/CN=${cn}`,
      '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign'], dir);
  } else {
    writeFileSync(join(dir, 'ca.ext'), 'basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n');
    openssl(['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'ca.key', '-out', 'ca.csr', '-subj', `/CN=${cn}`], dir);
    openssl(['x509', '-req', '-in', 'ca.csr', '-CA', parent.certFile, '-CAkey', parent.keyFile, '-set_serial', String(1000 + Math.floor(Math.random() * 1e6)), '-days', '2', '-out', 'ca.pem', '-extfile', 'ca.ext'], dir);
  }
  let serial = 1;
  const ca: TestCa = {
    dir,
    certFile: join(dir, 'ca.pem'),
    keyFile: join(dir, 'ca.key'),
    cert: readFileSync(join(dir, 'ca.pem')),
    key: readFileSync(join(dir, 'ca.key')),
    issue(name, opts = {}) {
      const base = opts.file ?? `${name.replace(/[^A-Za-z0-9.-]/g, '_')}-${serial}`;
      const ext = join(dir, `${base}.ext`);
      const dns = opts.dns ?? [name];
      writeFileSync(ext, opts.client
        ? `basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n${opts.sans ? `subjectAltName=${opts.sans.join(',')}\n` : ''}`
        : `basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=${dns.map((d) => (/^[0-9.]+$|:/.test(d) ? `IP:${d}` : `DNS:${d}`)).join(',')}\n`);
      openssl(['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', `${base}.key`, '-out', `${base}.csr`, '-subj', `/CN=${name}`], dir);
      if (opts.expired || opts.notAfter) {
        // (openssl x509 takes no dates in the past, nor an end to the second; openssl ca does:
        // expired, valid for one day in 2020; notAfter, from an hour ago until then)
        const stamp = (d: Date) => d.toISOString().replace(/[-:T]/g, '').replace(/\.\d+Z$/, 'Z');
        const db = join(dir, `${base}.db`);
        writeFileSync(db, '');
        writeFileSync(join(dir, `${base}.serial`), `${(serial++).toString(16).padStart(2, '0')}\n`);
        writeFileSync(join(dir, `${base}.cnf`), `[ca]\ndefault_ca = d\n[d]\ndatabase = ${db}\nnew_certs_dir = ${dir}\nserial = ${join(dir, `${base}.serial`)}\ndefault_md = sha256\npolicy = p\n[p]\ncommonName = supplied\n`);
        openssl(['ca', '-batch', '-config', `${base}.cnf`, '-cert', 'ca.pem', '-keyfile', 'ca.key', '-in', `${base}.csr`, '-out', `${base}.pem`, '-notext',
          '-startdate', opts.notAfter ? stamp(new Date(Date.now() - 3600_000)) : '20200101000000Z', '-enddate', opts.notAfter ? stamp(opts.notAfter) : '20200102000000Z', '-extfile', ext], dir);
      } else openssl(['x509', '-req', '-in', `${base}.csr`, '-CA', 'ca.pem', '-CAkey', 'ca.key', '-set_serial', String(serial++), '-days', String(opts.days ?? 2), '-out', `${base}.pem`, '-extfile', ext], dir);
      const certFile = join(dir, `${base}.pem`);
      const keyFile = join(dir, `${base}.key`);
      return { certFile, keyFile, cert: readFileSync(certFile), key: readFileSync(keyFile) };
    },
    crl(revoked, file = `crl-${serial++}.pem`, opts = {}) {
      // (openssl ca keeps its own database: a fresh one per CRL, each certificate revoked into it)
      const base = file.replace(/[^A-Za-z0-9.-]/g, '_');
      const db = join(dir, `${base}.db`);
      writeFileSync(db, '');
      writeFileSync(join(dir, `${base}.crlnumber`), '01\n');
      const cnf = join(dir, `${base}.cnf`);
      writeFileSync(cnf, `[ca]\ndefault_ca = d\n[d]\ndatabase = ${db}\ncrlnumber = ${join(dir, `${base}.crlnumber`)}\ndefault_md = sha256\ndefault_crl_days = 2\n`);
      for (const r of revoked) openssl(['ca', '-config', cnf, '-cert', 'ca.pem', '-keyfile', 'ca.key', '-revoke', r.certFile], dir);
      const stamp = (d: Date) => d.toISOString().replace(/[-:T]/g, '').replace(/\.\d+Z$/, 'Z');
      const due = opts.nextUpdate;
      const dates = due ? ['-crl_lastupdate', stamp(opts.thisUpdate ?? new Date(Math.min(Date.now(), due.getTime()) - 3600_000)), '-crl_nextupdate', stamp(due)] : [];
      openssl(['ca', '-config', cnf, '-cert', 'ca.pem', '-keyfile', 'ca.key', '-gencrl', ...dates, '-out', file], dir);
      return join(dir, file);
    },
    intermediate: (name) => makeCa(name, ca),
    cleanup: () => rmSync(dir, { recursive: true, force: true }),
  };
  return ca;
}

/** The CN of a peer certificate as Node reports it. */
export function subjectCn(cert: { subject?: { CN?: string | string[] } } | null | undefined): string | undefined {
  const cn = cert?.subject?.CN;
  return Array.isArray(cn) ? cn[0] : cn;
}
