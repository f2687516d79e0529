/** Schema pieces plugins share (the same duration and size spellings as the rest of the config). */
import { Type } from '@sinclair/typebox';
import { DURATION_PATTERN, SIZE_PATTERN } from '../config/units.js';

export const Duration = (description: string) =>
  Type.Union([Type.Integer({ minimum: 0 }), Type.String({ pattern: DURATION_PATTERN })], { description: `${description} (250ms, 30s, 5m, 1h, 1d; a number is ms)` });
export const Size = (description: string) =>
  Type.Union([Type.Integer({ minimum: 0 }), Type.String({ pattern: SIZE_PATTERN })], { description: `${description} (512b, 10kb, 1mb; a number is bytes)` });
