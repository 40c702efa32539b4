// npm install hook: use a prebuild that matches the LibTorch found on this machine (checked by loading it
// in a child process), else build from source with cmake-js. X2I_SKIP_BUILD=1 skips both (CI stages,
// packaging); X2I_FORCE_BUILD=1 always builds from source.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { buildNative } from './build-native.mjs';
import { locateLibTorch, projectRoot } from './libtorch.mjs';

const log = (m) => process.stderr.write(m + '\n');

function tryPrebuild(lt) {
  const libc = fs.existsSync('/etc/alpine-release') ? 'musl' : 'glibc';
  const file = path.join(projectRoot, 'prebuilds', `${process.platform}-${process.arch}`,
    `x2i.napi.${libc}.libtorch-${lt.fullVersion}.node`);
  if (!fs.existsSync(file)) return false;
  const r = spawnSync(process.execPath, ['-e', `require(${JSON.stringify(file)}).buildInfo()`], {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...process.env, LD_LIBRARY_PATH: [lt.lib, process.env.LD_LIBRARY_PATH].filter(Boolean).join(':') },
  });
  if (r.status !== 0) {
    log(`x2i: prebuild ${path.basename(file)} does not load here (${String(r.stderr).trim().split('\n')[0]}); building`);
    return false;
  }
  fs.mkdirSync(path.join(projectRoot, 'build'), { recursive: true });
  fs.writeFileSync(path.join(projectRoot, 'build', 'libtorch.json'), JSON.stringify(lt, null, 2) + '\n');
  log(`x2i: using prebuild ${path.relative(projectRoot, file)}`);
  return true;
}

try {
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
