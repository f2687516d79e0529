/** Schema pieces plugins share (the same duration and size spellings as the rest of the config). */
import { Type, type ObjectOptions, type TSchema } from '@sinclair/typebox';
import { DURATION_PATTERN, SIZE_PATTERN } from '../config/units.js';

/** A header field name (RFC 9110 token). */
export const FIELD_NAME = "^[!#$%&'*+.^_`|~0-9A-Za-z-]+$";
/** Headers a config sends as they are (an exporter's auth header...), by field name. (Values are secrets: checked at compile, never quoted.) */
export const HeaderMap = (description: string) =>
  Type.Record(Type.String({ pattern: FIELD_NAME }), Type.String(), { additionalProperties: false, description });
/**
 * A name-keyed map whose keys must not be empty. (Record's key schema only carries a pattern
 * into patternProperties: a minLength on it is lost, and "" would pass.)
 */
export const NonEmptyKeyed = <T extends TSchema>(value: T, options: ObjectOptions = {}) =>
  Type.Record(Type.String({ pattern: '^[\\s\\S]+$' }), value, { ...options, additionalProperties: false });

/**
 * A consumer group name: upstreams get a consumer's groups joined with ", " in one field
 * (X-Consumer-Groups, as Kong sends them), which they split on commas: a name with a comma
 * would reach them as two groups, one with edge whitespace would not be the name they match,
 * and a control character cannot go in a field.
 */
export const GROUP_NAME = '^[^,\\s\\x00-\\x1f\\x7f](?:[^,\\x00-\\x1f\\x7f]*[^,\\s\\x00-\\x1f\\x7f])?$';
export const GroupName = (description: string) => Type.String({ pattern: GROUP_NAME, description });

export const Duration = (description: string) =>
  Type.Union([Type.Integer({ minimum: 0 }), Type.String({ pattern: DURATION_PATTERN })], { description: `${description} (250ms, 30s, 5m, 1h, 1d; a number is ms)` });
export const Size = (description: string) =>
  Type.Union([Type.Integer({ minimum: 0 }), Type.String({ pattern: SIZE_PATTERN })], { description: `${description} (512b, 10kb, 1mb; a number is bytes)` });
