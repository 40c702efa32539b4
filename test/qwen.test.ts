import fs from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import * as x2i from '../lib/index.js';
import { QwenVLEncoder } from '../lib/index.js';
import { golden, tmpDir } from './helpers.js';

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
    await expect(m.forward({ inputIds: io['image.input_ids'], pixelValues: io['image.pixel_values'] })).rejects.toMatchObject({ code: 'ERR_NOT_SUPPORTED' });
    await expect(m.forward({ inputIds: io['text.input_ids'], attentionMask: io['image.input_ids'] })).rejects.toThrow(/attentionMask has shape \[1, 13\], expected \[2, 10\]/);
  });
});
