/** The KEDA external scaler over TLS from the config (scaling.keda.tls): a server certificate, and a client CA for mutual TLS. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as grpc from '@grpc/grpc-js';
import { kedaClient } from '../src/scaling/keda.js';
import { makeCa } from './certs.js';
import { configIssues, freePort, startGateway } from './helpers.js';

test('scaling.keda.tls: KEDA reaches the scaler over mutual TLS; a client without a certificate or plaintext is refused', async () => {
  const ca = makeCa();
  const server = ca.issue('turnpike', { dns: ['localhost', '127.0.0.1'] });
  const client = ca.issue('keda', { client: true });
  const port = await freePort();
  const tp = await startGateway(`scaling:
  keda: {listen: 127.0.0.1:${port}, tls: {cert: ${server.certFile}, key: ${server.keyFile}, client_ca: ${ca.certFile}}}
services:
  - name: orders
    url: http://127.0.0.1:1
    scaling: {target_concurrency: 4, min_replicas: 2}
    routes: [{paths: [/o]}]
`);
  const ref = { name: 'orders', namespace: 'shop', scalerMetadata: { service: 'orders' } };
  const clients: ReturnType<typeof kedaClient>[] = [];
  const dial = (creds: grpc.ChannelCredentials) => {
    const c = kedaClient(`localhost:${port}`, creds, 3000);
    clients.push(c);
    return c;
  };
  try {
    const mtls = dial(grpc.credentials.createSsl(ca.cert, client.key, client.cert));
    // (UNAVAILABLE until the advisor's first tick: no decision yet)
    let desired: number | null = null;
    for (let i = 0; i < 30 && desired === null; i++) desired = await mtls.desiredReplicas(ref).catch(async (err: grpc.ServiceError) => {
      assert.equal(err.code, grpc.status.UNAVAILABLE, err.message);
      await new Promise((r) => setTimeout(r, 100));
      return null;
    });
    assert.equal(desired, 2);
    await assert.rejects(dial(grpc.credentials.createSsl(ca.cert)).isActive(ref), 'no client certificate');
    await assert.rejects(dial(grpc.credentials.createInsecure()).isActive(ref), 'plaintext');
  } finally {
    for (const c of clients) c.close();
    await tp.close();
    ca.cleanup();
  }
  // A file that cannot be read is a config error naming the field.
  assert.match(JSON.stringify(configIssues(`scaling: {keda: {listen: 127.0.0.1:1, tls: {cert: /nonexistent/cert.pem, key: /nonexistent/key.pem}}}
services:
  - name: orders
    url: http://127.0.0.1:1
    scaling: {target_concurrency: 4}
`)), /keda.*tls.*cert.*cannot read/);
});

test('scaling.keda.tls and a trigger\'s ca_file: material Node takes without a word (a CA file with no certificate, a key that is not the certificate\'s) is a config error naming the field', () => {
  const ca = makeCa();
  const server = ca.issue('turnpike', { dns: ['localhost'] });
  const other = ca.issue('other', { dns: ['localhost'] });
  try {
    const svc = 'services:\n  - name: orders\n    url: http://127.0.0.1:1\n    scaling: {target_concurrency: 4}\n';
    const at = (yaml: string) => configIssues(yaml).map((i) => [i.path, i.message]);
    // a key file given as the client CA: no certificate in it
    const noCa = at(`scaling: {keda: {listen: 127.0.0.1:1, tls: {cert: ${server.certFile}, key: ${server.keyFile}, client_ca: ${server.keyFile}}}}\n${svc}`);
    assert.deepEqual(noCa.map(([p]) => p), ['scaling.keda.tls.client_ca']);
    assert.match(noCa[0]![1]!, /no PEM certificate/);
    const mismatch = at(`scaling: {keda: {listen: 127.0.0.1:1, tls: {cert: ${server.certFile}, key: ${other.keyFile}}}}\n${svc}`);
    assert.deepEqual(mismatch.map(([p]) => p), ['scaling.keda.tls.cert']);
    assert.deepEqual(at(`scaling: {keda: {listen: 127.0.0.1:1, tls: {cert: ${server.certFile}, key: ${server.keyFile}, client_ca: ${ca.certFile}}}}\n${svc}`), []);
    const hook = at(`services:\n  - name: orders\n    url: http://127.0.0.1:1\n    scaling:\n      target_concurrency: 4\n      triggers: [{type: webhook, url: "https://hooks.internal/scale", secret: whsec-0123456789abcdef, ca_file: ${server.keyFile}}]\n`);
    assert.deepEqual(hook.map(([p]) => p), ['services[0].scaling.triggers[0].ca_file']);
    assert.match(hook[0]![1]!, /no PEM certificate/);
  } finally {
    ca.cleanup();
  }
});

test('scaling.keda.tls: a certificate rotated on disk is served after the reload, without a restart', async () => {
  const { parseConfigText } = await import('../src/config/load.js');
  const { copyFileSync } = await import('node:fs');
  const { join } = await import('node:path');
  const [oldCa, newCa] = [makeCa('Old KEDA CA'), makeCa('New KEDA CA')];
  const first = oldCa.issue('turnpike', { dns: ['localhost'] });
  const rotated = newCa.issue('turnpike', { dns: ['localhost'] });
  // (where cert-manager writes: the same two paths, new contents)
  const [certFile, keyFile] = [join(oldCa.dir, 'keda.pem'), join(oldCa.dir, 'keda.key')];
  copyFileSync(first.certFile, certFile);
  copyFileSync(first.keyFile, keyFile);
  const port = await freePort();
  const text = `scaling:
  keda: {listen: 127.0.0.1:${port}, tls: {cert: ${certFile}, key: ${keyFile}}}
services:
  - name: orders
    url: http://127.0.0.1:1
    scaling: {target_concurrency: 4, min_replicas: 2}
    routes: [{paths: [/o]}]
`;
  const tp = await startGateway(text);
  const clients: ReturnType<typeof kedaClient>[] = [];
  const ask = (ca: Buffer) => {
    const c = kedaClient(`localhost:${port}`, grpc.credentials.createSsl(ca), 3000);
    clients.push(c);
    return c.isActive({ name: 'orders', namespace: 'shop', scalerMetadata: { service: 'orders' } }).then(() => 'ok', (err: grpc.ServiceError) => (err.code === grpc.status.UNAVAILABLE && /no decision yet/.test(err.details) ? 'ok' : `refused: ${err.details}`));
  };
  try {
    assert.equal(await ask(oldCa.cert), 'ok');
    copyFileSync(rotated.certFile, certFile);
    copyFileSync(rotated.keyFile, keyFile);
    await tp.gw.reload(parseConfigText(`listen: 127.0.0.1:0\n${text}\naccess_log: {enabled: false}\n`));
    assert.equal(await ask(newCa.cert), 'ok', 'the rotated certificate is served');
    assert.match(await ask(oldCa.cert), /^refused/, 'the old one no longer');
  } finally {
    for (const c of clients) c.close();
    await tp.close();
    oldCa.cleanup();
    newCa.cleanup();
  }
});
