import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as x2i from '../../lib/index.js';
import { FluxTransformer, Tensor } from '../../lib/index.js';
import { fluxInputsOf, golden, parseSafetensorsBytes, relErr, tmpDir } from '../helpers.js';

const dir = tmpDir();
const folder = path.join(golden, 'flux-transformer');
const loraDir = path.join(golden, 'flux-lora');
const diffusersFile = path.join(loraDir, 'lora_diffusers.safetensors');
const kohyaFile = path.join(loraDir, 'lora_kohya.safetensors');
let io: Record<string, Tensor>;
let base: Record<string, Tensor>;
let inputs: x2i.FluxInputs;
let m: FluxTransformer;

async function sample(opts: x2i.FluxCallOptions = {}): Promise<Tensor> {
  return (await m.forward(inputs, opts)).sample;
}

beforeAll(async () => {
  io = await x2i.loadSafetensors(path.join(loraDir, 'io.safetensors'));
  base = await x2i.loadSafetensors(path.join(folder, 'io.safetensors'));
  inputs = fluxInputsOf(io);
  m = await FluxTransformer.fromPretrained(folder);
});
afterAll(() => {
  m.dispose();
  for (const t of [...Object.values(io), ...Object.values(base)]) t.dispose();
  fs.rmSync(dir, { recursive: true, force: true });
});

describe('LoRA matches the golden reference (diffusers + peft)', () => {
  for (const [format, file] of [['diffusers/PEFT', diffusersFile], ['kohya', kohyaFile]] as const) {
    it(`${format}: scale 1, scale 0.5, disabled, fused, unfused`, async () => {
      const name = await m.loadLora(file, { adapterName: 'style' });
      expect(name).toBe('style');
      expect(m.loraAdapters).toEqual({ style: 1 });
      const s1 = await sample();
      expect(await relErr(s1, io['sample.scale_1'])).toBeLessThan(1e-4);
      m.setLoraScales({ style: 0.5 });
      const s05 = await sample();
      expect(await relErr(s05, io['sample.scale_0_5'])).toBeLessThan(1e-4);
      const off = await sample({ loraScales: { style: 0 } });  // per call: disabled
      expect(await relErr(off, base.sample)).toBeLessThan(1e-5);
      m.setLoraScales({ style: 1 });
      await m.fuseLora();
      const fused = await sample();
      expect(await relErr(fused, io['sample.fused'])).toBeLessThan(1e-4);
      expect(await relErr(fused, s1)).toBeLessThan(1e-5);
      const fusedHalf = await sample({ loraScales: { style: 0.5 } });  // a fused adapter at another scale: the difference unfused
      expect(await relErr(fusedHalf, io['sample.scale_0_5'])).toBeLessThan(1e-4);
      await m.unfuseLora();
      const back = await sample({ loraScales: { style: 0 } });
      expect(await relErr(back, base.sample)).toBeLessThan(1e-5);
      m.unloadLora('style');
      expect(m.loraAdapters).toEqual({});
      const plain = await sample();
      expect(await relErr(plain, base.sample)).toBeLessThan(1e-4);
      for (const t of [s1, s05, off, fused, fusedHalf, back, plain]) t.dispose();
    });
  }

  it('two adapters at once, each with its own scale', async () => {
    await m.loadLora(diffusersFile, { adapterName: 'a', scale: 0.25 });
    await m.loadLora(kohyaFile, { adapterName: 'b', scale: 0.25 });  // the same adapter: 0.25 + 0.25 = scale 0.5
    const s = await sample();
    expect(await relErr(s, io['sample.scale_0_5'])).toBeLessThan(1e-4);
    m.unloadLora();
    s.dispose();
  });

  it('unloading gives the layers their own weights back, bit for bit (the adapters\' down-projections are stacked under them)', async () => {
    const before = await sample();
    await m.loadLora(kohyaFile, { adapterName: 'a', scale: 0.7 });
    await m.loadLora(diffusersFile, { adapterName: 'b', scale: -0.3 });
    const both = await sample();
    const a = await sample({ loraScales: { b: 0 } });
    m.unloadLora('a');  // the stack is rebuilt around b
    const b = await sample();
    expect(await relErr(both, b)).toBeGreaterThan(1e-3);
    await m.loadLora(kohyaFile, { adapterName: 'a', scale: 0.7 });
    expect(await relErr(await sample(), both)).toBeLessThan(1e-6);
    m.unloadLora('b');
    expect(await relErr(await sample(), a)).toBeLessThan(1e-6);
    m.unloadLora('a');
    const after = await sample();
    expect(await relErr(after, before)).toBe(0);
    for (const t of [before, both, a, b, after]) t.dispose();
  });

  it('saves in the diffusers/PEFT layout and reloads bit-identical', async () => {
    await m.loadLora(kohyaFile, { adapterName: 'k' });
    const file = path.join(dir, 'k.safetensors');
    await m.saveLora(file, 'k');
    const parsed = parseSafetensorsBytes(fs.readFileSync(file));
    const meta = JSON.parse(parsed.metadata!.lora_adapter_metadata);
    expect(meta['transformer.r']).toBe(4);
    // the fused qkv and linear1 ranks of the kohya file, split onto to_q/to_k/to_v(/proj_mlp) with the shared down
    expect(meta['transformer.rank_pattern']['transformer_blocks.0.attn.to_q']).toBe(12);
    expect(meta['transformer.rank_pattern']['single_transformer_blocks.1.proj_mlp']).toBe(16);
    expect(meta['transformer.alpha_pattern']['single_transformer_blocks.1.proj_mlp']).toBe(32);
    expect(Object.keys(parsed.header)).toContain('transformer.transformer_blocks.0.attn.to_q.lora_A.weight');
    await m.loadLora(file, { adapterName: 'k2' });
    const a = await m.loraWeights('k2');
    await m.saveLora(path.join(dir, 'k2.safetensors'), 'k2');
    expect(fs.readFileSync(path.join(dir, 'k2.safetensors')).equals(fs.readFileSync(file))).toBe(true);
    const s = await sample({ loraScales: { k: 0 } });
    expect(await relErr(s, io['sample.scale_1'])).toBeLessThan(1e-4);
    for (const p of a) p.A.dispose(), p.B.dispose();
    s.dispose();
    m.unloadLora();
  });

  it('XLabs layout: qkv / proj adapters of both streams and of the single blocks', async () => {
    // the kohya file's attention modules in XLabs' names (XLabs has no alpha: scale 1, so up carries alpha/R = 2)
    const k = await x2i.loadSafetensors(kohyaFile);
    const x: Record<string, Tensor> = {}, sub: Record<string, Tensor> = {};
    const twice = async (t: Tensor) => Tensor.fromArray(new Float32Array(Array.from(await t.toArray() as Float32Array, (v) => 2 * v)), [...t.shape]);
    for (let i = 0; i < 2; i++) {
      for (const [kohya, xl] of [['img_attn_qkv', 'qkv_lora1'], ['img_attn_proj', 'proj_lora1'], ['txt_attn_qkv', 'qkv_lora2'], ['txt_attn_proj', 'proj_lora2']]) {
        const p = `lora_unet_double_blocks_${i}_${kohya}`;
        x[`double_blocks.${i}.processor.${xl}.down.weight`] = k[`${p}.lora_down.weight`];
        x[`double_blocks.${i}.processor.${xl}.up.weight`] = await twice(k[`${p}.lora_up.weight`]);
        for (const s of ['lora_down.weight', 'lora_up.weight', 'alpha']) sub[`${p}.${s}`] = k[`${p}.${s}`];
      }
      for (const [kohya, xl] of [['linear2', 'proj_lora']]) {
        const p = `lora_unet_single_blocks_${i}_${kohya}`;
        x[`single_blocks.${i}.processor.${xl}.down.weight`] = k[`${p}.lora_down.weight`];
        x[`single_blocks.${i}.processor.${xl}.up.weight`] = await twice(k[`${p}.lora_up.weight`]);
        for (const s of ['lora_down.weight', 'lora_up.weight', 'alpha']) sub[`${p}.${s}`] = k[`${p}.${s}`];
      }
    }
    await m.loadLora(x, { adapterName: 'xlabs' });
    await m.loadLora(sub, { adapterName: 'ref', scale: 0 });
    const a = await sample({ loraScales: { xlabs: 1, ref: 0 } });
    const b = await sample({ loraScales: { xlabs: 0, ref: 1 } });
    expect(await relErr(a, b)).toBeLessThan(1e-5);
    expect(await relErr(a, base.sample)).toBeGreaterThan(1e-3);  // it did something
    m.unloadLora();
    for (const t of [a, b, ...Object.values(k)]) t.dispose();
    for (const [key, t] of Object.entries(x)) if (key.endsWith('up.weight')) t.dispose();
  });

  it('unknown, unmatched and incomplete keys are errors naming them', async () => {
    const d = await x2i.loadSafetensors(diffusersFile);
    const one = d['transformer.transformer_blocks.0.attn.to_q.lora_A.weight'];
    const oneB = d['transformer.transformer_blocks.0.attn.to_q.lora_B.weight'];
    await expect(m.loadLora({ 'transformer.transformer_blocks.0.attn.to_q.lora_A.weight': one, 'foo.bar': one }))
      .rejects.toThrow(/unknown LoRA key 'foo.bar'/);
    await expect(m.loadLora({ 'transformer.transformer_blocks.7.attn.to_q.lora_A.weight': one,
      'transformer.transformer_blocks.7.attn.to_q.lora_B.weight': oneB })).rejects.toThrow(/transformer_blocks\.7\.attn\.to_q/);
    await expect(m.loadLora({ 'transformer.transformer_blocks.0.attn.to_q.lora_A.weight': one }))
      .rejects.toMatchObject({ code: 'ERR_CHECKPOINT_KEY', message: expect.stringMatching(/no up \(B\) weight/) });
    await expect(m.loadLora({ 'lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight': one }))
      .rejects.toThrow(/unknown LoRA key 'lora_te1_/);
    await expect(m.loadLora({ 'transformer.transformer_blocks.0.attn.to_out.0.lora_A.weight': one,
      'transformer.transformer_blocks.0.attn.to_out.0.lora_B.weight': oneB })).resolves.toBe('default');
    m.unloadLora();
    const wrong = Tensor.fromArray(new Float32Array(4 * 5), [4, 5]);
    await expect(m.loadLora({ 'transformer.transformer_blocks.0.attn.to_q.lora_A.weight': wrong,
      'transformer.transformer_blocks.0.attn.to_q.lora_B.weight': oneB })).rejects.toMatchObject({ code: 'ERR_CHECKPOINT_SHAPE' });
    expect(m.loraAdapters).toEqual({});
    expect(() => m.setLoraScales({ nope: 1 })).toThrow(/no adapter 'nope'/);
    // pattern keys in the metadata are names, never regular expressions
    const odd = path.join(dir, 'odd-pattern.safetensors');
    await x2i.saveSafetensors(odd, { 'transformer.transformer_blocks.0.attn.to_q.lora_A.weight': one,
      'transformer.transformer_blocks.0.attn.to_q.lora_B.weight': oneB }, { lora_adapter_metadata: JSON.stringify({
      'transformer.r': 4, 'transformer.lora_alpha': 8, 'transformer.alpha_pattern': { '(': 1, 'to_q': 4 } }) });
    await expect(m.loadLora(odd, { adapterName: 'odd' })).resolves.toBe('odd');
    expect((await m.loraWeights('odd'))[0].scale).toBe(1);  // to_q's alpha 4 over rank 4
    m.unloadLora('odd');
    wrong.dispose();
    for (const t of Object.values(d)) t.dispose();
  });

  it('a trainable adapter starts as the identity and lists the default FLUX targets', async () => {
    const plain = await sample();
    const name = await m.addLora({ rank: 2, adapterName: 'train' });
    const s = await sample();
    expect(await relErr(s, plain)).toBeLessThan(1e-6);  // B = 0
    plain.dispose();
    const w = await m.loraWeights(name);
    // 12 modules per double block, 5 per single block (q/k/v/proj_mlp are 4 parts of linear1)
    expect(w.length).toBe(2 * 12 + 2 * 5);
    await expect(m.fuseLora()).rejects.toThrow(/being trained/);
    for (const p of w) p.A.dispose(), p.B.dispose();
    m.unloadLora();
    s.dispose();
  });
});
