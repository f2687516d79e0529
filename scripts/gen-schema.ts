// Writes schema/turnpike.schema.json from the TypeBox schema (npm run schema).
import { writeFileSync } from 'node:fs';
import { schemaJson } from '../src/config/json-schema.js';

writeFileSync(new URL('../schema/turnpike.schema.json', import.meta.url), schemaJson());
console.log('schema/turnpike.schema.json written');
