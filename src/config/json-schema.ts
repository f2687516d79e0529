/** The config file's JSON Schema, as published in schema/turnpike.schema.json. */
import { TurnpikeConfig } from './schema.js';

export function schemaJson(): string {
  return JSON.stringify({ $schema: 'http://json-schema.org/draft-07/schema#', ...TurnpikeConfig }, null, 2) + '\n';
}
