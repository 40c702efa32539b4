// x2i generate's image-to-image, inpainting, LoRA and LightControl flags, and x2i train lora / train lightcontrol, run
// as the user runs them (bin/x2i.js in a child process) on the golden tiny FLUX transformer. The conditioning is
// precomputed (--embeds): the tiny T5/CLIP do not match the tiny transformer's pooled width. LightControl needs a VAE
// of factor 8 (one token per 16 × 16 pixels): a tiny one is assembled here (the golden VAE has factor 2).
import { spawnSync, type SpawnSyncReturns } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { golden, root, tmpDir } from '../helpers.js';

const tmp = tmpDir();
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));
const x2i = (...args: string[]) => spawnSync(process.execPath, [path.join(root, 'bin', 'x2i.js'), ...args],
  { encoding: 'utf8', timeout: 60_000, cwd: tmp });
const flux = path.join(golden, 'flux-transformer');
const embeds = path.join(golden, 'pipeline', 'io.safetensors');
const lora = path.join(golden, 'flux-lora', 'lora_diffusers.safetensors');
const lightcontrol = path.join(golden, 'lightcontrol');
const vae8 = path.join(tmp, 'vae8');
const img = path.join(tmp, 'a.png'), mask = path.join(tmp, 'mask.png');
const gen = (vae: string, ...args: string[]) => x2i('generate', '--flux', flux, '--vae', vae, '--embeds', embeds, '--steps', '2', ...args);

/** Exit status 2 with a one-line message matching `re`, no stack trace. */
function userError(r: SpawnSyncReturns<string>, re: RegExp, what = ''): void {
  expect(r.error, what).toBeUndefined();
  expect(r.status, `${what}: ${r.stderr}`).toBe(2);
  expect(r.stderr, what).toMatch(re);
  expect(r.stderr, what).not.toMatch(/\n\s+at .*:\d+:\d+/);
}

const trainerJson = (dir: string) => JSON.parse(fs.readFileSync(path.join(dir, 'trainer.json'), 'utf8'));
const metrics = (dir: string) => fs.readFileSync(path.join(dir, 'metrics.jsonl'), 'utf8').trimEnd().split('\n').map((l) => JSON.parse(l));
const stepFolders = (dir: string) => fs.readdirSync(dir).filter((d) => d.startsWith('step-')).sort();
/** stderr's lines without LibTorch's NNPACK warning and the loader's stale-build warning (neither is the CLI's). */
const chatter = (stderr: string) => stderr.split('\n').filter((l) => l !== '' && !/NNPACK\.cpp.*Could not initialize NNPACK/.test(l) &&
  !/\[X2I_STALE_BUILD\]|^\(Use `node --trace-warnings/.test(l));

/** A diffusers AutoencoderKL folder of factor 8 (block_out_channels [8, 8, 8, 8], one resnet per block), random weights. */
async function tinyVae8(dir: string): Promise<void> {
  const x = await import('../../lib/index.js');
  const C = 8, levels = 4, latent = 4;
  const w: Record<string, InstanceType<typeof x.Tensor>> = {};
  let seed = 1;
  const rnd = async (shape: number[], std: number) => {
    const t = await x.randn(shape, { seed: seed++ });
    const a = (await t.toArray() as Float32Array).map((v) => v * std);
    t.dispose();
    return x.Tensor.fromArray(a, shape);
  };
  const bias = (k: string, o: number) => { w[`${k}.bias`] = x.Tensor.fromArray(new Float32Array(o), [o]); };
  const conv = async (k: string, o: number, i: number) => { w[`${k}.weight`] = await rnd([o, i, 3, 3], 0.5 / Math.sqrt(9 * i)); bias(k, o); };
  const lin = async (k: string, o: number, i: number) => { w[`${k}.weight`] = await rnd([o, i], 0.5 / Math.sqrt(i)); bias(k, o); };
  const norm = (k: string) => { w[`${k}.weight`] = x.Tensor.fromArray(new Float32Array(C).fill(1), [C]); bias(k, C); };
  const resnet = async (k: string) => { norm(`${k}.norm1`); await conv(`${k}.conv1`, C, C); norm(`${k}.norm2`); await conv(`${k}.conv2`, C, C); };
  const mid = async (k: string) => {
    await resnet(`${k}.resnets.0`);
    await resnet(`${k}.resnets.1`);
    norm(`${k}.attentions.0.group_norm`);
    for (const p of ['to_q', 'to_k', 'to_v', 'to_out.0']) await lin(`${k}.attentions.0.${p}`, C, C);
  };
  await conv('encoder.conv_in', C, 3);
  for (let i = 0; i < levels; i++) {
    await resnet(`encoder.down_blocks.${i}.resnets.0`);
    if (i < levels - 1) await conv(`encoder.down_blocks.${i}.downsamplers.0.conv`, C, C);
  }
  await mid('encoder.mid_block');
  norm('encoder.conv_norm_out');
  await conv('encoder.conv_out', 2 * latent, C);
  await conv('decoder.conv_in', C, latent);
  await mid('decoder.mid_block');
  for (let i = 0; i < levels; i++) {
    for (let j = 0; j < 2; j++) await resnet(`decoder.up_blocks.${i}.resnets.${j}`);
    if (i < levels - 1) await conv(`decoder.up_blocks.${i}.upsamplers.0.conv`, C, C);
  }
  norm('decoder.conv_norm_out');
  await conv('decoder.conv_out', 3, C);
  fs.mkdirSync(dir, { recursive: true });
  await x.saveSafetensors(path.join(dir, 'diffusion_pytorch_model.safetensors'), w);
  for (const t of Object.values(w)) t.dispose();
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ in_channels: 3, out_channels: 3,
    down_block_types: Array(levels).fill('DownEncoderBlock2D'), up_block_types: Array(levels).fill('UpDecoderBlock2D'),
    block_out_channels: Array(levels).fill(C), layers_per_block: 1, latent_channels: latent, norm_num_groups: 4, sample_size: 32,
    scaling_factor: 0.3611, shift_factor: 0.1159, use_quant_conv: false, use_post_quant_conv: false }));
}

/** A 32 × 32 PNG: a gradient shifted by k. */
async function png(file: string, k: number): Promise<void> {
  const { default: sharp } = await import('sharp');
  const px = Buffer.alloc(32 * 32 * 3);
  for (let i = 0; i < px.length; i++) px[i] = (i * (7 + k) + 40 * k) % 256;
  await sharp(px, { raw: { width: 32, height: 32, channels: 3 } }).png().toFile(file);
}

beforeAll(async () => {
  const { default: sharp } = await import('sharp');
  await png(img, 0);
  const m = Buffer.alloc(32 * 32);
  for (let i = 0; i < m.length; i++) m[i] = i % 32 < 16 ? 255 : 0;
  await sharp(m, { raw: { width: 32, height: 32, channels: 1 } }).png().toFile(mask);
  await tinyVae8(vae8);
  // a folder dataset: images with .txt captions
  fs.mkdirSync(path.join(tmp, 'folder'));
  for (let k = 0; k < 3; k++) {
    await png(path.join(tmp, 'folder', `${k}.png`), k + 1);
    fs.writeFileSync(path.join(tmp, 'folder', `${k}.txt`), `sample ${k}`);
  }
  // a JSONL manifest: targets with their source images (LightControl's hints)
  fs.mkdirSync(path.join(tmp, 'pairs'));
  const lines = [];
  for (let k = 0; k < 2; k++) {
    await png(path.join(tmp, 'pairs', `src${k}.png`), 5 + k);
    await png(path.join(tmp, 'pairs', `tgt${k}.png`), 7 + k);
    lines.push(JSON.stringify({ image: `tgt${k}.png`, references: [`src${k}.png`], caption: `pair ${k}` }));
  }
  fs.writeFileSync(path.join(tmp, 'pairs', 'manifest.jsonl'), lines.join('\n') + '\n');
}, 60_000);

describe('x2i generate', () => {
  it('image-to-image (--image --strength: the size from the image), inpainting (--mask)', async () => {
    const { default: sharp } = await import('sharp');
    const vae = path.join(golden, 'vae');
    const a = path.join(tmp, 'i2i.png'), b = path.join(tmp, 'inpaint.png');
    const r = gen(vae, '--image', img, '--strength', '0.5', '--out', a);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stderr).toContain('1/1 decode');  // ⌊2 · 0.5⌋ = 1 step runs
    expect(await sharp(a).metadata()).toMatchObject({ format: 'png', width: 32, height: 32 });
    const m = gen(vae, '--image', img, '--mask', mask, '--strength', '1', '--out', b);
    expect(m.status, m.stderr).toBe(0);
    expect(m.stderr).toContain('2/2 decode');
    expect(fs.readFileSync(b).equals(fs.readFileSync(a))).toBe(false);
  });

  it('--lora FILE:SCALE (scale 0 = no adapter), --fuse-lora', () => {
    const vae = path.join(golden, 'vae');
    const out = (n: string) => path.join(tmp, `lora-${n}.png`);
    for (const [name, args] of [['none', []], ['zero', ['--lora', `${lora}:0`]], ['half', ['--lora', `${lora}:0.5`]],
      ['fused', ['--lora', `${lora}:0.5`, '--fuse-lora']]] as [string, string[]][]) {
      const r = gen(vae, '--height', '32', '--width', '32', ...args, '--out', out(name));
      expect(r.status, `${name}: ${r.stderr}`).toBe(0);
    }
    const bytes = (n: string) => fs.readFileSync(out(n));
    expect(bytes('zero').equals(bytes('none'))).toBe(true);
    expect(bytes('half').equals(bytes('none'))).toBe(false);
  });

  it('--lightcontrol --control-image (a factor-8 VAE); the golden factor-2 VAE is refused with a clear error', () => {
    const on = path.join(tmp, 'lc.png');
    const r = gen(vae8, '--height', '32', '--width', '32', '--lightcontrol', lightcontrol, '--control-image', img, '--out', on);
    expect(r.status, r.stderr).toBe(0);
    const off = path.join(tmp, 'lc-off.png');
    expect(gen(vae8, '--height', '32', '--width', '32', '--lightcontrol', lightcontrol, '--control-image', img, '--control-scale', '0',
      '--out', off).status).toBe(0);
    expect(fs.readFileSync(on).equals(fs.readFileSync(off))).toBe(false);
    userError(gen(path.join(golden, 'vae'), '--height', '32', '--width', '32', '--lightcontrol', lightcontrol, '--control-image', img,
      '--out', path.join(tmp, 'never.png')), /LightControl makes one token per 16 × 16 pixels, this VAE's packed latents one per 4 × 4/);
  });

  it('bad flags: exit 2 naming the flag, before any model loads', () => {
    const vae = path.join(golden, 'vae');
    const cases: [string[], RegExp][] = [
      [['--strength', '0.5'], /--strength needs --image/],
      [['--mask', mask], /--mask needs --image/],
      [['--image', img, '--strength', '0'], /--strength: expected a finite number in \(0, 1\], got 0/],
      [['--image', img, '--strength', '1.5'], /--strength: expected a finite number in \(0, 1\]/],
      [['--image', img, '--strength', 'abc'], /--strength: expected a number, got "abc"/],
      [['--image', path.join(tmp, 'nope.png')], /--image: .*nope\.png: no such file/],
      [['--image', img, '--mask', path.join(tmp, 'nope.png')], /--mask: .*nope\.png: no such file/],
      [['--lora', `${lora}:abc`], /--lora: .*lora_diffusers\.safetensors:abc: the scale after the last ':' must be a finite number, got "abc"/],
      [['--lora', `${lora}:`], /--lora: .*the scale after the last ':' must be a finite number/],
      [['--lora', path.join(tmp, 'x.safetensors:0.5')], /--lora: .*x\.safetensors:0\.5: no such file/],
      [['--fuse-lora'], /--fuse-lora needs --lora/],
      [['--control-image', img], /--control-image needs --lightcontrol/],
      [['--lightcontrol', lightcontrol], /--lightcontrol needs --control-image/],
      [['--lightcontrol', lightcontrol, '--control-image', img, '--control-scale', 'NaN'], /--control-scale: expected a number, got "NaN"/],
      [['--lightcontrol', path.join(tmp, 'nope'), '--control-image', img], /--lightcontrol: .*nope: no such file/],
      [['--prompt-image', img], /--prompt-image is the student's prompt: it needs --mllm/],
    ];
    for (const [args, re] of cases) {
      const t0 = Date.now();
      userError(gen(vae, ...args, '--out', path.join(tmp, 'never.png')), re, args.join(' '));
      expect(Date.now() - t0, args.join(' ')).toBeLessThan(20_000);
    }
    expect(fs.existsSync(path.join(tmp, 'never.png'))).toBe(false);
  });
});

describe('x2i train lora / lightcontrol', () => {
  const base = (out: string, data: string) => ['--flux', flux, '--vae', vae8, '--embeds', embeds, '--data', data, '--out', out,
    '--height', '32', '--width', '32', '--checkpoint-every', '2'];

  it('train lora on a folder of images + captions (--config): checkpoints with lora.safetensors, metrics.jsonl, --resume continues, the run loads in generate', () => {
    const out = path.join(tmp, 'run-lora');
    const cfg = path.join(tmp, 'lora.json');
    fs.writeFileSync(cfg, JSON.stringify({ rank: 4, alpha: 8, targets: 'to_q,to_k,to_v,proj_out', editingPrompt: 'keep the style' }));
    const args = [...base(out, path.join(tmp, 'folder')), '--config', cfg];
    const r = x2i('train', 'lora', ...args, '--steps', '3');
    expect(r.status, r.stderr).toBe(0);
    expect(chatter(r.stderr).map((l) => l.replace(/loss \d+\.\d{4} lr \S+/, 'loss'))).toEqual(['x2i train lora 1/3 loss', 'x2i train lora 2/3 loss',
      'x2i train lora 3/3 loss', `x2i train lora: step 3; checkpoint ${path.join(out, 'step-000003-3')}`]);
    expect(trainerJson(out)).toMatchObject({ step: 3, microStep: 3, kind: 'LoraTrainer', config: { rank: 4, alpha: 8, targets: 'to_q,to_k,to_v,proj_out',
      'editing-prompt': 'keep the style', data: path.join(tmp, 'folder'), embeds, lr: 1e-4, height: 32 } });
    expect(stepFolders(out)).toEqual(['step-000002-2', 'step-000003-3']);  // --keep-last 2 (the default)
    expect(fs.existsSync(path.join(out, 'step-000003-3', 'lora.safetensors'))).toBe(true);
    expect(metrics(out).map((m) => [m.step, m.microStep, Number.isFinite(m.loss), Number.isFinite(m.gradNorm)])).toEqual([[1, 1, true, true], [2, 2, true, true], [3, 3, true, true]]);
    userError(x2i('train', 'lora', ...args, '--steps', '5'), /--out: the folder .* is not empty \(pass --resume/);
    // a resume that changes the adapter is refused, naming the options and both values
    userError(x2i('train', 'lora', ...args, '--steps', '5', '--resume', '--rank', '8', '--targets', 'to_q'),
      /--rank: the run recorded 4, this command gives 8; --targets: the run recorded "to_q,to_k,to_v,proj_out", this command gives "to_q"/);
    const again = x2i('train', 'lora', ...args, '--steps', '5', '--resume');
    expect(again.status, again.stderr).toBe(0);
    expect(again.stderr).toMatch(/5\/5 loss \d/);
    expect(trainerJson(out)).toMatchObject({ step: 5, microStep: 5 });
    expect(stepFolders(out)).toEqual(['step-000004-4', 'step-000005-5']);
    expect(metrics(out).map((m) => m.step)).toEqual([1, 2, 3, 4, 5]);
    // the trained adapter, from the run folder (its latest checkpoint) or its file
    for (const l of [`${out}:0.8`, path.join(out, 'step-000005-5', 'lora.safetensors')]) {
      const g = gen(vae8, '--height', '32', '--width', '32', '--lora', l, '--out', path.join(tmp, 'trained-lora.png'));
      expect(g.status, g.stderr).toBe(0);
    }
  });

  it('train lightcontrol on a JSONL of targets and sources: lightcontrol.safetensors, --keep-last 1, --resume, --quiet, the run loads in generate', () => {
    const out = path.join(tmp, 'run-lc');
    const args = [...base(out, path.join(tmp, 'pairs', 'manifest.jsonl')), '--lightcontrol', lightcontrol, '--keep-last', '1', '--checkpoint-every', '1'];
    const r = x2i('train', 'lightcontrol', ...args, '--steps', '2');
    expect(r.status, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/2\/2 loss \d.* lr 5\.00e-6/);  // default lr 1e-5, cosine: half-way after step 1
    expect(trainerJson(out)).toMatchObject({ step: 2, kind: 'LightControlTrainer', options: { hint: 'source', keepLast: 1 },
      config: { hint: 'source', lr: 1e-5, 'keep-last': 1 } });
    expect(stepFolders(out)).toEqual(['step-000002-2']);  // step-000001-1 removed
    expect(fs.existsSync(path.join(out, 'step-000002-2', 'lightcontrol.safetensors'))).toBe(true);
    userError(x2i('train', 'lightcontrol', ...args, '--steps', '3', '--resume', '--hint', 'target'),
      /--hint: the run recorded "source", this command gives "target" \(give the recorded values, or --force-resume/);
    const again = x2i('train', 'lightcontrol', ...args, '--steps', '3', '--resume', '--quiet');
    expect(again.status, again.stderr).toBe(0);
    expect(chatter(again.stderr)).toEqual([]);
    expect(trainerJson(out)).toMatchObject({ step: 3, microStep: 3 });
    expect(stepFolders(out)).toEqual(['step-000003-3']);
    expect(metrics(out).map((m) => m.step)).toEqual([1, 2, 3]);
    const g = gen(vae8, '--height', '32', '--width', '32', '--lightcontrol', out, '--control-image', img, '--out', path.join(tmp, 'trained-lc.png'));
    expect(g.status, g.stderr).toBe(0);
  });

  it('bad options: exit 2 naming the option, no run folder written', () => {
    const out = path.join(tmp, 'never-run');
    const folder = path.join(tmp, 'folder');
    const cases: [string, string[], RegExp][] = [
      ['lora', ['--rank', '0'], /--rank: expected a positive integer/],
      ['lora', ['--alpha=-1'], /x2i train lora: --alpha: expected a finite number > 0/],
      ['lora', ['--targets', 'to_q,,to_k'], /--targets: expected a comma list/],
      ['lora', ['--steps', '1.5'], /--steps: expected a positive integer/],
      ['lora', ['--lr', 'abc'], /--lr: expected a number, got "abc"/],
      ['lightcontrol', ['--hint', 'both'], /--hint: expected source or target, got "both"/],
      ['lightcontrol', ['--lightcontrol', path.join(tmp, 'nope')], /--lightcontrol: .*nope: no such file/],
      ['lightcontrol', ['--rank', '4'], /x2i train lightcontrol: unknown option '--rank' \(see x2i train lightcontrol --help\)/],
      ['lora', ['--hint', 'source'], /unknown option '--hint' \(see x2i train lora --help\)/],
      ['lora', ['--rank', '-4'], /--rank: expected a positive integer .*got -4/],
      ['lora', ['--seed', '-1'], /--seed: expected a non-negative integer .*got -1/],
      ['lora', ['--config', path.join(tmp, 'nope.json')], /--config: .*nope\.json: no such file/],
    ];
    for (const [kind, extra, re] of cases) userError(x2i('train', kind, ...base(out, folder), ...extra), re, `${kind} ${extra.join(' ')}`);
    userError(x2i('train', 'lora', ...base(out, path.join(tmp, 'nope.jsonl'))), /--data: .*nope\.jsonl: no such file/);
    userError(x2i('train', 'lora', ...base(out, path.join(tmp, 'shard-{0..1}.tar'))), /--data: .*shard-0\.tar: no such file/);
    userError(x2i('train', 'lora', ...base(out, mask)), /--data: expected a folder, a \.jsonl file or \.tar shards/);
    userError(x2i('train', 'lora', '--flux', flux), /--flux, --out and --data are required/);
    expect(fs.existsSync(out)).toBe(false);
  });
});
