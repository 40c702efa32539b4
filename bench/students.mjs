// The X2I model zoo's students at real size on a GPU (issue 14), random bf16 weights (fromConfig): the language
// models' prefill of 4 × 512 tokens with all-layer capture against the same forward without capture —
// MiniCPM-o 2.6 (Qwen2.5-7B) and InternVL2.5-4B (Qwen2.5-3B) —, their vision towers (InternViT-300M + mlp1 on four
// 448² tiles; SigLIP-400M + resampler on one 448² slice) and MiniCPM-o's audio tower (Whisper-medium encoder +
// projection + pooling) on 30 s of audio; against transformers / PyTorch eager in the same run
// (--baseline bench/baselines/students_prefill.py, after this process freed the GPU). Wall time of the awaited
// call, synchronised, median of 10 after 3 warm-ups.
//   node bench/students.mjs [--baseline bench/baselines/students_prefill.py] [--json out.json] [--tiny (CPU check)]
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import * as x2i from '../dist/index.js';

const { values: args } = parseArgs({ options: { baseline: { type: 'string' }, json: { type: 'string' }, tiny: { type: 'boolean', default: false } } });
const tiny = args.tiny, device = tiny ? 'cpu' : 'cuda', dtype = tiny ? 'float32' : 'bfloat16';
if (!tiny && !x2i.cuda.isAvailable()) { console.error('bench/students.mjs needs CUDA (or --tiny)'); process.exit(1); }
const B = tiny ? 2 : 4, S = tiny ? 32 : 512, TILE = tiny ? 56 : 448, AUDIO_S = tiny ? 2 : 30;
const qwen2 = (hidden, layers, heads, kv, inter, vocab) => ({ architectures: ['Qwen2ForCausalLM'], model_type: 'qwen2', hidden_size: hidden,
  num_hidden_layers: layers, num_attention_heads: heads, num_key_value_heads: kv, intermediate_size: inter, vocab_size: vocab,
  rms_norm_eps: 1e-6, rope_theta: 1e6, hidden_act: 'silu' });
export const INTERNVL_4B = tiny ? { model_type: 'internvl_chat', downsample_ratio: 0.5, ps_version: 'v2', select_layer: -1, force_image_size: 56,
  vision_config: { hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 4, intermediate_size: 64, image_size: 56, patch_size: 14 },
  llm_config: qwen2(64, 2, 4, 2, 128, 300) }
  : { model_type: 'internvl_chat', downsample_ratio: 0.5, ps_version: 'v2', select_layer: -1, force_image_size: 448,
    vision_config: { hidden_size: 1024, num_hidden_layers: 24, num_attention_heads: 16, intermediate_size: 4096, image_size: 448, patch_size: 14,
      layer_norm_eps: 1e-6, qkv_bias: true, norm_type: 'layer_norm', qk_normalization: false, hidden_act: 'gelu' },
    llm_config: qwen2(2048, 36, 16, 2, 11008, 151674) };
export const MINICPM_O = tiny ? { ...qwen2(128, 2, 4, 2, 256, 300), model_type: 'minicpmo', query_num: 8, audio_pool_step: 2, audio_chunk_length: 1.0,
  vision_config: { hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 4, intermediate_size: 64, image_size: 70, patch_size: 14 },
  audio_config: { d_model: 32, encoder_layers: 2, encoder_attention_heads: 4, encoder_ffn_dim: 128, num_mel_bins: 80, max_source_positions: 1500 } }
  : { ...qwen2(3584, 28, 28, 4, 18944, 151700), model_type: 'minicpmo', query_num: 64, audio_pool_step: 2, audio_chunk_length: 1.0,
    vision_config: { hidden_size: 1152, num_hidden_layers: 27, num_attention_heads: 16, intermediate_size: 4304, image_size: 980, patch_size: 14,
      layer_norm_eps: 1e-6, hidden_act: 'gelu_pytorch_tanh' },
    audio_config: { d_model: 1024, encoder_layers: 24, encoder_attention_heads: 16, encoder_ffn_dim: 4096, num_mel_bins: 80,
      max_source_positions: 1500, activation_function: 'gelu' } };

const result = { date: new Date().toISOString(), device: tiny ? 'cpu' : null, batch: B, seq: S, tile: TILE, audioSeconds: AUDIO_S, runs: {} };
const sync = async () => { if (!tiny) await x2i.cuda.synchronize(); };
const median = async (fn, n = tiny ? 2 : 10) => {
  for (let i = 0; i < (tiny ? 1 : 3); i++) await fn();
  await sync();
  const ts = [];
  for (let i = 0; i < n; i++) { const t0 = performance.now(); await fn(); await sync(); ts.push(performance.now() - t0); }
  return ts.sort((a, b) => a - b)[Math.floor(n / 2)];
};
const ids = (vocab, fill) => {
  const a = new BigInt64Array(B * S), mk = new BigInt64Array(B * S);
  for (let i = 0; i < B * S; i++) {
    const pad = (i / S | 0) % 2 === 1 && i % S >= S - 64;  // two rows right-padded by 64 (X2I pads InternVL on the right)
    a[i] = pad ? 0n : BigInt(fill ?? (100 + ((i * 7919) % (vocab - 200))));
    mk[i] = pad ? 0n : 1n;
  }
  return [x2i.Tensor.fromArray(a, [B, S]), x2i.Tensor.fromArray(mk, [B, S])];
};
const dispose = (r) => r.hiddenStates?.dispose?.() ?? r.dispose?.();

async function prefill(name, m, vocab) {
  const [i0, m0] = ids(vocab);
  const inputIds = await i0.to({ device }), attentionMask = await m0.to({ device });
  const run = async (capture) => dispose(await m.forward({ inputIds, attentionMask, capture }));
  const r = { capture_ms: await median(() => run(true)), no_capture_ms: await median(() => run(false)) };
  r.capture_overhead = r.capture_ms / r.no_capture_ms - 1;
  result.runs[name] = r;
  inputIds.dispose(); attentionMask.dispose();
}

const t0 = performance.now();
{
  const m = await x2i.InternVLEncoder.fromConfig(INTERNVL_4B, { device, dtype, seed: 0 });
  result.internvl_build_s = (performance.now() - t0) / 1000;
  await prefill('internvl4b_prefill', m, INTERNVL_4B.llm_config.vocab_size);
  const tiles = await x2i.randn([4, 3, TILE, TILE], { seed: 1, device, dtype });
  result.runs.internvl4b_vision = { ms: await median(async () => dispose(await m.encodeImages(tiles))), tiles: 4 };
  tiles.dispose(); m.dispose();
}
{
  const m = await x2i.MiniCPMOEncoder.fromConfig(MINICPM_O, { device, dtype, seed: 0 });
  await prefill('minicpmo_prefill', m, MINICPM_O.vocab_size);
  const g = TILE / 14;
  const strip = await x2i.randn([3, 14, g * g * 14], { seed: 2, device, dtype });
  const tgt = x2i.Tensor.fromArray(new BigInt64Array([BigInt(g), BigInt(g)]), [1, 2]);
  result.runs.minicpmo_vision = { ms: await median(async () => dispose(await m.encodeImages([strip], tgt))), patches: g * g };
  const wave = Float32Array.from({ length: AUDIO_S * 16000 }, (_, i) => 0.3 * Math.sin(i / 9) * Math.sin(i / 4000));
  const feats0 = await x2i.audio.logMel(wave);
  const feats = await x2i.Tensor.fromArray(await feats0.toArray(), [1, ...feats0.shape]).to({ device, dtype });
  const lens = x2i.Tensor.fromArray(BigInt64Array.from([BigInt(feats0.shape[1])]), [1]);
  result.runs.minicpmo_audio = { ms: await median(async () => dispose(await m.encodeAudio(feats, lens))), frames: feats0.shape[1] };
  result.runs.minicpmo_logmel = { ms: await median(async () => dispose(await x2i.audio.logMel(wave, { device }))), seconds: AUDIO_S };
  strip.dispose(); feats.dispose(); m.dispose();
}
if (!tiny) result.device = (x2i.cuda.memory().deviceName ?? null);

if (args.baseline) {
  const out = path.join(os.tmpdir(), `students-baseline-${process.pid}.json`);
  const r = spawnSync(process.env.X2I_PYTHON ?? 'python3', [args.baseline, '--batch', String(B), '--seq', String(S), '--tile', String(TILE),
    '--audio-seconds', String(AUDIO_S), ...(tiny ? ['--tiny'] : []), '--json', out], { encoding: 'utf8', timeout: 540_000 });
  if (r.status === 0 && fs.existsSync(out)) result.baseline = JSON.parse(fs.readFileSync(out, 'utf8'));
  else result.baselineError = ((r.stderr || '') + (r.stdout || '')).split('\n').slice(-20).join('\n');
}
const b = result.baseline ?? {};
const f = (x, d = 1) => (typeof x === 'number' ? x.toFixed(d) : '—');
const ratio = (base, ours) => (typeof base === 'number' && typeof ours === 'number' ? (base / ours).toFixed(2) + '×' : '—');
const R = result.runs;
console.log(`X2I students (${tiny ? 'tiny, CPU' : 'real sizes, bf16'}) — ${result.date}`);
console.log('| run | x2i ms | baseline ms | baseline / x2i |');
console.log('|---|---:|---:|---:|');
for (const [k, label] of [['internvl4b_prefill', `InternVL2.5-4B LM prefill ${B} × ${S}, all hidden states`], ['minicpmo_prefill', `MiniCPM-o 2.6 LM prefill ${B} × ${S}, all hidden states`]]) {
  console.log(`| ${label} | ${f(R[k].capture_ms)} | ${f(b[k]?.all_layers_ms)} | ${ratio(b[k]?.all_layers_ms, R[k].capture_ms)} |`);
  console.log(`| the same, last state only | ${f(R[k].no_capture_ms)} | ${f(b[k]?.last_ms)} | ${ratio(b[k]?.last_ms, R[k].no_capture_ms)} |`);
}
console.log(`| InternViT-300M + mlp1, 4 tiles of ${TILE}² | ${f(R.internvl4b_vision.ms)} | ${f(b.internvl4b_vision_ms)} | ${ratio(b.internvl4b_vision_ms, R.internvl4b_vision.ms)} |`);
console.log(`| SigLIP-400M + resampler, one ${TILE}² slice | ${f(R.minicpmo_vision.ms)} | ${f(b.minicpmo_vision_ms)} | ${ratio(b.minicpmo_vision_ms, R.minicpmo_vision.ms)} |`);
console.log(`| Whisper-medium encoder + projection + pooling, ${AUDIO_S} s | ${f(R.minicpmo_audio.ms)} | ${f(b.minicpmo_audio_ms)} | ${ratio(b.minicpmo_audio_ms, R.minicpmo_audio.ms)} |`);
console.log(`| log-mel features, ${AUDIO_S} s | ${f(R.minicpmo_logmel.ms)} | — | — |`);
console.log(`capture overhead (goal ≤ 3%): InternVL ${(R.internvl4b_prefill.capture_overhead * 100).toFixed(2)}%, MiniCPM-o ${(R.minicpmo_prefill.capture_overhead * 100).toFixed(2)}%`);
if (b.error) console.log('baseline error:', b.error);
if (b.errors) console.log('baseline errors:', JSON.stringify(b.errors).slice(0, 2000));
if (result.baselineError) console.log('baseline failed:', result.baselineError);
if (args.json) fs.writeFileSync(args.json, JSON.stringify(result, null, 1));
