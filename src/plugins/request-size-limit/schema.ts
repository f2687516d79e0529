import { Type, type Static } from '@sinclair/typebox';
import { Size } from '../schema-types.js';

export const RequestSizeLimitConfig = Type.Object({
  max: Size('Largest request body accepted'),
}, { additionalProperties: false });
export type RequestSizeLimitConfig = Static<typeof RequestSizeLimitConfig>;
