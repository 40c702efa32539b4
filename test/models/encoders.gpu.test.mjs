// The encoders, AlignNet, the VAE and the pipeline on CUDA: float32 against the golden references, bf16 runs.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import * as x2i from '../../dist/index.js';

const golden = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', 'fixtures', 'golden');
const skip = x2i.cuda.isAvailable() ? false : 'CUDA is not available';
const gpuIt = (name, fn) => it(name, { skip }, fn);
const io = (d) => x2i.loadSafetensors(path.join(golden, d, 'io.safetensors'), { device: 'cuda' });
const close = async (got, want, tol, what) => {
  const e = await x2i.relativeError(got, want);
  assert.ok(e <= tol, `${what}: rel err ${e} > ${tol}`);
};

describe('models on CUDA', () => {
  gpuIt('T5, CLIP, Qwen2.5-VL (text and image), AlignNet, VAE: float32 = golden; bf16 within a sanity bound', async () => {
    for (const dtype of ['float32', 'bfloat16']) {
      const tol = dtype === 'float32' ? 1e-4 : 0.5;  // bf16: a sanity bound (random tiny models amplify rounding)
      const o = { device: 'cuda', dtype };
      const t = await io('t5-encoder');
      const t5 = await x2i.T5Encoder.fromPretrained(path.join(golden, 't5-encoder'), o);
      await close((await t5.forward({ inputIds: t.input_ids })).hiddenStates, t.hidden_states, tol, `t5 ${dtype}`);
      const c = await io('clip-text');
      const clip = await x2i.ClipTextEncoder.fromPretrained(path.join(golden, 'clip-text'), o);
      await close((await clip.forward({ inputIds: c.input_ids })).pooledOutput, c.pooler_output, tol, `clip ${dtype}`);
      const q = await io('qwen2_5_vl');
      const qwen = await x2i.QwenVLEncoder.fromPretrained(path.join(golden, 'qwen2_5_vl'), o);
      await close((await qwen.forward({ inputIds: q['text.input_ids'], attentionMask: q['text.attention_mask'] })).hiddenStates,
        q['text.hidden_states_x2i'], tol, `qwen text ${dtype}`);
      await close((await qwen.forward({ inputIds: q['image.input_ids'], pixelValues: q['image.pixel_values'],
        imageGridThw: q['image.image_grid_thw'] })).hiddenStates, q['image.hidden_states'], tol, `qwen image (M-RoPE) ${dtype}`);
      await close((await qwen.forward({ inputIds: q['video.input_ids'], pixelValuesVideos: q['video.pixel_values_videos'],
        videoGridThw: q['video.video_grid_thw'], secondPerGridT: 0.5 })).hiddenStates, q['video.hidden_states'], tol, `qwen video ${dtype}`);
      const a = await io('alignnet');
      const net = await x2i.AlignNet.fromPretrained(path.join(golden, 'alignnet', 'diffusion_pytorch_model.bin'), o);
      await close((await net.forward(a.hidden_states)).encoderHiddenStates, a.encoder_hidden_states, tol, `alignnet ${dtype}`);
      const v = await io('vae');
      const vae = await x2i.AutoencoderKL.fromPretrained(path.join(golden, 'vae'), o);
      await close(await vae.decode(v.latents), v.decoded, tol, `vae decode ${dtype}`);
      await close(await vae.encode(v.image), v.encoded_mean, tol, `vae encode ${dtype}`);
      for (const m of [t5, clip, qwen, net, vae]) m.dispose();
    }
  });

  gpuIt('FluxPipeline on CUDA: golden step latents and image (float32)', async () => {
    const p = await io('pipeline');
    const { config } = JSON.parse(fs.readFileSync(path.join(golden, 'scheduler', 'cases.json'), 'utf8'));
    const o = { device: 'cuda', dtype: 'float32' };
    const pipe = new x2i.FluxPipeline({ transformer: await x2i.FluxTransformer.fromPretrained(path.join(golden, 'flux-transformer'), o),
      vae: await x2i.AutoencoderKL.fromPretrained(path.join(golden, 'vae'), o), scheduler: new x2i.FlowMatchEulerScheduler(config) });
    const r = await pipe.generate({ promptEmbeds: p.prompt_embeds, pooledPromptEmbeds: p.pooled_prompt_embeds, latents: p.latents,
      height: 32, width: 32, numInferenceSteps: 4, guidanceScale: 3.5, returnStepLatents: true });
    await close(r.stepLatents, p.step_latents, 1e-3, 'step latents');
    await close(r.images, p.image, 1e-3, 'image');
  });

  gpuIt('QwenVLEncoder.generate on CUDA (float32) = on the CPU: the same tokens and answer states', async () => {
    const dir = path.join(golden, 'qwen2_5_vl');
    const ids = new BigInt64Array([0n, 0n, 5n, 17n, 42n, 99n, 7n]), mask = new BigInt64Array([0n, 0n, 1n, 1n, 1n, 1n, 1n]);
    const run = async (device) => {
      const m = await x2i.QwenVLEncoder.fromPretrained(dir, { device, dtype: 'float32' });
      const r = await m.generate({ inputIds: await x2i.Tensor.fromArray(ids, [1, 7]).to({ device }),
        attentionMask: await x2i.Tensor.fromArray(mask, [1, 7]).to({ device }) }, { maxNewTokens: 8, eosTokenIds: [] });
      m.dispose();
      return r;
    };
    const [cpu, gpu] = [await run('cpu'), await run('cuda')];
    assert.deepEqual(gpu.tokens, cpu.tokens);
    await close(await gpu.answerStates.to({ device: 'cpu' }), cpu.answerStates, 1e-4, 'answer states');
  });
});
