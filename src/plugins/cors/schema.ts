import { Type, type Static } from '@sinclair/typebox';
import { Duration } from '../schema-types.js';

const TOKEN = "^[!#$%&'*+.^_`|~0-9A-Za-z-]+$";

export const DEFAULT_METHODS = ['GET', 'HEAD', 'PUT', 'PATCH', 'POST', 'DELETE'];

export const CorsConfig = Type.Object({
  origins: Type.Array(Type.String({ minLength: 1, description: 'An origin: "*", an exact origin (https://app.example.com), "null", or a regular expression after "~" matched against the whole origin (~^https://[a-z0-9-]+\\.example\\.com$).' }), {
    minItems: 1, description: 'Origins allowed to make cross-origin requests: "*", exact origins (https://app.example.com), "null", or "~" and a regular expression matched against the whole origin.',
  }),
  methods: Type.Optional(Type.Array(Type.String({ pattern: TOKEN, description: 'An HTTP method.' }), {
    minItems: 1, uniqueItems: true, default: DEFAULT_METHODS, description: 'Methods cross-origin pages may use: announced in Access-Control-Allow-Methods of preflight answers; a preflight asking for another gets no Access-Control-* field ("*": any; with credentials, where browsers take "*" literally, the method asked for is announced).',
  })),
  headers: Type.Optional(Type.Array(Type.String({ pattern: TOKEN, description: 'A request header name.' }), {
    uniqueItems: true, description: 'Request headers announced in Access-Control-Allow-Headers (default: those the preflight asks for in Access-Control-Request-Headers). "*" announces any, and Authorization too when asked for (browsers never take it from "*"); with credentials, where browsers take "*" literally, the names asked for are announced.',
  })),
  exposed_headers: Type.Optional(Type.Array(Type.String({ pattern: TOKEN, description: 'A response header name.' }), {
    uniqueItems: true, description: 'Response headers scripts may read (Access-Control-Expose-Headers on actual responses; "*": all of them, which with credentials, where browsers take "*" literally, is said by naming the response\'s fields). A gRPC-Web request\'s answers expose `grpc-status`, `grpc-message` and `grpc-status-details-bin` too (a Trailers-Only answer carries the status in its headers).',
  })),
  credentials: Type.Optional(Type.Boolean({
    default: false, description: 'Allow credentialed requests (cookies, Authorization): Access-Control-Allow-Credentials: true, and the origin itself instead of "*".',
  })),
  max_age: Type.Optional(Duration('How long browsers may cache a preflight answer (Access-Control-Max-Age, whole seconds); default: not sent')),
  private_network: Type.Optional(Type.Boolean({
    default: false, description: 'Answer Private Network Access preflights (Access-Control-Request-Private-Network: true) of allowed origins with Access-Control-Allow-Private-Network: true (Kong\'s private_network).',
  })),
  preflight_continue: Type.Optional(Type.Boolean({
    default: false, description: 'Send preflights on to the upstream (which answers them; the gateway adds the origin headers) instead of answering them at the gateway.',
  })),
}, { additionalProperties: false });
export type CorsConfig = Static<typeof CorsConfig>;
