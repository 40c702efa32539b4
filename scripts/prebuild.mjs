// npm run prebuild: builds prebuilds/<platform>-<arch>/x2i.napi.<libc>.libtorch-<version>.node with
// prebuildify (through node-gyp and binding.gyp), tagged with the LibTorch it links against, so that the
// loader (lib/native.ts) picks it only where that LibTorch is in use.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { locateLibTorch, projectRoot } from './libtorch.mjs';

const require = createRequire(import.meta.url);
const lt = locateLibTorch({ log: (m) => process.stderr.write(m + '\n') });
const libc = fs.existsSync('/etc/alpine-release') ? 'musl' : 'glibc';
const name = `x2i.napi.${libc}.libtorch-${lt.fullVersion}`;
const bin = path.join(path.dirname(require.resolve('prebuildify/package.json')), 'bin.js');
process.stderr.write(`x2i: prebuilding ${name}.node against LibTorch at ${lt.root}\n`);
// node-gyp wipes its build/ folder: build in a staging copy so the local cmake-js build stays.
const stage = path.join(projectRoot, '.cache', 'prebuild');
fs.rmSync(stage, { recursive: true, force: true });
fs.mkdirSync(stage, { recursive: true });
for (const f of ['binding.gyp', 'package.json', 'native', 'scripts'])
  fs.cpSync(path.join(projectRoot, f), path.join(stage, f), { recursive: true });
fs.symlinkSync(path.join(projectRoot, 'node_modules'), path.join(stage, 'node_modules'));
const r = spawnSync(process.execPath, [bin, '--napi', '--strip', '--name', name, '--out', projectRoot], {
  cwd: stage, stdio: 'inherit',
  env: { ...process.env, JOBS: process.env.JOBS ?? 'max' },
});
if (r.status !== 0) process.exit(r.status ?? 1);
const out = path.join(projectRoot, 'prebuilds', `${process.platform}-${process.arch}`, `${name}.node`);
if (!fs.existsSync(out)) {
  process.stderr.write(`x2i: prebuildify finished but ${out} is missing\n`);
  process.exit(1);
}
process.stderr.write(`x2i: wrote ${path.relative(projectRoot, out)}\n`);
