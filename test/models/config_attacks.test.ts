// Hostile configs and empty inputs (issue 12): zero, negative, fractional, string, non-finite, huge values and
// wrong booleans in every model's config.json (and fromConfig object), and empty batches / sequences / images at
// the API boundary. Every case runs in a child process (a SIGFPE or SIGSEGV is seen, not suffered), several cases
// per child, one JSON line per case: each must end in an X2IError that names the field (or the input) and the file.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { golden, root } from '../helpers.js';

let dir: string;
let bundle: string;

beforeAll(() => {
  // the built package (dist/, rebuilt by npm test's pretest), as the other attack suites load it
  bundle = path.join(root, 'dist', 'index.js');
  expect(fs.existsSync(bundle), 'dist/ is built (npm run build:ts)').toBe(true);
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'x2i-config-attacks-'));
});

afterAll(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});

/** One attack: `value` is the JSON text written for the field (so `1e999`, Infinity once parsed, can be written). */
interface Case { name: string; model: string; path: string[]; value: string; field?: string; file?: string }
interface Result { name: string; ok: boolean; code?: string; message?: string }

// The child: for each case, a copy of the golden folder with config.json edited, loaded through the public API.
const CHILD = String.raw`
import fs from 'node:fs';
import path from 'node:path';
const [bundleUrl, casesFile, work, golden] = process.argv.slice(2);
const x2i = await import(bundleUrl);
const cases = JSON.parse(fs.readFileSync(casesFile, 'utf8'));
const folders = { flux: 'flux-transformer', t5: 't5-encoder', clip: 'clip-text', qwen: 'qwen2_5_vl', vae: 'vae', internvl: 'internvl2_5',
  minicpm: 'minicpm_o' };
const loaders = { flux: x2i.FluxTransformer, t5: x2i.T5Encoder, clip: x2i.ClipTextEncoder, qwen: x2i.QwenVLEncoder, vae: x2i.AutoencoderKL,
  internvl: x2i.InternVLEncoder, minicpm: x2i.MiniCPMOEncoder };
function flatQwen(c) {  // the released flat layout of the same model
  const { text_config: t, ...top } = c;
  const { rope_parameters: rp, ...text } = t;
  const { rope_theta, ...rope } = rp;
  return { ...top, ...text, model_type: 'qwen2_5_vl', rope_theta, rope_scaling: rope };
}
let n = 0;
for (const c of cases) {
  const model = c.model === 'qwen-flat' ? 'qwen' : c.model;
  const src = path.join(golden, folders[model]);
  const d = path.join(work, 'case' + n++);
  fs.mkdirSync(d);
  for (const f of fs.readdirSync(src)) if (f !== 'io.safetensors') fs.symlinkSync(path.join(src, f), path.join(d, f));
  fs.rmSync(path.join(d, 'config.json'));
  let cfg = JSON.parse(fs.readFileSync(path.join(src, 'config.json'), 'utf8'));
  if (c.model === 'qwen-flat') cfg = flatQwen(cfg);
  let o = cfg;
  for (const k of c.path.slice(0, -1)) o = o[k];
  o[c.path.at(-1)] = '@@VALUE@@';
  fs.writeFileSync(path.join(d, 'config.json'), JSON.stringify(cfg, null, 1).replace('"@@VALUE@@"', c.value));
  try {
    const m = await loaders[model].fromPretrained(d);
    m.dispose();
    console.log(JSON.stringify({ name: c.name, ok: true }));
  } catch (e) {
    console.log(JSON.stringify({ name: c.name, ok: false, code: e.code, message: e.message }));
  }
}
`;

function runChild(script: string, args: string[]): { results: Result[]; status: number | null; signal: string | null; stderr: string } {
  const file = path.join(dir, `child-${Math.random().toString(36).slice(2)}.mjs`);
  fs.writeFileSync(file, script);
  const r = spawnSync(process.execPath, [file, new URL(`file://${bundle}`).href, ...args], { encoding: 'utf8', timeout: 120_000 });
  const results = r.stdout.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Result);
  return { results, status: r.status, signal: r.signal, stderr: r.stderr };
}

function attack(cases: Case[]): Result[] {
  const casesFile = path.join(dir, `cases-${Math.random().toString(36).slice(2)}.json`);
  fs.writeFileSync(casesFile, JSON.stringify(cases));
  const work = fs.mkdtempSync(path.join(dir, 'work-'));
  const r = runChild(CHILD, [casesFile, work, golden]);
  expect(r.signal, r.stderr).toBeNull();
  expect(r.status, r.stderr).toBe(0);
  expect(r.results.map((x) => x.name)).toEqual(cases.map((c) => c.name));
  return r.results;
}

/** The same field with every hostile value of its kind. */
const BAD_SIZES = ['0', '-1', '2.5', '"abc"', '"8"', '1e999', '1e12', 'true', '[4]', '{}'];
const BAD_EPS = ['0', '-1e-6', '"1e-6"', '1e999', 'false', '[1e-6]'];
const BAD_BOOLS = ['"false"', '"true"', '0', '1', '"yes"'];

function sweep(model: string, p: string[], values: string[]): Case[] {
  return values.map((value) => ({ name: `${model} ${p.join('.')} = ${value}`, model, path: p, value }));
}

function expectConfigErrors(cases: Case[], results: Result[]): void {
  for (const [i, r] of results.entries()) {
    const c = cases[i];
    const field = c.field ?? c.path.at(-1)!;
    expect(r.ok, `${c.name} was accepted`).toBe(false);
    expect(r.code, `${c.name}: ${r.message}`).toBe('ERR_CONFIG');
    expect(r.message, c.name).toContain(field);
    expect(r.message, c.name).toContain(c.file ?? 'config.json');
  }
}

describe('hostile config values (each in a child process)', () => {
  it('FluxTransformer: sizes, counts, theta, axes, guidance_embeds', () => {
    const cases = [
      ...['in_channels', 'num_layers', 'num_single_layers', 'attention_head_dim', 'num_attention_heads', 'joint_attention_dim',
        'pooled_projection_dim'].flatMap((k) => sweep('flux', [k], ['-1', '2.5', '"2"', '1e999', '1e12', 'true'])),
      ...sweep('flux', ['in_channels'], ['0']), ...sweep('flux', ['num_attention_heads'], ['0']),
      ...sweep('flux', ['out_channels'], ['0', '-3', '16.5', '"16"']),
      ...sweep('flux', ['theta'], ['"abc"', '0', '-10000', '1e999', '"10000"']),
      ...sweep('flux', ['guidance_embeds'], BAD_BOOLS),
      ...sweep('flux', ['axes_dims_rope'], ['[4, 6, 7]', '[4, 6, 8]', '[4, 6, "6"]', '[4, 6, 6.5]', '[]', '"4,6,6"', '[0, 8, 8]']),
      ...sweep('flux', ['patch_size'], ['2', '"1"']),
    ];
    expectConfigErrors(cases, attack(cases));
  }, 120_000);

  it('T5Encoder and ClipTextEncoder: sizes, heads, buckets, eps', () => {
    const cases = [
      ...['vocab_size', 'd_model', 'd_kv', 'd_ff', 'num_layers', 'num_heads'].flatMap((k) => sweep('t5', [k], BAD_SIZES)),
      ...sweep('t5', ['relative_attention_num_buckets'], ['0', '1', '3', '33', '"32"']),
      ...sweep('t5', ['relative_attention_max_distance'], ['0', '-128', '"128"', '8']),
      ...sweep('t5', ['layer_norm_epsilon'], BAD_EPS), ...sweep('t5', ['d_model'], ['null']), ...sweep('clip', ['vocab_size'], ['null']),
      ...['vocab_size', 'hidden_size', 'intermediate_size', 'num_attention_heads', 'num_hidden_layers', 'max_position_embeddings']
        .flatMap((k) => sweep('clip', [k], BAD_SIZES)),
      ...sweep('clip', ['num_attention_heads'], ['5', '3']),
      ...sweep('clip', ['eos_token_id'], ['-1', '2.5', '"99"']),
      ...sweep('clip', ['layer_norm_eps'], BAD_EPS),
    ];
    expectConfigErrors(cases, attack(cases));
  }, 120_000);

  it('QwenVLEncoder (transformers-5 nested and released flat configs): text and vision fields, divisibility, rope', () => {
    const textKeys = ['vocab_size', 'hidden_size', 'intermediate_size', 'num_hidden_layers', 'num_attention_heads', 'num_key_value_heads'];
    const visionKeys = ['depth', 'hidden_size', 'num_heads', 'intermediate_size', 'out_hidden_size', 'patch_size', 'spatial_merge_size',
      'temporal_patch_size', 'window_size', 'in_channels'];
    const cases: Case[] = [
      ...textKeys.flatMap((k) => sweep('qwen', ['text_config', k], BAD_SIZES)),
      ...textKeys.flatMap((k) => sweep('qwen-flat', [k], ['0', '2.5', '"64"', '1e999'])),
      ...sweep('qwen', ['text_config', 'num_key_value_heads'], ['3']), ...sweep('qwen', ['text_config', 'num_attention_heads'], ['3', '8']),
      ...sweep('qwen-flat', ['num_key_value_heads'], ['3']),
      ...sweep('qwen', ['text_config', 'rms_norm_eps'], BAD_EPS), ...sweep('qwen-flat', ['rms_norm_eps'], BAD_EPS),
      ...sweep('qwen', ['text_config', 'rope_parameters', 'rope_theta'], ['"abc"', '0', '-1', '1e999']),
      ...sweep('qwen-flat', ['rope_theta'], ['"abc"', '0']),
      ...sweep('qwen', ['text_config', 'rope_parameters', 'mrope_section'], ['[2, 3, 4]', '[2, 3, 3.5]', '[2, 3, "3"]', '[-2, 5, 5]'])
        .map((c) => ({ ...c, field: 'mrope_section' })),
      ...sweep('qwen-flat', ['rope_scaling', 'mrope_section'], ['[2, 3, 4]', '[8, 0, -0.5]']).map((c) => ({ ...c, field: 'mrope_section' })),
      ...visionKeys.flatMap((k) => sweep('qwen', ['vision_config', k], ['0', '-1', '2.5', '"4"', '1e999', '1e12'])),
      ...sweep('qwen', ['vision_config', 'num_heads'], ['3', '16']), ...sweep('qwen', ['vision_config', 'window_size'], ['50']),
      ...sweep('qwen', ['vision_config', 'out_hidden_size'], ['32']),
      ...sweep('qwen', ['vision_config', 'tokens_per_second'], ['0', '"2"', '1e999']),
      ...sweep('qwen', ['vision_config', 'fullatt_block_indexes'], ['[2]', '[-1]', '[0.5]', '"1"']),
      ...sweep('qwen', ['image_token_id'], ['-1', '290.5', '"290"']),
      ...sweep('qwen', ['text_config'], ['"none"', '[1]']),
      ...sweep('qwen', ['vision_config'], ['"none"', '7']),
    ];
    expectConfigErrors(cases, attack(cases));
  }, 120_000);

  it('the zoo\'s students (InternVL2.5, MiniCPM-o 2.6): vision, audio and language model fields', () => {
    const vit = ['hidden_size', 'num_hidden_layers', 'num_attention_heads', 'intermediate_size', 'image_size'];
    const lm = ['vocab_size', 'hidden_size', 'intermediate_size', 'num_hidden_layers', 'num_attention_heads', 'num_key_value_heads'];
    const SIZES = ['0', '-1', '2.5', '"8"', '1e999', '1e12', 'true'];
    const cases: Case[] = [
      ...vit.flatMap((k) => sweep('internvl', ['vision_config', k], SIZES)),
      ...lm.flatMap((k) => sweep('internvl', ['llm_config', k], SIZES)),
      ...sweep('internvl', ['vision_config', 'num_attention_heads'], ['3']), ...sweep('internvl', ['llm_config', 'num_key_value_heads'], ['3']),
      ...sweep('internvl', ['downsample_ratio'], ['0', '-0.5', '"0.5"', '1e999', '0.3']),
      ...sweep('internvl', ['vision_config', 'layer_norm_eps'], BAD_EPS), ...sweep('internvl', ['llm_config', 'rms_norm_eps'], BAD_EPS),
      ...sweep('internvl', ['ps_version'], ['"v1"']), ...sweep('internvl', ['select_layer'], ['-2', '"x"']),
      ...sweep('internvl', ['vision_config', 'qk_normalization'], ['true']), ...sweep('internvl', ['vision_config', 'norm_type'], ['"rms_norm"']),
      ...sweep('internvl', ['llm_config'], ['"none"', '[1]']),
      ...lm.flatMap((k) => sweep('minicpm', [k], SIZES)),
      ...vit.flatMap((k) => sweep('minicpm', ['vision_config', k], SIZES)),
      ...['d_model', 'encoder_layers', 'encoder_attention_heads', 'encoder_ffn_dim'].flatMap((k) => sweep('minicpm', ['audio_config', k], SIZES)),
      ...sweep('minicpm', ['audio_config', 'encoder_ffn_dim'], ['96']), ...sweep('minicpm', ['audio_config', 'activation_function'], ['"relu"']),
      ...sweep('minicpm', ['query_num'], SIZES), ...sweep('minicpm', ['audio_pool_step'], ['0', '-2', '2.5', '"2"']),
      ...sweep('minicpm', ['audio_chunk_length'], ['"1"', '1e999']),
      ...sweep('minicpm', ['vision_config'], ['"none"', '7']), ...sweep('minicpm', ['audio_config'], ['"none"', '7']),
    ];
    expectConfigErrors(cases, attack(cases));
  }, 180_000);

  it('the zoo students\' forward inputs: spans, grids, frame counts and shapes that do not fit are named errors', () => {
    const script = String.raw`
import path from 'node:path';
const [bundleUrl, golden] = process.argv.slice(2);
const x2i = await import(bundleUrl);
const T = (a, shape) => x2i.Tensor.fromArray(BigInt64Array.from(a.map(BigInt)), shape);
const io = await x2i.loadSafetensors(path.join(golden, 'minicpm_o', 'io.safetensors'));
const vio = await x2i.loadSafetensors(path.join(golden, 'internvl2_5', 'io.safetensors'));
const m = await x2i.MiniCPMOEncoder.fromPretrained(path.join(golden, 'minicpm_o'));
const v = await x2i.InternVLEncoder.fromPretrained(path.join(golden, 'internvl2_5'));
const img = { inputIds: io['image.input_ids'], pixelValues: [io['image.pixel_values.0']], tgtSizes: io['image.tgt_sizes'], imageBound: io['image.image_bound'] };
const aud = { inputIds: io['audio.input_ids'], audioFeatures: io['audio.features'], audioFeatureLens: io['audio.audio_feature_lens'], audioBounds: io['audio.audio_bounds'] };
const cases = [
  ['image span past the end', /inside the 68 tokens/, () => m.forward({ ...img, imageBound: T([60, 100000], [1, 2]) })],
  ['image span negative', /inside the/, () => m.forward({ ...img, imageBound: T([-5, 3], [1, 2]) })],
  ['tgtSizes zero', /patch grid/, () => m.forward({ ...img, tgtSizes: T([0, 0], [1, 2]) })],
  ['tgtSizes huge', /patch grid/, () => m.forward({ ...img, tgtSizes: T([1e6, 1e6], [1, 2]) })],
  ['tgtSizes for two slices', /tgtSizes must be \[1, 2\]/, () => m.forward({ ...img, tgtSizes: T([6, 10, 6, 10], [2, 2]) })],
  ['audio lens zero', /frame counts/, () => m.forward({ ...aud, audioFeatureLens: T([0], [1]) })],
  ['audio lens past the frames', /frame counts/, () => m.forward({ ...aud, audioFeatureLens: T([1e9], [1]) })],
  ['audio lens for two clips', /frame counts/, () => m.forward({ ...aud, audioFeatureLens: T([130, 130], [2]) })],
  ['audio features of 40 mels', /\[n, 80, T\]/, async () => m.forward({ ...aud, audioFeatures: await x2i.zeros([1, 40, 130]) })],
  ['audio features over 30 s', /30 s/, async () => m.forward({ ...aud, audioFeatures: await x2i.zeros([1, 80, 4000]), audioFeatureLens: T([4000], [1]) })],
  ['audio span of other length', /audio features for/, () => m.forward({ ...aud, audioBounds: T([1, 2], [1, 2]) })],
  ['minicpm ids past the vocabulary', /token ids/, () => m.forward({ inputIds: T([1, 2, 99999], [1, 3]) })],
  ['internvl tiles not square', /pixelValues has shape/, async () => v.forward({ inputIds: vio['image.input_ids'], pixelValues: await x2i.zeros([1, 3, 56, 42]) })],
  ['internvl tile of 2 channels', /pixelValues has shape/, async () => v.forward({ inputIds: vio['image.input_ids'], pixelValues: await x2i.zeros([1, 2, 56, 56]) })],
  ['internvl more tiles than placeholders', /image features for/, () => v.forward({ inputIds: vio['image.input_ids'], pixelValues: vio['image_tiles.pixel_values'] })],
  ['internvl ids negative', /token ids/, () => v.forward({ inputIds: T([-3, 5], [1, 2]) })],
];
for (const [name, re, fn] of cases) {
  try {
    const r = await fn();
    r.hiddenStates?.dispose();
    console.log(JSON.stringify({ name, ok: true }));
  } catch (e) {
    console.log(JSON.stringify({ name, ok: false, code: e.code, message: e.message, match: re.test(e.message) }));
  }
}
`;
    const r = runChild(script, [golden]);
    expect(r.signal, r.stderr).toBeNull();
    expect(r.status, r.stderr).toBe(0);
    expect(r.results.length, r.stderr).toBe(16);
    for (const x of r.results as (Result & { match?: boolean })[]) {
      expect(x.ok, `${x.name} was accepted`).toBe(false);
      expect(x.match, `${x.name}: ${x.message}`).toBe(true);
    }
  }, 120_000);

  it('AutoencoderKL: channels, groups, block lists, booleans', () => {
    const cases = [
      ...['in_channels', 'out_channels', 'latent_channels', 'norm_num_groups', 'layers_per_block'].flatMap((k) => sweep('vae', [k], BAD_SIZES)),
      ...sweep('vae', ['norm_num_groups'], ['3', '32']), ...sweep('vae', ['latent_channels'], ['null']),
      ...sweep('vae', ['block_out_channels'], ['[]', '[8, 0]', '[8, -16]', '[8, 16.5]', '[8, "16"]', '"8,16"', '[8, 1e12]']),
      ...sweep('vae', ['mid_block_add_attention'], BAD_BOOLS), ...sweep('vae', ['use_quant_conv'], ['"false"', '0']),
      ...sweep('vae', ['down_block_types'], ['"DownEncoderBlock2D"', '["DownEncoderBlock2D"]']),
      ...sweep('vae', ['scaling_factor'], ['0', '"0.36"', '1e999']), ...sweep('vae', ['shift_factor'], ['"0.1"', '1e999']),
    ];
    expectConfigErrors(cases, attack(cases));
  }, 120_000);

  it('fromConfig objects: NaN, Infinity, strings and wrong booleans (all models, AlignNet included)', () => {
    const script = String.raw`
import fs from 'node:fs';
import path from 'node:path';
const [bundleUrl, golden] = process.argv.slice(2);
const x2i = await import(bundleUrl);
const g = (n) => JSON.parse(fs.readFileSync(path.join(golden, n, 'config.json'), 'utf8'));
const flux = { in_channels: 16, num_layers: 1, num_single_layers: 1, attention_head_dim: 16, num_attention_heads: 2,
  joint_attention_dim: 32, pooled_projection_dim: 24, axes_dims_rope: [4, 6, 6] };
const qwen = g('qwen2_5_vl');
const cases = [
  ['flux theta NaN', 'theta', () => x2i.FluxTransformer.fromConfig({ ...flux, theta: NaN })],
  ['flux guidance_embeds "false"', 'guidance_embeds', () => x2i.FluxTransformer.fromConfig({ ...flux, guidance_embeds: 'false' })],
  ['flux num_layers Infinity', 'num_layers', () => x2i.FluxTransformer.fromConfig({ ...flux, num_layers: Infinity })],
  ['flux hidden_size 64.5 (heads)', 'num_attention_heads', () => x2i.FluxTransformer.fromConfig({ ...flux, num_attention_heads: 2.5 })],
  ['t5 d_model NaN', 'd_model', () => x2i.T5Encoder.fromConfig({ ...g('t5-encoder'), d_model: NaN })],
  ['t5 num_layers 2.5', 'num_layers', () => x2i.T5Encoder.fromConfig({ ...g('t5-encoder'), num_layers: 2.5 })],
  ['clip layer_norm_eps -1e-5', 'layer_norm_eps', () => x2i.ClipTextEncoder.fromConfig({ ...g('clip-text'), layer_norm_eps: -1e-5 })],
  ['clip text_config string', 'text_config', () => x2i.ClipTextEncoder.fromConfig({ text_config: 'x' })],
  ['qwen num_key_value_heads 0', 'num_key_value_heads', () => x2i.QwenVLEncoder.fromConfig({ ...qwen,
    text_config: { ...qwen.text_config, num_key_value_heads: 0 } })],
  ['qwen hidden_size 64.5', 'hidden_size', () => x2i.QwenVLEncoder.fromConfig({ ...qwen, text_config: { ...qwen.text_config, hidden_size: 64.5 } })],
  ['qwen rms_norm_eps NaN', 'rms_norm_eps', () => x2i.QwenVLEncoder.fromConfig({ ...qwen, text_config: { ...qwen.text_config, rms_norm_eps: NaN } })],
  ['vae norm_num_groups 0', 'norm_num_groups', () => x2i.AutoencoderKL.fromConfig({ ...g('vae'), norm_num_groups: 0 })],
  ['vae norm_num_groups NaN', 'norm_num_groups', () => x2i.AutoencoderKL.fromConfig({ ...g('vae'), norm_num_groups: NaN })],
  ['vae mid_block_add_attention "false"', 'mid_block_add_attention', () => x2i.AutoencoderKL.fromConfig({ ...g('vae'), mid_block_add_attention: 'false' })],
  ['alignnet layers 2.5', 'layers', () => x2i.AlignNet.fromConfig({ layers: 2.5, inputDim: 8, sequenceDim: 8, pooledDim: 8 })],
  ['alignnet inputDim "8"', 'inputDim', () => x2i.AlignNet.fromConfig({ layers: 3, inputDim: '8', sequenceDim: 8, pooledDim: 8 })],
  ['alignnet pooledDim 1e12', 'pooledDim', () => x2i.AlignNet.fromConfig({ layers: 3, inputDim: 8, sequenceDim: 8, pooledDim: 1e12 })],
  ['alignnet normEps -1', 'normEps', () => x2i.AlignNet.fromConfig({ layers: 3, inputDim: 8, sequenceDim: 8, pooledDim: 8, normEps: -1 })],
  ['alignnet normEps NaN', 'normEps', () => x2i.AlignNet.fromConfig({ layers: 3, inputDim: 8, sequenceDim: 8, pooledDim: 8, normEps: NaN })],
  ['alignnet kernelSize 0', 'kernelSize', () => x2i.AlignNet.fromConfig({ layers: 3, inputDim: 8, sequenceDim: 8, pooledDim: 8, kernelSize: 0 })],
  ['alignnet norm_eps "1e-6" (fromPretrained)', 'norm_eps', () => x2i.AlignNet.fromPretrained(path.join(golden, 'alignnet', 'alignnet.safetensors'),
    { config: { norm_eps: '1e-6' } })],
  ['alignnet norm_eps 0 (fromPretrained)', 'norm_eps', () => x2i.AlignNet.fromPretrained(path.join(golden, 'alignnet', 'alignnet.safetensors'),
    { config: { norm_eps: 0 } })],
];
for (const [name, field, fn] of cases) {
  try {
    const m = await fn();
    m.dispose();
    console.log(JSON.stringify({ name, field, ok: true }));
  } catch (e) {
    console.log(JSON.stringify({ name, field, ok: false, code: e.code, message: e.message }));
  }
}
`;
    const r = runChild(script, [golden]);
    expect(r.signal, r.stderr).toBeNull();
    expect(r.status, r.stderr).toBe(0);
    expect(r.results.length).toBe(22);
    for (const x of r.results as (Result & { field: string })[]) {
      expect(x.ok, `${x.name} was accepted`).toBe(false);
      expect(x.code, `${x.name}: ${x.message}`).toBe('ERR_CONFIG');
      expect(x.message, x.name).toContain(x.field);
      expect(x.message, x.name).toMatch(/^(config|options\.config): /);
    }
  }, 120_000);
});

describe('empty batches, sequences and images (in a child process)', () => {
  it('every model refuses a zero-size input by name and shape, before native code', () => {
    const script = String.raw`
import fs from 'node:fs';
import path from 'node:path';
const [bundleUrl, golden] = process.argv.slice(2);
const x2i = await import(bundleUrl);
const { Tensor } = x2i;
const g = (n) => JSON.parse(fs.readFileSync(path.join(golden, n, 'config.json'), 'utf8'));
const ids = (shape) => Tensor.fromArray(new BigInt64Array(shape.reduce((a, b) => a * b, 1)), shape);
const f32 = (shape) => Tensor.fromArray(new Float32Array(shape.reduce((a, b) => a * b, 1)), shape);
const t5 = await x2i.T5Encoder.fromConfig(g('t5-encoder'));
const clip = await x2i.ClipTextEncoder.fromConfig(g('clip-text'));
const qwen = await x2i.QwenVLEncoder.fromConfig(g('qwen2_5_vl'));
const vae = await x2i.AutoencoderKL.fromConfig(g('vae'));
const align = await x2i.AlignNet.fromConfig({ layers: 5, inputDim: 32, sequenceDim: 24, pooledDim: 32 });
const flux = await x2i.FluxTransformer.fromConfig({ in_channels: 16, num_layers: 1, num_single_layers: 1, attention_head_dim: 16,
  num_attention_heads: 2, joint_attention_dim: 32, pooled_projection_dim: 24, axes_dims_rope: [4, 6, 6] });
const fluxInputs = (o) => ({ hiddenStates: f32([1, 4, 16]), encoderHiddenStates: f32([1, 3, 32]), pooledProjections: f32([1, 24]),
  timestep: f32([1]), guidance: f32([1]), imgIds: f32([4, 3]), txtIds: f32([3, 3]), ...o });
const cases = [
  ['t5 inputIds [0, 4]', 'inputs.inputIds', () => t5.forward({ inputIds: ids([0, 4]) })],
  ['t5 inputIds [2, 0]', 'inputs.inputIds', () => t5.forward({ inputIds: ids([2, 0]) })],
  ['t5 encodePrompt []', 'text', () => t5.encodePrompt([])],
  ['clip inputIds [0, 4]', 'inputs.inputIds', () => clip.forward({ inputIds: ids([0, 4]) })],
  ['clip inputIds [1, 0]', 'inputs.inputIds', () => clip.forward({ inputIds: ids([1, 0]) })],
  ['clip encodePrompt []', 'text', () => clip.encodePrompt([])],
  ['qwen inputIds [0, 5]', 'inputs.inputIds', () => qwen.forward({ inputIds: ids([0, 5]) })],
  ['qwen inputIds [1, 0]', 'inputs.inputIds', () => qwen.forward({ inputIds: ids([1, 0]) })],
  ['qwen generate inputIds [1, 0]', 'inputs.inputIds', () => qwen.generate({ inputIds: ids([1, 0]) })],
  ['qwen pixelValues [0, 1176]', 'inputs.pixelValues', () => qwen.forward({ inputIds: ids([1, 5]), pixelValues: f32([0, 1176]), imageGridThw: ids([0, 3]) })],
  ['qwen encodePrompt {images: []}', 'prompt', () => qwen.encodePrompt({ images: [] })],
  ['vae decode [1, 4, 0, 0]', 'latents', () => vae.decode(f32([1, 4, 0, 0]))],
  ['vae encode [0, 3, 32, 32]', 'image', () => vae.encode(f32([0, 3, 32, 32]))],
  ['vae encode [1, 3, 0, 32]', 'image', () => vae.encode(f32([1, 3, 0, 32]))],
  ['alignnet hiddenStates [0, 5, 9, 32]', 'hiddenStates', () => align.forward(f32([0, 5, 9, 32]))],
  ['alignnet hiddenStates [1, 5, 0, 32]', 'hiddenStates', () => align.forward(f32([1, 5, 0, 32]))],
  ['flux hiddenStates [1, 0, 16]', 'inputs.hiddenStates', () => flux.forward(fluxInputs({ hiddenStates: f32([1, 0, 16]), imgIds: f32([0, 3]) }))],
  ['flux batch 0', 'inputs.hiddenStates', () => flux.forward(fluxInputs({ hiddenStates: f32([0, 4, 16]) }))],
  ['flux denoise timesteps []', 'timesteps', () => flux.denoise(fluxInputs({}), [], [1])],
  ['flux denoise sigmas [NaN]', 'sigmas', () => flux.denoise(fluxInputs({}), [1], [1, NaN])],
  ['qwen ropeIndex inputIds [1, 0]', 'inputs.inputIds', () => qwen.ropeIndex({ inputIds: ids([1, 0]) })],
  ['flux encoderHiddenStates [1, 0, 32]', 'inputs.encoderHiddenStates', () => flux.forward(fluxInputs({ encoderHiddenStates: f32([1, 0, 32]), txtIds: f32([0, 3]) }))],
];
for (const [name, input, fn] of cases) {
  try {
    await fn();
    console.log(JSON.stringify({ name, input, ok: true }));
  } catch (e) {
    console.log(JSON.stringify({ name, input, ok: false, code: e.code, message: e.message }));
  }
}
for (const m of [t5, clip, qwen, vae, align, flux]) m.dispose();
`;
    const r = runChild(script, [golden]);
    expect(r.signal, r.stderr).toBeNull();
    expect(r.status, r.stderr).toBe(0);
    expect(r.results.length).toBe(22);
    for (const x of r.results as (Result & { input: string })[]) {
      expect(x.ok, `${x.name} was accepted`).toBe(false);
      expect(x.code, `${x.name}: ${x.message}`).toBe('ERR_INVALID_ARG');
      expect(x.message, x.name).toContain(x.input);
      expect(x.message, x.name).not.toMatch(/TensorList|stack expects|c10|at::/);
      if (x.input.startsWith('inputs.') || ['latents', 'image', 'hiddenStates'].includes(x.input)) expect(x.message, x.name).toMatch(/shape \[/);
    }
  }, 120_000);
});
