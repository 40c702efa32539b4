// InternVL2.5 as an X2I student against the golden tensors of the InternVL code X2I ships: the image features
// (InternViT, pixel shuffle, mlp1) and every layer's hidden state for text, X2I's 512-token right-padded text, one
// tile, and tiles + thumbnail; configs it does not compute are named errors.
import path from 'node:path';
import fs from 'node:fs';
import { describe, expect, it } from 'vitest';
import * as x2i from '../../lib/index.js';
import type { Tensor } from '../../lib/index.js';
import sharp from 'sharp';
import { golden, relErr, tmpDir } from '../helpers.js';

const dir = path.join(golden, 'internvl2_5');

describe('InternVLEncoder (golden, float32)', () => {
  it('matches the reference: image features and all-layer hidden states of every case', async () => {
    const io: Record<string, Tensor> = await x2i.loadSafetensors(path.join(dir, 'io.safetensors'));
    const enc = await x2i.InternVLEncoder.fromPretrained(dir);
    try {
      for (const c of ['text', 'text_padded', 'image', 'image_tiles']) {
        const px = io[`${c}.pixel_values`];
        if (px) {
          const e = await enc.encodeImages(px);
          expect(e.shape, `${c} embeds`).toEqual(io[`${c}.embeds`].shape);
          expect(await relErr(e, io[`${c}.embeds`]), `${c} embeds`).toBeLessThanOrEqual(1e-4);
        }
        const { hiddenStates } = await enc.forward({ inputIds: io[`${c}.input_ids`], attentionMask: io[`${c}.attention_mask`], pixelValues: px });
        expect(hiddenStates.shape, c).toEqual(io[`${c}.hidden_states`].shape);
        expect(await relErr(hiddenStates, io[`${c}.hidden_states`]), c).toBeLessThanOrEqual(1e-4);
      }
      // the placeholder count must match the tiles' features
      const one = io['image.input_ids'];
      await expect(enc.forward({ inputIds: one, pixelValues: io['image_tiles.pixel_values'] })).rejects.toThrow(/12 image features|\[12, 64\].*4 placeholder/);
    } finally {
      enc.dispose();
    }
  });

  it('X2I\'s prompt, tokens and tiles: the reference queries, ids and pixel values; encodePrompt end to end', async () => {
    const io: Record<string, Tensor> = await x2i.loadSafetensors(path.join(dir, 'io.safetensors'));
    const meta = JSON.parse(fs.readFileSync(path.join(dir, 'meta.json'), 'utf8'));
    const tok = x2i.InternVLTokenizer.fromPretrained(dir);
    const text = (c: string) => /'Text input': '(.*)', 'Instruction/.exec(meta[c].instruction)![1];
    for (const c of ['text', 'text_padded', 'image', 'image_tiles']) {
      const q = tok.prompt(text(c), { imageTiles: meta[c].n_tiles ? [meta[c].n_tiles] : [], tokensPerTile: meta.num_image_token });
      expect(q, c).toBe(meta[c].query);
      const { inputIds, attentionMask } = tok.encode(q, c === 'text_padded' ? { maxLength: 512 } : { padding: false });
      expect(Array.from(await inputIds.toArray() as BigInt64Array), c).toEqual(Array.from(await io[`${c}.input_ids`].toArray() as BigInt64Array));
      expect(Array.from(await attentionMask.toArray() as BigInt64Array), c).toEqual(Array.from(await io[`${c}.attention_mask`].toArray() as BigInt64Array));
    }
    const rgb = async (f: string) => {
      const { data, info } = await sharp(path.join(dir, f)).removeAlpha().raw().toBuffer({ resolveWithObject: true });
      return { data: new Uint8Array(data), width: info.width, height: info.height };
    };
    const one = await x2i.preprocessInternVL([await rgb('image.png')], { imageSize: 56, preResize: meta.image.pre_resize });
    expect(one.tiles).toEqual([1]);
    expect(await relErr(one.pixelValues, io['image.pixel_values'])).toBeLessThanOrEqual(1e-6);
    const many = await x2i.preprocessInternVL([await rgb('image_tiles.png')], { imageSize: 56, maxNum: meta.image_tiles.max_num });
    expect(many.tiles).toEqual([3]);
    expect(await relErr(many.pixelValues, io['image_tiles.pixel_values'])).toBeLessThanOrEqual(1e-6);
    // encodePrompt: X2I's 128×128 pre-resize (16×16 at this tile size), the folder's tokenizer, no padding here
    const enc = await x2i.InternVLEncoder.fromPretrained(dir);
    const r = await enc.encodePrompt({ text: 'make it snowy', images: [await rgb('image.png')] }, { padding: false });
    expect(await relErr(r.hiddenStates, io['image.hidden_states'])).toBeLessThanOrEqual(1e-4);
    const padded = await enc.encodePrompt('a red fox jumps over the lazy dog');
    expect(await relErr(padded.hiddenStates, io['text_padded.hidden_states'])).toBeLessThanOrEqual(1e-4);
    enc.dispose();
  });

  it('names what it does not compute: other pixel shuffles, qk-norm ViTs, non-Qwen language models', async () => {
    const config = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'));
    const bad = (patch: (c: Record<string, any>) => void) => { const c = structuredClone(config); patch(c); return c; };
    const cases: [Record<string, unknown>, RegExp][] = [
      [bad((c) => { c.ps_version = 'v1'; }), /ps_version/],
      [bad((c) => { c.vision_config.qk_normalization = true; }), /qk_normalization/],
      [bad((c) => { c.llm_config.architectures = ['InternLM2ForCausalLM']; }), /llm_config.architectures.*InternLM2/],
      [bad((c) => { c.downsample_ratio = 0.3; }), /downsample_ratio/],
      [bad((c) => { delete c.llm_config; }), /llm_config/],
    ];
    for (const [c, re] of cases) await expect(x2i.InternVLEncoder.fromConfig(c)).rejects.toThrow(re);
    const d = tmpDir();
    fs.copyFileSync(path.join(dir, 'model.safetensors'), path.join(d, 'model.safetensors'));
    fs.writeFileSync(path.join(d, 'config.json'), JSON.stringify(bad((c) => { c.vision_config.num_hidden_layers = 1; })));
    await expect(x2i.InternVLEncoder.fromPretrained(d)).rejects.toThrow(/unexpected tensor.*vision_model\.encoder\.layers\.1/);
  });

  it('fromConfig: a random model of the config runs; the same seed gives the same states', async () => {
    const config = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'));
    const io: Record<string, Tensor> = await x2i.loadSafetensors(path.join(dir, 'io.safetensors'));
    const [a, b] = [await x2i.InternVLEncoder.fromConfig(config, { seed: 3, imgContextTokenId: 261 }),
      await x2i.InternVLEncoder.fromConfig(config, { seed: 3, imgContextTokenId: 261 })];
    const inputs = { inputIds: io['image.input_ids'], pixelValues: io['image.pixel_values'] };
    const [ha, hb] = [(await a.forward(inputs)).hiddenStates, (await b.forward(inputs)).hiddenStates];
    expect(await relErr(ha, hb)).toBe(0);
    a.dispose(); b.dispose();
  });
});
