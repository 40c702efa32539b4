// Builds build/Release/x2i.node with cmake-js against the LibTorch found by scripts/libtorch.mjs, and
// records that LibTorch in build/libtorch.json (the loader matches prebuilds against it). CMake runs this
// Node (X2I_NODE) for scripts/sources.mjs: the source fingerprint and the -Wl,--no-undefined link flags.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';
import { locateLibTorch, projectRoot } from './libtorch.mjs';

const require = createRequire(import.meta.url);

export function buildNative({ log = (m) => process.stderr.write(m + '\n') } = {}) {
  const lt = locateLibTorch({ log });
  log(`x2i: building the native addon against LibTorch ${lt.fullVersion} (${lt.flavour}) from ${lt.source}`);
  const cmakeJs = path.join(path.dirname(require.resolve('cmake-js/package.json')), 'bin', 'cmake-js');
  const hasNinja = spawnSync('ninja', ['--version'], { stdio: 'ignore' }).status === 0;
  const jobs = String(Math.max(1, Math.min(os.availableParallelism?.() ?? os.cpus().length, 16)));
  const args = [cmakeJs, 'compile', '--out', 'build', ...(hasNinja ? ['-G', 'Ninja'] : []), '--parallel', jobs,
    `--CDCMAKE_PREFIX_PATH=${lt.cmakePrefix}`, `--CDX2I_LIBTORCH_VERSION=${lt.fullVersion}`,
    `--CDX2I_LIBTORCH_FLAVOUR=${lt.flavour}`, `--CDX2I_NODE=${process.execPath}`,
    `--CDNODE_ADDON_API_DIR=${path.dirname(require.resolve('node-addon-api/package.json'))}`];
  const r = spawnSync(process.execPath, args, { cwd: projectRoot, stdio: 'inherit',
    env: { ...process.env, CMAKE_BUILD_PARALLEL_LEVEL: jobs } });
  if (r.status !== 0) {
    throw new Error(`x2i: native build failed (cmake-js exit ${r.status}); see the compiler output above`);
  }
  fs.mkdirSync(path.join(projectRoot, 'build'), { recursive: true });
  fs.writeFileSync(path.join(projectRoot, 'build', 'libtorch.json'), JSON.stringify(lt, null, 2) + '\n');
  log(`x2i: built build/Release/x2i.node`);
  return lt;
}

if (path.resolve(process.argv[1] ?? '') === path.resolve(new URL(import.meta.url).pathname)) {
  try {
    buildNative();
  } catch (e) {
    process.stderr.write((e.message ?? String(e)) + '\n');
    process.exit(1);
  }
}
