// fromConfig: models of a config with random weights (native RandomInit), as the real-size benchmarks build them.
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { AlignNet, AutoencoderKL, ClipTextEncoder, T5Encoder, Tensor, cuda, memory, randn } from '../../lib/index.js';
import { golden } from '../helpers.js';

const config = (name: string) => JSON.parse(fs.readFileSync(path.join(golden, name, 'config.json'), 'utf8'));
const ids = (n: number, vocab: number) => Tensor.fromArray(BigInt64Array.from({ length: n }, (_, i) => BigInt((i * 7 + 3) % vocab)), [1, n]);
const values = async (t: Tensor) => Array.from(await t.toArray() as Float32Array);

describe('fromConfig (random weights)', () => {
  it('T5Encoder: the golden config, deterministic in the seed, finite, the shapes of fromPretrained', async () => {
    const c = config('t5-encoder');
    using a = await T5Encoder.fromConfig(c, { seed: 1 });
    using b = await T5Encoder.fromConfig(c, { seed: 1 });
    using d = await T5Encoder.fromConfig(c, { seed: 2 });
    using loaded = await T5Encoder.fromPretrained(path.join(golden, 't5-encoder'));
    using x = ids(9, c.vocab_size);
    const [ra, rb, rd, rl] = await Promise.all([a, b, d, loaded].map((m) => m.forward({ inputIds: x })));
    expect(ra.lastHiddenState.shape).toEqual(rl.lastHiddenState.shape);
    expect(ra.hiddenStates.shape).toEqual(rl.hiddenStates.shape);
    const va = await values(ra.lastHiddenState);
    expect(va.every(Number.isFinite)).toBe(true);
    expect(await values(rb.lastHiddenState)).toEqual(va);
    expect(await values(rd.lastHiddenState)).not.toEqual(va);
    for (const r of [ra, rb, rd, rl]) r.lastHiddenState.dispose(), r.hiddenStates.dispose();
  });

  it('ClipTextEncoder: pooled output and states of the golden config', async () => {
    const c = config('clip-text');
    using m = await ClipTextEncoder.fromConfig(c, { seed: 5 });
    using x = ids(7, (c.text_config ?? c).vocab_size);
    const r = await m.forward({ inputIds: x });
    expect(r.pooledOutput.shape).toEqual([1, (c.text_config ?? c).hidden_size]);
    expect((await values(r.pooledOutput)).every(Number.isFinite)).toBe(true);
    for (const t of [r.lastHiddenState, r.pooledOutput, r.hiddenStates]) t.dispose();
  });

  it('AutoencoderKL: encoder and decoder of the golden config (FLUX defaults for the rest)', async () => {
    const c = config('vae');
    using m = await AutoencoderKL.fromConfig(c, { seed: 0 });
    expect(m.scalingFactor).toBe(c.scaling_factor ?? 0.3611);
    using img = await randn([1, 3, 16, 16], { seed: 1 });
    using z = await m.encode(img);
    expect(z.shape[1]).toBe(c.latent_channels);
    using y = await m.decode(z);
    expect(y.shape).toEqual([1, 3, 16, 16]);
    expect((await values(y)).every(Number.isFinite)).toBe(true);
    await expect(AutoencoderKL.fromConfig({ block_out_channels: 'wide' })).rejects.toThrow(/block_out_channels/);
  });

  it('AlignNet: the conv variant of the given sizes, trainable, deterministic', async () => {
    const cfg = { layers: 4, inputDim: 16, sequenceDim: 12, pooledDim: 8 };
    using a = await AlignNet.fromConfig(cfg, { seed: 3 });
    using b = await AlignNet.fromConfig(cfg, { seed: 3 });
    expect(a.info).toMatchObject({ variant: 'conv', layers: 4, inputDim: 16, sequenceDim: 12, pooledDim: 8, kernelSize: 5 });
    using h = await randn([2, 4, 5, 16], { seed: 9 });
    const [ra, rb] = await Promise.all([a.forward(h), b.forward(h)]);
    expect(ra.encoderHiddenStates.shape).toEqual([2, 5, 12]);
    expect(ra.pooledProjections.shape).toEqual([2, 8]);
    expect(await values(rb.encoderHiddenStates)).toEqual(await values(ra.encoderHiddenStates));
    for (const r of [ra, rb]) r.encoderHiddenStates.dispose(), r.pooledProjections.dispose();
    await expect(AlignNet.fromConfig({ kernelSize: 2 })).rejects.toThrow(/kernelSize.*odd/);
    await expect(AlignNet.fromConfig({ layers: 0 })).rejects.toThrow(/'layers' must be a positive integer/);
  });

  it('configs with missing fields and bad seeds are clear errors; nothing leaks', async () => {
    const before = memory().tensors;
    await expect(T5Encoder.fromConfig({ d_model: 8 })).rejects.toThrow(/field 'vocab_size' is missing/);
    await expect(ClipTextEncoder.fromConfig({ ...config('clip-text'), hidden_act: 'relu' })).rejects.toThrow(/hidden_act 'relu'/);
    await expect(T5Encoder.fromConfig(config('t5-encoder'), { seed: -1 })).rejects.toThrow(/seed/);
    expect(memory().tensors).toBe(before);
  });

  it('cuda.memory is a clear error without a CUDA device', () => {
    if (cuda.isAvailable()) return;
    expect(() => cuda.memory()).toThrow(/CUDA is not available/);
    expect(() => cuda.setMemoryLimit(2 ** 30)).toThrow(/CUDA is not available/);
  });

  it('cuda.setMemoryLimit checks its bytes before anything else', () => {
    for (const bad of [0, -1, Number.NaN, Infinity, '1GB'])
      expect(() => cuda.setMemoryLimit(bad as number)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG', message: expect.stringMatching(/positive number of bytes or null/) }));
    expect(() => cuda.setMemoryLimit(2 ** 30, 'gpu')).toThrow(/'cpu', 'cuda' or 'cuda:N'/);
  });
});
