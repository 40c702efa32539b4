// npm install hook: use a prebuild that matches the LibTorch found on this machine (checked as the loader
// checks it, in a child process), else build from source with cmake-js. X2I_SKIP_BUILD=1 skips both (CI stages,
// packaging); X2I_FORCE_BUILD=1 always builds from source.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { buildNative } from './build-native.mjs';
import { locateLibTorch, projectRoot } from './libtorch.mjs';

const log = (m) => process.stderr.write(m + '\n');

// The same checks as the loader (lib/core/native.ts verifyBinary: ELF type and machine, the embedded source
// fingerprint against this package's native/), then a load with immediate binding (RTLD_NOW) and buildInfo(),
// all in a child process, so that a bad prebuild costs a message and a source build, never a crash.
const CHECK = `
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
const [root, file] = process.argv.slice(1);
const m = await import(pathToFileURL(path.join(root, 'dist', 'core', 'native.js')).href);
const v = m.verifyBinary(file, 'prebuild', root);
if (!v.ok) { process.stderr.write(v.why + '\\n'); process.exit(3); }
try {
  const mod = { exports: {} };
  process.dlopen(mod, file, os.constants.dlopen.RTLD_NOW);
  mod.exports.buildInfo();
} catch (e) {
  process.stderr.write(String(e?.message ?? e).split('\\n')[0] + '\\n');
  process.exit(4);
}
`;

export function checkPrebuild(file, lt, root = projectRoot) {
  if (!fs.existsSync(path.join(root, 'dist', 'core', 'native.js')))
    return 'dist/ is not built, so the prebuild cannot be checked';
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', CHECK, root, file], {
    stdio: ['ignore', 'ignore', 'pipe'], encoding: 'utf8',
    env: { ...process.env, LD_LIBRARY_PATH: [lt.lib, process.env.LD_LIBRARY_PATH].filter(Boolean).join(':') },
  });
  if (r.status === 0) return undefined;
  const why = String(r.stderr).trim().split('\n').find((l) => l && !/^\s+at |^\(Use `node/.test(l)) ?? '';
  return why || (r.signal ? `killed by ${r.signal}` : `exit ${r.status}`);
}

function tryPrebuild(lt) {
  const libc = fs.existsSync('/etc/alpine-release') ? 'musl' : 'glibc';
  const file = path.join(projectRoot, 'prebuilds', `${process.platform}-${process.arch}`,
    `x2i.napi.${libc}.libtorch-${lt.fullVersion}.node`);
  if (!fs.existsSync(file)) return false;
  const why = checkPrebuild(file, lt);
  if (why) {
    log(`x2i: prebuild ${path.basename(file)} is not used (${why}); building from source`);
    return false;
  }
  fs.mkdirSync(path.join(projectRoot, 'build'), { recursive: true });
  fs.writeFileSync(path.join(projectRoot, 'build', 'libtorch.json'), JSON.stringify(lt, null, 2) + '\n');
  log(`x2i: using prebuild ${path.relative(projectRoot, file)}`);
  return true;
}

if (path.resolve(process.argv[1] ?? '') === path.resolve(new URL(import.meta.url).pathname)) try {
  if (process.env.X2I_SKIP_BUILD === '1') {
    log('x2i: X2I_SKIP_BUILD=1, not building the native addon');
  } else {
    const lt = locateLibTorch({ log });
    if (process.env.X2I_FORCE_BUILD === '1' || !tryPrebuild(lt)) buildNative({ log });
  }
} catch (e) {
  log(e.message ?? String(e));
  process.exit(1);
}
