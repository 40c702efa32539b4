import fs from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import * as x2i from '../../lib/index.js';
import { QwenVLEncoder } from '../../lib/index.js';
import { golden, tmpDir } from '../helpers.js';

const dir = path.join(golden, 'qwen2_5_vl');
const tmp = tmpDir();
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** The released (flat) config style of the same model. */
function flatConfig(): Record<string, unknown> {
  const c = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'));
  const t = c.text_config;
  const v = { ...c.vision_config, in_chans: c.vision_config.in_channels };
  delete v.in_channels;
  return { architectures: ['Qwen2_5_VLForConditionalGeneration'], model_type: 'qwen2_5_vl', hidden_size: t.hidden_size,
    intermediate_size: t.intermediate_size, num_hidden_layers: t.num_hidden_layers, num_attention_heads: t.num_attention_heads,
    num_key_value_heads: t.num_key_value_heads, rms_norm_eps: t.rms_norm_eps, vocab_size: t.vocab_size, hidden_act: 'silu',
    rope_theta: t.rope_parameters.rope_theta, rope_scaling: { type: 'mrope', mrope_section: t.rope_parameters.mrope_section },
    image_token_id: c.image_token_id, video_token_id: c.video_token_id, vision_config: v };
}

async function variant(name: string, config: Record<string, unknown>, rename = (k: string) => k): Promise<string> {
  const d = path.join(tmp, name);
  fs.mkdirSync(d);
  const w = await x2i.loadSafetensors(path.join(dir, 'model.safetensors'));
  await x2i.saveSafetensors(path.join(d, 'model.safetensors'), Object.fromEntries(Object.entries(w).map(([k, t]) => [rename(k), t])));
  fs.writeFileSync(path.join(d, 'config.json'), JSON.stringify(config));
  for (const t of Object.values(w)) t.dispose();
  return d;
}

describe('QwenVLEncoder (text): every layer\'s hidden state, left padding', () => {
  it("matches X2I's training forward (pad rows attend to all keys) and transformers 5's rule", async () => {
    const io = await x2i.loadSafetensors(path.join(dir, 'io.safetensors'));
    using m = await QwenVLEncoder.fromPretrained(dir);
    const inputs = { inputIds: io['text.input_ids'], attentionMask: io['text.attention_mask'] };
    const r = await m.forward(inputs);
    expect(r.hiddenStates.shape).toEqual([2, 4, 10, 64]);
    expect(await x2i.relativeError(r.hiddenStates, io['text.hidden_states_x2i'])).toBeLessThan(1e-4);
    const t = await m.forward({ ...inputs, padRule: 'mask' });
    expect(await x2i.relativeError(t.hiddenStates, io['text.hidden_states'])).toBeLessThan(1e-4);
  });

  it('the released flat config and model.language_model.* names give the same result as the nested config', async () => {
    const io = await x2i.loadSafetensors(path.join(dir, 'io.safetensors'));
    const flat = await variant('flat', flatConfig(), (k) => k.replace(/^model\./, 'model.language_model.').replace(/^visual\./, 'model.visual.'));
    using a = await QwenVLEncoder.fromPretrained(flat);
    using b = await QwenVLEncoder.fromPretrained(dir);
    const inputs = { inputIds: io['text.input_ids'], attentionMask: io['text.attention_mask'] };
    expect(await (await a.forward(inputs)).hiddenStates.toArray()).toEqual(await (await b.forward(inputs)).hiddenStates.toArray());
  });

  it('an image: vision tower (patch embed, 2-D rotary, window and full attention, merger) scattered into the prompt, under M-RoPE', async () => {
    const io = await x2i.loadSafetensors(path.join(dir, 'io.safetensors'));
    using m = await QwenVLEncoder.fromPretrained(dir);
    const inputs = { inputIds: io['image.input_ids'], pixelValues: io['image.pixel_values'], imageGridThw: io['image.image_grid_thw'] };
    // Qwen2.5-VL's own (t, h, w) positions are the default, as the official X2I code ran the model
    const mrope = await m.forward(inputs);
    expect(await x2i.relativeError(mrope.hiddenStates, io['image.hidden_states'])).toBeLessThan(1e-4);
    expect(Array.from(await m.ropeIndex(inputs).toArray() as BigInt64Array)).toEqual(Array.from(await io['image.position_ids'].toArray() as BigInt64Array));
    // every token numbered sequentially (transformers 5 without mm_token_type_ids) stays available as an option
    const seq = await m.forward({ ...inputs, positions: 'sequential' });
    expect(await x2i.relativeError(seq.hiddenStates, io['image.hidden_states_sequential'])).toBeLessThan(1e-4);
    expect(await x2i.relativeError(seq.hiddenStates, io['image.hidden_states'])).toBeGreaterThan(1e-3);
    const first = async (t: x2i.Tensor) => Array.from(await t.toArray() as Float32Array).slice(0, 4 * 64);  // layer 0, tokens 0-3
    expect(await first(mrope.hiddenStates)).toEqual(await first(seq.hiddenStates));
    await expect(m.forward({ ...inputs, imageGridThw: x2i.Tensor.fromArray(new BigInt64Array([1n, 4n, 8n]), [1, 3]) }))
      .rejects.toThrow(/grid_thw describes 32 patches but pixel values hold 16/);
  });

  it('two non-square images in one prompt and a video (temporal positions from secondPerGridT), under M-RoPE', async () => {
    const io = await x2i.loadSafetensors(path.join(dir, 'io.safetensors'));
    using m = await QwenVLEncoder.fromPretrained(dir);
    const cases = {
      images: { inputIds: io['images.input_ids'], pixelValues: io['images.pixel_values'], imageGridThw: io['images.image_grid_thw'] },
      video: { inputIds: io['video.input_ids'], pixelValuesVideos: io['video.pixel_values_videos'], videoGridThw: io['video.video_grid_thw'],
        secondPerGridT: (await io['video.second_per_grid_ts'].toArray() as Float32Array)[0] },
    };
    expect(cases.video.secondPerGridT).toBe(0.5);
    for (const [name, inputs] of Object.entries(cases)) {
      const r = await m.forward(inputs);
      expect(await x2i.relativeError(r.hiddenStates, io[`${name}.hidden_states`]), name).toBeLessThan(1e-4);
      expect(Array.from(await m.ropeIndex(inputs).toArray() as BigInt64Array), name)
        .toEqual(Array.from(await io[`${name}.position_ids`].toArray() as BigInt64Array));
    }
    // the video's temporal positions depend on its frame rate: another secondPerGridT gives other states
    const other = await m.forward({ ...cases.video, secondPerGridT: 2 });
    expect(await x2i.relativeError(other.hiddenStates, io['video.hidden_states'])).toBeGreaterThan(1e-3);
  });

  it('M-RoPE position ids: the worked example of the spec (and pads at 1)', async () => {
    using m = await QwenVLEncoder.fromPretrained(dir);
    const [T, VS, I, VE] = [5n, 292n, 290n, 293n];
    const ids = x2i.Tensor.fromArray(new BigInt64Array([T, T, VS, I, I, I, I, VE, T, T]), [1, 10]);
    const P = m.ropeIndex({ inputIds: ids, imageGridThw: x2i.Tensor.fromArray(new BigInt64Array([1n, 4n, 4n]), [1, 3]) });
    const v = Array.from(await P.toArray() as BigInt64Array, Number);
    expect(v.slice(0, 10)).toEqual([0, 1, 2, 3, 3, 3, 3, 5, 6, 7]);
    expect(v.slice(10, 20)).toEqual([0, 1, 2, 3, 3, 4, 4, 5, 6, 7]);
    expect(v.slice(20, 30)).toEqual([0, 1, 2, 3, 4, 3, 4, 5, 6, 7]);
    const padded = x2i.Tensor.fromArray(new BigInt64Array([0n, 0n, T, T]), [1, 4]);
    const mask = x2i.Tensor.fromArray(new BigInt64Array([0n, 0n, 1n, 1n]), [1, 4]);
    expect(Array.from(await m.ropeIndex({ inputIds: padded, attentionMask: mask }).toArray() as BigInt64Array, Number).slice(0, 4)).toEqual([1, 1, 0, 1]);
  });

  it('errors: config fields, weights, inputs', async () => {
    const c = flatConfig();
    delete (c as { rope_scaling?: unknown }).rope_scaling;
    const noRope = await variant('norope', c);
    await expect(QwenVLEncoder.fromPretrained(noRope)).rejects.toThrow(/config\.json: field 'rope_scaling\.mrope_section'.* is missing/);
    const c2 = flatConfig();
    delete c2.num_key_value_heads;
    const noKv = await variant('nokv', c2);
    await expect(QwenVLEncoder.fromPretrained(noKv)).rejects.toThrow(/field 'num_key_value_heads' is missing/);
    const wrong = await variant('wrong', { ...flatConfig(), hidden_size: 32 });
    await expect(QwenVLEncoder.fromPretrained(wrong)).rejects.toThrow(/(has shape \[300, 64\], expected \[300, 32\]|mrope_section)/);
    using m = await QwenVLEncoder.fromPretrained(dir);
    const io = await x2i.loadSafetensors(path.join(dir, 'io.safetensors'));
    await expect(m.forward({ inputIds: io['image.input_ids'], pixelValues: io['image.pixel_values'] })).rejects.toThrow(/more image blocks in inputIds than grids in imageGridThw/);
    await expect(m.forward({ inputIds: io['text.input_ids'], pixelValues: io['image.pixel_values'], imageGridThw: io['image.image_grid_thw'] }))
      .rejects.toThrow(/4 image features but 0 placeholder tokens/);
    await expect(m.forward({ inputIds: io['text.input_ids'], attentionMask: io['image.input_ids'] })).rejects.toThrow(/attentionMask has shape \[1, 13\], expected \[2, 10\]/);
  });
});

describe('QwenVLEncoder.fromConfig (random weights) and forward without capture', () => {
  it('builds a model of the config, deterministic per seed; capture: false returns the last state of the same prefill', async () => {
    const config = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'));
    using a = await QwenVLEncoder.fromConfig(config, { seed: 3 });
    using b = await QwenVLEncoder.fromConfig(config, { seed: 3 });
    using c = await QwenVLEncoder.fromConfig(config, { seed: 4 });
    const ids = x2i.Tensor.fromArray(new BigInt64Array([5n, 17n, 42n, 99n, 7n, 250n, 1n, 3n]), [2, 4]);
    const full = (await a.forward({ inputIds: ids })).hiddenStates;
    expect(full.shape).toEqual([2, 4, 4, 64]);  // [B, L+1, S, H], L = 3
    const last = (await a.forward({ inputIds: ids, capture: false })).hiddenStates;
    expect(last.shape).toEqual([2, 1, 4, 64]);
    const f = await full.toArray() as Float32Array, l = await last.toArray() as Float32Array;
    for (let bi = 0; bi < 2; bi++)
      for (let i = 0; i < 4 * 64; i++) expect(l[bi * 256 + i]).toBe(f[bi * 4 * 256 + 3 * 256 + i]);
    expect(await x2i.relativeError((await b.forward({ inputIds: ids })).hiddenStates, full)).toBe(0);
    expect(await x2i.relativeError((await c.forward({ inputIds: ids })).hiddenStates, full)).toBeGreaterThan(1e-2);
    expect(f.every(Number.isFinite)).toBe(true);
  });

  it('rejects a config without mrope_section, or asking for what is not implemented', async () => {
    await expect(QwenVLEncoder.fromConfig({ hidden_size: 64 })).rejects.toThrow(/mrope_section/);
    const config = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'));
    const text = (extra: Record<string, unknown>) => ({ ...config, text_config: { ...config.text_config, ...extra } });
    await expect(QwenVLEncoder.fromConfig(text({ hidden_act: 'gelu' }))).rejects.toThrow(/config: hidden_act 'gelu' is not supported/);
    await expect(QwenVLEncoder.fromConfig(text({ use_sliding_window: true }))).rejects.toThrow(/use_sliding_window is not supported/);
    await expect(QwenVLEncoder.fromConfig({ ...config, vision_config: { ...config.vision_config, hidden_act: 'quick_gelu' } }))
      .rejects.toThrow(/vision_config\.hidden_act 'quick_gelu'/);
  });
});

describe('QwenVLEncoder.generate (X2I\'s answer mode)', () => {
  it('greedy decoding with the cache = one full prefill over the prompt and the answer', async () => {
    using m = await QwenVLEncoder.fromPretrained(dir);
    // a left-padded prompt, as X2I pads
    const prompt = [0n, 0n, 0n, 5n, 17n, 42n, 99n, 7n, 250n];
    const mask = [0n, 0n, 0n, 1n, 1n, 1n, 1n, 1n, 1n];
    const S = prompt.length;
    const r = await m.generate({ inputIds: x2i.Tensor.fromArray(new BigInt64Array(prompt), [1, S]),
      attentionMask: x2i.Tensor.fromArray(new BigInt64Array(mask), [1, S]) }, { maxNewTokens: 6, eosTokenIds: [] });
    expect(r.tokens.length).toBe(6);
    r.tokens.forEach((t) => expect(t >= 0 && t < 300).toBe(true));
    const n = r.tokens.length - 1;  // every generated token but the last is fed back
    expect(r.answerStates.shape).toEqual([1, 4, n, 64]);
    expect(r.hiddenStates.shape).toEqual([1, 4, S, 64]);
    // the same states from one forward over prompt + fed-back tokens (positions continue, pads stay masked)
    const ids2 = new BigInt64Array([...prompt, ...r.tokens.slice(0, n).map(BigInt)]);
    const mask2 = new BigInt64Array([...mask, ...Array(n).fill(1n)]);
    const full = await (await m.forward({ inputIds: x2i.Tensor.fromArray(ids2, [1, S + n]),
      attentionMask: x2i.Tensor.fromArray(mask2, [1, S + n]) })).hiddenStates.toArray() as Float32Array;
    const got = await r.answerStates.toArray() as Float32Array;
    let num = 0, den = 0;
    for (let l = 0; l < 4; l++)
      for (let j = 0; j < n; j++)
        for (let h = 0; h < 64; h++) {
          const want = full[(l * (S + n) + S + j) * 64 + h], g = got[(l * n + j) * 64 + h];
          num += (g - want) ** 2, den += want ** 2;
        }
    expect(Math.sqrt(num / den)).toBeLessThan(1e-5);
    // the prompt's states are the plain prefill's
    const plain = (await m.forward({ inputIds: x2i.Tensor.fromArray(new BigInt64Array(prompt), [1, S]),
      attentionMask: x2i.Tensor.fromArray(new BigInt64Array(mask), [1, S]) })).hiddenStates;
    expect(await x2i.relativeError(r.hiddenStates, plain)).toBe(0);
  });

  it('stops at an EOS id, and takes one prompt at a time', async () => {
    using m = await QwenVLEncoder.fromPretrained(dir);
    const ids = x2i.Tensor.fromArray(new BigInt64Array([5n, 17n, 42n]), [1, 3]);
    const first = (await m.generate({ inputIds: ids }, { maxNewTokens: 4, eosTokenIds: [] })).tokens[0];
    const r = await m.generate({ inputIds: ids }, { maxNewTokens: 4, eosTokenIds: [first] });
    expect(r.tokens).toEqual([first]);
    expect(r.answerStates.shape).toEqual([1, 4, 0, 64]);
    const two = x2i.Tensor.fromArray(new BigInt64Array([5n, 17n, 42n, 5n, 17n, 42n]), [2, 3]);
    await expect(m.generate({ inputIds: two })).rejects.toThrow(/one prompt at a time/);
    await expect(m.generate({ inputIds: ids }, { maxNewTokens: 0 })).rejects.toThrow(/maxNewTokens/);
  });
});

describe('QwenVLEncoder.fromPretrained config overrides', () => {
  it('an override reaches the field where it lives (text_config of a nested config); an unknown key is an error', async () => {
    const ids = x2i.Tensor.fromArray(new BigInt64Array([5n, 17n, 42n]), [1, 3]);
    using plain = await QwenVLEncoder.fromPretrained(dir);
    using eps = await QwenVLEncoder.fromPretrained(dir, { config: { rms_norm_eps: 0.5 } });
    const a = (await plain.forward({ inputIds: ids })).hiddenStates, b = (await eps.forward({ inputIds: ids })).hiddenStates;
    expect(await x2i.relativeError(b, a)).toBeGreaterThan(1e-3);
    await expect(QwenVLEncoder.fromPretrained(dir, { config: { rms_norm_epsilon: 0.5 } }))
      .rejects.toThrow(/config\.json: config override 'rms_norm_epsilon' is not a field of this config/);
  });
});
