/**
 * The KEDA external scaler: a gRPC server speaking KEDA's `externalscaler.proto` so a ScaledObject
 *
 *   triggers:
 *     - type: external            # or external-push (uses StreamIsActive)
 *       metadata: {scalerAddress: turnpike:9443, service: orders}
 *
 * scales a service to the replicas the advisor recommends. The service is scalerMetadata.service,
 * else the ScaledObject's name. One metric per service, `turnpike-desired-replicas-<service>`,
 * with target 1 and value = desired replicas, so the HPA's ceil(value / target) is the desired
 * count; IsActive is the advisor's `active` (false lets KEDA scale to zero / idle).
 * Errors: no service -> INVALID_ARGUMENT, unknown service or metric -> NOT_FOUND. Requests are
 * capped at 64 KB and open streams at MAX_STREAMS, and at MAX_STREAMS_PER_PEER from one client
 * address (RESOURCE_EXHAUSTED past either), so hostile clients cannot grow memory and one client
 * (or a KEDA leaking streams) cannot take every slot from the operator. Connections likewise: at
 * most MAX_CONNECTIONS_PER_PEER from one address (MAX_CONNECTIONS in all), counted from the TCP
 * accept (before a TLS handshake or the HTTP/2 preface): one past it is closed at once, so idle
 * connections from one client cannot use up the process's file descriptors (the proxy's too).
 *
 * The listening socket (and TLS, when configured) is ours, not grpc-js's: grpc-js leaves its
 * listener without an 'error' handler once bound, so an accept error (EMFILE that libuv could
 * not absorb) ended the process, and a failed connection (bytes that are not HTTP/2, a reset,
 * a failed TLS handshake) was nowhere to be seen. Accepted connections are handed to grpc-js
 * (createConnectionInjector); accept errors are logged like every listener's (fd-limit.ts), a
 * failed connection at warn at most once per 10 s with the count (code, reason and peer
 * address: never a byte of what it sent).
 */
import * as grpc from '@grpc/grpc-js';
import { createServer as createNetServer, type Server as NetServer, type Socket } from 'node:net';
import { createServer as createTlsServer, type Server as TlsServer, type TLSSocket } from 'node:tls';
import { ThrottledWarnings, fdWatch } from '../core/fd-limit.js';
import { fromJSON } from '@grpc/proto-loader';
import protobuf from 'protobufjs';
import type { Logger } from '../core/log.js';
import type { AddressInfo } from 'node:net';
import { EXTERNAL_SCALER_PROTO } from './externalscaler-proto.js';

export interface KedaSource {
  /** The service a ScaledObject asks about: scalerMetadata.service (required), else the ScaledObject's name. Null when unknown. */
  lookup(service: string): { desired: number; active: boolean; pending?: boolean } | null;
  /** Notified every time the set of values may have changed (StreamIsActive pushes on change and at least every `streamIntervalMs`). */
  onChange?(listener: () => void): () => void;
}

export interface KedaServerOptions {
  listen: { host: string; port: number };
  source: KedaSource;
  log: Pick<Logger, 'info' | 'warn' | 'error'>;
  /** StreamIsActive repeats the current state at least this often (default 5000 ms). */
  streamIntervalMs?: number;
  /** gRPC over TLS; with clientCa, clients must present a certificate it signed (mutual TLS). */
  tls?: { cert: Buffer; key: Buffer; clientCa?: Buffer };
  /** Open StreamIsActive calls at most (default MAX_STREAMS), and from one client address (default MAX_STREAMS_PER_PEER). */
  maxStreams?: number;
  maxStreamsPerPeer?: number;
  /** Open connections at most (default MAX_CONNECTIONS), and from one client address (default MAX_CONNECTIONS_PER_PEER). */
  maxConnections?: number;
  maxConnectionsPerPeer?: number;
}

export interface ScaledObjectRef { name?: string; namespace?: string; scalerMetadata?: Record<string, string> }
export interface MetricSpec { metricName: string; targetSize: number; targetSizeFloat: number }
export interface MetricValue { metricName: string; metricValue: number; metricValueFloat: number }

export const MAX_MESSAGE_BYTES = 64 * 1024;
export const MAX_STREAMS = 1024;
export const MAX_STREAMS_PER_PEER = 256;
export const MAX_CONNECTIONS = 1024;
export const MAX_CONNECTIONS_PER_PEER = 64;
const MAX_SERVICE_CHARS = 253;

let serviceCtor: grpc.ServiceClientConstructor | undefined;
/** The ExternalScaler service built from the proto text (once). */
function externalScaler(): grpc.ServiceClientConstructor {
  if (!serviceCtor) {
    const root = protobuf.parse(EXTERNAL_SCALER_PROTO, { keepCase: true }).root;
    const def = fromJSON(root.toJSON(), { keepCase: true, longs: Number, defaults: true });
    const pkg = grpc.loadPackageDefinition(def) as unknown as { externalscaler: { ExternalScaler: grpc.ServiceClientConstructor } };
    serviceCtor = pkg.externalscaler.ExternalScaler;
  }
  return serviceCtor;
}

/**
 * The client address of a call, without its port: grpc-js's getPeer() is `address:port`
 * (`::ffff:10.0.0.1:5000` unbracketed from a dual-stack socket, `[::1]:5000` bracketed when it
 * came so), `unknown` without a TCP peer. An IPv4-mapped IPv6 address counts as its IPv4 one.
 */
export function peerAddress(peer: string): string {
  let host = peer;
  if (host.startsWith('[')) host = host.slice(1, host.indexOf(']') > 0 ? host.indexOf(']') : undefined);
  else {
    const colon = host.lastIndexOf(':');
    if (colon > 0 && /^\d+$/.test(host.slice(colon + 1))) host = host.slice(0, colon);
  }
  return clientAddress(host);
}

/** A socket's remoteAddress as peerAddress gives it (an IPv4-mapped IPv6 address as its IPv4 one). */
const clientAddress = (address: string): string => address.toLowerCase().replace(/^::ffff:(?=\d+\.\d+\.\d+\.\d+$)/, '');

export function metricNameFor(service: string): string {
  return `turnpike-desired-replicas-${service.toLowerCase().replace(/[^a-z0-9-]+/g, '-')}`;
}

type Failure = { code: grpc.status; details: string };
type Resolved = { service: string; metricName: string; desired: number; active: boolean };

export async function startKedaServer(opts: KedaServerOptions): Promise<{
  port: number;
  /** The listening socket (its accept errors are logged). */
  listener: NetServer;
  /**
   * A new certificate, key and client CA for the handshakes from now on (a rotated certificate
   * needs no restart). False, nothing changed: not over TLS, client_ca added or removed (a
   * restart), or material the TLS library refuses.
   */
  setTls(tls: NonNullable<KedaServerOptions['tls']>): boolean;
  close(): Promise<void>;
}> {
  const { source, log } = opts;
  const intervalMs = Math.max(10, opts.streamIntervalMs ?? 5000);
  const maxStreams = opts.maxStreams ?? MAX_STREAMS;
  const maxPerPeer = opts.maxStreamsPerPeer ?? MAX_STREAMS_PER_PEER;

  /** `spec`: for GetMetricSpec, whose answer (the metric's name and target) needs no decision. */
  function resolve(ref: ScaledObjectRef | null | undefined, spec = false): Resolved | Failure {
    const meta = ref?.scalerMetadata ?? {};
    const service = (typeof meta.service === 'string' && meta.service.trim()) || (typeof ref?.name === 'string' ? ref.name.trim() : '');
    if (!service) return { code: grpc.status.INVALID_ARGUMENT, details: 'scalerMetadata.service is required (or a ScaledObject name)' };
    if (service.length > MAX_SERVICE_CHARS) return { code: grpc.status.INVALID_ARGUMENT, details: `service name longer than ${MAX_SERVICE_CHARS} characters` };
    const state = source.lookup(service);
    if (!state) return { code: grpc.status.NOT_FOUND, details: `unknown service "${service}": not scaled by Turnpike` };
    // No decision yet (a start, a scale subresource not read yet): an error keeps the HPA where it is; a number would move it.
    if (state.pending === true && !spec) return { code: grpc.status.UNAVAILABLE, details: `service "${service}": no decision yet` };
    const desired = Number.isFinite(state.desired) ? Math.max(0, Math.round(state.desired)) : 0;
    return { service, metricName: metricNameFor(service), desired, active: Boolean(state.active) };
  }

  /** Runs a unary handler: a Failure or a thrown error becomes a gRPC status, never a crash. */
  function unary<Req, Res>(method: string, body: (req: Req) => Res | Failure) {
    return (call: grpc.ServerUnaryCall<Req, Res>, cb: grpc.sendUnaryData<Res>) => {
      try {
        const out = body(call.request);
        if (out && typeof out === 'object' && 'code' in out) cb(out as Failure);
        else cb(null, out as Res);
      } catch (err) {
        log.error({ err, method }, 'KEDA external scaler: handler failed');
        cb({ code: grpc.status.INTERNAL, details: 'internal error' });
      }
    };
  }

  const warnings = new ThrottledWarnings(() => log);
  /** Open StreamIsActive calls: each entry pushes the state (force: even if unchanged) and ends it. */
  const streams = new Map<grpc.ServerWritableStream<ScaledObjectRef, { result: boolean }>, { push(force: boolean): void; end(): void }>();
  const unsubscribe = source.onChange?.(() => { for (const s of streams.values()) s.push(false); });
  /** Open streams per client address (an entry only while it has one). */
  const perPeer = new Map<string, number>();

  function streamIsActive(call: grpc.ServerWritableStream<ScaledObjectRef, { result: boolean }>) {
    const peer = peerAddress(call.getPeer());
    const mine = perPeer.get(peer) ?? 0;
    if (mine >= maxPerPeer || streams.size >= maxStreams) {
      const details = mine >= maxPerPeer ? `more than ${maxPerPeer} open streams from one client address` : `more than ${maxStreams} open streams`;
      warnings.note('keda-streams', { listener: 'KEDA', remote: peer, open: streams.size, from_remote: mine }, `KEDA external scaler: a StreamIsActive refused (${details})`);
      call.emit('error', { code: grpc.status.RESOURCE_EXHAUSTED, details });
      return;
    }
    perPeer.set(peer, mine + 1);
    let last: boolean | undefined;
    let timer: NodeJS.Timeout | undefined;
    const stop = (status?: Failure) => {
      if (!streams.delete(call)) return;
      const n = (perPeer.get(peer) ?? 1) - 1;
      if (n > 0) perPeer.set(peer, n);
      else perPeer.delete(peer);
      clearInterval(timer);
      if (call.cancelled) return;
      if (status) call.emit('error', status);
      else call.end();
    };
    const push = (force: boolean) => {
      let r: Resolved | Failure;
      try {
        r = resolve(call.request);
      } catch (err) {
        log.error({ err, method: 'StreamIsActive' }, 'KEDA external scaler: handler failed');
        r = { code: grpc.status.INTERNAL, details: 'internal error' };
      }
      if ('code' in r) return r.code === grpc.status.UNAVAILABLE ? undefined : stop(r); // (no decision yet: the stream waits for one)
      if (!force && r.active === last) return;
      last = r.active;
      // A client that does not read: skip rather than buffer; the next push sends the news.
      if (!call.writableNeedDrain) call.write({ result: r.active });
    };
    streams.set(call, { push, end: () => stop() });
    call.on('cancelled', () => stop());
    call.on('close', () => stop());
    timer = setInterval(() => push(true), intervalMs);
    timer.unref();
    push(true);
  }

  const server = new grpc.Server({
    'grpc.max_receive_message_length': MAX_MESSAGE_BYTES,
    'grpc.max_send_message_length': MAX_MESSAGE_BYTES,
    'grpc.max_concurrent_streams': 100,
  });
  server.addService(externalScaler().service, {
    IsActive: unary<ScaledObjectRef, { result: boolean }>('IsActive', (req) => {
      const r = resolve(req);
      return 'code' in r ? r : { result: r.active };
    }),
    // (answered before the first decision too: KEDA builds the HPA from it, and an error there
    // leaves the HPA without the metric — or, in older KEDA, panics on the empty list)
    GetMetricSpec: unary<ScaledObjectRef, { metricSpecs: MetricSpec[] }>('GetMetricSpec', (req) => {
      const r = resolve(req, true);
      return 'code' in r ? r : { metricSpecs: [{ metricName: r.metricName, targetSize: 1, targetSizeFloat: 1 }] };
    }),
    GetMetrics: unary<{ scaledObjectRef?: ScaledObjectRef | null; metricName?: string }, { metricValues: MetricValue[] }>('GetMetrics', (req) => {
      if (!req.scaledObjectRef) return { code: grpc.status.INVALID_ARGUMENT, details: 'scaledObjectRef is required' };
      const r = resolve(req.scaledObjectRef);
      if ('code' in r) return r;
      if (req.metricName !== r.metricName) return { code: grpc.status.NOT_FOUND, details: `unknown metric "${String(req.metricName).slice(0, 200)}": service "${r.service}" has "${r.metricName}"` };
      return { metricValues: [{ metricName: r.metricName, metricValue: r.desired, metricValueFloat: r.desired }] };
    }),
    StreamIsActive: streamIsActive,
  });

  // Connections are accepted here and handed to grpc-js; TLS (mutual with clientCa) is done
  // here too, as grpc-js's createSsl would (ALPN h2, the client CA and its certificate required).
  const injector = server.createConnectionInjector(grpc.ServerCredentials.createInsecure());
  const failed = (err: Error & { code?: string }, socket: Socket | TLSSocket | null) => {
    const code = err.code ?? 'error';
    warnings.note('keda-connection', { listener: 'KEDA', code, reason: String(err.message).slice(0, 200), remote: socket?.remoteAddress ?? null },
      `KEDA external scaler: a connection failed (${code}); it keeps serving`);
  };
  const accept = (socket: Socket | TLSSocket) => {
    // (the HTTP/2 session handles its socket's errors too: this only says so, and once per window)
    socket.on('error', (err: Error) => failed(err, socket));
    injector.injectConnection(socket);
  };
  /** Open connections per client address (an entry only while it has one). */
  const connections = new Map<string, number>();
  const maxConnPerPeer = opts.maxConnectionsPerPeer ?? MAX_CONNECTIONS_PER_PEER;
  /** A TCP connection accepted: counted, or closed at once past its address's share (false). */
  const admit = (raw: Socket): boolean => {
    const peer = clientAddress(raw.remoteAddress ?? 'unknown');
    const mine = connections.get(peer) ?? 0;
    if (mine >= maxConnPerPeer) {
      warnings.note('keda-peer-connections', { listener: 'KEDA', remote: peer, open: mine },
        `KEDA external scaler: a connection refused (more than ${maxConnPerPeer} open from one client address)`);
      raw.destroy();
      return false;
    }
    connections.set(peer, mine + 1);
    raw.once('close', () => {
      const n = (connections.get(peer) ?? 1) - 1;
      if (n > 0) connections.set(peer, n);
      else connections.delete(peer);
    });
    return true;
  };
  let listener: NetServer;
  let tlsListener: TlsServer | null = null;
  if (opts.tls) {
    const tls = createTlsServer({
      cert: opts.tls.cert, key: opts.tls.key, ALPNProtocols: ['h2'],
      ...(opts.tls.clientCa ? { ca: opts.tls.clientCa, requestCert: true, rejectUnauthorized: true } : {}),
    }, accept);
    // (the TCP connection, before its handshake: one past the share never starts one)
    tls.on('connection', (raw: Socket) => { admit(raw); });
    // A handshake that fails (not TLS, reset mid-handshake, no client certificate...).
    tls.on('tlsClientError', (err: Error, socket: TLSSocket) => failed(err, socket));
    listener = tlsListener = tls;
  } else listener = createNetServer((socket) => { if (admit(socket)) accept(socket); });
  listener.maxConnections = opts.maxConnections ?? MAX_CONNECTIONS;
  try {
    await new Promise<void>((ok, fail) => {
      listener.once('error', fail);
      listener.listen(opts.listen.port, opts.listen.host, () => { listener.off('error', fail); ok(); });
    });
  } catch (err) {
    unsubscribe?.();
    injector.destroy();
    server.forceShutdown();
    throw err;
  }
  // From now on an accept error is logged (with the open-files advice), never fatal.
  fdWatch.watchListener(listener, 'KEDA');
  const port = (listener.address() as AddressInfo).port;

  let closing: Promise<void> | undefined;
  return {
    port,
    listener,
    setTls(next) {
      if (tlsListener === null || (opts.tls?.clientCa === undefined) !== (next.clientCa === undefined)) return false;
      try {
        tlsListener.setSecureContext({ cert: next.cert, key: next.key, ...(next.clientCa ? { ca: next.clientCa } : {}) });
        return true;
      } catch (err) {
        log.error({ err: (err as Error).message }, 'KEDA external scaler: the new TLS certificate was not taken; the old one serves');
        return false;
      }
    },
    close() {
      closing ??= new Promise<void>((done) => {
        unsubscribe?.();
        listener.close();
        for (const s of [...streams.values()]) s.end();
        const force = setTimeout(() => { server.forceShutdown(); warnings.clear(); done(); }, 2000);
        server.tryShutdown(() => { clearTimeout(force); warnings.clear(); done(); });
      });
      return closing;
    },
  };
}

/** The desired replicas the HPA computes from KEDA's metrics: ceil(sum(value) / target), float fields preferred when > 0. */
export function hpaDesired(spec: MetricSpec, values: MetricValue[]): number {
  const target = spec.targetSizeFloat > 0 ? spec.targetSizeFloat : spec.targetSize;
  const sum = values.reduce((a, v) => a + (v.metricValueFloat > 0 ? v.metricValueFloat : v.metricValue), 0);
  return Math.ceil(sum / target);
}

export interface KedaClient {
  readonly raw: grpc.Client & Record<string, Function>;
  isActive(ref: ScaledObjectRef): Promise<boolean>;
  getMetricSpec(ref: ScaledObjectRef): Promise<MetricSpec[]>;
  getMetrics(ref: ScaledObjectRef, metricName: string): Promise<MetricValue[]>;
  /** What KEDA + the HPA do: GetMetricSpec, GetMetrics for its metric, the HPA formula. */
  desiredReplicas(ref: ScaledObjectRef): Promise<number>;
  streamIsActive(ref: ScaledObjectRef): grpc.ClientReadableStream<{ result: boolean }>;
  close(): void;
}

/** A KEDA-side client built from the same proto (tests, the end-to-end load test, diagnostics). */
export function kedaClient(address: string, credentials = grpc.credentials.createInsecure(), deadlineMs = 5000): KedaClient {
  const Ctor = externalScaler();
  const raw = new Ctor(address, credentials) as grpc.Client & Record<string, Function>;
  const call = <T>(method: string, req: unknown) => new Promise<T>((ok, fail) => {
    raw[method]!.call(raw, req, { deadline: Date.now() + deadlineMs }, (err: grpc.ServiceError | null, res: T) => (err ? fail(err) : ok(res)));
  });
  const client: KedaClient = {
    raw,
    isActive: async (ref) => (await call<{ result: boolean }>('IsActive', ref)).result,
    getMetricSpec: async (ref) => (await call<{ metricSpecs: MetricSpec[] }>('GetMetricSpec', ref)).metricSpecs,
    getMetrics: async (ref, metricName) => (await call<{ metricValues: MetricValue[] }>('GetMetrics', { scaledObjectRef: ref, metricName })).metricValues,
    async desiredReplicas(ref) {
      const [spec] = await client.getMetricSpec(ref);
      if (!spec) throw new Error('no metric spec');
      return hpaDesired(spec, await client.getMetrics(ref, spec.metricName));
    },
    streamIsActive: (ref) => raw.StreamIsActive!.call(raw, ref) as grpc.ClientReadableStream<{ result: boolean }>,
    close: () => raw.close(),
  };
  return client;
}
