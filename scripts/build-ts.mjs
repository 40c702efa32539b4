// The TypeScript build: dist/ (ESM, from tsc) and dist/cjs/ (the same modules as CommonJS, for require('x2i')
// on every Node in `engines`, including those without require(esm)). dist/ is removed first.
//
// dist/cjs/ is a file-by-file transform of dist/**/*.js by esbuild (no bundling: the module graph, relative
// imports and the file layout stay the same; a package.json {"type":"commonjs"} in dist/cjs/ makes the .js
// files CommonJS; the .d.ts files are copied beside them). `import.meta.url` becomes the file's own URL; any other import.meta use, or a top-level
// await, fails this build instead of shipping a CommonJS build that breaks.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(import.meta.url);
const dist = path.join(root, 'dist');

fs.rmSync(dist, { recursive: true, force: true });
const tsc = path.join(path.dirname(require.resolve('typescript/package.json')), 'bin', 'tsc');
const r = spawnSync(process.execPath, [tsc, '-p', 'tsconfig.json'], { cwd: root, stdio: 'inherit' });
if (r.status !== 0) process.exit(r.status ?? 1);

export async function buildCjs() {
  let esbuild;
  try {
    esbuild = await import('esbuild');
  } catch {
    throw new Error('x2i: esbuild is missing (a devDependency): run npm install, then npm run build:ts');
  }
  const entries = [];
  const walk = (d) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) { if (p !== path.join(dist, 'cjs')) walk(p); } else if (e.name.endsWith('.js')) entries.push(p);
    }
  };
  walk(dist);
  const out = path.join(dist, 'cjs');
  await esbuild.build({
    entryPoints: entries, outdir: out, outbase: dist, bundle: false, format: 'cjs', platform: 'node', target: 'node20',
    sourcemap: false, logLevel: 'warning',
    define: { 'import.meta.url': '__x2i_import_meta_url' },
    banner: { js: '"use strict"; var __x2i_import_meta_url = require("node:url").pathToFileURL(__filename).href;' },
    logOverride: { 'empty-import-meta': 'error' },
  });
  // the declarations again beside the CommonJS files: under dist/cjs/ they describe CommonJS modules, so that
  // TypeScript's node16/nodenext resolution types a require('x2i') as CommonJS
  for (const f of entries) {
    const dts = f.replace(/\.js$/, '.d.ts');
    if (fs.existsSync(dts)) fs.copyFileSync(dts, path.join(out, path.relative(dist, dts)));
  }
  fs.writeFileSync(path.join(out, 'package.json'), JSON.stringify({ type: 'commonjs' }, null, 2) + '\n');
  return entries.length;
}

try {
  const n = await buildCjs();
  process.stderr.write(`x2i: dist/ (ESM) and dist/cjs/ (CommonJS, ${n} modules)\n`);
} catch (e) {
  process.stderr.write(`${e.message ?? e}\n`);
  process.exit(1);
}
