// Writes schema/turnpike.schema.json from the TypeBox schema, and docs/plugins.md from the plugins' schemas (npm run schema).
import { writeFileSync } from 'node:fs';
import { schemaJson } from '../src/config/json-schema.js';
import { pluginsMarkdown } from '../src/plugins/docs.js';

writeFileSync(new URL('../schema/turnpike.schema.json', import.meta.url), schemaJson());
writeFileSync(new URL('../docs/plugins.md', import.meta.url), pluginsMarkdown());
console.log('schema/turnpike.schema.json and docs/plugins.md written');
