import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as x2i from '../../lib/index.js';
import { AlignNet, AutoencoderKL, FluxTransformer, LightControl, LightControlTrainer, LoraTrainer, QwenVLEncoder, Tensor } from '../../lib/index.js';
import { golden, tmpDir } from '../helpers.js';

const dir = tmpDir();
const fluxDir = path.join(golden, 'flux-transformer');
const SIDE = 32;        // pixels: a 4 × 4 latent grid, 2 × 2 = 4 packed tokens of 16 channels
const N = 4, C = 16, T = 7;

/** A sample with precomputed packed latents and conditioning (no VAE, no encoders). */
async function sample(seed: number, hint = false): Promise<x2i.FineTuneSample> {
  const s: x2i.FineTuneSample = {
    latents: await x2i.randn([1, N, C], { seed }),
    conditioning: { encoderHiddenStates: await x2i.randn([1, T, 32], { seed: seed + 1 }), pooledProjections: await x2i.randn([1, 24], { seed: seed + 2 }) },
  };
  if (hint) {  // a source image: a gradient whose direction depends on the seed
    const data = new Uint8Array(SIDE * SIDE * 3);
    for (let y = 0; y < SIDE; y++) for (let x = 0; x < SIDE; x++) for (let c = 0; c < 3; c++)
      data[(y * SIDE + x) * 3 + c] = (seed % 2 ? x : y) * 8 + c * 20;
    s.references = [{ data, width: SIDE, height: SIDE }];
  }
  return s;
}

let data: x2i.FineTuneSample[];
let controlData: x2i.FineTuneSample[];
const common = { height: SIDE, width: SIDE, seed: 3 };

beforeAll(async () => {
  data = [await sample(10), await sample(20)];
  controlData = [await sample(10, true), await sample(21, true)];
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

describe('LoraTrainer', () => {
  it('lowers the flow-matching loss; the adapter is all that changes', async () => {
    using flux = await FluxTransformer.fromPretrained(fluxDir);
    using trainer = new LoraTrainer({ transformer: flux }, { ...common, lr: 2e-2, weightDecay: 0, lora: { rank: 4, seed: 1 } });
    const before = await trainer.evaluate(data, { loraScales: {} }).catch(() => NaN);  // no adapter yet
    const infos = await trainer.fit({ data, steps: 40 });
    expect(infos).toHaveLength(40);
    expect(infos.every((i) => Number.isFinite(i.loss) && i.gradNorm !== undefined)).toBe(true);
    const name = trainer.adapterName!;
    const after = await trainer.evaluate(data);
    const without = await trainer.evaluate(data, { loraScales: { [name]: 0 } });
    expect(Number.isNaN(before) || Math.abs(before - without) < 1e-6 * without).toBe(true);  // the frozen base is untouched
    expect(after).toBeLessThan(0.8 * without);
  });

  it('gradient accumulation: one optimizer step per N micro-batches; clipping bounds the step', async () => {
    using flux = await FluxTransformer.fromPretrained(fluxDir);
    using trainer = new LoraTrainer({ transformer: flux }, { ...common, gradientAccumulation: 3, lora: { rank: 2 } });
    const infos = await trainer.fit({ data, steps: 6 });
    expect(infos.map((i) => i.gradNorm !== undefined)).toEqual([false, false, true, false, false, true]);
    expect(trainer.step).toBe(2);
    expect(trainer.microStep).toBe(6);
  });

  it('activation checkpointing gives the same training (the recomputed blocks send the adapter its gradients)', async () => {
    const losses: number[][] = [];
    for (const checkpoint of [false, true]) {
      using flux = await FluxTransformer.fromPretrained(fluxDir);
      using trainer = new LoraTrainer({ transformer: flux }, { ...common, checkpoint, lr: 1e-2, lora: { rank: 4, seed: 5 } });
      losses.push((await trainer.fit({ data, steps: 5 })).map((i) => i.loss));
    }
    losses[0].forEach((l, k) => expect(Math.abs(l - losses[1][k])).toBeLessThan(1e-6 * l));
    expect(losses[0][4]).not.toBe(losses[0][0]);
  });

  it('save → resume continues with the same losses; the saved adapter reloads bit-identical', async () => {
    const run = path.join(dir, 'lora-run');
    const opts = { ...common, lr: 1e-2, lora: { rank: 4, seed: 2 } };
    let tail: number[];
    let saved: { target: string; row: number; A: Float32Array; B: Float32Array }[];
    {
      using flux = await FluxTransformer.fromPretrained(fluxDir);
      using a = new LoraTrainer({ transformer: flux }, opts);
      await a.fit({ data, steps: 4, checkpointDir: run });
      const w = await flux.loraWeights(a.adapterName!);
      saved = await Promise.all(w.map(async (p) => ({ target: p.target, row: p.row, A: await p.A.toArray() as Float32Array,
        B: await p.B.toArray() as Float32Array })));
      for (const p of w) p.A.dispose(), p.B.dispose();
      tail = (await a.fit({ data, steps: 3 })).map((i) => i.loss);
    }
    const ckpt = LoraTrainer.latestCheckpoint(run);
    expect(fs.readdirSync(ckpt).sort()).toEqual(['lora.safetensors', 'optimizer.safetensors']);
    {
      using flux = await FluxTransformer.fromPretrained(fluxDir);
      using b = new LoraTrainer({ transformer: flux }, opts);
      await b.resume(run);
      expect([b.step, b.microStep]).toEqual([4, 4]);
      const again = (await b.fit({ data, steps: 3 })).map((i) => i.loss);
      expect(again).toEqual(tail);
    }
    {
      using flux = await FluxTransformer.fromPretrained(fluxDir);
      const name = await flux.loadLora(path.join(ckpt, 'lora.safetensors'));
      const w = await flux.loraWeights(name);
      expect(w.map((p) => [p.target, p.row])).toEqual(saved.map((p) => [p.target, p.row]));
      for (const [k, p] of w.entries()) {
        expect(await p.A.toArray()).toEqual(saved[k].A);
        expect(await p.B.toArray()).toEqual(saved[k].B);
        p.A.dispose(), p.B.dispose();
      }
    }
    // a changed file is refused on resume
    fs.appendFileSync(path.join(ckpt, 'optimizer.safetensors'), Buffer.from([0]));
    using flux = await FluxTransformer.fromPretrained(fluxDir);
    using c = new LoraTrainer({ transformer: flux }, opts);
    await expect(c.resume(run)).rejects.toMatchObject({ code: 'ERR_CHECKSUM' });
  });

  it('IT2I through the student: reference images and the paper template reach the MLLM, AlignNet stays frozen', async () => {
    const r = (shape: number[], seed: number) => x2i.randn(shape, { seed });
    await x2i.saveSafetensors(path.join(dir, 'alignnet.safetensors'), {
      'conv.weight': await r([1, 4, 5, 5], 1), 'conv.bias': await r([1], 2),
      'mlp.layernorm.weight': Tensor.fromArray(new Float32Array(64).fill(1), [64]), 'mlp.layernorm.bias': await r([64], 3),
      'mlp.projector.0.weight': await r([32, 64], 4), 'mlp.projector.2.weight': await r([32, 32], 5),
      'mlp.fc.1.weight': await r([24, 32], 6), 'mlp.fc.1.bias': await r([24], 7),
    });
    const texts: string[] = [];
    // a stand-in tokenizer whose ids fit the tiny Qwen (vocabulary 300; image pad 290, vision start/end 292/293)
    const tokenizer = {
      x2iPrompt: (t: string) => `X:${t}`,
      applyChatTemplate: (m: unknown) => JSON.stringify(m),
      encode(text: string, o: { maxLength?: number; imageTokens?: number[][] }) {
        texts.push(text);
        const img = (o.imageTokens?.[0] ?? []).flatMap((n) => [292n, ...Array(n).fill(290n), 293n]);
        const ids = [...img, ...Array.from(text.slice(0, 8), (ch) => BigInt(ch.charCodeAt(0) % 280))];
        const L = Math.max(o.maxLength ?? 16, ids.length), pad = L - ids.length;
        return { inputIds: Tensor.fromArray(BigInt64Array.from([...Array(pad).fill(0n), ...ids]), [1, L]),
          attentionMask: Tensor.fromArray(BigInt64Array.from([...Array(pad).fill(0n), ...ids.map(() => 1n)]), [1, L]) };
      },
    } as unknown as x2i.QwenTokenizer;
    using flux = await FluxTransformer.fromPretrained(fluxDir);
    using vae = await AutoencoderKL.fromPretrained(path.join(golden, 'vae'));
    using mllm = await QwenVLEncoder.fromPretrained(path.join(golden, 'qwen2_5_vl'));
    using alignNet = await AlignNet.fromPretrained(path.join(dir, 'alignnet.safetensors'));
    await alignNet.save(path.join(dir, 'a0.safetensors'));
    using trainer = new LoraTrainer({ transformer: flux, vae, mllm, alignNet }, { ...common, tokenizer, maxLength: 24, lora: { rank: 2 } });
    expect(trainer.options.conditioning).toBe('student');
    const target = (await sample(10, true)).references![0];
    const ref = (await sample(11, true)).references![0];
    const infos = await trainer.fit({ data: [{ image: target, references: [ref], caption: 'a cat' }], steps: 2 });
    expect(infos.every((i) => Number.isFinite(i.loss))).toBe(true);
    expect(texts[0]).toContain(x2i.it2iPrompt('a cat').replace(/"/g, '\\"'));
    expect(texts[0]).toContain('image');
    await alignNet.save(path.join(dir, 'a1.safetensors'));
    expect(fs.readFileSync(path.join(dir, 'a1.safetensors')).equals(fs.readFileSync(path.join(dir, 'a0.safetensors')))).toBe(true);
  });

  it('T2I through the teacher: the caption goes to T5 and CLIP', async () => {
    const seen: string[] = [];
    const t5 = { encodePrompt: async (t: string) => (seen.push(`t5:${t}`), { lastHiddenState: await x2i.randn([1, T, 32], { seed: 1 }),
      hiddenStates: await x2i.randn([1], { seed: 0 }) }) } as unknown as x2i.T5Encoder;
    const clip = { encodePrompt: async (t: string) => (seen.push(`clip:${t}`), { pooledOutput: await x2i.randn([1, 24], { seed: 2 }),
      lastHiddenState: await x2i.randn([1], { seed: 0 }), hiddenStates: await x2i.randn([1], { seed: 0 }) }) } as unknown as x2i.ClipTextEncoder;
    using flux = await FluxTransformer.fromPretrained(fluxDir);
    using trainer = new LoraTrainer({ transformer: flux, t5, clip }, { ...common, lora: { rank: 2, targets: ['to_q', 'to_v'] } });
    expect(trainer.options.conditioning).toBe('teacher');
    await trainer.fit({ data: [{ latents: data[0].latents, caption: 'a dog' }], steps: 1 });
    expect(seen).toEqual(['t5:a dog', 'clip:a dog']);
    const w = await flux.loraWeights(trainer.adapterName!);
    expect(new Set(w.map((p) => p.target))).toEqual(new Set(['double_blocks.0.img_attn.qkv', 'double_blocks.1.img_attn.qkv',
      'single_blocks.0.linear1', 'single_blocks.1.linear1']));
    for (const p of w) p.A.dispose(), p.B.dispose();
  });

  it('bad options and samples are named errors', async () => {
    using flux = await FluxTransformer.fromPretrained(fluxDir);
    expect(() => new LoraTrainer({ transformer: flux }, { lr: -1 })).toThrow(/lr/);
    expect(() => new LoraTrainer({ transformer: flux }, { height: 30 })).toThrow(/height/);
    using t = new LoraTrainer({ transformer: flux }, { ...common, lora: { rank: 2 } });
    await expect(t.trainStep({} as x2i.FineTuneSample)).rejects.toThrow(/image \| latents/);
    await expect(t.trainStep({ image: Buffer.from('x'), caption: 'c' })).rejects.toThrow(/conditioning 'teacher' needs t5 and clip/);
    await expect(t.trainStep({ image: Buffer.from('x'), conditioning: data[0].conditioning })).rejects.toThrow(/need the vae/);
    const wrong = await x2i.randn([1, 9, C], { seed: 1 });
    await expect(t.trainStep({ latents: wrong, conditioning: data[0].conditioning })).rejects.toThrow(/sample.latents/);
  });
});

describe('LightControlTrainer', () => {
  const tiny = { in_channels: [16, 16], out_channels: [16, 32], groups: [4, 8], time_embed_dim: 32, embedding_channels: [8, 8, 16],
    control_out_channels: 32, num_branches: 2 };

  it('lowers the loss with the source image as the hint; the leak only as an explicit option', async () => {
    using flux = await FluxTransformer.fromPretrained(fluxDir);
    using lc = await LightControl.fromConfig(tiny, { seed: 4, dtype: 'float32' });
    using trainer = new LightControlTrainer({ transformer: flux, lightControl: lc }, { ...common, lr: 3e-3, weightDecay: 0 });
    expect(trainer.options.hint).toBe('source');
    const before = await trainer.evaluate(controlData);
    await trainer.fit({ data: controlData, steps: 40 });
    const after = await trainer.evaluate(controlData);
    expect(after).toBeLessThan(0.8 * before);
    const run = path.join(dir, 'lc-run');
    await trainer.save(run);
    const ckpt = LightControlTrainer.latestCheckpoint(run);
    expect(fs.readdirSync(ckpt).sort()).toEqual(['config.json', 'lightcontrol.safetensors', 'optimizer.safetensors']);
    using back = await LightControl.fromPretrained(ckpt);  // the folder: its config.json and the branches
    const [w0, w1] = [lc.weights(), back.weights()];
    for (const k of Object.keys(w0)) expect(await w1[k].toArray(), k).toEqual(await w0[k].toArray());
    for (const t of [...Object.values(w0), ...Object.values(w1)]) t.dispose();
    // no source image: an error, unless the official leak is asked for
    await expect(trainer.trainStep({ latents: data[0].latents, conditioning: data[0].conditioning })).rejects.toThrow(/no hint/);
    using leak = new LightControlTrainer({ transformer: flux, lightControl: lc }, { ...common, hint: 'target' });
    await expect(leak.trainStep({ latents: data[0].latents, conditioning: data[0].conditioning })).rejects.toThrow(/needs sample.image/);
  });

  it('save → resume continues with the same losses (the branches and their moments restored)', async () => {
    const run = path.join(dir, 'lc-resume');
    const opts = { ...common, lr: 3e-3 };
    let tail: number[];
    {
      using flux = await FluxTransformer.fromPretrained(fluxDir);
      using lc = await LightControl.fromConfig(tiny, { seed: 6, dtype: 'float32' });
      using a = new LightControlTrainer({ transformer: flux, lightControl: lc }, opts);
      await a.fit({ data: controlData, steps: 3, checkpointDir: run });
      tail = (await a.fit({ data: controlData, steps: 2 })).map((i) => i.loss);
    }
    using flux = await FluxTransformer.fromPretrained(fluxDir);
    using lc = await LightControl.fromConfig(tiny, { seed: 99, dtype: 'float32' });  // other weights: resume replaces them
    using b = new LightControlTrainer({ transformer: flux, lightControl: lc }, opts);
    await b.resume(run);
    expect((await b.fit({ data: controlData, steps: 2 })).map((i) => i.loss)).toEqual(tail);
  });

  it('refuses bf16 branches (they are the float32 masters)', async () => {
    using flux = await FluxTransformer.fromPretrained(fluxDir);
    using lc = await LightControl.fromConfig(tiny, { seed: 4, dtype: 'bfloat16' });
    expect(() => new LightControlTrainer({ transformer: flux, lightControl: lc })).toThrow(/float32/);
  });
});
