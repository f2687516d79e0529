/**
 * An HTTP/2 (h2c, prior knowledge) origin that writes its frames by hand, for tests that need
 * what node:http2's server will not send: a stream reset (RST_STREAM) or a GOAWAY in the middle
 * of a body, without the END_STREAM that node's `stream.close(code)` sends first. It speaks just
 * enough HTTP/2 for undici's client: SETTINGS (and their ACK), PING ACKs, a response per request
 * stream as the test scripts it. Request header blocks are not decoded (HPACK): the script gets
 * the stream id and the count of requests seen so far.
 */
import { createServer, type Server, type Socket, type AddressInfo } from 'node:net';

const PREFACE = 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n';
const DATA = 0x0;
const HEADERS = 0x1;
const RST_STREAM = 0x3;
const SETTINGS = 0x4;
const PING = 0x6;
const GOAWAY = 0x7;
const END_STREAM = 0x1;
const END_HEADERS = 0x4;
const ACK = 0x1;

export const H2_NO_ERROR = 0x0;
export const H2_PROTOCOL_ERROR = 0x1;
export const H2_INTERNAL_ERROR = 0x2;
export const H2_REFUSED_STREAM = 0x7;
export const H2_CANCEL = 0x8;
export const H2_ENHANCE_YOUR_CALM = 0xb;

function frame(type: number, flags: number, stream: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  const head = Buffer.alloc(9);
  head.writeUIntBE(payload.length, 0, 3);
  head[3] = type;
  head[4] = flags;
  head.writeUInt32BE(stream & 0x7fffffff, 5);
  return Buffer.concat([head, payload]);
}

/** HPACK: `:status` as a literal with an indexed name (static index 8), other fields as literals with new names (no Huffman). */
function headerBlock(status: number, fields: Record<string, string>): Buffer {
  const parts: Buffer[] = [];
  const code = String(status);
  parts.push(Buffer.from([0x08, code.length]), Buffer.from(code, 'latin1'));
  for (const [k, v] of Object.entries(fields)) {
    if (k.length > 126 || v.length > 126) throw new Error('header too long for this small encoder');
    parts.push(Buffer.from([0x00, k.length]), Buffer.from(k.toLowerCase(), 'latin1'), Buffer.from([v.length]), Buffer.from(v, 'latin1'));
  }
  return Buffer.concat(parts);
}

/** What a script may do with one request stream. */
export interface RawH2Stream {
  id: number;
  /** Requests seen on this origin before this one (0 for the first). */
  index: number;
  headers(status: number, fields?: Record<string, string>, end?: boolean): void;
  data(body: string | Buffer, end?: boolean): void;
  rst(code: number): void;
  /** GOAWAY naming this stream as the last one processed (it may still finish). */
  goaway(code: number, lastStreamId?: number): void;
  /** Closes the connection (FIN). */
  end(): void;
  /** Destroys the connection (the socket dies without a FIN: RST where the OS does so). */
  destroy(): void;
}

export interface RawH2Origin {
  url: string;
  port: number;
  /** The script run for each request stream (replace it between requests). */
  onStream: (s: RawH2Stream) => void;
  close(): Promise<void>;
}

export async function startRawH2Origin(onStream: (s: RawH2Stream) => void): Promise<RawH2Origin> {
  const sockets = new Set<Socket>();
  let seen = 0;
  const origin: RawH2Origin = { url: '', port: 0, onStream, close: async () => {} };
  const server: Server = createServer((sock) => {
    sockets.add(sock);
    sock.on('close', () => sockets.delete(sock));
    sock.on('error', () => {});
    sock.write(frame(SETTINGS, 0, 0));
    let buf = Buffer.alloc(0);
    let prefaced = false;
    sock.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      if (!prefaced) {
        if (buf.length < PREFACE.length) return;
        if (buf.subarray(0, PREFACE.length).toString('latin1') !== PREFACE) return void sock.destroy();
        buf = buf.subarray(PREFACE.length);
        prefaced = true;
      }
      while (buf.length >= 9) {
        const len = buf.readUIntBE(0, 3);
        if (buf.length < 9 + len) return;
        const type = buf[3]!;
        const flags = buf[4]!;
        const id = buf.readUInt32BE(5) & 0x7fffffff;
        const payload = buf.subarray(9, 9 + len);
        buf = buf.subarray(9 + len);
        if (type === SETTINGS && !(flags & ACK)) sock.write(frame(SETTINGS, ACK, 0));
        else if (type === PING && !(flags & ACK)) sock.write(frame(PING, ACK, 0, Buffer.from(payload)));
        else if (type === HEADERS) {
          const write = (b: Buffer): void => {
            if (!sock.destroyed) sock.write(b);
          };
          origin.onStream({
            id,
            index: seen++,
            headers: (status, fields = {}, end = false) => write(frame(HEADERS, END_HEADERS | (end ? END_STREAM : 0), id, headerBlock(status, fields))),
            data: (body, end = false) => write(frame(DATA, end ? END_STREAM : 0, id, Buffer.from(body))),
            rst: (code) => write(frame(RST_STREAM, 0, id, Buffer.from([0, 0, 0, code]))),
            goaway: (code, last = id) => {
              const p = Buffer.alloc(8);
              p.writeUInt32BE(last, 0);
              p.writeUInt32BE(code, 4);
              write(frame(GOAWAY, 0, 0, p));
            },
            end: () => sock.end(),
            destroy: () => sock.resetAndDestroy(),
          });
        }
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  origin.port = (server.address() as AddressInfo).port;
  origin.url = `http://127.0.0.1:${origin.port}`;
  origin.close = () => new Promise<void>((r) => {
    for (const s of sockets) s.destroy();
    server.close(() => r());
  });
  return origin;
}
