// Hostile CLI inputs (issue 12), each in a child process so a crash is seen: bad numbers, paths and extensions are
// refused before any model loads (exit 2, one line naming the option, no stack trace, no signal); existing run
// folders, corrupted optimizer files and bad trainer.json files never cost the good checkpoint.
import { spawnSync, type SpawnSyncReturns } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { golden, root, snapshot, tmpDir } from '../helpers.js';

const tmp = tmpDir();
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));
const x2i = (...args: string[]) => spawnSync(process.execPath, [path.join(root, 'bin', 'x2i.js'), ...args],
  { encoding: 'utf8', timeout: 60_000, cwd: tmp });
const flux = path.join(golden, 'flux-transformer');
const alignnet = path.join(golden, 'alignnet', 'diffusion_pytorch_model.bin');
let feats: string;
let good: string;
const common = (out: string) => ['--flux', flux, '--alignnet', alignnet, '--features', feats, '--out', out, '--height', '32', '--width', '32',
  '--lr', '1e-3', '--checkpoint-every', '1'];

/** Exit status 2 with a one-line message matching `re`: no signal, no hang, no stack trace. */
function userError(r: SpawnSyncReturns<string>, re: RegExp, what = ''): void {
  expect(r.error, what).toBeUndefined();  // no timeout
  expect(r.signal, what).toBeNull();
  expect(r.status, `${what}: ${r.stderr}`).toBe(2);
  expect(r.stderr, what).toMatch(re);
  expect(r.stderr, what).not.toMatch(/\n\s+at .*:\d+:\d+/);
}

/** A copy of the good run folder to attack. */
function copyRun(name: string): string {
  const dir = path.join(tmp, name);
  fs.cpSync(good, dir, { recursive: true });
  return dir;
}

beforeAll(async () => {
  const x = await import('../../lib/index.js');
  feats = path.join(tmp, 'features.safetensors');
  await x.saveSafetensors(feats, { 'teacher.encoder_hidden_states': await x.randn([1, 7, 32], { seed: 1 }),
    'teacher.pooled_projections': await x.randn([1, 24], { seed: 2 }), 'student.hidden_states': await x.randn([1, 5, 7, 32], { seed: 3 }) });
  good = path.join(tmp, 'good');
  const r = x2i('train', ...common(good), '--steps', '2');
  expect(r.status, r.stderr).toBe(0);
}, 60_000);

describe('x2i train: numbers and paths checked before any model loads', () => {
  it('NaN, negative, zero, fractional, huge and empty numbers', () => {
    const cases: [string[], RegExp][] = [
      [['--steps', '1e9'], /--steps: expected a positive integer of at most 10000000, got 1000000000/],
      [['--steps', '2.5'], /--steps: expected a positive integer .*got 2\.5/], [['--steps', '0'], /--steps: .*got 0/],
      [['--steps=-1'], /--steps: .*got -1/], [['--steps', ''], /--steps: expected a number, got ""/],
      [['--steps', 'abc'], /--steps: expected a number, got "abc"/], [['--lr', 'abc'], /--lr: expected a number, got "abc"/],
      [['--lr', 'NaN'], /--lr: expected a number, got "NaN"/], [['--lr', 'Infinity'], /--lr: expected a finite number ≥ 0, got Infinity/],
      [['--lr=-1e-3'], /--lr: .*got -0\.001/], [['--accumulate', '0'], /--accumulate: expected a positive integer.*got 0/],
      [['--accumulate', '1.5'], /--accumulate/], [['--checkpoint-every', '0'], /--checkpoint-every/], [['--warmup', '0.5'], /--warmup/],
      [['--height', '30'], /--height: expected a positive multiple of 16 of at most 8192, got 30/], [['--width', '1e5'], /--width/],
      [['--keep-last', '0'], /--keep-last/], [['--nproc-per-node', '0', '--parallel', 'data'], /--nproc-per-node: .*got 0/],
      // a negative number is the flag's value (not read as a flag), then refused by the validator
      [['--steps', '-1'], /--steps: expected a positive integer .*got -1$/m], [['--lr', '-1e-3'], /--lr: expected a finite number ≥ 0, got -0\.001/],
      [['--height', '1000'], /--height: expected a positive multiple of 16 of at most 8192, got 1000/],
      [['--nnodes', 'abc'], /--nnodes: expected a number, got "abc"/], [['--node-rank', '1'], /--node-rank: expected a non-negative integer of at most 0, got 1/],
      [['--master-port', '70000'], /--master-port: .*got 70000/], [['--device', 'gpu'], /--device: expected 'cpu', 'cuda' or 'cuda:N', got "gpu"/],
      [['--dtype', 'fp8'], /--dtype: expected float32, bfloat16, float16 or float64, got "fp8"/],
      [['--steps'], /--steps: expected a value after it \(see x2i train --help\)/],
      [['--stepz', '3'], /x2i train: unknown option '--stepz' \(did you mean --steps\? see x2i train --help\)/],
      [['--force-resume'], /--force-resume needs --resume/],
    ];
    for (const [args, re] of cases) {
      const out = path.join(tmp, 'never');
      const t0 = Date.now();
      userError(x2i('train', ...common(out), ...args), re, args.join(' '));
      expect(Date.now() - t0, args.join(' ')).toBeLessThan(20_000);
      expect(fs.existsSync(out), args.join(' ')).toBe(false);
    }
  });

  it('an existing run folder is refused without --resume or --overwrite; the good checkpoint is intact', () => {
    const before = snapshot(good);
    userError(x2i('train', ...common(good), '--steps', '3'), /--out: the folder .*good.* is not empty \(pass --resume to continue its run, or --overwrite/);
    userError(x2i('train', ...common(good), '--steps', '3', '--resume', '--overwrite'), /--resume or --overwrite, not both/);
    expect(snapshot(good)).toEqual(before);
    // a non-empty folder that is no run: --resume has nothing to resume from
    const other = path.join(tmp, 'other');
    fs.mkdirSync(other);
    fs.writeFileSync(path.join(other, 'precious.txt'), 'keep me');
    userError(x2i('train', ...common(other), '--steps', '1', '--resume'), /--out: the folder .*other.* is not empty \(it holds no trainer\.json/);
    expect(fs.readdirSync(other)).toEqual(['precious.txt']);
    // --out is a file; its parent does not exist
    userError(x2i('train', ...common(path.join(other, 'precious.txt')), '--steps', '1'), /--out: .*precious\.txt" is a file, expected a folder/);
    userError(x2i('train', ...common(path.join(tmp, 'no', 'such', 'run')), '--steps', '1'), /--out: .*the folder .* does not exist/);
    expect(fs.readFileSync(path.join(other, 'precious.txt'), 'utf8')).toBe('keep me');
    // missing inputs
    userError(x2i('train', ...common(path.join(tmp, 'r1')).map((a) => (a === feats ? path.join(tmp, 'nope.safetensors') : a)), '--steps', '1'),
      /--features: .*nope\.safetensors: no such file/);
  });

  it('--overwrite replaces an existing run explicitly', () => {
    const dir = copyRun('overwritten');
    const r = x2i('train', ...common(dir), '--steps', '1', '--overwrite');
    expect(r.status, r.stderr).toBe(0);
    expect(JSON.parse(fs.readFileSync(path.join(dir, 'trainer.json'), 'utf8')).step).toBe(1);
  });
});

describe('x2i train --resume: corrupted checkpoints are errors naming the file', () => {
  it('a flipped byte in optimizer.safetensors', () => {
    const dir = copyRun('flipped');
    const meta = JSON.parse(fs.readFileSync(path.join(dir, 'trainer.json'), 'utf8'));
    const file = path.join(dir, meta.checkpoint, 'optimizer.safetensors');
    const b = fs.readFileSync(file);
    b[b.length - 5] ^= 0x01;
    fs.writeFileSync(file, b);
    const before = snapshot(dir);
    userError(x2i('train', ...common(dir), '--steps', '4', '--resume'), /optimizer\.safetensors: checksum mismatch/);
    expect(snapshot(dir)).toEqual(before);
  });

  it('a negative second moment (a NaN learning rate in waiting) in an optimizer file without checksums', async () => {
    const x = await import('../../lib/index.js');
    const dir = copyRun('moment');
    const json = path.join(dir, 'trainer.json');
    const meta = JSON.parse(fs.readFileSync(json, 'utf8'));
    delete meta.files;
    fs.writeFileSync(json, JSON.stringify(meta));
    const file = path.join(dir, meta.checkpoint, 'optimizer.safetensors');
    const st = await x.loadSafetensors(file);
    const key = Object.keys(st).find((k) => k.startsWith('exp_avg_sq.'))!;
    const v = new Float32Array(await st[key].toArray() as Float32Array);
    v[0] = -1;
    await x.saveSafetensors(file, { ...st, [key]: x.Tensor.fromArray(v, [...st[key].shape]) });
    for (const t of Object.values(st)) t.dispose();
    const before = snapshot(dir);
    userError(x2i('train', ...common(dir), '--steps', '4', '--resume'), new RegExp(`optimizer\\.safetensors: ${key.replace(/\./g, '\\.')}: negative value -1`));
    expect(snapshot(dir)).toEqual(before);
  });

  it('a step that turns non-finite stops the run (exit 2) without a checkpoint; the last good one is intact', async () => {
    const x = await import('../../lib/index.js');
    const dir = copyRun('nan-step');
    const nan = path.join(tmp, 'nan-features.safetensors');
    await x.saveSafetensors(nan, { 'teacher.encoder_hidden_states': await x.randn([1, 7, 32], { seed: 1 }),
      'teacher.pooled_projections': await x.randn([1, 24], { seed: 2 }),
      'student.hidden_states': x.Tensor.fromArray(new Float32Array(5 * 7 * 32).fill(NaN), [1, 5, 7, 32]) });
    const before = snapshot(dir);
    // other features: a change of the run's data, refused on --resume unless forced
    userError(x2i('train', ...common(dir).map((a) => (a === feats ? nan : a)), '--steps', '4', '--resume'),
      /--resume: .* was trained with other options: --features: the run recorded ".*features\.safetensors", this command gives ".*nan-features\.safetensors"/);
    userError(x2i('train', ...common(dir).map((a) => (a === feats ? nan : a)), '--steps', '4', '--resume', '--force-resume'),
      /micro-batch 2 .*training stopped \(no checkpoint is written from this state; the last good checkpoint is kept\)/);
    expect(snapshot(dir)).toEqual(before);
  });

  it('trainer.json pointing outside the run folder, and a bad trainer.json', () => {
    for (const [name, edit, re] of [
      ['escape', (m: Record<string, unknown>) => JSON.stringify({ ...m, checkpoint: '../good/' + m.checkpoint }), /trainer\.json: "checkpoint" must name a folder inside/],
      ['absolute', (m: Record<string, unknown>) => JSON.stringify({ ...m, checkpoint: path.join(good, String(m.checkpoint)) }), /trainer\.json: "checkpoint" must name/],
      ['badjson', () => '{"step": 2, "checkpoint": ', /trainer\.json: not valid JSON/],
      ['badstep', (m: Record<string, unknown>) => JSON.stringify({ ...m, step: 'two' }), /trainer\.json: "step" must be a non-negative integer/],
      ['badconfig', (m: Record<string, unknown>) => JSON.stringify({ ...m, config: 'lr=1' }), /trainer\.json: "config" must be an object of options, got "lr=1"/],
    ] as const) {
      const dir = copyRun(`json-${name}`);
      const json = path.join(dir, 'trainer.json');
      fs.writeFileSync(json, edit(JSON.parse(fs.readFileSync(json, 'utf8'))));
      const before = snapshot(dir), goodBefore = snapshot(good);
      userError(x2i('train', ...common(dir), '--steps', '4', '--resume'), re, name);
      expect(snapshot(dir), name).toEqual(before);
      expect(snapshot(good), name).toEqual(goodBefore);
      // eval reads the same pointer
      if (name !== 'badconfig')  // eval reads no config
        userError(x2i('eval', '--flux', flux, '--alignnet', dir, '--features', feats, '--height', '32', '--width', '32', '--steps', '1'), re, `eval ${name}`);
    }
  });
});

describe('x2i generate / eval / demo: options and output paths before any work', () => {
  it('bad extensions, missing folders, NaN guidance, bad sizes and steps', () => {
    const base = ['--flux', flux, '--vae', path.join(golden, 'vae'), '--embeds', path.join(golden, 'pipeline', 'io.safetensors'),
      '--height', '32', '--width', '32', '--steps', '2'];
    const cases: [string[], RegExp][] = [
      [['--out', path.join(tmp, 'x.gif')], /--out: expected an image file path ending in \.png, \.jpg, \.jpeg or \.webp, got ".*x\.gif"/],
      [['--out', path.join(tmp, 'noext')], /--out: expected an image file path/],
      [['--out', '/nonexistent/a.png'], /--out: cannot write "\/nonexistent\/a\.png": the folder \/nonexistent does not exist/],
      [['--out', path.join(tmp, 'd.png')], /--out: cannot write .*d\.png": it is a folder/],
      [['--guidance', 'NaN'], /--guidance: expected a number, got "NaN"/], [['--guidance', 'Infinity'], /--guidance: expected a finite number/],
      [['--steps', '0'], /--steps: expected a positive integer/], [['--steps', '1e9'], /--steps: .*at most 10000/],
      [['--height', '33'], /--height: expected a positive multiple of 16/], [['--seed=-1'], /--seed: expected a non-negative integer/],
      [['--seed', '0.5'], /--seed/], [['--bogus', '1'], /^x2i generate: unknown option '--bogus' \(see x2i generate --help\)$/m],
      [['--guidance', 'nan'], /--guidance: expected a number, got "nan"/], [['--steps', '-1'], /--steps: expected a positive integer .*got -1/],
      [['--width', '1000'], /--width: expected a positive multiple of 16/], [['--device', 'cuda:x'], /--device: expected 'cpu', 'cuda' or 'cuda:N'/],
      [['--out', path.join(tmp, 'x.bmp')], /--out: expected an image file path ending in \.png, \.jpg, \.jpeg or \.webp, got ".*x\.bmp"/],
      [['--seeds', '1'], /unknown option '--seeds' \(did you mean --seed\? see x2i generate --help\)/],
    ];
    fs.mkdirSync(path.join(tmp, 'd.png'));
    for (const [args, re] of cases) {
      const t0 = Date.now();
      userError(x2i('generate', ...base, ...args), re, args.join(' '));
      expect(Date.now() - t0).toBeLessThan(20_000);
    }
    expect(fs.readdirSync(tmp).filter((f) => /^(x\.gif|noext)$/.test(f))).toEqual([]);
    userError(x2i('eval', '--flux', flux, '--alignnet', good, '--features', feats, '--steps', '2.5'), /--steps: .*got 2\.5/);
    userError(x2i('eval', '--flux', flux, '--alignnet', good, '--features', feats, '--height', '32', '--width', '32', '--steps', '1',
      '--json', '/nonexistent/r.json'), /--json: cannot write/);
    userError(x2i('demo', '--seed', 'x', '--out', path.join(tmp, 'demo')), /--seed: expected a number, got "x"/);
    userError(x2i('demo', '--quick', '--fast'), /x2i demo: unknown option '--fast' \(see x2i demo --help\)/);
    userError(x2i('eval', '--flux', flux, '--alignnet', good, '--features', feats, '--height', '1000'), /--height: expected a positive multiple of 16/);
    userError(x2i('eval', '--flux', flux, '--alignnet', good, '--features', feats, '--dtype', 'half'), /--dtype: expected float32/);
    userError(x2i('bench', '--mib', '0'), /--mib: expected a positive integer/);
    userError(x2i('bench', 'bridge', '--mib', 'lots'), /--mib: expected a number, got "lots"/);
    userError(x2i('bench', 'gpu'), /unknown benchmark 'gpu'/);
    userError(x2i('bench', 'flux', '--mib', '4'), /--mib is the bridge benchmark's/);
    userError(x2i('info', '--verbose'), /x2i info: unknown option '--verbose' \(see x2i info --help\)/);
    userError(x2i('demo', '--out', path.join(tmp, 'features.safetensors')), /--out: .* is a file, expected a folder/);
  });
});

describe('x2i train --config FILE and --resume against the recorded options', () => {
  const cfg = (name: string, body: string) => {
    const f = path.join(tmp, `${name}.json`);
    fs.writeFileSync(f, body);
    return f;
  };

  it('bad config files: exit 2 naming the file and the key', () => {
    const out = path.join(tmp, 'never-config');
    const cases: [string, RegExp][] = [
      ['{"steps": 2,', /--config: .*broken\.json: not valid JSON/],
      ['[1, 2]', /--config: .*broken\.json: expected a JSON object of options .*got an array/],
      ['{"stepz": 2}', /--config: .*broken\.json: unknown option "stepz" \(did you mean "steps"\? see x2i train --help\)/],
      ['{"resume": "yes"}', /--config: .*broken\.json: "resume": expected true or false, got "yes"/],
      ['{"lr": [0.1]}', /--config: .*broken\.json: "lr": expected a string or a finite number, got \[0\.1\]/],
      ['{"steps": 0}', /--steps: expected a positive integer .*got 0/],  // config values go through the same validators
      ['{"keepLast": -3}', /--keep-last: .*got -3/],
      ['{"help": true}', /unknown option "help"/],
    ];
    for (const [body, re] of cases) userError(x2i('train', ...common(out), '--config', cfg('broken', body)), re, body);
    // the command line wins over the file: its bad value is the one refused
    userError(x2i('train', ...common(out), '--config', cfg('fine', '{"steps": 2}'), '--steps', '0'), /--steps: .*got 0/);
    userError(x2i('train', ...common(out), '--config', path.join(tmp, 'nope.json')), /--config: .*nope\.json: no such file/);
    expect(fs.existsSync(out)).toBe(false);
  });

  it('a run started from a config file records it; a resume that changes the run is refused, the folder untouched', () => {
    const dir = path.join(tmp, 'configured');
    const file = cfg('run', JSON.stringify({ flux, alignnet, features: feats, out: dir, height: 32, width: 32, lr: 1e-3, 'checkpoint-every': 1 }));
    const r = x2i('train', '--config', file, '--steps', '1', '--quiet');
    expect(r.status, r.stderr).toBe(0);
    const meta = JSON.parse(fs.readFileSync(path.join(dir, 'trainer.json'), 'utf8'));
    expect(meta.config).toMatchObject({ flux, alignnet, features: feats, lr: 1e-3, height: 32, width: 32, warmup: 0, accumulate: 1 });
    const before = snapshot(dir);
    for (const [args, re] of [
      [['--accumulate', '2'], /--accumulate: the run recorded 1, this command gives 2/],
      [['--width', '48'], /--width: the run recorded 32, this command gives 48/],
      [['--lr', '0.001', '--warmup', '5'], /was trained with other options: --warmup: the run recorded 0, this command gives 5 \(give the recorded values/],
      [['--dtype', 'float64'], /--dtype: the run recorded \(not given\), this command gives "float64"/],
      [['--flux', path.join(tmp, 'good')], /--flux: the run recorded ".*flux-transformer", this command gives ".*good"/],
    ] as [string[], RegExp][])
      userError(x2i('train', '--config', file, '--steps', '3', '--resume', ...args), re, args.join(' '));
    expect(snapshot(dir)).toEqual(before);
    // what may change: the length of the run, checkpointing, the device; the same paths given relative
    const ok = spawnSync(process.execPath, [path.join(root, 'bin', 'x2i.js'), 'train', '--config', file, '--steps', '2', '--resume', '--keep-last', '1',
      '--checkpoint-every', '5', '--device', 'cpu', '--features', path.relative(path.dirname(feats), feats), '-q'],
      { encoding: 'utf8', timeout: 60_000, cwd: path.dirname(feats) });
    expect(ok.status, ok.stderr).toBe(0);
    expect(JSON.parse(fs.readFileSync(path.join(dir, 'trainer.json'), 'utf8'))).toMatchObject({ step: 2, config: { 'keep-last': 1, steps: 2 } });
    expect(fs.readdirSync(dir).filter((d) => d.startsWith('step-'))).toEqual(['step-000002-2']);  // --keep-last 1
  });
});
