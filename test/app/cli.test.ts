import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { Progress, loadingBar } from '../../lib/app/progress.js';
import { golden, root, studentAlignNetFile, tmpDir } from '../helpers.js';

const tmp = tmpDir();
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));
const x2i = (...args: string[]) => spawnSync(process.execPath, [path.join(root, 'bin', 'x2i.js'), ...args], { encoding: 'utf8' });
/** stderr's lines without what the CLI does not print: LibTorch's NNPACK warning (native code, on CPUs without NNPACK)
 * and the loader's stale-build warning (only in a checkout whose native/ changed since the addon was built). */
const chatter = (stderr: string) => stderr.split('\n').filter((l) => l !== '' && !/NNPACK\.cpp.*Could not initialize NNPACK/.test(l) &&
  !/\[X2I_STALE_BUILD\]|^\(Use `node --trace-warnings/.test(l));

it('x2i info, help and unknown commands', () => {
  const info = x2i('info');
  expect(info.status).toBe(0);
  expect(info.stdout).toMatch(/libtorch\s+\d+\.\d+/);
  expect(x2i('help').stdout).toContain('generate');
  const nope = x2i('nope');
  expect([nope.status, nope.stderr]).toEqual([2, "x2i: unknown command 'nope' (x2i --help lists the commands)\n"]);
});

describe('conventions', () => {
  const commands = [['generate'], ['train'], ['train', 'lora'], ['train', 'lightcontrol'], ['eval'], ['serve'], ['demo'], ['info'], ['bench']];

  it('--help and -h on every command: its usage on stdout, exit 0, nothing on stderr, before any other check', () => {
    const texts = new Set<string>();
    for (const cmd of commands)
      for (const flag of ['--help', '-h']) {
        const r = x2i(...cmd, flag);
        expect([r.status, r.stderr], `${cmd.join(' ')} ${flag}`).toEqual([0, '']);
        expect(r.stdout.startsWith(`usage: x2i ${cmd.join(' ')}`), `${cmd.join(' ')} ${flag}: ${r.stdout.slice(0, 80)}`).toBe(true);
        expect(r.stdout, cmd.join(' ')).toMatch(/--quiet, -q/);
        texts.add(r.stdout);
        expect(x2i('help', ...cmd).stdout).toBe(r.stdout);
      }
    expect(texts.size).toBe(commands.length);  // one text per command
    // --help wins over bad or missing flags; the training commands document --config and --force-resume
    expect(x2i('generate', '--steps', 'abc', '--bogus', '-h').status).toBe(0);
    for (const cmd of commands.slice(1, 4)) expect(x2i(...cmd, '--help').stdout).toMatch(/--config FILE[\s\S]*--force-resume[\s\S]*metrics\.jsonl/);
    // the overview lists every command and says how to get a command's help
    for (const flag of ['--help', '-h']) {
      const r = x2i(flag);
      expect(r.status).toBe(0);
      for (const cmd of commands) expect(r.stdout).toContain(`\n  ${cmd.join(' ')} `);
      expect(r.stdout).toMatch(/every command: --help, -h/);
    }
    expect(x2i('help', 'nope').status).toBe(2);
  });

  it('--version and -v: the package version', () => {
    const version = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8')).version;
    for (const flag of ['--version', '-v']) {
      const r = x2i(flag);
      expect([r.status, r.stdout, r.stderr]).toEqual([0, `${version}\n`, '']);
    }
  });

  it('progress: plain lines off a terminal (every step of a short run, else each 10%), a redrawn bar on one, nothing when quiet', () => {
    const sink = (isTTY: boolean) => ({ isTTY, text: '', write(x: string) { this.text += x; } });
    const plain = sink(false), p = new Progress({ stream: plain });
    const bar = p.bar('x2i train');
    for (let i = 1; i <= 100; i++) bar(i, 100, `loss ${(1 / i).toFixed(2)}`);
    p.note('x2i train: done');
    expect(plain.text).not.toContain('\r');
    const lines = plain.text.trimEnd().split('\n');
    expect(lines.slice(0, -1).map((l) => l.split(' ')[2])).toEqual(['1/100', ...Array.from({ length: 10 }, (_, k) => `${10 * (k + 1)}/100`)]);
    expect(lines[1]).toBe('x2i train 10/100 loss 0.10');
    expect(lines.at(-1)).toBe('x2i train: done');
    const short = sink(false), q = new Progress({ stream: short }).bar('x2i generate');
    for (let i = 1; i <= 4; i++) q(i, 4, 'denoise');
    q(4, 4, 'decode');
    q(4, 4, 'decode');  // the same line is never printed twice
    expect(short.text).toBe('x2i generate 1/4 denoise\nx2i generate 2/4 denoise\nx2i generate 3/4 denoise\nx2i generate 4/4 denoise\nx2i generate 4/4 decode\n');
    // a terminal: one line redrawn with carriage returns, ended before the next message
    const tty = sink(true), t = new Progress({ stream: tty });
    const tb = t.bar('x2i demo: training');
    for (let i = 1; i <= 3; i++) tb(i, 3);
    t.note('x2i demo: done');
    expect(tty.text).toBe(`\rx2i demo: training [##########${'.'.repeat(20)}] 1/3\rx2i demo: training [${'#'.repeat(20)}..........] 2/3` +
      `\rx2i demo: training [${'#'.repeat(30)}] 3/3\nx2i demo: done\n`);
    // quiet: nothing at all
    const quiet = sink(true), z = new Progress({ stream: quiet, quiet: true });
    z.bar('x')(1, 2);
    z.note('chatter');
    loadingBar('loading', z)({ file: 'a', bytesLoaded: 1, bytesTotal: 2, tensorsLoaded: 1, tensorsTotal: 2 });
    expect(quiet.text).toBe('');
  });

  it('loadingBar: MB loaded of the total and the file, for fromPretrained\'s onProgress', () => {
    const out = { isTTY: false, text: '', write(x: string) { this.text += x; } };
    const cb = loadingBar('x2i generate: loading FLUX', { stream: out });
    for (let i = 0; i <= 20; i++)
      cb({ file: '/models/flux/transformer/diffusion_pytorch_model-00001-of-00003.safetensors', bytesLoaded: i * 1.2e8, bytesTotal: 2.4e9,
        tensorsLoaded: i * 40, tensorsTotal: 800 });
    const lines = out.text.trimEnd().split('\n');
    expect(lines[0]).toBe('x2i generate: loading FLUX 0/2400 MB (0/800 tensors, diffusion_pytorch_model-00001-of-00003.safetensors)');
    expect(lines.at(-1)).toBe('x2i generate: loading FLUX 2400/2400 MB (800/800 tensors, diffusion_pytorch_model-00001-of-00003.safetensors)');
    expect(lines.length).toBe(11);  // off a terminal: the start, each 10%
    const small = { isTTY: true, text: '', write(x: string) { this.text += x; } };
    loadingBar('vae', { stream: small })({ file: 'vae.safetensors', bytesLoaded: 1.5e6, bytesTotal: 3e6, tensorsLoaded: 3, tensorsTotal: 6 });
    expect(small.text).toBe(`\rvae [${'#'.repeat(15)}${'.'.repeat(15)}] 1.5/3.0 MB (3/6 tensors, vae.safetensors)`);
  });
});

it('x2i generate: a PNG from precomputed embeddings through FLUX and its VAE, with progress; the format follows --out', async () => {
  const out = path.join(tmp, 'a.png');
  const base = ['generate', '--flux', path.join(golden, 'flux-transformer'), '--vae', path.join(golden, 'vae'),
    '--embeds', path.join(golden, 'pipeline', 'io.safetensors'), '--height', '32', '--width', '32'];
  const r = x2i(...base, '--steps', '4', '--out', out);
  expect(r.status, r.stderr).toBe(0);
  // not a terminal: plain lines, no carriage returns
  // the loading bars of FLUX and the VAE first (plain lines off a terminal), then the steps
  const lines = chatter(r.stderr);
  expect(lines.filter((l) => l.startsWith('x2i generate: loading FLUX')).at(-1)).toMatch(/^x2i generate: loading FLUX [\d.]+\/[\d.]+ MB \(\d+\/\d+ tensors, .+\.safetensors\)$/);
  expect(lines.some((l) => l.startsWith('x2i generate: loading the VAE'))).toBe(true);
  expect(lines.filter((l) => !l.startsWith('x2i generate: loading '))).toEqual(['x2i generate 1/4 denoise', 'x2i generate 2/4 denoise', 'x2i generate 3/4 denoise', 'x2i generate 4/4 denoise',
    'x2i generate 4/4 decode', `x2i generate: wrote ${out} (PNG, 32×32)`]);
  const { default: sharp } = await import('sharp');
  const meta = await sharp(out).metadata();
  expect([meta.format, meta.width, meta.height]).toEqual(['png', 32, 32]);
  for (const [file, format] of [['a.jpg', 'jpeg'], ['a.JPEG', 'jpeg'], ['a.webp', 'webp']]) {
    const q = x2i(...base, '--steps', '1', '--out', path.join(tmp, file), ...(file === 'a.webp' ? ['-q'] : ['--quiet']));
    expect(q.status, q.stderr).toBe(0);
    expect(chatter(q.stderr), file).toEqual([]);  // --quiet: no progress, no messages
    expect((await sharp(path.join(tmp, file)).metadata()).format, file).toBe(format);
  }
  const gif = x2i(...base, '--out', path.join(tmp, 'a.gif'));
  expect([gif.status, gif.stderr]).toEqual([2, `x2i generate: --out: expected an image file path ending in .png, .jpg, .jpeg or .webp, got "${path.join(tmp, 'a.gif')}"\n`]);
  expect(x2i('generate').status).toBe(2);
  expect(x2i('generate', '--flux', 'x').stderr).toMatch(/give --prompt or --embeds/);
  expect(x2i('generate', '--flux', 'nowhere', '--prompt', 'x', '--mllm', 'm').stderr).toMatch(/student needs --mllm, --alignnet and a prompt/);
});

it('x2i generate: the MiniCPM-o student from a sound, an image and text mixed (--audio, --prompt-image, --video)', async () => {
  const align = await studentAlignNetFile(path.join(tmp, 'alignnet-minicpm.safetensors'), 3, 128, 1);
  const dir = path.join(golden, 'minicpm_o');
  const base = ['generate', '--flux', path.join(golden, 'flux-transformer'), '--vae', path.join(golden, 'vae'), '--mllm', dir, '--alignnet', align,
    '--height', '32', '--width', '32', '--steps', '2'];
  const a = path.join(tmp, 'sound.png'), b = path.join(tmp, 'mixed.png');
  const ra = x2i(...base, '--audio', path.join(root, 'test', 'fixtures', 'audio', 'fox.ogg'), '--out', a);
  expect(ra.status, ra.stderr).toBe(0);
  const rb = x2i(...base, '--audio', path.join(dir, 'mixed_audio.wav'), '--prompt-image', path.join(dir, 'mixed_image.png'),
    '--video', path.join(dir, 'image.png'), '--prompt', 'make it a watercolor', '--out', b);
  expect(rb.status, rb.stderr).toBe(0);
  expect(fs.readFileSync(a).equals(fs.readFileSync(b))).toBe(false);
  // --memory 48gb: the MLLM encodes and is freed before the transformer loads — the same image; 24gb: FP8 block weights
  const c = path.join(tmp, 'mixed-48gb.png'), d8 = path.join(tmp, 'mixed-24gb.png');
  const mixedArgs = ['--audio', path.join(dir, 'mixed_audio.wav'), '--prompt-image', path.join(dir, 'mixed_image.png'),
    '--video', path.join(dir, 'image.png'), '--prompt', 'make it a watercolor'];
  const rc = x2i(...base, ...mixedArgs, '--memory', '48gb', '--out', c);
  expect(rc.status, rc.stderr).toBe(0);
  expect(fs.readFileSync(c).equals(fs.readFileSync(b))).toBe(true);
  const rd = x2i(...base, ...mixedArgs, '--memory', '24gb', '--out', d8);
  expect(rd.status, rd.stderr).toBe(0);
  expect(fs.readFileSync(d8).subarray(1, 4).toString()).toBe('PNG');
  expect(x2i(...base, '--prompt', 'x', '--memory', 'tiny', '--out', c).stderr.trim()).toBe('x2i generate: --memory: expected full, 48gb, 24gb, got "tiny"');
  expect(x2i(...base, '--prompt', 'x', '--memory', '24gb', '--fuse-lora', '--out', c).stderr.trim())
    .toBe('x2i generate: --fuse-lora: --memory 24gb has FP8 block weights, on which adapters run unfused');
  expect(x2i('generate', '--flux', 'x', '--audio', a).stderr).toMatch(/--audio is the student's prompt: it needs --mllm/);
  const d = x2i('demo', '--student', 'llama', '--out', path.join(tmp, 'never'));
  expect([d.status, d.stderr.trim()]).toEqual([2, 'x2i demo: --student must be qwen, internvl or minicpm-o, got "llama"']);
});

it('x2i train --memory: 24gb trains with FP8 block weights and checkpointing on features; presets are checked', async () => {
  const x = await import('../../lib/index.js');
  const feats = path.join(tmp, 'features-memory.safetensors');
  await x.saveSafetensors(feats, { 'teacher.encoder_hidden_states': await x.randn([1, 7, 32], { seed: 1 }),
    'teacher.pooled_projections': await x.randn([1, 24], { seed: 2 }), 'student.hidden_states': await x.randn([1, 5, 7, 32], { seed: 3 }) });
  const base = ['--flux', path.join(golden, 'flux-transformer'), '--alignnet', path.join(golden, 'alignnet', 'diffusion_pytorch_model.bin'),
    '--height', '32', '--width', '32', '--steps', '1', '-q'];
  const out = path.join(tmp, 'run-24gb');
  const r = x2i('train', ...base, '--features', feats, '--out', out, '--memory', '24gb');
  expect(r.status, r.stderr).toBe(0);
  const tj = JSON.parse(fs.readFileSync(path.join(out, 'trainer.json'), 'utf8'));
  expect(tj.config.quantize).toBe('fp8');  // what changes the numbers (checkpointing does not)
  expect(tj.options.checkpoint).toBe(true);
  const bad = x2i('train', ...base, '--features', feats, '--out', path.join(tmp, 'never-1'), '--memory', '12gb');
  expect([bad.status, bad.stderr.trim()]).toEqual([2, 'x2i train: --memory: expected full, 48gb, 24gb, got "12gb"']);
  const noFeatures = x2i('train', ...base, '--captions', feats, '--mllm', tmp, '--out', path.join(tmp, 'never-2'), '--memory', '48gb');
  expect([noFeatures.status, noFeatures.stderr.trim()]).toEqual([2, 'x2i train: --memory 48gb trains on precomputed features (no encoder on the GPU): give --features FILE']);
});

it('x2i train: AlignNet from precomputed features, --config, checkpoints, metrics.jsonl, resume checked against the recorded options', async () => {
  const x = await import('../../lib/index.js');
  const feats = path.join(tmp, 'features.safetensors');
  await x.saveSafetensors(feats, { 'teacher.encoder_hidden_states': await x.randn([1, 7, 32], { seed: 1 }),
    'teacher.pooled_projections': await x.randn([1, 24], { seed: 2 }), 'student.hidden_states': await x.randn([1, 5, 7, 32], { seed: 3 }) });
  const out = path.join(tmp, 'run');
  // options from a JSON file (camelCase or the flags' names), the command line over it
  const cfg = path.join(tmp, 'train.json');
  fs.writeFileSync(cfg, JSON.stringify({ flux: path.join(golden, 'flux-transformer'), height: 32, width: '32', lr: 0.5, checkpointEvery: 2, 'keep-last': 3 }));
  const common = ['--config', cfg, '--alignnet', path.join(golden, 'alignnet', 'diffusion_pytorch_model.bin'),
    '--features', feats, '--out', out, '--lr', '1e-3'];
  const trainerJson = () => JSON.parse(fs.readFileSync(path.join(out, 'trainer.json'), 'utf8'));
  const metrics = () => fs.readFileSync(path.join(out, 'metrics.jsonl'), 'utf8').trimEnd().split('\n').map((l) => JSON.parse(l));
  const r = x2i('train', ...common, '--steps', '3');
  expect(r.status, r.stderr).toBe(0);
  // not a terminal: a plain line per step (cosine from lr over 3 steps), then where the checkpoint is
  expect(chatter(r.stderr)).toEqual([...['1.00e-3', '7.50e-4', '2.50e-4'].map((lr, i) => expect.stringMatching(new RegExp(`^x2i train ${i + 1}/3 loss \\d+\\.\\d{4} lr ${lr}$`))),
    `x2i train: step 3; checkpoint ${path.join(out, 'step-000003-3')}`]);
  expect(trainerJson().step).toBe(3);
  expect(trainerJson().config).toMatchObject({ flux: path.join(golden, 'flux-transformer'), features: feats, lr: 1e-3, height: 32, width: 32,
    'checkpoint-every': 2, 'keep-last': 3, steps: 3, device: 'cpu' });
  expect(trainerJson().options).toMatchObject({ lr: 1e-3, keepLast: 3, height: 32 });
  expect(fs.readdirSync(out).filter((d) => d.startsWith('step-')).sort()).toEqual(['step-000002-2', 'step-000003-3']);
  // one line per optimizer step
  expect(metrics().map((m) => m.step)).toEqual([1, 2, 3]);
  for (const [i, m] of metrics().entries()) {
    expect(Object.keys(m)).toEqual(['step', 'microStep', 'loss', 'lr', 'gradNorm', 'seconds']);
    expect(m.microStep).toBe(m.step);
    for (const k of ['loss', 'gradNorm', 'seconds']) expect(Number.isFinite(m[k]) && m[k] >= 0, `${k} ${m[k]}`).toBe(true);
    expect(m.lr).toBeCloseTo([1e-3, 7.5e-4, 2.5e-4][i], 12);
  }
  // a run that went past its checkpoint and died: its later lines are dropped on resume
  fs.appendFileSync(path.join(out, 'metrics.jsonl'), JSON.stringify({ step: 4, microStep: 4, loss: 99 }) + '\n{"step": 5, "lo');
  const again = x2i('train', ...common, '--steps', '5', '--resume', '-q');
  expect(again.status, again.stderr).toBe(0);
  expect(chatter(again.stderr)).toEqual([]);
  expect(trainerJson().step).toBe(5);
  expect(metrics().map((m) => [m.step, m.loss === 99])).toEqual([[1, false], [2, false], [3, false], [4, false], [5, false]]);
  // a resume whose options would change the run is refused, naming each option and both values; --force-resume allows it
  const changed = x2i('train', ...common, '--steps', '6', '--resume', '--lr', '2e-3', '--height', '48');
  expect(changed.status).toBe(2);
  expect(changed.stderr).toBe(`x2i train: --resume: ${out} was trained with other options: --lr: the run recorded 0.001, this command gives 0.002; ` +
    '--height: the run recorded 32, this command gives 48 (give the recorded values, or --force-resume to continue with these)\n');
  expect(trainerJson().step).toBe(5);
  const forced = x2i('train', ...common, '--steps', '6', '--resume', '--force-resume', '--lr', '2e-3');
  expect(forced.status, forced.stderr).toBe(0);
  expect(forced.stderr).toContain(`x2i train: --force-resume: continuing ${out} with --lr: the run recorded 0.001, this command gives 0.002`);
  expect(trainerJson()).toMatchObject({ step: 6, config: { lr: 2e-3 } });
  expect(metrics().map((m) => m.step)).toEqual([1, 2, 3, 4, 5, 6]);
  expect(x2i('train', '--flux', 'a').status).toBe(2);
  // x2i eval on the trained checkpoint folder
  const json = path.join(tmp, 'eval.json');
  const ev = x2i('eval', '--flux', path.join(golden, 'flux-transformer'), '--vae', path.join(golden, 'vae'), '--alignnet', out,
    '--features', feats, '--height', '32', '--width', '32', '--steps', '2', '--json', json);
  expect(ev.status, ev.stderr).toBe(0);
  expect(ev.stdout).toMatch(/ssim [\d.-]+ +psnr [\d.]+ dB +distillation loss \d/);
  const ej = JSON.parse(fs.readFileSync(json, 'utf8'));
  expect(ej.ssim).toBeGreaterThan(-1);
  expect(ej.ssim).toBeLessThanOrEqual(1);
  // the prompts mode needs the student and a CLIP checkpoint; prompt files are checked line by line
  const evalBase = ['eval', '--flux', path.join(golden, 'flux-transformer'), '--alignnet', out];
  const pf = path.join(tmp, 'prompts.jsonl');
  fs.writeFileSync(pf, '{"prompt": "a red square"}\n{"text": "no prompt field"}\n');
  expect(x2i(...evalBase, '--prompts', pf).stderr).toBe('x2i eval: --prompts needs --mllm (the student) and --clip (the CLIP checkpoint that scores)\n');
  expect(x2i(...evalBase, '--prompts', pf, '--features', feats).stderr).toMatch(/--prompts and --features are two modes/);
  const bad = x2i(...evalBase, '--prompts', pf, '--mllm', path.join(golden, 'qwen2_5_vl'), '--clip', path.join(root, 'test', 'fixtures', 'clip'),
    '--vae', path.join(golden, 'vae'), '--height', '32', '--width', '32');
  expect([bad.status, bad.stderr.trim().split('\n').at(-1)]).toEqual([2, `x2i eval: --prompts: ${pf} line 2: no "prompt" or "caption" string`]);
  // two processes: the split layout (teacher rank 0, student rank 1) and data parallel, through the CLI's launcher
  for (const mode of ['split', 'data']) {
    const dir = path.join(tmp, `run-${mode}`);
    const port = String(29700 + (mode === 'data' ? 1 : 0) + (process.pid % 200) * 2);
    const p = x2i('train', ...common.map((a) => (a === out ? dir : a)), '--steps', '2', '--nproc-per-node', '2', '--parallel', mode,
      '--master-port', port);
    expect(p.status, p.stderr).toBe(0);
    expect(p.stderr).toMatch(/2\/2 loss \d/);  // one rank reports
    expect(JSON.parse(fs.readFileSync(path.join(dir, 'trainer.json'), 'utf8')).parallel).toEqual({ mode, worldSize: 2 });
  }
  expect(x2i('train', ...common, '--nproc-per-node', '2').stderr).toMatch(/needs --parallel data\|split/);
}, 120_000);
