/** The `scaling:` settings: per service (its recommender and triggers) and top level (KEDA, the gateway itself). */
import { Type, type Static, type TProperties, type ObjectOptions } from '@sinclair/typebox';
import { DURATION_PATTERN } from '../config/units.js';
import { HostPort } from '../config/address.js';

const Strict = <T extends TProperties>(props: T, opts: ObjectOptions = {}) => Type.Object(props, { additionalProperties: false, ...opts });
const Duration = Type.Union([Type.Integer({ minimum: 0 }), Type.String({ pattern: DURATION_PATTERN })], { description: 'A duration: 250ms, 30s, 5m (a bare number is milliseconds).' });

const Webhook = Strict({
  type: Type.Literal('webhook'),
  url: Type.String({ pattern: '^https?://', description: 'Receives a JSON POST on every change of the desired replica count (a user:password in it goes as Basic credentials).' }),
  secret: Type.String({ minLength: 16, description: 'HMAC-SHA256 key: X-Turnpike-Signature: t=<unix seconds>,v1=<hex of HMAC(secret, "<t>.<body>")>.' }),
  dry_run: Type.Optional(Type.Boolean({ default: false, description: 'Send with "dry_run": true (the receiver should only log it).' })),
  retries: Type.Optional(Type.Integer({ minimum: 0, maximum: 10, default: 3 })),
  timeout: Type.Optional(Duration),
  ca_file: Type.Optional(Type.String({ minLength: 1, description: 'PEM CA for an https receiver with a private CA.' })),
});

const Kubernetes = Strict({
  type: Type.Literal('kubernetes'),
  namespace: Type.String({ minLength: 1 }),
  deployment: Type.String({ minLength: 1, description: 'Scaled through apps/v1 deployments/{name}/scale.' }),
  kind: Type.Optional(Type.Union([Type.Literal('deployments'), Type.Literal('statefulsets')], { default: 'deployments' })),
  api_server: Type.Optional(Type.String({ pattern: '^https?://', description: 'Default in a pod: https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT.' })),
  token_file: Type.Optional(Type.String({ minLength: 1, description: 'Bearer token file, read on every call (default in a pod: the service account token).' })),
  ca_file: Type.Optional(Type.String({ minLength: 1, description: 'PEM CA of the API server (default in a pod: the service account ca.crt).' })),
  dry_run: Type.Optional(Type.Boolean({ default: false, description: 'PATCH with ?dryRun=All: validated by the API server, not applied.' })),
  timeout: Type.Optional(Duration),
});

export const ServiceScaling = Strict({
  target_concurrency: Type.Number({ exclusiveMinimum: 0, description: 'In-flight requests one replica handles well.' }),
  target_utilization: Type.Optional(Type.Number({ exclusiveMinimum: 0, maximum: 1, default: 0.7, description: 'Aim at this share of target_concurrency per replica (headroom).' })),
  min_replicas: Type.Optional(Type.Integer({ minimum: 0, default: 1 })),
  max_replicas: Type.Optional(Type.Integer({ minimum: 1, default: 10 })),
  stable_window: Type.Optional(Duration),
  panic_window: Type.Optional(Duration),
  panic_threshold: Type.Optional(Type.Number({ minimum: 1, default: 2, description: 'Panic when the panic window asks for this many times the current replicas.' })),
  max_scale_up_rate: Type.Optional(Type.Number({ exclusiveMinimum: 1, default: 1000, description: 'At most this many times the current replicas per decision (more than 1: 1 would never scale up, as Knative refuses it too).' })),
  max_scale_down_rate: Type.Optional(Type.Number({ exclusiveMinimum: 1, default: 2, description: '2: at most halve per decision (more than 1: 1 would never scale down).' })),
  scale_up_cooldown: Type.Optional(Duration),
  scale_down_cooldown: Type.Optional(Duration),
  scale_down_stabilization: Type.Optional(Duration),
  slo: Type.Optional(Strict({ p95: Duration }, { description: 'Guard: no scale-down while p95 is above it.' })),
  max_error_rate: Type.Optional(Type.Number({ minimum: 0, maximum: 1, default: 0.5, description: 'Guard: no scale-up while the upstream error rate is above it.' })),
  tolerance: Type.Optional(Type.Number({ minimum: 0, exclusiveMaximum: 1, default: 0.1, description: 'No change while the stable window asks for within this share of the last decision (HPA-style; before rounding).' })),
  current_replicas: Type.Optional(Type.Union([Type.Literal('targets'), Type.Literal('trigger')], { description: 'Where the current count comes from: the kubernetes trigger\'s scale subresource (trigger: the default, and the only choice, with a kubernetes trigger), or the service\'s healthy targets until a webhook took a count, then that count (targets: the default without one).' })),
  triggers: Type.Optional(Type.Array(Type.Union([Webhook, Kubernetes]), { maxItems: 8 })),
}, { description: 'Scaling advisor (docs/scaling.md): a desired replica count from live traffic, pushed to the triggers.' });

export const Scaling = Strict({
  interval: Type.Optional(Duration),
  keda: Type.Optional(Strict({
    listen: HostPort,
    tls: Type.Optional(Strict({
      cert: Type.String({ minLength: 1, description: 'PEM certificate (chain) of the scaler (relative paths: to the config file).' }),
      key: Type.String({ minLength: 1, description: 'PEM private key of the scaler.' }),
      client_ca: Type.Optional(Type.String({ minLength: 1, description: 'PEM CA: KEDA must present a client certificate it signed (mutual TLS).' })),
    }, { description: 'gRPC over TLS (KEDA: caCert / tlsClientCert / tlsClientKey in the trigger\'s authentication).' })),
  }, { description: 'KEDA external scaler (gRPC externalscaler.proto).' })),
  kubernetes_api_servers: Type.Optional(Type.Array(Type.String({ pattern: '^https?://' }), {
    maxItems: 32,
    description: 'The Kubernetes API servers a kubernetes trigger may name in api_server (this node sends its token there). In a pod, its own API server is always allowed.',
  })),
  webhook_allowed_networks: Type.Optional(Type.Array(Type.String({ minLength: 1 }), {
    maxItems: 64,
    description: 'Addresses (CIDR, or one address) a webhook trigger may send to although they are refused by default: loopback, link-local (the cloud metadata service 169.254.169.254), this node\'s own addresses. Node-local: a webhook written through the admin API cannot reach them otherwise.',
  })),
  gateway: Type.Optional(Strict({
    target_utilization: Type.Optional(Type.Number({ exclusiveMinimum: 0, maximum: 1, default: 0.7, description: 'Event-loop utilisation / CPU per node to aim at.' })),
    min_nodes: Type.Optional(Type.Integer({ minimum: 1, default: 1 })),
    max_nodes: Type.Optional(Type.Integer({ minimum: 1, default: 100 })),
  })),
}, { description: 'The scaling advisor: how often it decides (default 1s), the KEDA endpoint, the gateway\'s own recommendation.' });

export type ServiceScalingConfig = Static<typeof ServiceScaling>;
export type ScalingConfig = Static<typeof Scaling>;
export type TriggerConfig = NonNullable<ServiceScalingConfig['triggers']>[number];
