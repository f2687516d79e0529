/**
 * KEDA's external scaler protocol (package `externalscaler`), written from the field definitions
 * of kedacore/keda pkg/scalers/externalscaler/externalscaler.proto. Kept as a string because tsc
 * does not copy .proto files to dist/; keda.ts parses it at runtime.
 *
 * StreamMetricSpec is the newer optional RPC: Turnpike's metric spec never changes (target 1), so
 * it is left unimplemented and answers UNIMPLEMENTED, which KEDA takes as "use GetMetricSpec".
 * In MetricSpec / MetricValue KEDA prefers the float field when it is > 0, else the int64 one.
 */
export const EXTERNAL_SCALER_PROTO = `
syntax = "proto3";

package externalscaler;

service ExternalScaler {
  rpc IsActive(ScaledObjectRef) returns (IsActiveResponse) {}
  rpc StreamIsActive(ScaledObjectRef) returns (stream IsActiveResponse) {}
  rpc GetMetricSpec(ScaledObjectRef) returns (GetMetricSpecResponse) {}
  rpc GetMetrics(GetMetricsRequest) returns (GetMetricsResponse) {}
  rpc StreamMetricSpec(ScaledObjectRef) returns (stream GetMetricSpecResponse) {}
}

message ScaledObjectRef {
  string name = 1;
  string namespace = 2;
  map<string, string> scalerMetadata = 3;
}

message IsActiveResponse {
  bool result = 1;
}

message GetMetricSpecResponse {
  repeated MetricSpec metricSpecs = 1;
}

message MetricSpec {
  string metricName = 1;
  int64 targetSize = 2;
  double targetSizeFloat = 3;
}

message GetMetricsRequest {
  ScaledObjectRef scaledObjectRef = 1;
  string metricName = 2;
}

message GetMetricsResponse {
  repeated MetricValue metricValues = 1;
}

message MetricValue {
  string metricName = 1;
  int64 metricValue = 2;
  double metricValueFloat = 3;
}
`;
