import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as x2i from '../../lib/index.js';
import { FluxTransformer, Tensor } from '../../lib/index.js';
import { expectGoldenLoss, fluxInputsOf, golden, relErr, settleGc, tmpDir } from '../helpers.js';

const dir = tmpDir();
const folder = path.join(golden, 'flux-transformer');
const bflFile = path.join(folder, 'flux-bfl.safetensors');
const axes = { axes_dims_rope: [4, 6, 6] };
let io: Record<string, Tensor>;
let inputs: x2i.FluxInputs;

async function writeVariant(name: string, edit: (w: Record<string, Tensor>) => void | Promise<void>): Promise<string> {
  const w = await x2i.loadSafetensors(bflFile);
  await edit(w);
  const file = path.join(dir, name);
  await x2i.saveSafetensors(file, w);
  for (const t of Object.values(w)) t.dispose();
  return file;
}

beforeAll(async () => {
  io = await x2i.loadSafetensors(path.join(folder, 'io.safetensors'));
  inputs = fluxInputsOf(io);
});
afterAll(() => {
  for (const t of Object.values(io)) t.dispose();
  fs.rmSync(dir, { recursive: true, force: true });
});

describe('FluxTransformer matches the golden reference', () => {
  for (const [name, p, opts] of [['diffusers folder', folder, {}], ['BFL single file', bflFile, { config: axes }],
    ['diffusers folder, reference precision', folder, { precision: 'reference' }]] as const) {
    it(`${name}: sample and all three captures`, async () => {
      using m = await FluxTransformer.fromPretrained(p, opts);
      expect(m.layout).toBe(name.startsWith('BFL') ? 'bfl' : 'diffusers');
      expect(m.precision).toBe(name.includes('reference') ? 'reference' : 'fast');
      expect(m.config.num_layers).toBe(2);
      expect(m.config.num_attention_heads).toBe(2);
      const r = await m.forward(inputs, { capture: true });
      expect(await relErr(r.sample, io.sample)).toBeLessThan(1e-4);
      expect(await relErr(r.captures!.doubleImg, io['capture.double_img'])).toBeLessThan(1e-4);
      expect(await relErr(r.captures!.doubleTxt, io['capture.double_txt'])).toBeLessThan(1e-4);
      expect(await relErr(r.captures!.single, io['capture.single'])).toBeLessThan(1e-4);
      r.sample.dispose();
      for (const t of Object.values(r.captures!)) t.dispose();
    });
  }

  it('without captures (single blocks write attention and MLP side by side, no concatenation): the same sample bit for bit', async () => {
    using m = await FluxTransformer.fromPretrained(folder);
    const plain = await m.forward(inputs);
    const captured = await m.forward(inputs, { capture: true });
    expect(plain.captures).toBeUndefined();
    expect(await relErr(plain.sample, io.sample)).toBeLessThan(1e-4);
    expect(await plain.sample.toArray()).toEqual(await captured.sample.toArray());
    plain.sample.dispose();
    captured.sample.dispose();
    for (const t of Object.values(captured.captures!)) t.dispose();
  });

  it('counts its parameters: every tensor of the checkpoint', async () => {
    using m = await FluxTransformer.fromPretrained(bflFile, { config: axes });
    const w = await x2i.loadSafetensors(bflFile);
    const n = Object.values(w).reduce((acc, t) => acc + t.shape.reduce((p, d) => p * d, 1), 0);
    for (const t of Object.values(w)) t.dispose();
    expect(m.parameters).toBe(n);
  });

  it('both layouts give identical outputs', async () => {
    using a = await FluxTransformer.fromPretrained(folder);
    using b = await FluxTransformer.fromPretrained(bflFile, { config: axes });
    const [ra, rb] = [await a.forward(inputs, { capture: true }), await b.forward(inputs, { capture: true })];
    expect(await ra.sample.toArray()).toEqual(await rb.sample.toArray());
    expect(await ra.captures!.single.toArray()).toEqual(await rb.captures!.single.toArray());
  });

  it('ComfyUI-prefixed single files load the same', async () => {
    const file = await writeVariant('comfy.safetensors', (w) => {
      for (const k of Object.keys(w)) { w[`model.diffusion_model.${k}`] = w[k]; delete w[k]; }
    });
    using m = await FluxTransformer.fromPretrained(file, { config: axes });
    const r = await m.forward(inputs);
    expect(await relErr(r.sample, io.sample)).toBeLessThan(1e-4);
  });

  it('runs schnell-style checkpoints (no guidance embedder)', async () => {
    const file = await writeVariant('schnell.safetensors', (w) => {
      for (const k of Object.keys(w)) if (k.startsWith('guidance_in.')) { w[k].dispose(); delete w[k]; }
    });
    using m = await FluxTransformer.fromPretrained(file, { config: axes });
    expect(m.config.guidance_embeds).toBe(false);
    const { guidance: _g, ...noGuidance } = inputs;
    const r = await m.forward(noGuidance);
    expect(r.sample.shape).toEqual([2, 64, 16]);
    expect(Array.from(await r.sample.toArray() as Float32Array).every(Number.isFinite)).toBe(true);
  });
});

describe('FluxTransformer.denoise', () => {
  it('is Euler steps over forward; stepLatents only when asked', async () => {
    using m = await FluxTransformer.fromPretrained(folder);
    const { timestep: _t, ...ins } = inputs;
    const [ts, sig] = [[1000, 500], [1, 0.5, 0]];
    const a = await m.denoise(ins, ts, sig);
    const b = await m.denoise(ins, ts, sig, { returnStepLatents: false });
    expect(b.stepLatents).toBeUndefined();
    expect(a.stepLatents.shape).toEqual([2, ...a.latents.shape]);
    expect(await b.latents.toArray()).toEqual(await a.latents.toArray());
    // by hand: x1 = x0 − 0.5·v(x0, t=1), x2 = x1 − 0.5·v(x1, t=0.5)
    const B = inputs.hiddenStates.shape[0];
    let x = Float32Array.from(await inputs.hiddenStates.toArray() as Float32Array);
    for (const [i, t] of [1, 0.5].entries()) {
      using tt = Tensor.fromArray(new Float32Array(B).fill(t), [B]);
      using xt = Tensor.fromArray(x, inputs.hiddenStates.shape);
      const r = await m.forward({ ...ins, hiddenStates: xt, timestep: tt });
      const v = await r.sample.toArray() as Float32Array;
      r.sample.dispose();
      x = x.map((xi, k) => xi + (sig[i + 1] - sig[i]) * v[k]);
    }
    using want = Tensor.fromArray(x, inputs.hiddenStates.shape);
    expect(await relErr(b.latents, want)).toBeLessThan(1e-5);
    for (const t of [a.latents, a.stepLatents, b.latents]) t.dispose();
  });
});

describe('the X2I distillation gradient through the frozen transformer', () => {
  it('matches the golden loss, every term and grad.student.*', async () => {
    const d = await x2i.loadSafetensors(path.join(golden, 'x2i-distill-loss', 'io.safetensors'));
    using m = await FluxTransformer.fromPretrained(folder);
    const base = { hiddenStates: d.hidden_states, timestep: d.timestep, guidance: d.guidance, imgIds: d.img_ids, txtIds: d.txt_ids };
    const teacher = { ...base, encoderHiddenStates: d['teacher.encoder_hidden_states'], pooledProjections: d['teacher.pooled_projections'] };
    const student = { ...base, encoderHiddenStates: d['student.encoder_hidden_states'], pooledProjections: d['student.pooled_projections'] };
    const t = await m.forward(teacher, { capture: true });
    const s = await m.forward(student, { capture: true });
    const r = await x2i.distillationLoss(t.captures!, s.captures!, { returnGrad: true });
    await expectGoldenLoss(r, d);
    const fb = await m.forwardBackward(student, { gradCaptures: r.grads });
    expect(await relErr(fb.grad.encoderHiddenStates, d['grad.student.encoder_hidden_states'])).toBeLessThan(1e-3);
    expect(await relErr(fb.grad.pooledProjections, d['grad.student.pooled_projections'])).toBeLessThan(1e-3);
    for (const x of Object.values(d)) x.dispose();
  });

  it('activation checkpointing gives the same gradients', async () => {
    using m = await FluxTransformer.fromPretrained(folder, { dtype: 'float64' });
    const f64 = async (t: Tensor) => t.to({ dtype: 'float64' });
    const ins = { ...inputs, encoderHiddenStates: await f64(inputs.encoderHiddenStates), pooledProjections: await f64(inputs.pooledProjections) };
    const caps = (await m.forward(ins, { capture: true })).captures!;
    const gradCaptures = { doubleImg: await x2i.randn(caps.doubleImg.shape as number[], { seed: 1, dtype: 'float64' }),
      doubleTxt: await x2i.randn(caps.doubleTxt.shape as number[], { seed: 2, dtype: 'float64' }),
      single: await x2i.randn(caps.single.shape as number[], { seed: 3, dtype: 'float64' }) };
    using gradSample = await x2i.randn([2, 64, 16], { seed: 4, dtype: 'float64' });
    const plain = await m.forwardBackward(ins, { gradSample, gradCaptures });
    const ckpt = await m.forwardBackward(ins, { gradSample, gradCaptures, checkpoint: true });
    expect(await x2i.relativeError(ckpt.grad.encoderHiddenStates, plain.grad.encoderHiddenStates)).toBeLessThan(1e-12);
    expect(await x2i.relativeError(ckpt.grad.pooledProjections, plain.grad.pooledProjections)).toBeLessThan(1e-12);
    expect(await x2i.relativeError(ckpt.sample, plain.sample)).toBe(0);
    const onlySingle = await m.forwardBackward(ins, { gradCaptures: { single: gradCaptures.single }, checkpoint: true });
    const onlySinglePlain = await m.forwardBackward(ins, { gradCaptures: { single: gradCaptures.single } });
    expect(await x2i.relativeError(onlySingle.grad.pooledProjections, onlySinglePlain.grad.pooledProjections)).toBeLessThan(1e-12);
  });

  it('forwardBackward equals float64 finite differences (output gradient)', async () => {
    using m = await FluxTransformer.fromPretrained(folder, { dtype: 'float64' });
    const f64 = async (t: Tensor) => t.to({ dtype: 'float64' });
    const ins = { ...inputs, encoderHiddenStates: await f64(inputs.encoderHiddenStates), pooledProjections: await f64(inputs.pooledProjections) };
    using gSample = await x2i.randn([2, 64, 16], { seed: 11, dtype: 'float64' });
    using u = await x2i.randn([2, 24], { seed: 12, dtype: 'float64' });
    const { grad } = await m.forwardBackward(ins, { gradSample: gSample });
    const g = await grad.pooledProjections.toArray() as Float64Array;
    const uv = await u.toArray() as Float64Array;
    const gs = await gSample.toArray() as Float64Array;
    const p0 = await ins.pooledProjections.toArray() as Float64Array;
    const f = async (eps: number) => {
      using p = Tensor.fromArray(p0.map((v, i) => v + eps * uv[i]), [2, 24]);
      const out = await m.forward({ ...ins, pooledProjections: p });
      const s = await out.sample.toArray() as Float64Array;
      out.sample.dispose();
      return s.reduce((acc, v, i) => acc + v * gs[i], 0);
    };
    const eps = 1e-6;
    const fd = (await f(eps) - await f(-eps)) / (2 * eps);
    const analytic = g.reduce((acc, v, i) => acc + v * uv[i], 0);
    expect(Math.abs(fd - analytic) / Math.abs(analytic)).toBeLessThan(1e-6);
  });
});

describe('FluxTransformer errors name the tensor, the expected and the found shape', () => {
  let m: FluxTransformer;
  beforeAll(async () => { m = await FluxTransformer.fromPretrained(folder); });
  afterAll(() => m.dispose());

  const cases: [string, () => Promise<Partial<x2i.FluxInputs>>, RegExp][] = [
    ['latent channels', async () => ({ hiddenStates: await x2i.randn([2, 64, 15]) }), /hiddenStates has shape \[2, 64, 15\], expected \[\*, \*, 16\]/],
    ['text width', async () => ({ encoderHiddenStates: await x2i.randn([2, 7, 31]) }), /encoderHiddenStates has shape \[2, 7, 31\], expected \[2, \*, 32\]/],
    ['batch', async () => ({ pooledProjections: await x2i.randn([3, 24]) }), /pooledProjections has shape \[3, 24\], expected \[2, 24\]/],
    ['image id length', async () => ({ imgIds: await x2i.randn([63, 3]) }), /imgIds has shape \[63, 3\], expected \[64, 3\]/],
    ['text id length', async () => ({ txtIds: await x2i.randn([8, 3]) }), /txtIds has shape \[8, 3\], expected \[7, 3\]/],
    ['timestep', async () => ({ timestep: await x2i.randn([5]) }), /timestep has shape \[5\], expected \[2\]/],
    ['missing guidance', async () => ({ guidance: undefined }), /guidance embedder .*pass guidance/],
    ['integer latents', async () => ({ hiddenStates: Tensor.fromArray(new Int32Array(2 * 64 * 16), [2, 64, 16]) }), /must be floating point, found int32/],
  ];
  for (const [name, make, msg] of cases) {
    it(name, async () => {
      const bad = await make();
      await expect(m.forward({ ...inputs, ...bad } as x2i.FluxInputs)).rejects.toThrow(msg);
      for (const t of Object.values(bad)) t?.dispose();
    });
  }

  it('checkpoint: missing, unexpected and wrongly shaped tensors', async () => {
    await settleGc();
    const base = x2i.memory().tensors;
    const missing = await writeVariant('missing.safetensors', (w) => { w['single_blocks.1.linear2.bias'].dispose(); delete w['single_blocks.1.linear2.bias']; });
    await expect(FluxTransformer.fromPretrained(missing, { config: axes })).rejects.toMatchObject({
      code: 'ERR_CHECKPOINT_KEY', message: expect.stringMatching(/missing tensor 'single_blocks\.1\.linear2\.bias' \(expected shape \[32\]\)/) });
    const extra = await writeVariant('extra.safetensors', async (w) => { w['foo.weight'] = await x2i.randn([2]); });
    await expect(FluxTransformer.fromPretrained(extra, { config: axes })).rejects.toThrow(/1 unexpected tensor\(s\) .*'foo\.weight'/);
    const shape = await writeVariant('shape.safetensors', async (w) => { w['double_blocks.0.img_mlp.0.weight'].dispose(); w['double_blocks.0.img_mlp.0.weight'] = await x2i.randn([63, 32]); });
    await expect(FluxTransformer.fromPretrained(shape, { config: axes })).rejects.toMatchObject({ code: 'ERR_CHECKPOINT_SHAPE',
      message: expect.stringMatching(/'double_blocks\.0\.img_mlp\.0\.weight' has shape \[63, 32\], expected \[128, 32\]/) });
    await settleGc();
    expect(x2i.memory().tensors).toBe(base); // failed loads leak nothing
  });

  it('config: RoPE axes a BFL file cannot tell, unknown keys, bad files', async () => {
    await expect(FluxTransformer.fromPretrained(bflFile)).rejects.toThrow(/axes_dims_rope \[16, 56, 56\] sum to 128 but the head dim is 16/);
    await expect(FluxTransformer.fromPretrained(bflFile, { config: { ...axes, nope: 1 } as x2i.FluxConfig })).rejects.toThrow(/unknown FluxTransformer config key 'nope'/);
    await expect(FluxTransformer.fromPretrained(path.join(golden, 'vae', 'diffusion_pytorch_model.safetensors'))).rejects.toThrow(/not a FLUX transformer checkpoint/);
    await expect(FluxTransformer.fromPretrained(path.join(dir, 'none'))).rejects.toMatchObject({ code: 'ERR_FILE_NOT_FOUND' });
  });

  it('a disposed model rejects calls; calls on one model are serialised', async () => {
    const n = await FluxTransformer.fromPretrained(folder);
    const [a, b] = await Promise.all([n.forward(inputs), n.forward(inputs)]);
    expect(await a.sample.toArray()).toEqual(await b.sample.toArray());
    n.dispose();
    await expect(n.forward(inputs)).rejects.toBeInstanceOf(x2i.DisposedError);
  });
});

describe('distillationLoss', () => {
  it('skips and counts a NaN layer instead of propagating it', async () => {
    const mk = (seed: number, n: number) => x2i.randn([1, 2, n, 32], { seed });
    const t = { doubleImg: await mk(1, 64), doubleTxt: await mk(2, 7), single: await mk(3, 71) };
    const sImg = await t.doubleImg.toArray() as Float32Array;
    const bad = sImg.map((v, i) => (i === 64 * 32 + 5 ? NaN : v + 0.1 * Math.sin(i)));
    const s = { doubleImg: Tensor.fromArray(bad, [1, 2, 64, 32]), doubleTxt: await mk(5, 7), single: await mk(6, 71) };
    const r = await x2i.distillationLoss(t, s, { returnGrad: true });
    expect(r.skipped).toBe(1);
    expect(Number.isNaN(r.terms.doubleImg[1])).toBe(true);
    expect(Number.isFinite(r.loss)).toBe(true);
    const sum = [r.terms.doubleImg[0], ...r.terms.doubleTxt, ...r.terms.single].reduce((a, b) => a + b, 0);
    expect(r.loss).toBeCloseTo(sum, 10);
    const g = await r.grads!.doubleImg.toArray() as Float32Array;
    expect(g.subarray(64 * 32).every((v) => v === 0)).toBe(true);
    await expect(x2i.distillationLoss(t, s, { divergence: 'nope' as x2i.Divergence })).rejects.toThrow(/unknown divergence/);
  });
});

describe('FluxTransformer.trainStep (training the transformer itself)', () => {
  const config = { in_channels: 16, num_layers: 1, num_single_layers: 1, attention_head_dim: 16, num_attention_heads: 2,
    joint_attention_dim: 32, pooled_projection_dim: 24, guidance_embeds: true, axes_dims_rope: [4, 6, 6] };
  const batch = async () => {
    const N = 16, T = 4;
    const ids = new Float32Array(N * 3);
    for (let n = 0; n < N; n++) { ids[3 * n + 1] = Math.floor(n / 4); ids[3 * n + 2] = n % 4; }
    return {
      inputs: { hiddenStates: await x2i.randn([2, N, 16], { seed: 1 }), encoderHiddenStates: await x2i.randn([2, T, 32], { seed: 2 }),
        pooledProjections: await x2i.randn([2, 24], { seed: 3 }), timestep: x2i.Tensor.fromArray(new Float32Array([0.3, 0.8]), [2]),
        guidance: x2i.Tensor.fromArray(new Float32Array([3.5, 3.5]), [2]), imgIds: x2i.Tensor.fromArray(ids, [N, 3]),
        txtIds: x2i.Tensor.fromArray(new Float32Array(T * 3), [T, 3]) },
      target: await x2i.randn([2, N, 16], { seed: 4 }),
    };
  };

  it('AdamW on every weight fits a fixed batch; the weights are frozen again between steps', async () => {
    using m = await FluxTransformer.fromConfig(config, { seed: 0 });
    const { inputs, target } = await batch();
    const before = (await m.forward(inputs)).sample;
    const losses: number[] = [];
    for (let i = 0; i < 40; i++) losses.push((await m.trainStep(inputs, target, { lr: 3e-3, weightDecay: 0 })).loss);
    expect(losses[39]).toBeLessThan(0.5 * losses[0]);
    const after = (await m.forward(inputs)).sample;
    expect(await x2i.relativeError(after, before)).toBeGreaterThan(1e-2);
    // the frozen-weight paths still work (no weight gradients are asked of them)
    const fb = await m.forwardBackward(inputs, { gradSample: target });
    expect(fb.grad.encoderHiddenStates.shape).toEqual([2, 4, 32]);
    const r = await m.trainStep(inputs, target);
    expect(r.step).toBe(41);
    expect(Number.isFinite(r.gradNorm)).toBe(true);
  });

  it('errors: a target of another shape, a bf16 model, bad options', async () => {
    using m = await FluxTransformer.fromConfig(config, { seed: 0 });
    const { inputs } = await batch();
    await expect(m.trainStep(inputs, await x2i.randn([2, 15, 16]))).rejects.toThrow(/trainStep: target \[2, 15, 16\] for a velocity of \[2, 16, 16\]/);
    await expect(m.trainStep(inputs, await x2i.randn([2, 16, 16]), { lr: -1 })).rejects.toThrow(/lr > 0/);
    using b = await FluxTransformer.fromConfig(config, { seed: 0, dtype: 'bfloat16' });
    await expect(b.trainStep(inputs, await x2i.randn([2, 16, 16]))).rejects.toThrow(/trained in float32/);
  });
});

describe('timestepPrecision (t·1000 and guidance·1000 into the sinusoids)', () => {
  it("'float32' is exact where bf16 rounds them (t = 0.75 → 752, guidance 3.5 → 3504), and equal where bf16 holds them", async () => {
    const dir = path.join(golden, 'flux-transformer');
    using ref = await FluxTransformer.fromPretrained(dir);  // float32
    using parity = await FluxTransformer.fromPretrained(dir, { dtype: 'bfloat16' });
    using exact = await FluxTransformer.fromPretrained(dir, { dtype: 'bfloat16', timestepPrecision: 'float32' });
    const B = inputs.hiddenStates.shape[0];
    const at = (t: number, g: number) => ({ ...inputs, timestep: x2i.Tensor.fromArray(new Float32Array(B).fill(t), [B]),
      guidance: x2i.Tensor.fromArray(new Float32Array(B).fill(g), [B]) });
    const err = async (m: FluxTransformer, i: x2i.FluxInputs) =>
      x2i.relativeError(await (await m.forward(i)).sample.to({ dtype: 'float32' }), (await ref.forward(i)).sample);
    const odd = at(0.75, 3.5);
    const [eParity, eExact] = [await err(parity, odd), await err(exact, odd)];
    expect(eExact).toBeLessThan(eParity);
    const round = at(1, 4);  // 1000 and 4000: bf16 holds them
    const [a, b] = [(await parity.forward(round)).sample, (await exact.forward(round)).sample];
    expect(await x2i.relativeError(a, b)).toBe(0);
    expect(exact.precision).toBe('fast');
    await expect(FluxTransformer.fromPretrained(dir, { timestepPrecision: 'half' as never })).rejects.toThrow(/timestepPrecision/);
  });
});

