#!/usr/bin/env node
/**
 * Builds the web console's front end (console/) into dist/console-ui/: index.html, app.js (one
 * minified ES2022 module: Preact + uPlot + the console) and app.css. No CDN at run time: all
 * of it is served by the admin listener at /console/. Run by `npm run build`.
 */
import { build } from 'esbuild';
import { copyFile, mkdir, readFile, rm } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';

const root = fileURLToPath(new URL('..', import.meta.url));
const src = join(root, 'console');
const out = join(root, 'dist', 'console-ui');

await rm(out, { recursive: true, force: true });
await mkdir(out, { recursive: true });

const result = await build({
  absWorkingDir: root,
  entryPoints: { app: join(src, 'src', 'main.tsx') },
  outdir: out,
  bundle: true,
  format: 'esm',
  platform: 'browser',
  target: 'es2022',
  minify: true,
  sourcemap: false,
  jsx: 'automatic',
  jsxImportSource: 'preact',
  tsconfig: join(src, 'tsconfig.json'),
  legalComments: 'none',
  charset: 'utf8',
  define: { 'process.env.NODE_ENV': '"production"' },
  logLevel: 'warning',
  metafile: true,
});
if (result.errors.length > 0) process.exit(1);

await copyFile(join(src, 'index.html'), join(out, 'index.html'));

const names = ['index.html', 'app.js', 'app.css'];
let total = 0;
for (const name of names) {
  const body = await readFile(join(out, name));
  total += body.length;
  const kb = (n) => `${(n / 1024).toFixed(1)} KB`;
  console.log(`dist/console-ui/${name.padEnd(10)} ${kb(body.length).padStart(9)}  (gzip ${kb(gzipSync(body).length)})`);
}
const extra = Object.keys(result.metafile.outputs).filter((f) => !names.some((n) => f.endsWith(`/${n}`)));
if (extra.length) console.log(`also written: ${extra.join(', ')}`);
console.log(`console built: ${(total / 1024).toFixed(1)} KB in dist/console-ui/`);
