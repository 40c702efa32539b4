/**
 * `x2i serve`: the HTTP generation service (`createServer`, lib/app/server.ts) over models loaded as `x2i generate`
 * loads them, or over random models (`--tiny`: a tiny configuration that runs on any CPU; `--random flux-dev`: the
 * real sizes, for load tests) with no weights. SIGTERM and SIGINT drain it: new and queued requests get 503, the
 * running batches finish, then the command returns 0.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { X2IError } from '../core/errors.js';
import { LIMITS, finiteOption, imageSide, integerOption, parseNumberArg, positiveInt, seedOption } from '../core/options.js';
import type { DType } from '../core/tensor.js';
import type { ServedModel, ServerOptions, X2IServer } from './server.js';

export const SERVE_USAGE = `  serve                the HTTP generation service (POST /v1/generate, /v1/generate/stream (SSE), GET /health,
                       GET /metrics); SIGTERM / Ctrl-C: finish the running work, refuse the rest (503), exit 0
                       --flux DIR|FILE --vae DIR (default: FLUX folder's vae/)
                       student: --mllm DIR --alignnet FILE (requests' "model": "student"; the default)
                       teacher: --text-encoder DIR --text-encoder-2 DIR (default: beside --flux, loaded when
                                there is no --mllm or when given; "model": "teacher")
                       --tiny (random tiny models, no weights, on the CPU too) or --random flux-dev (random weights at
                       FLUX.1-dev + Qwen2.5-VL-7B size) --seed 0 (their weights)
                       --lora PATH[:SCALE] (repeatable; requests name adapters in "loraScales")
                       --host 127.0.0.1 --port 8080 --device cpu|cuda[:N] --dtype float32|bfloat16
                       --max-queue 16 (waiting requests per device; more: 429) --max-batch 4 --batch-window-ms 10
                       --body-limit-mib 32 --max-image-side 2048 --max-pixels 4194304 --max-steps 100
                       --file-root DIR (requests may name image files under it; default: no paths)
                       request defaults: --height --width (1024; tiny 64) --steps (28; tiny 8) --guidance 3.5
                       --max-length 512 (the student's prompt tokens; tiny 256)
                       --quiet, -q (no request log) --help, -h (this text)
`;

// ------------------------------------------------------------------------------------------------ random models

/** A byte-level BPE tokenizer.json with no merges (every UTF-8 byte one token: text in any language) and the
 * Qwen2.5-VL special tokens after the 256 bytes; a QwenTokenizer is built from it. */
function byteLevelTokenizerJson(): { json: unknown; special: Record<string, number> } {
  const bs: number[] = [];
  for (let i = 33; i <= 126; i++) bs.push(i);
  for (let i = 161; i <= 172; i++) bs.push(i);
  for (let i = 174; i <= 255; i++) bs.push(i);
  const cs = [...bs];
  let n = 0;
  for (let b = 0; b < 256; b++) if (!bs.includes(b)) { bs.push(b); cs.push(256 + n++); }
  const vocab: Record<string, number> = {};
  bs.forEach((b, i) => { vocab[String.fromCodePoint(cs[i])] = b; });  // GPT-2's bytes_to_unicode
  const names = ['<|endoftext|>', '<|im_start|>', '<|im_end|>', '<|vision_start|>', '<|vision_end|>', '<|image_pad|>', '<|video_pad|>'];
  const special = Object.fromEntries(names.map((s, i) => [s, 256 + i]));
  const byteLevel = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: false, use_regex: false };
  return { special, json: { version: '1.0', truncation: null, padding: null,
    added_tokens: names.map((s, i) => ({ id: 256 + i, content: s, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true })),
    normalizer: null, pre_tokenizer: byteLevel, post_processor: null, decoder: byteLevel,
    model: { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: false,
      byte_fallback: false, ignore_merges: false, vocab: { ...vocab, ...special }, merges: [] } } };
}

export interface RandomServedModelOptions {
  /** 'tiny' (default): a 2 + 2-block FLUX 32 wide, a 2-level VAE, a 3-layer Qwen2.5-VL-architecture student (vision
   * tower too) and its AlignNet — 64² images in about a second on a CPU. 'flux-dev': FLUX.1-dev, its VAE, a
   * Qwen2.5-VL-7B-size student and AlignNet (about 40 GB in bf16: a GPU). */
  size?: 'tiny' | 'flux-dev';
  /** Default 'cpu'. */
  device?: string;
  /** Default: bfloat16 on CUDA, float32 on the CPU. */
  dtype?: DType;
  /** Seed of the random weights (default 0). */
  seed?: number;
}

/** What `x2i serve --tiny` serves: an X2I student with random weights and a byte-level tokenizer (text in any
 * language, prompt images), with request defaults that fit its size. `dispose()` frees its models. */
export async function randomServedModel(opts: RandomServedModelOptions = {}): Promise<ServedModel & { dispose(): void }> {
  const size = opts.size ?? 'tiny';
  if (size !== 'tiny' && size !== 'flux-dev') throw new X2IError(`size: expected 'tiny' or 'flux-dev', got ${JSON.stringify(size)}`, 'ERR_INVALID_ARG');
  const seed = opts.seed === undefined ? 0 : seedOption('seed', opts.seed);
  const x2i = await import('../index.js');
  const { json, special } = byteLevelTokenizerJson();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'x2i-tokenizer-'));
  let tokenizer: import('../models/tokenizers.js').QwenTokenizer;
  try {
    fs.writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify(json));
    tokenizer = x2i.QwenTokenizer.fromPretrained(dir);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  const ids = { image_token_id: special['<|image_pad|>'], video_token_id: special['<|video_pad|>'],
    vision_start_token_id: special['<|vision_start|>'], vision_end_token_id: special['<|vision_end|>'] };
  const tiny = size === 'tiny';
  const qwen = tiny
    ? { model_type: 'qwen2_5_vl', vocab_size: 264, hidden_size: 64, intermediate_size: 128, num_hidden_layers: 3, num_attention_heads: 4,
      num_key_value_heads: 2, rms_norm_eps: 1e-6, rope_theta: 10000, rope_scaling: { type: 'mrope', mrope_section: [2, 3, 3] }, ...ids,
      vision_config: { depth: 1, hidden_size: 32, intermediate_size: 64, num_heads: 4, in_chans: 3, out_hidden_size: 64, patch_size: 14,
        spatial_merge_size: 2, temporal_patch_size: 2, window_size: 56, fullatt_block_indexes: [0], tokens_per_second: 4 } }
    : { model_type: 'qwen2_5_vl', vocab_size: 152064, hidden_size: 3584, intermediate_size: 18944, num_hidden_layers: 28,
      num_attention_heads: 28, num_key_value_heads: 4, rms_norm_eps: 1e-6, rope_theta: 1e6, rope_scaling: { type: 'mrope', mrope_section: [16, 24, 24] },
      ...ids, vision_config: { depth: 32, hidden_size: 1280, intermediate_size: 3420, num_heads: 16, in_chans: 3, out_hidden_size: 3584,
        patch_size: 14, spatial_merge_size: 2, temporal_patch_size: 2, window_size: 112, fullatt_block_indexes: [7, 15, 23, 31], tokens_per_second: 2 } };
  const flux = tiny ? { in_channels: 16, num_layers: 2, num_single_layers: 2, attention_head_dim: 16, num_attention_heads: 2,
    joint_attention_dim: 32, pooled_projection_dim: 24, guidance_embeds: true, axes_dims_rope: [4, 6, 6] } : {};
  const vae = tiny ? { block_out_channels: [8, 16], down_block_types: ['DownEncoderBlock2D', 'DownEncoderBlock2D'],
    up_block_types: ['UpDecoderBlock2D', 'UpDecoderBlock2D'], layers_per_block: 1, latent_channels: 4, norm_num_groups: 4 } : {};
  const ro = { device: opts.device, dtype: opts.dtype };
  const parts: { dispose(): void }[] = [];
  const own = <T extends { dispose(): void }>(x: T) => (parts.push(x), x);
  const dispose = () => { for (const p of parts.splice(0)) p.dispose(); };
  try {
    const mllm = own(await x2i.QwenVLEncoder.fromConfig(qwen, { ...ro, seed: seed + 1 }));
    const alignNet = own(await x2i.AlignNet.fromConfig(tiny ? { layers: 4, inputDim: 64, sequenceDim: 32, pooledDim: 24, kernelSize: 3 } : {},
      { ...ro, seed: seed + 2 }));
    const transformer = own(await x2i.FluxTransformer.fromConfig(flux, { ...ro, seed: seed + 3 }));
    const autoencoder = own(await x2i.AutoencoderKL.fromConfig(vae, { ...ro, seed: seed + 4 }));
    const generator = new x2i.X2IGenerator({ mllm, alignNet, pipeline: new x2i.FluxPipeline({ transformer, vae: autoencoder }) });
    return { generator, tokenizer, maxLength: tiny ? 256 : 512, defaults: tiny ? { height: 64, width: 64, numInferenceSteps: 8, guidanceScale: 3.5 }
      : { height: 1024, width: 1024, numInferenceSteps: 28, guidanceScale: 3.5 }, dispose };
  } catch (e) {
    dispose();
    throw e;
  }
}

// ------------------------------------------------------------------------------------------------ the command

/** `--lora PATH[:SCALE]` (as `x2i generate`): a path that exists is taken whole; else the scale follows the last ':'. */
function loraArg(s: string): { file: string; scale: number } {
  if (fs.existsSync(s)) return { file: s, scale: 1 };
  const i = s.lastIndexOf(':');
  const file = i > 0 ? s.slice(0, i) : s;
  if (i <= 0 || !fs.existsSync(file)) throw new X2IError(`--lora: ${s}: no such file`, 'ERR_FILE_NOT_FOUND');
  const t = s.slice(i + 1).trim();
  const scale = Number(t);
  if (t === '' || !Number.isFinite(scale))
    throw new X2IError(`--lora: ${s}: the scale after the last ':' must be a finite number, got ${JSON.stringify(s.slice(i + 1))}`, 'ERR_INVALID_ARG');
  return { file, scale };
}

function mustExist(flag: string, f: string | undefined): void {
  if (f !== undefined && !fs.existsSync(f)) throw new X2IError(`${flag}: ${f}: no such file or folder`, 'ERR_FILE_NOT_FOUND');
}

/**
 * `x2i serve [options]` (SERVE_USAGE): loads the models, serves until SIGTERM / SIGINT, drains, and resolves to the
 * exit status (0 after a clean drain). User errors (a bad flag value, a missing file) throw X2IErrors naming the
 * flag before any model loads (the CLI prints them and exits 2).
 */
export async function serveCommand(args: string[]): Promise<number> {
  const { values: v } = parseArgs({ args, options: {
    flux: { type: 'string' }, vae: { type: 'string' }, mllm: { type: 'string' }, alignnet: { type: 'string' },
    'text-encoder': { type: 'string' }, 'text-encoder-2': { type: 'string' }, lora: { type: 'string', multiple: true },
    tiny: { type: 'boolean', default: false }, demo: { type: 'boolean', default: false }, random: { type: 'string' },
    seed: { type: 'string', default: '0' },
    host: { type: 'string', default: '127.0.0.1' }, port: { type: 'string', default: '8080' },
    device: { type: 'string', default: 'cpu' }, dtype: { type: 'string' },
    'max-queue': { type: 'string', default: '16' }, 'max-batch': { type: 'string', default: '4' }, 'batch-window-ms': { type: 'string', default: '10' },
    'body-limit-mib': { type: 'string', default: '32' }, 'max-image-side': { type: 'string', default: '2048' },
    'max-pixels': { type: 'string', default: String(2048 * 2048) }, 'max-steps': { type: 'string', default: '100' },
    'file-root': { type: 'string' }, height: { type: 'string' }, width: { type: 'string' }, steps: { type: 'string' },
    guidance: { type: 'string' }, 'max-length': { type: 'string' }, quiet: { type: 'boolean', short: 'q', default: false },
    help: { type: 'boolean', short: 'h', default: false } } });
  if (v.help) {
    process.stdout.write(`usage: x2i serve [options]\n\n${SERVE_USAGE}`);
    return 0;
  }
  const fail = (msg: string) => (process.stderr.write(`x2i serve: ${msg}\n`), 2);
  const random = v.tiny || v.demo ? 'tiny' : v.random;
  if (random !== undefined && random !== 'tiny' && random !== 'flux-dev') return fail(`--random: expected tiny or flux-dev, got ${JSON.stringify(random)}`);
  if (random && (v.flux || v.mllm || v.alignnet || v['text-encoder'] || v['text-encoder-2'] || v.vae))
    return fail('--tiny / --random serve random models: give no model paths with them');
  if (!random && !v.flux) return fail('give --flux (and --mllm --alignnet for the student), or --tiny for random tiny models');
  if ((v.mllm || v.alignnet) && (!v.mllm || !v.alignnet)) return fail('the student needs both --mllm and --alignnet');
  if (v.lora?.length && random) return fail('--lora needs --flux (the adapters load onto its transformer)');
  // every option checked before a model loads
  const num = (k: keyof typeof v) => parseNumberArg(`--${k}`, v[k] as string);
  const port = integerOption('--port', num('port'), { min: 0, max: 65535 });
  const maxSteps = positiveInt('--max-steps', num('max-steps'), LIMITS.inferenceSteps);
  const serverOpts: Omit<ServerOptions, 'generator' | 'models'> = {
    host: v.host, port,
    maxQueue: integerOption('--max-queue', num('max-queue'), { min: 0, max: 1_000_000 }),
    maxBatch: integerOption('--max-batch', num('max-batch'), { min: 1, max: 1024 }),
    batchWindowMs: integerOption('--batch-window-ms', num('batch-window-ms'), { min: 0, max: 60_000 }),
    bodyLimit: Math.round(finiteOption('--body-limit-mib', num('body-limit-mib'), { min: 0.001, max: 2048 }) * 2 ** 20),
    maxImageSide: integerOption('--max-image-side', num('max-image-side'), { min: 16, max: LIMITS.imageSide }),
    maxPixels: integerOption('--max-pixels', num('max-pixels'), { min: 256, max: LIMITS.imageSide ** 2 }),
    maxSteps,
  };
  if (v['file-root'] !== undefined) {
    mustExist('--file-root', v['file-root']);
    if (!fs.statSync(v['file-root']).isDirectory()) throw new X2IError(`--file-root: ${v['file-root']} is not a folder`, 'ERR_INVALID_ARG');
    serverOpts.fileRoot = v['file-root'];
  }
  const multiple = random === 'tiny' ? 4 : 16;  // 2 × the VAE's factor: the tiny VAE's 2, FLUX's 8
  const defaults = {
    ...(v.height !== undefined ? { height: imageSide('--height', num('height'), multiple) } : {}),
    ...(v.width !== undefined ? { width: imageSide('--width', num('width'), multiple) } : {}),
    ...(v.steps !== undefined ? { numInferenceSteps: positiveInt('--steps', num('steps'), maxSteps) } : {}),
    ...(v.guidance !== undefined ? { guidanceScale: finiteOption('--guidance', num('guidance'), { min: 0, max: 100 }) } : {}),
  };
  const maxLength = v['max-length'] !== undefined ? positiveInt('--max-length', num('max-length'), 1 << 20) : undefined;
  const seed = seedOption('--seed', num('seed'));
  if (v.dtype !== undefined && !['float32', 'bfloat16', 'float16'].includes(v.dtype))
    return fail(`--dtype: expected float32, bfloat16 or float16, got ${JSON.stringify(v.dtype)}`);
  for (const k of ['flux', 'vae', 'mllm', 'alignnet', 'text-encoder', 'text-encoder-2'] as const) mustExist(`--${k}`, v[k]);
  const loras = (v.lora ?? []).map(loraArg);

  const x2i = await import('../index.js');
  const { createServer } = await import('./server.js');
  const opts = { device: v.device, dtype: v.dtype as DType | undefined };
  const disposers: { dispose(): void }[] = [];
  const models: Record<string, ServedModel> = {};
  const log = (s: string) => process.stderr.write(`x2i serve: ${s}\n`);
  let server: X2IServer | undefined;
  try {
    if (random) {
      log(`building random ${random} models on ${v.device} (seed ${seed})`);
      const m = await randomServedModel({ size: random as 'tiny' | 'flux-dev', device: v.device, dtype: opts.dtype, seed });
      disposers.push(m);
      models.student = { ...m, maxLength: maxLength ?? m.maxLength, defaults: { ...m.defaults, ...defaults } };
    } else {
      const flux = v.flux!;
      const root = fs.existsSync(path.join(flux, 'transformer')) ? flux : path.dirname(flux);
      const own = <T extends { dispose(): void }>(x: T) => (disposers.push(x), x);
      log(`loading ${flux}`);
      const transformer = own(await x2i.FluxTransformer.fromPretrained(flux, opts));
      for (const l of loras) {
        const file = fs.existsSync(path.join(l.file, 'trainer.json'))
          ? path.join(x2i.LoraTrainer.latestCheckpoint(l.file), 'lora.safetensors') : l.file;
        const name = await transformer.loadLora(file, { scale: l.scale });
        log(`LoRA '${name}' (scale ${l.scale}) from ${l.file}`);
      }
      const vae = own(await x2i.AutoencoderKL.fromPretrained(v.vae ?? path.join(root, 'vae'), opts));
      const schedulerFile = path.join(root, 'scheduler', 'scheduler_config.json');
      const scheduler = fs.existsSync(schedulerFile) ? x2i.FlowMatchEulerScheduler.fromPretrained(schedulerFile) : new x2i.FlowMatchEulerScheduler();
      const served = (generator: ServedModel['generator']): ServedModel => ({ generator, maxLength, defaults });
      if (v.mllm) {
        log(`loading the student ${v.mllm} + ${v.alignnet}`);
        const mllm = own(await x2i.studentFromPretrained(v.mllm, opts));
        const alignNet = own(await x2i.AlignNet.fromPretrained(v.alignnet!, opts));
        models.student = served(new x2i.X2IGenerator({ mllm, alignNet, pipeline: new x2i.FluxPipeline({ transformer, vae, scheduler }) }));
      }
      if (!v.mllm || v['text-encoder'] || v['text-encoder-2']) {
        const clipDir = v['text-encoder'] ?? path.join(root, 'text_encoder'), t5Dir = v['text-encoder-2'] ?? path.join(root, 'text_encoder_2');
        mustExist('--text-encoder', clipDir);
        mustExist('--text-encoder-2', t5Dir);
        log(`loading the teacher's text encoders ${clipDir} + ${t5Dir}`);
        const textEncoder = own(await x2i.ClipTextEncoder.fromPretrained(clipDir, opts));
        const textEncoder2 = own(await x2i.T5Encoder.fromPretrained(t5Dir, opts));
        models.teacher = served(new x2i.FluxPipeline({ transformer, vae, scheduler, textEncoder, textEncoder2 }));
      }
    }
    server = await createServer({ ...serverOpts, models, logger: false, onResponse: v.quiet ? undefined
      : (e) => log(`${e.stream ? 'stream' : 'generate'} #${e.id ?? '-'} ${e.model ?? ''} ${e.status} ${e.ms.toFixed(0)} ms` +
        (e.batchSize ? ` (batch of ${e.batchSize})` : '')) }).catch((e: NodeJS.ErrnoException) => {
      if (e?.code === 'EADDRINUSE') throw new X2IError(`--port: ${v.host}:${port} is in use`, 'ERR_INVALID_ARG', { cause: e });
      if (e?.code === 'EADDRNOTAVAIL' || e?.code === 'ENOTFOUND' || e?.code === 'EAI_AGAIN')
        throw new X2IError(`--host: cannot listen on ${JSON.stringify(v.host)} (${e.code})`, 'ERR_INVALID_ARG', { cause: e });
      throw e;
    });
    log(`serving ${server.models.join(', ')} at ${server.url} (POST /v1/generate, /v1/generate/stream; GET /health, /metrics)`);
    const s = server;
    let stop: ((signal: NodeJS.Signals) => void) | undefined;
    await new Promise<void>((resolve) => {
      let stopping = false;
      stop = (signal: NodeJS.Signals) => {
        if (stopping) {
          log(`${signal} again: exiting without waiting`);
          process.exit(1);
        }
        stopping = true;
        const st = s.stats();
        const running = Object.values(st.devices).reduce((a, d) => a + d.inFlight, 0);
        const queued = Object.values(st.devices).reduce((a, d) => a + d.queued, 0);
        log(`${signal}: finishing ${running} running request(s), refusing ${queued} queued and any new (503)`);
        void s.close().then(resolve, resolve);
      };
      process.on('SIGTERM', stop);
      process.on('SIGINT', stop);
    });
    process.off('SIGTERM', stop!);
    process.off('SIGINT', stop!);
    log('drained; bye');
    return 0;
  } finally {
    if (server && !server.closing) await server.close();
    for (const d of disposers.splice(0)) d.dispose();
  }
}
