// npm run build:prebuild (for packaging; `npm run build` never runs it): builds
// prebuilds/<platform>-<arch>/x2i.napi.<libc>.libtorch-<version>.node with prebuildify (through node-gyp and
// binding.gyp), tagged with the LibTorch it links against, so that the loader (lib/core/native.ts) picks it
// only where that LibTorch is in use. binding.gyp takes its sources, the embedded source fingerprint and
// -Wl,--no-undefined from scripts/sources.mjs, as CMakeLists.txt does. After the build, the fingerprint in the
// binary is checked against this checkout's sources and recorded beside it in <name>.json (the loader skips a
// prebuild whose fingerprint differs from the package's sources). X2I_PREBUILD_OUT: another output folder.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { locateLibTorch, projectRoot } from './libtorch.mjs';
import { MARKER, nativeSources, sourceFingerprint } from './sources.mjs';

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
for (const f of ['binding.gyp', 'CMakeLists.txt', 'package.json', 'native', 'scripts'])
  fs.cpSync(path.join(projectRoot, f), path.join(stage, f), { recursive: true });
fs.symlinkSync(path.join(projectRoot, 'node_modules'), path.join(stage, 'node_modules'));
const outRoot = path.resolve(process.env.X2I_PREBUILD_OUT ?? projectRoot);
const fingerprint = sourceFingerprint(projectRoot);
// node-gyp: from PATH (npm run puts npm's own there), else npm's bundled one. The headers: this Node's own
// (include/node, no download) unless npm_config_nodedir says otherwise; the target: this Node (N-API, any works).
const env = { ...process.env, JOBS: process.env.JOBS ?? 'max' };
const onPath = (cmd) => (env.PATH ?? '').split(path.delimiter).some((d) => d && fs.existsSync(path.join(d, cmd)));
if (!onPath('node-gyp')) {
  const npmGyp = path.join(path.dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'bin', 'node-gyp-bin');
  if (fs.existsSync(path.join(npmGyp, 'node-gyp'))) env.PATH = [npmGyp, env.PATH].filter(Boolean).join(path.delimiter);
}
const nodeDir = path.resolve(path.dirname(process.execPath), '..');
if (!env.npm_config_nodedir && fs.existsSync(path.join(nodeDir, 'include', 'node', 'common.gypi'))) env.npm_config_nodedir = nodeDir;
const r = spawnSync(process.execPath, [bin, '--napi', '--strip', '--target', process.versions.node, '--name', name, '--out', outRoot], {
  cwd: stage, stdio: 'inherit', env,
});
if (r.status !== 0) process.exit(r.status ?? 1);
const out = path.join(outRoot, 'prebuilds', `${process.platform}-${process.arch}`, `${name}.node`);
if (!fs.existsSync(out)) {
  process.stderr.write(`x2i: prebuildify finished but ${out} is missing\n`);
  process.exit(1);
}
const bytes = fs.readFileSync(out);
const at = bytes.indexOf(MARKER);
const embedded = at < 0 ? null : bytes.subarray(at + MARKER.length, at + MARKER.length + 64).toString('latin1');
if (embedded !== fingerprint) {
  fs.rmSync(out, { force: true });
  process.stderr.write(`x2i: ${out} embeds source fingerprint ${embedded}, but the sources are ${fingerprint} ` +
    '(edited during the build?): removed it, build again\n');
  process.exit(1);
}
fs.writeFileSync(out.replace(/\.node$/, '.json'), JSON.stringify({
  file: path.basename(out), sourceFingerprint: fingerprint, sources: nativeSources(projectRoot),
  libtorch: lt.fullVersion, node: process.version, napi: 8, builtAt: new Date().toISOString(),
}, null, 2) + '\n');
process.stderr.write(`x2i: wrote ${out} (source fingerprint ${fingerprint.slice(0, 12)}…)\n`);
