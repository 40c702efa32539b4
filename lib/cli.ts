/** The `x2i` command line. */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { packageRoot, targetLibTorch } from './native.js';
import { buildInfo, cuda, memory } from './index.js';

const USAGE = `usage: x2i <command> [options]

commands:
  info                 the native addon, the LibTorch it runs on, CUDA devices
  bench [bridge]       benchmark the N-API bridge (call overhead, copy bandwidth vs LibTorch)
                       options: --mib N (copy size, default 256), --json FILE
  bench flux           FLUX.1 blocks and the whole model on CUDA, bf16 (needs a GPU)
                       options: --baseline PATH (shared/baselines/flux_blocks.py), --json FILE
  bench distill        the distillation loss kernel and training step on CUDA (needs a GPU)
                       options: --baseline PATH (shared/baselines/x2i_loss.py), --json FILE
  help                 this text
`;

function info(): number {
  const b = buildInfo();
  const lines = [
    ['x2i', readVersion()],
    ['node', `${process.version} (${process.platform}-${process.arch})`],
    ['libtorch', `${b.libtorchVersion} (${b.libtorchFlavour})${targetLibTorch() ? '' : ' [no build record]'}`],
    ['cuda', cuda.isAvailable() ? `${cuda.deviceCount()} device(s)` :
      b.builtWithCuda ? 'built with CUDA, but no device visible' : 'not in this build (CPU LibTorch)'],
    ['cuda backend', b.builtWithCuda ? (b.cudaBackendRegistered ? 'registered' : 'NOT registered') : 'n/a'],
    ['threads', String(b.intraOpThreads)],
    ['live tensors', `${memory().tensors} (${memory().bytes} bytes)`],
  ];
  for (const [k, v] of lines) console.log(`${k.padEnd(14)} ${v}`);
  return 0;
}

function readVersion(): string {
  try {
    return JSON.parse(fs.readFileSync(path.join(packageRoot, 'package.json'), 'utf8')).version;
  } catch {
    return '?';
  }
}

export async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  switch (cmd) {
    case 'info':
      return info();
    case 'bench': {
      const { positionals, values } = parseArgs({ args: rest, allowPositionals: true,
        options: { mib: { type: 'string' }, json: { type: 'string' }, baseline: { type: 'string' } } });
      const which = positionals[0] ?? 'bridge';
      if (which !== 'bridge' && which !== 'flux' && which !== 'distill') {
        console.error(`x2i bench: unknown benchmark '${which}' (available: bridge, flux, distill)`);
        return 2;
      }
      const args = [path.join(packageRoot, 'bench', `${which}.mjs`)];
      if (values.mib && which === 'bridge') args.push('--mib', values.mib);
      if (values.baseline && which !== 'bridge') args.push('--baseline', values.baseline);
      if (values.json) args.push('--json', values.json);
      return spawnSync(process.execPath, args, { stdio: 'inherit' }).status ?? 1;
    }
    case undefined:
    case 'help':
    case '--help':
    case '-h':
      process.stdout.write(USAGE);
      return 0;
    default:
      process.stderr.write(`x2i: unknown command '${cmd}'\n\n${USAGE}`);
      return 2;
  }
}
