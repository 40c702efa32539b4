// MiniCPM-o 2.6 as an X2I student against the golden tensors of the MiniCPM-o code X2I ships: the audio features
// (Whisper encoder, projection, pooling), the image features (SigLIP NaViT, resampler) and every layer's hidden
// state for text, audio, image and mixed prompts.
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import * as x2i from '../../lib/index.js';
import type { Tensor } from '../../lib/index.js';
import sharp from 'sharp';
import { golden, relErr } from '../helpers.js';

const dir = path.join(golden, 'minicpm_o');

describe('MiniCPMOEncoder (golden, float32)', () => {
  it('matches the reference: audio and image features, and all-layer hidden states of text, audio, image and mixed prompts', async () => {
    const io: Record<string, Tensor> = await x2i.loadSafetensors(path.join(dir, 'io.safetensors'));
    const enc = await x2i.MiniCPMOEncoder.fromPretrained(dir);
    try {
      const audio = await enc.encodeAudio(io['audio.features'], io['audio.audio_feature_lens']);
      expect(audio.shape).toEqual(io['audio.embeds'].shape);
      expect(await relErr(audio, io['audio.embeds'])).toBeLessThanOrEqual(1e-4);
      const image = await enc.encodeImages([io['image.pixel_values.0']], io['image.tgt_sizes']);
      expect(image.shape).toEqual(io['image.embeds'].shape);
      expect(await relErr(image, io['image.embeds'])).toBeLessThanOrEqual(1e-4);
      const cases: Record<string, x2i.MiniCPMOInputs> = {
        text: { inputIds: io['text.input_ids'], attentionMask: io['text.attention_mask'] },
        audio: { inputIds: io['audio.input_ids'], audioFeatures: io['audio.features'], audioFeatureLens: io['audio.audio_feature_lens'],
          audioBounds: io['audio.audio_bounds'] },
        image: { inputIds: io['image.input_ids'], pixelValues: [io['image.pixel_values.0']], tgtSizes: io['image.tgt_sizes'],
          imageBound: io['image.image_bound'] },
        mixed: { inputIds: io['mixed.input_ids'], pixelValues: [io['mixed.pixel_values.0']], tgtSizes: io['mixed.tgt_sizes'],
          imageBound: io['mixed.image_bound'], audioFeatures: io['mixed.audio_features'], audioFeatureLens: io['mixed.audio_feature_lens'],
          audioBounds: io['mixed.audio_bounds'] },
      };
      for (const [c, inputs] of Object.entries(cases)) {
        const { hiddenStates } = await enc.forward(inputs);
        expect(hiddenStates.shape, c).toEqual(io[`${c}.hidden_states`].shape);
        expect(await relErr(hiddenStates, io[`${c}.hidden_states`]), c).toBeLessThanOrEqual(1e-4);
      }
      // the spans must hold exactly the features
      await expect(enc.forward({ ...cases.audio, audioBounds: io['image.image_bound'] })).rejects.toThrow(/32 audio features for 8 tokens/);
    } finally {
      enc.dispose();
    }
  });

  it('the audio features from the golden waveform (x2i.audio.logMel) give the golden hidden states', async () => {
    const io: Record<string, Tensor> = await x2i.loadSafetensors(path.join(dir, 'io.safetensors'));
    const enc = await x2i.MiniCPMOEncoder.fromPretrained(dir);
    const wave = (await x2i.audio.load(path.join(dir, 'mixed_audio.wav'))).waveform;
    const f = await x2i.audio.logMel(wave);
    const feats = x2i.Tensor.fromArray(await f.toArray() as Float32Array, [1, ...f.shape]);
    const lens = x2i.Tensor.fromArray(BigInt64Array.from([BigInt(f.shape[1])]), [1]);
    const { hiddenStates } = await enc.forward({ inputIds: io['mixed.input_ids'], pixelValues: [io['mixed.pixel_values.0']],
      tgtSizes: io['mixed.tgt_sizes'], imageBound: io['mixed.image_bound'], audioFeatures: feats, audioFeatureLens: lens,
      audioBounds: io['mixed.audio_bounds'] });
    expect(await relErr(hiddenStates, io['mixed.hidden_states'])).toBeLessThanOrEqual(1e-4);
    enc.dispose();
  });

  it('the processor as X2I calls it: the reference ids, spans, slices and features from the raw text, images and sounds', async () => {
    const io: Record<string, Tensor> = await x2i.loadSafetensors(path.join(dir, 'io.safetensors'));
    const enc = await x2i.MiniCPMOEncoder.fromPretrained(dir);
    const rgb = async (f: string) => {
      const { data, info } = await sharp(path.join(dir, f)).removeAlpha().raw().toBuffer({ resolveWithObject: true });
      return { data: new Uint8Array(data), width: info.width, height: info.height };
    };
    const ints = async (t?: Tensor) => (t ? Array.from(await t.toArray() as BigInt64Array, Number) : undefined);
    const prompts: Record<string, x2i.MiniCPMOPrompt> = {
      text: { text: 'a red fox jumps over the lazy dog' },
      audio: { audios: [await x2i.audio.load(path.join(dir, 'audio.wav'))] },
      image: { images: [await rgb('image.png')] },
      mixed: { text: 'make it a watercolor', images: [await rgb('mixed_image.png')], audios: [await x2i.audio.load(path.join(dir, 'mixed_audio.wav'))] },
    };
    for (const [c, prompt] of Object.entries(prompts)) {
      const ins = await enc.processPrompt(prompt);
      expect(await ints(ins.inputIds), c).toEqual(await ints(io[`${c}.input_ids`]));
      if (c === 'image' || c === 'mixed') {
        expect(await ints(ins.imageBound), c).toEqual(await ints(io[`${c}.image_bound`]));
        expect(await ints(ins.tgtSizes), c).toEqual(await ints(io[`${c}.tgt_sizes`]));
        expect(await relErr(ins.pixelValues![0], io[`${c}.pixel_values.0`]), c).toBeLessThanOrEqual(1e-6);
      }
      if (c === 'audio' || c === 'mixed') {
        expect(await ints(ins.audioBounds), c).toEqual(await ints(io[`${c}.audio_bounds`]));
        expect(await ints(ins.audioFeatureLens), c).toEqual(await ints(io[`${c}.audio_feature_lens`]));
        expect(await relErr(ins.audioFeatures!, io[c === 'audio' ? 'audio.features' : 'mixed.audio_features']), c).toBeLessThanOrEqual(1e-4);
      }
      const { hiddenStates } = await enc.encodePrompt(prompt);
      expect(await relErr(hiddenStates, io[`${c}.hidden_states`]), c).toBeLessThanOrEqual(1e-4);
    }
    enc.dispose();
  });

  it('names what it does not compute and checks its inputs', async () => {
    const config = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'));
    const bad = (patch: (c: Record<string, any>) => void) => { const c = structuredClone(config); patch(c); return c; };
    await expect(x2i.MiniCPMOEncoder.fromConfig(bad((c) => { c.audio_config.encoder_ffn_dim = 96; }))).rejects.toThrow(/encoder_ffn_dim/);
    await expect(x2i.MiniCPMOEncoder.fromConfig(bad((c) => { c.vision_config.hidden_act = 'relu'; }))).rejects.toThrow(/hidden_act/);
    await expect(x2i.MiniCPMOEncoder.fromConfig(bad((c) => { delete c.audio_config; }))).rejects.toThrow(/audio_config/);
    const enc = await x2i.MiniCPMOEncoder.fromConfig(bad((c) => { c.init_vision = false; }), { seed: 1 });
    const io: Record<string, Tensor> = await x2i.loadSafetensors(path.join(dir, 'io.safetensors'));
    await expect(enc.encodeImages([io['image.pixel_values.0']], io['image.tgt_sizes'])).rejects.toThrow(/no vision tower/);
    await expect(enc.encodeAudio(await x2i.zeros([1, 40, 20]))).rejects.toThrow(/\[n, 80, T\].*\[1, 40, 20\]/);
    enc.dispose();
  });
});
