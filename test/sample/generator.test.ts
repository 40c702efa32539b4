import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import * as x2i from '../../lib/index.js';
import { AlignNet, AutoencoderKL, FlowMatchEulerScheduler, FluxPipeline, FluxTransformer, QwenVLEncoder, X2IGenerator } from '../../lib/index.js';
import { golden, studentAlignNetFile, tmpDir } from '../helpers.js';

const tmp = tmpDir();
let gen: X2IGenerator;
// a stand-in tokenizer whose ids fit the tiny Qwen's vocabulary (300)
const fake = {
  x2iPrompt: (t: string) => `X:${t}`,
  applyChatTemplate: (m: unknown) => JSON.stringify(m),
  encode(text: string, opts: { maxLength?: number }) {
    const ids = Array.from(text.slice(0, 10), (c) => BigInt(c.charCodeAt(0) % 280));
    const L = opts.maxLength ?? 16, pad = L - ids.length;
    return { inputIds: x2i.Tensor.fromArray(BigInt64Array.from([...Array(pad).fill(0n), ...ids]), [1, L]),
      attentionMask: x2i.Tensor.fromArray(BigInt64Array.from([...Array(pad).fill(0n), ...ids.map(() => 1n)]), [1, L]) };
  },
} as unknown as x2i.QwenTokenizer;

beforeAll(async () => {
  // an AlignNet from the tiny Qwen (4 stacked states of 64) to the tiny FLUX's conditioning (32-wide sequence, 24 pooled)
  await studentAlignNetFile(path.join(tmp, 'alignnet.safetensors'), 4, 64, 1);
  const { config } = JSON.parse(fs.readFileSync(path.join(golden, 'scheduler', 'cases.json'), 'utf8'));
  gen = new X2IGenerator({
    mllm: await QwenVLEncoder.fromPretrained(path.join(golden, 'qwen2_5_vl')),
    alignNet: await AlignNet.fromPretrained(path.join(tmp, 'alignnet.safetensors')),
    pipeline: new FluxPipeline({ transformer: await FluxTransformer.fromPretrained(path.join(golden, 'flux-transformer')),
      vae: await AutoencoderKL.fromPretrained(path.join(golden, 'vae')), scheduler: new FlowMatchEulerScheduler(config) }),
  });
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

it('X2IGenerator = MLLM hidden states → AlignNet → FLUX (the same images as the steps by hand)', async () => {
  const opts = { tokenizer: fake, maxLength: 16, height: 32, width: 32, numInferenceSteps: 3, seed: 5 };
  const a = await gen.generate({ ...opts, prompt: 'a red circle' });
  expect(a.images.shape).toEqual([1, 3, 32, 32]);
  // the same by hand
  const { hiddenStates } = await gen.mllm.encodePrompt('a red circle', { tokenizer: fake, maxLength: 16 });
  const c = await gen.alignNet.forward(hiddenStates);
  const b = await gen.pipeline.generate({ promptEmbeds: c.encoderHiddenStates, pooledPromptEmbeds: c.pooledProjections,
    height: 32, width: 32, numInferenceSteps: 3, seed: 5 });
  expect(await a.images.toArray()).toEqual(await b.images.toArray());
  const other = await gen.generate({ ...opts, prompt: 'a blue square' });
  expect(await other.images.toArray()).not.toEqual(await a.images.toArray());
  expect((await a.toPng()).subarray(1, 4).toString()).toBe('PNG');
});

it('X2IGenerator passes image-to-image and inpainting on to the pipeline (strength 1 = text-to-image)', async () => {
  const opts = { tokenizer: fake, maxLength: 16, height: 32, width: 32, numInferenceSteps: 2, seed: 5, prompt: 'a red circle' };
  const image = { data: new Uint8Array(32 * 32 * 3).fill(200), width: 32, height: 32 };
  const t2i = await gen.generate(opts);
  const full = await gen.generate({ ...opts, image, strength: 1 });
  expect(await full.images.toArray()).toEqual(await t2i.images.toArray());
  const half = await gen.generate({ ...opts, image, strength: 0.5 });
  expect(await half.images.toArray()).not.toEqual(await t2i.images.toArray());
  await expect(gen.generate({ ...opts, mask: image })).rejects.toThrow(/mask/);
  for (const r of [t2i, full, half]) r.images.dispose();
});

it('no tensor leak across 50 X2IGenerator calls', async () => {
  const { settleGc } = await import('../helpers.js');
  await settleGc();
  const before = x2i.memory().tensors;
  for (let i = 0; i < 50; i++)
    (await gen.generate({ prompt: `cat ${i}`, tokenizer: fake, maxLength: 16, height: 32, width: 32, numInferenceSteps: 1, seed: i })).images.dispose();
  await settleGc();
  expect(x2i.memory().tensors).toBe(before);
});

it('X2IGenerator with the InternVL student (picked by studentFromPretrained): text + image in, the same images as by hand', async () => {
  const dir = path.join(golden, 'internvl2_5');
  const mllm = await x2i.studentFromPretrained(dir);
  expect(mllm).toBeInstanceOf(x2i.InternVLEncoder);
  expect(await x2i.studentFromPretrained(path.join(golden, 'qwen2_5_vl'))).toBeInstanceOf(QwenVLEncoder);
  expect(await x2i.studentFromPretrained(path.join(golden, 'minicpm_o'))).toBeInstanceOf(x2i.MiniCPMOEncoder);
  // AlignNet from InternVL's 3 stacked states of 64 to the tiny FLUX's conditioning
  await studentAlignNetFile(path.join(tmp, 'alignnet-internvl.safetensors'), 3, 64, 11);
  const g = new X2IGenerator({ mllm, alignNet: await AlignNet.fromPretrained(path.join(tmp, 'alignnet-internvl.safetensors')), pipeline: gen.pipeline });
  const image = { data: new Uint8Array(40 * 48 * 3).map((_, i) => (i * 37) % 256), width: 48, height: 40 };
  const opts = { height: 32, width: 32, numInferenceSteps: 2, seed: 3, maxLength: 300 };
  const a = await g.generate({ ...opts, prompt: { text: 'make it snowy', images: [image] } });
  const { hiddenStates } = await (mllm as x2i.InternVLEncoder).encodePrompt({ text: 'make it snowy', images: [image] }, { maxLength: 300 });
  const c = await g.alignNet.forward(hiddenStates);
  const b = await g.pipeline.generate({ promptEmbeds: c.encoderHiddenStates, pooledPromptEmbeds: c.pooledProjections, height: 32, width: 32,
    numInferenceSteps: 2, seed: 3 });
  expect(await a.images.toArray()).toEqual(await b.images.toArray());
  await expect(g.generate({ ...opts, prompt: { text: 'x', video: [image, image] } })).rejects.toThrow(/InternVL student takes text and images/);
  mllm.dispose();
});

it('X2IGenerator generates from a synthetic sound end to end (the MiniCPM-o student): the same images as by hand', async () => {
  const mllm = await x2i.studentFromPretrained(path.join(golden, 'minicpm_o'));
  await studentAlignNetFile(path.join(tmp, 'alignnet-minicpm.safetensors'), 3, 128, 21);
  const g = new X2IGenerator({ mllm, alignNet: await AlignNet.fromPretrained(path.join(tmp, 'alignnet-minicpm.safetensors')), pipeline: gen.pipeline });
  // a chirp with a beat, 1.2 s at 16 kHz, and a plain tone
  const chirp = Float32Array.from({ length: 19200 }, (_, i) => 0.4 * Math.sin(2 * Math.PI * (300 + i / 40) * i / 16000) * (1 + Math.sin(i / 800)) / 2);
  const tone = Float32Array.from({ length: 19200 }, (_, i) => 0.3 * Math.sin(2 * Math.PI * 440 * i / 16000));
  const opts = { height: 32, width: 32, numInferenceSteps: 2, seed: 9 };
  const a = await g.generate({ ...opts, prompt: { audios: [chirp] } });
  expect(a.images.shape).toEqual([1, 3, 32, 32]);
  const { hiddenStates } = await (mllm as x2i.MiniCPMOEncoder).encodePrompt({ audios: [chirp] });
  const c = await g.alignNet.forward(hiddenStates);
  const b = await g.pipeline.generate({ promptEmbeds: c.encoderHiddenStates, pooledPromptEmbeds: c.pooledProjections, ...opts });
  expect(await a.images.toArray()).toEqual(await b.images.toArray());
  const other = await g.generate({ ...opts, prompt: { audios: [tone] } });
  expect(await other.images.toArray()).not.toEqual(await a.images.toArray());
  // the other students do not hear
  await expect(gen.generate({ ...opts, prompt: { audios: [tone] }, tokenizer: fake, maxLength: 16 })).rejects.toThrow(/need the MiniCPM-o student/);
  mllm.dispose();
});
