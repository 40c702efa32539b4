// Locates the LibTorch that x2i builds against and loads at run time.
// Order (as users of LibTorch bindings expect, cf. tch-rs):
//   1. LIBTORCH            a LibTorch folder (include/, lib/, share/cmake/Torch)
//   2. a Python torch      `python3 -c "import torch"` (X2I_PYTHON or PYTHON to pick the interpreter)
//   3. a PyTorch wheel     LIBTORCH_WHEEL, else a torch-*.whl in /opt/wheels, ~/wheels or ./wheels:
//                          torch/{include,lib,share} are unzipped once into ~/.cache/x2i (X2I_CACHE_DIR)
//   4. otherwise an error saying what was tried and how to fix it.
// CLI: node scripts/libtorch.mjs [--json | --prefix | --root | --include | --lib]
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
export const projectRoot = path.resolve(here, '..');

function readVersion(root) {
  for (const f of ['build-version', 'version.py']) {
    const p = path.join(root, f);
    if (!fs.existsSync(p)) continue;
    const text = fs.readFileSync(p, 'utf8');
    if (f === 'build-version') return text.trim();
    const m = text.match(/__version__\s*=\s*['"]([^'"]+)['"]/);
    if (m) return m[1];
  }
  return 'unknown';
}

function flavour(root, version, cudaVersion) {
  if (cudaVersion) return 'cu' + String(cudaVersion).replace('.', '');
  const m = /\+(cu\d+|cpu|rocm[\d.]+)/.exec(version);
  if (m) return m[1];
  return fs.existsSync(path.join(root, 'lib', 'libtorch_cuda.so')) ? 'cuda' : 'cpu';
}

function describe(root, source, extra = {}) {
  const cmakePrefix = extra.cmakePrefix ?? path.join(root, 'share', 'cmake');
  const version = extra.version ?? readVersion(root);
  return {
    root,
    include: [path.join(root, 'include'), path.join(root, 'include', 'torch', 'csrc', 'api', 'include')],
    lib: path.join(root, 'lib'),
    cmakePrefix,
    version: version.split('+')[0],
    fullVersion: version,
    flavour: flavour(root, version, extra.cudaVersion),
    cxx11Abi: extra.cxx11Abi ?? true,
    source,
  };
}

function checkFolder(root) {
  const need = [path.join(root, 'include', 'ATen', 'ATen.h'), path.join(root, 'lib'),
    path.join(root, 'share', 'cmake', 'Torch', 'TorchConfig.cmake')];
  const missing = need.filter((p) => !fs.existsSync(p));
  return missing.length ? `missing ${missing.join(', ')}` : null;
}

function fromEnv(tried) {
  const root = process.env.LIBTORCH;
  if (!root) { tried.push('LIBTORCH: not set'); return null; }
  const bad = checkFolder(path.resolve(root));
  if (bad) { tried.push(`LIBTORCH=${root}: ${bad}`); return null; }
  return describe(path.resolve(root), 'LIBTORCH');
}

function fromPython(tried) {
  const pythons = [process.env.X2I_PYTHON, process.env.PYTHON, 'python3', 'python'].filter(Boolean);
  const code = 'import json,os,torch,torch.utils;print(json.dumps({"root":os.path.dirname(torch.__file__),' +
    '"cmake":torch.utils.cmake_prefix_path,"version":torch.__version__,"cuda":torch.version.cuda,' +
    '"abi":bool(torch._C._GLIBCXX_USE_CXX11_ABI)}))';
  for (const py of [...new Set(pythons)]) {
    try {
      const out = execFileSync(py, ['-c', code], { stdio: ['ignore', 'pipe', 'pipe'], timeout: 120000 }).toString();
      const info = JSON.parse(out.trim().split('\n').pop());
      const bad = checkFolder(info.root);
      if (bad) { tried.push(`Python torch (${py}) at ${info.root}: ${bad}`); continue; }
      return describe(info.root, `python:${py}`, { cmakePrefix: info.cmake, version: info.version,
        cudaVersion: info.cuda, cxx11Abi: info.abi });
    } catch (e) {
      const msg = String(e.stderr || e.message).trim().split('\n').pop();
      tried.push(`Python torch (${py}): ${msg}`);
    }
  }
  return null;
}

export function cacheDir() {
  return process.env.X2I_CACHE_DIR ||
    path.join(process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache'), 'x2i');
}

function findWheel(tried) {
  if (process.env.LIBTORCH_WHEEL) {
    if (fs.existsSync(process.env.LIBTORCH_WHEEL)) return path.resolve(process.env.LIBTORCH_WHEEL);
    tried.push(`LIBTORCH_WHEEL=${process.env.LIBTORCH_WHEEL}: no such file`);
    return null;
  }
  const dirs = ['/opt/wheels', path.join(os.homedir(), 'wheels'), path.join(projectRoot, 'wheels')];
  for (const d of dirs) {
    if (!fs.existsSync(d)) continue;
    const wheels = fs.readdirSync(d).filter((f) => /^torch-.*\.whl$/.test(f)).sort();
    if (wheels.length) return path.join(d, wheels[wheels.length - 1]);
  }
  tried.push(`PyTorch wheel: LIBTORCH_WHEEL not set, no torch-*.whl in ${dirs.join(', ')}`);
  return null;
}

function fromWheel(tried, log) {
  const wheel = findWheel(tried);
  if (!wheel) return null;
  const dest = path.join(cacheDir(), 'libtorch-' + path.basename(wheel, '.whl'));
  const root = path.join(dest, 'torch');
  if (!fs.existsSync(path.join(dest, '.complete'))) {
    log?.(`x2i: unpacking LibTorch from ${wheel} into ${dest} (once)`);
    const tmp = `${dest}.tmp-${process.pid}`;
    fs.rmSync(tmp, { recursive: true, force: true });
    fs.mkdirSync(tmp, { recursive: true });
    try {
      execFileSync('unzip', ['-q', '-o', wheel, 'torch/include/*', 'torch/lib/*', 'torch/share/*', 'torch/version.py',
        '-x', 'torch/lib/libtorch_python.so', 'torch/lib/*test*.so', '-d', tmp], { stdio: ['ignore', 'inherit', 'pipe'] });
    } catch (e) {
      fs.rmSync(tmp, { recursive: true, force: true });
      tried.push(`PyTorch wheel ${wheel}: unzip failed (${String(e.stderr || e.message).trim()}); is 'unzip' installed?`);
      return null;
    }
    fs.writeFileSync(path.join(tmp, '.complete'), wheel + '\n');
    fs.rmSync(dest, { recursive: true, force: true });
    fs.renameSync(tmp, dest);
  }
  const bad = checkFolder(root);
  if (bad) { tried.push(`PyTorch wheel ${wheel} unpacked at ${dest}: ${bad}`); return null; }
  return describe(root, `wheel:${wheel}`);
}

export function locateLibTorch({ log } = {}) {
  const tried = [];
  const found = fromEnv(tried) ?? fromPython(tried) ?? fromWheel(tried, log);
  if (found) return found;
  const err = new Error(
    'x2i: LibTorch not found. Tried, in order:\n' + tried.map((t) => '  - ' + t).join('\n') +
    '\nFix one of:\n' +
    '  - export LIBTORCH=/path/to/libtorch   (an unzipped LibTorch, or site-packages/torch of a PyTorch install)\n' +
    '  - pip install torch                   (x2i then uses that install)\n' +
    '  - export LIBTORCH_WHEEL=/path/to/torch-*.whl   (unpacked once into ' + cacheDir() + ')\n' +
    'then run `npm rebuild x2i` (or `npm install` in the x2i folder).');
  err.code = 'ERR_LIBTORCH_NOT_FOUND';
  throw err;
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  try {
    const lt = locateLibTorch({ log: (m) => process.stderr.write(m + '\n') });
    const arg = process.argv[2] ?? '--json';
    const out = { '--json': JSON.stringify(lt, null, 2), '--prefix': lt.cmakePrefix, '--root': lt.root,
      '--include': lt.include.join(' '), '--lib': lt.lib, '--version': lt.fullVersion, '--flavour': lt.flavour,
      // link flags for binding.gyp: keep torch_cuda even though no symbol of it is referenced
      '--gyp-libs': [`-L${lt.lib}`, `-Wl,-rpath,${lt.lib}`, '-Wl,--no-as-needed',
        ...(fs.existsSync(path.join(lt.lib, 'libtorch_cuda.so')) ? ['-ltorch_cuda', '-lc10_cuda'] : []),
        '-ltorch', '-ltorch_cpu', '-lc10', '-Wl,--as-needed'].join(' '),
      '--gyp-defines': [`X2I_LIBTORCH_VERSION_RAW=${lt.fullVersion}`, `X2I_LIBTORCH_FLAVOUR_RAW=${lt.flavour}`,
        `_GLIBCXX_USE_CXX11_ABI=${lt.cxx11Abi ? 1 : 0}`,
        ...(fs.existsSync(path.join(lt.lib, 'libtorch_cuda.so')) ? ['X2I_WITH_CUDA=1'] : [])].join(' ') }[arg];
    process.stdout.write(out + '\n');
  } catch (e) {
    process.stderr.write(e.message + '\n');
    process.exit(1);
  }
}
