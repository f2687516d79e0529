/**
 * A real gRPC service for tests, on @grpc/grpc-js without protobuf: `test.Echo` is a hand-written
 * ServiceDefinition whose messages are JSON (serialized to/from Buffers), so tests and a gateway
 * in between can read every frame. Methods:
 *   Say   unary         {text} -> {text, metadata}; 'fail' -> INVALID_ARGUMENT 'bad text' with
 *                       trailing x-detail: why; 'sleep:N' waits N ms (timer stopped on cancel).
 *   Count server-stream {n, delayMs, failAfter?} -> n x {i}, then trailing x-total: n
 *                       (failAfter: ABORTED 'stopped' after that many messages).
 *   Sum   client-stream stream of {v} -> {sum}
 *   Chat  bidi          {text} -> {text: 'echo:'+text} each; ends when the client ends.
 * Also: an echo client constructor, promise helpers and raw gRPC frame helpers.
 */
import * as grpc from '@grpc/grpc-js';

export interface SayReq { text: string }
export interface SayRes {
  text: string;
  /** Selected request metadata as the service saw it. */
  metadata: { 'x-request-id': string | null; 'x-forwarded-for': string | null; authorization: boolean; deadline: boolean };
}
export interface CountReq { n: number; delayMs?: number; failAfter?: number }
export interface CountRes { i: number }
export interface SumReq { v: number }
export interface SumRes { sum: number }
export interface ChatMsg { text: string }

/** JSON <-> Buffer, the message codec of test.Echo (also for building raw frames). */
export const serializeJson = (value: unknown): Buffer => Buffer.from(JSON.stringify(value), 'utf8');
export const deserializeJson = <T = any>(bytes: Buffer): T => JSON.parse(bytes.toString('utf8')) as T;

export const PATHS = { Say: '/test.Echo/Say', Count: '/test.Echo/Count', Sum: '/test.Echo/Sum', Chat: '/test.Echo/Chat' } as const;

function method(name: keyof typeof PATHS, requestStream: boolean, responseStream: boolean): grpc.MethodDefinition<any, any> {
  return {
    path: PATHS[name], requestStream, responseStream, originalName: name,
    requestSerialize: serializeJson, requestDeserialize: deserializeJson,
    responseSerialize: serializeJson, responseDeserialize: deserializeJson,
  };
}

export const EchoService: grpc.ServiceDefinition = {
  Say: method('Say', false, false),
  Count: method('Count', false, true),
  Sum: method('Sum', true, false),
  Chat: method('Chat', true, true),
};

const first = (md: grpc.Metadata, key: string): string | null => {
  const v = md.get(key)[0];
  return v === undefined ? null : String(v);
};

/** Handlers; `cancelled` collects the method name of every call the server saw cancelled. */
function implementation(cancelled: string[]): grpc.UntypedServiceImplementation {
  return {
    Say(call: grpc.ServerUnaryCall<SayReq, SayRes>, cb: grpc.sendUnaryData<SayRes>) {
      const { text } = call.request;
      const md = call.metadata;
      const reply = () => cb(null, {
        text,
        metadata: {
          'x-request-id': first(md, 'x-request-id'),
          'x-forwarded-for': first(md, 'x-forwarded-for'),
          authorization: md.get('authorization').length > 0,
          deadline: Number(call.getDeadline()) !== Infinity,
        },
      });
      if (text === 'fail') {
        const trailer = new grpc.Metadata();
        trailer.set('x-detail', 'why');
        return cb({ code: grpc.status.INVALID_ARGUMENT, details: 'bad text', metadata: trailer });
      }
      const sleep = /^sleep:(\d+)/.exec(text);
      if (!sleep) return reply();
      const timer = setTimeout(reply, Number(sleep[1]));
      call.on('cancelled', () => { clearTimeout(timer); cancelled.push('Say'); });
    },

    Count(call: grpc.ServerWritableStream<CountReq, CountRes>) {
      const { n, delayMs = 0, failAfter } = call.request;
      let i = 0;
      let timer: NodeJS.Timeout | undefined;
      const step = () => {
        if (failAfter !== undefined && i === failAfter) {
          return call.emit('error', { code: grpc.status.ABORTED, details: 'stopped' });
        }
        if (i === n) {
          const trailer = new grpc.Metadata();
          trailer.set('x-total', String(n));
          return call.end(trailer);
        }
        timer = setTimeout(() => { call.write({ i: i++ }); step(); }, delayMs);
      };
      call.on('cancelled', () => { clearTimeout(timer); cancelled.push('Count'); });
      step();
    },

    Sum(call: grpc.ServerReadableStream<SumReq, SumRes>, cb: grpc.sendUnaryData<SumRes>) {
      let sum = 0;
      call.on('data', (m: SumReq) => { sum += m.v; });
      call.on('end', () => cb(null, { sum }));
      call.on('cancelled', () => cancelled.push('Sum'));
    },

    Chat(call: grpc.ServerDuplexStream<ChatMsg, ChatMsg>) {
      call.on('data', (m: ChatMsg) => call.write({ text: 'echo:' + m.text }));
      call.on('end', () => call.end());
      call.on('cancelled', () => cancelled.push('Chat'));
    },
  };
}

export interface GrpcTestServer {
  server: grpc.Server;
  port: number;
  /** host:port, for echoClient */
  address: string;
  /** Method names of calls the server saw cancelled (client cancel, deadline, reset). */
  cancelled: string[];
  close(): Promise<void>;
}

/** Starts test.Echo on 127.0.0.1:0: h2c, or TLS when a certificate is given. */
export async function startGrpcServer(opts: { tls?: { cert: Buffer; key: Buffer } } = {}): Promise<GrpcTestServer> {
  const server = new grpc.Server();
  const cancelled: string[] = [];
  server.addService(EchoService, implementation(cancelled));
  const creds = opts.tls
    ? grpc.ServerCredentials.createSsl(null, [{ cert_chain: opts.tls.cert, private_key: opts.tls.key }], false)
    : grpc.ServerCredentials.createInsecure();
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', creds, (err, p) => (err ? reject(err) : resolve(p))));
  return {
    server, port, address: `127.0.0.1:${port}`, cancelled,
    // Graceful first; calls still open after 500 ms are torn down.
    close: () => new Promise<void>((resolve) => {
      const force = setTimeout(() => server.forceShutdown(), 500);
      server.tryShutdown(() => { clearTimeout(force); resolve(); });
    }),
  };
}

type UnaryCb<T> = (err: grpc.ServiceError | null, res?: T) => void;

/** The generic client of test.Echo, typed. */
export interface EchoClient extends grpc.Client {
  Say(req: SayReq, cb: UnaryCb<SayRes>): grpc.ClientUnaryCall;
  Say(req: SayReq, md: grpc.Metadata, cb: UnaryCb<SayRes>): grpc.ClientUnaryCall;
  Say(req: SayReq, md: grpc.Metadata, opts: grpc.CallOptions, cb: UnaryCb<SayRes>): grpc.ClientUnaryCall;
  Count(req: CountReq, md?: grpc.Metadata, opts?: grpc.CallOptions): grpc.ClientReadableStream<CountRes>;
  Sum(cb: UnaryCb<SumRes>): grpc.ClientWritableStream<SumReq>;
  Sum(md: grpc.Metadata, cb: UnaryCb<SumRes>): grpc.ClientWritableStream<SumReq>;
  Sum(md: grpc.Metadata, opts: grpc.CallOptions, cb: UnaryCb<SumRes>): grpc.ClientWritableStream<SumReq>;
  Chat(md?: grpc.Metadata, opts?: grpc.CallOptions): grpc.ClientDuplexStream<ChatMsg, ChatMsg>;
}

export const EchoClientCtor = grpc.makeGenericClientConstructor(EchoService, 'test.Echo');

/**
 * A test.Echo client for host:port. With tls, `servername` overrides the name checked against the
 * certificate (the address is usually an IP). Close it with client.close().
 */
export function echoClient(address: string, opts: { tls?: { ca: Buffer; servername?: string } } = {}): EchoClient {
  const creds = opts.tls ? grpc.credentials.createSsl(opts.tls.ca) : grpc.credentials.createInsecure();
  const options: grpc.ChannelOptions = opts.tls?.servername ? { 'grpc.ssl_target_name_override': opts.tls.servername } : {};
  return new EchoClientCtor(address, creds, options) as unknown as EchoClient;
}

/** Metadata from a plain object. */
export function metadata(pairs: Record<string, string>): grpc.Metadata {
  const md = new grpc.Metadata();
  for (const [k, v] of Object.entries(pairs)) md.set(k, v);
  return md;
}

/** Say as a promise (rejects with the grpc.ServiceError). */
export function sayP(client: EchoClient, text: string, md = new grpc.Metadata(), opts: grpc.CallOptions = {}): Promise<SayRes> {
  return new Promise((resolve, reject) => client.Say({ text }, md, opts, (err, res) => (err ? reject(err) : resolve(res!))));
}

export interface StreamResult<T> {
  messages: T[];
  /** The final status, trailing metadata included (status.metadata). */
  status: grpc.StatusObject;
  /** Response headers (initial metadata), if any arrived. */
  headers: grpc.Metadata | null;
}

/** Collects a response stream until its status (OK or not: the 'error' event is absorbed). */
export function collect<T>(stream: grpc.ClientReadableStream<T> | grpc.ClientDuplexStream<any, T>): Promise<StreamResult<T>> {
  return new Promise((resolve) => {
    const messages: T[] = [];
    let headers: grpc.Metadata | null = null;
    stream.on('metadata', (md: grpc.Metadata) => { headers = md; });
    stream.on('data', (m: T) => messages.push(m));
    stream.on('error', () => {});
    stream.on('status', (status: grpc.StatusObject) => resolve({ messages, status, headers }));
  });
}

/** Sum over a client stream of the given values. */
export function sumP(client: EchoClient, values: number[], md = new grpc.Metadata(), opts: grpc.CallOptions = {}): Promise<SumRes> {
  return new Promise((resolve, reject) => {
    const call = client.Sum(md, opts, (err, res) => (err ? reject(err) : resolve(res!)));
    for (const v of values) call.write({ v });
    call.end();
  });
}

/** Chat: sends every text, ends the request side, collects the echoes. */
export function chatP(client: EchoClient, texts: string[], md = new grpc.Metadata(), opts: grpc.CallOptions = {}): Promise<StreamResult<ChatMsg>> {
  const call = client.Chat(md, opts);
  const done = collect(call);
  for (const text of texts) call.write({ text });
  call.end();
  return done;
}

// Raw gRPC framing (JSON messages), for driving a gateway with plain HTTP clients.

/** One length-prefixed message: flag byte, 4-byte big-endian length, payload. */
export function frame(payload: Buffer, flag = 0): Buffer {
  const head = Buffer.alloc(5);
  head[0] = flag;
  head.writeUInt32BE(payload.length, 1);
  return Buffer.concat([head, payload]);
}

/** A JSON message as a gRPC data frame. */
export const jsonFrame = (value: unknown): Buffer => frame(serializeJson(value));

/** Splits a body into frames; throws on a truncated frame. */
export function parseFrames(body: Buffer): { flag: number; payload: Buffer }[] {
  const out: { flag: number; payload: Buffer }[] = [];
  for (let i = 0; i < body.length;) {
    if (body.length - i < 5) throw new Error('truncated frame header');
    const len = body.readUInt32BE(i + 1);
    if (body.length - i - 5 < len) throw new Error('truncated frame payload');
    out.push({ flag: body[i]!, payload: body.subarray(i + 5, i + 5 + len) });
    i += 5 + len;
  }
  return out;
}

/** Parses a grpc-web trailer frame payload (`name: value\r\n` lines). */
export function parseTrailerBlock(payload: Buffer): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of payload.toString('latin1').split('\r\n')) {
    const colon = line.indexOf(':');
    if (colon > 0) out[line.slice(0, colon).trim()] = line.slice(colon + 1).trim();
  }
  return out;
}
