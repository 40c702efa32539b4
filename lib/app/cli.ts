/** The `x2i` command line. */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { packageRoot, targetLibTorch } from '../core/native.js';
import { X2IError } from '../core/errors.js';
import { LIMITS, deviceOption, finiteOption, floatDtypeOption, imageOutput, imageSide, integerOption, outputDir, outputFile,
  parseNumberArg, positiveInt, seedOption } from '../core/options.js';
import { decodeRgb } from '../core/image_decode.js';
import { buildInfo, cuda, memory } from '../index.js';
import type { DType } from '../core/tensor.js';
import type { FluxImages } from '../sample/pipeline.js';
import { SERVE_USAGE } from './serve.js';
import { MEMORY_PRESETS, isMemoryPresetName, type MemoryPreset } from './memory_presets.js';
import { Progress, endProgressLine } from './progress.js';

export { Progress, loadingBar, type LoadProgress, type ProgressOptions } from './progress.js';

const OVERVIEW = `usage: x2i <command> [options]

commands:
  generate             an image with FLUX, conditioned by its own text encoders (teacher) or by an MLLM +
                       AlignNet (X2I student); image-to-image, inpainting, LoRA, LightControl
  train                train AlignNet by attention distillation (X2ITrainer)
  train lora           train a LoRA on the frozen FLUX by flow matching (LoraTrainer)
  train lightcontrol   train LightControl's branches (LightControlTrainer)
  eval                 the student against its teacher: CLIP score on prompts (student/teacher ratio), SSIM/PSNR,
                       the distillation loss on held-out samples
  serve                the HTTP generation service (x2i.createServer): JSON or multipart requests, SSE progress,
                       a bounded queue per GPU, batching, /health and /metrics
  demo                 the whole pipeline on a built-in tiny configuration (no download, CPU)
  info                 the native addon, the LibTorch it runs on, CUDA devices
  bench [which]        benchmarks: bridge (default), flux, distill, qwen, finetune, low_rank
  help [command]       this text, or a command's

every command: --help, -h (its options), --quiet, -q (no progress and no messages; errors still print)
x2i --version, -v      the package version

Progress goes to stderr: a bar redrawn in place on a terminal, plain lines (every 10%) otherwise.
Exit status: 0 done, 1 failed, 2 a usage error (a bad flag or value, a missing file; the message names the flag).
`;

const COMMON_HELP = `  --quiet, -q          no progress bars and no messages on stderr (errors still print)
  --help, -h           this text
`;

const TRAIN_RUN_HELP = `  --config FILE.json   options from a JSON object (the long flag names: "lr", "checkpoint-every" or
                       "checkpointEvery", ...); flags on the command line override it
  --resume             continue the run in --out (trainer.json: its latest checkpoint). The options that change
                       the run (model and data paths, lr, warmup, accumulate, height, width, seed, dtype, LoRA
                       rank/alpha/targets, hint, ...) must equal the ones the run recorded; --steps,
                       --checkpoint-every, --keep-last, --device, --gradient-checkpointing and the initial weights
                       may change
  --force-resume       resume even where those options differ (the new ones are recorded)
  --overwrite          replace the checkpoints of a non-empty --out (without it or --resume, a non-empty --out
                       is refused)
  --keep-last 2        checkpoints kept (the newest)
The run folder holds step-NNNNNN-M/ checkpoints, trainer.json (the latest checkpoint, checksums, the effective
options as "config") and metrics.jsonl (one line per optimizer step: step, microStep, loss, lr, gradNorm, seconds;
a resumed run drops the lines after its checkpoint). Ctrl-C stops at a step boundary and saves.
`;

/** Each command's --help. */
const HELP: Record<string, string> = {
  generate: `usage: x2i generate --flux DIR|FILE (--prompt TEXT | --embeds FILE) [options]
       x2i generate --flux DIR|FILE --mllm DIR --alignnet FILE [--prompt TEXT] [--prompt-image FILE]... [options]

an image with FLUX, conditioned by its own text encoders (teacher) or by an MLLM + AlignNet (X2I student)

  --flux DIR|FILE      the transformer: a diffusers folder, its pipeline folder, or a BFL single file
  --vae DIR            default: the FLUX folder's vae/
  --out FILE           .png, .jpg/.jpeg or .webp: the format follows the extension (default out.png)
  --height 1024 --width 1024   multiples of 16 (default: the --image's size, else 1024)
  --steps 28           denoising steps
  --guidance 3.5       FLUX's guidance
  --seed 0             the noise seed (the same noise on every device)
  --device cpu         cpu, cuda or cuda:N
  --dtype DTYPE        float32, bfloat16, float16 or float64 (default: bfloat16 on CUDA, float32 on the CPU)
  --memory full        full: every model stays loaded; 48gb: the student's MLLM encodes and is freed before the
                       transformer loads; 24gb: also FP8 block weights (X2I 1024² in 24 GiB; x2i.MEMORY_PRESETS)
teacher:
  --prompt TEXT        through T5 + CLIP: --text-encoder DIR --text-encoder-2 DIR (default: beside --flux)
  --embeds FILE        precomputed .safetensors (prompt_embeds, pooled_prompt_embeds) instead
student (the kind comes from --mllm's config.json: Qwen2.5-VL, InternVL2.5, MiniCPM-o):
  --mllm DIR --alignnet FILE   with any mix of:
  --prompt TEXT
  --prompt-image FILE  repeatable: images the MLLM reads (EXIF orientation applied, transparency on white)
  --video FILE|DIR     repeatable: a video's frames in order, or a folder of them (.png, .jpg, .webp)
  --audio FILE         repeatable: WAV, FLAC, MP3, OGG (the MiniCPM-o student hears)
image-to-image and inpainting:
  --image FILE         the init image (its size is the default --height/--width)
  --strength 0.6       in (0, 1]: the share of the steps that run
  --mask FILE          inpainting: white = repaint, black = keep
adapters:
  --lora PATH[:SCALE]  repeatable: a LoRA file (diffusers/PEFT, kohya, XLabs) or a 'x2i train lora' run folder;
                       SCALE default 1
  --fuse-lora          merge the adapters into the weights before sampling
  --lightcontrol DIR|FILE --control-image FILE [--control-scale 1.0]   X2I's LightControl
${COMMON_HELP}`,

  train: `usage: x2i train --flux DIR|FILE --alignnet FILE --out DIR (--captions FILE --mllm DIR | --features FILE) [options]
       x2i train lora|lightcontrol ...   (see x2i train lora --help, x2i train lightcontrol --help)

train AlignNet by attention distillation (X2ITrainer)

  --flux DIR|FILE      the transformer (teacher and student share its frozen weights)
  --alignnet FILE      AlignNet's initial weights
  --out DIR            the run folder
data:
  --captions FILE      .jsonl (caption_en, caption or text) or .txt (one a line), with --mllm DIR (student) and
                       --text-encoder DIR --text-encoder-2 DIR (teacher; default: beside --flux)
  --features FILE      precomputed .safetensors (teacher.encoder_hidden_states, teacher.pooled_projections,
                       student.hidden_states; batch on dim 0) instead
  --memory full        full: every model on the GPU (the step at 1024²: ~70 GiB); 48gb: activation checkpointing
                       (with --features, no encoder on the GPU); 24gb: also FP8 block weights (x2i.MEMORY_PRESETS)
  --steps 1000         micro-batches in all (a resumed run continues up to it)
  --lr 1e-4 --warmup 0 --accumulate 1 (micro-batches per optimizer step)
  --checkpoint-every 100   optimizer steps between checkpoints
  --height 1024 --width 1024   multiples of 16
  --device cpu --dtype DTYPE
${TRAIN_RUN_HELP}several GPUs:
  --nproc-per-node N --parallel data|split   one process per GPU, NCCL; data: each rank its share of the
                       captions; split: 2 ranks, teacher | student
  --nnodes M --node-rank I --master-addr HOST --master-port 29500   many nodes (on each)
${COMMON_HELP}`,
};

HELP.serve = `usage: x2i serve [options]\n\n${SERVE_USAGE}`;
for (const kind of ['lora', 'lightcontrol'] as const) HELP[`train ${kind}`] = `usage: x2i train ${kind} --flux DIR|FILE --data DATA --out DIR [options]

${kind === 'lora' ? 'train a LoRA on the frozen FLUX transformer by flow matching (LoraTrainer)'
    : "train LightControl's branches through the frozen FLUX transformer (LightControlTrainer)"}

  --flux DIR|FILE      the transformer
  --vae DIR            default: the FLUX folder's vae/
  --out DIR            the run folder
  --data DATA          a folder of images with .txt/.json sidecars, a JSONL manifest (image, caption,
                       instruction, references), or WebDataset shards (a path, data-{000..009}.tar, a comma list)
conditioning (one of):
  --mllm DIR --alignnet FILE   the X2I student (samples with references: IT2I)
  --text-encoder DIR --text-encoder-2 DIR   the teacher's T5 + CLIP (default: beside --flux)
  --embeds FILE        one precomputed .safetensors (prompt_embeds, pooled_prompt_embeds) for every sample
  --steps 1000 --lr ${kind === 'lora' ? '1e-4' : '1e-5'} --warmup 0 --accumulate 1 --checkpoint-every 100
  --height 1024 --width 1024 --seed 0
  --gradient-checkpointing   less memory, one more forward
  --device cpu --dtype DTYPE
${kind === 'lora' ? `  --rank 16 --alpha 16 (default: the rank)
  --targets to_q,to_k,...   module names or suffixes (default: FLUX's usual set)
  --editing-prompt TEXT     the IT2I template's
` : `  --lightcontrol DIR|FILE   initial branches (default: new ones of the official config)
  --hint source|target      default source; target copies the released script, whose hint is the target image
                            itself: a leak, for reproducing its checkpoints only
`}${TRAIN_RUN_HELP}${COMMON_HELP}`;

Object.assign(HELP, {
  eval: `usage: x2i eval --flux DIR|FILE --alignnet FILE|DIR (--prompts FILE --mllm DIR --clip DIR | --features FILE) [options]

the X2I student against its teacher
  on prompts (--prompts): for each prompt the teacher's image (FLUX on T5 + CLIP) and the student's (MLLM +
  AlignNet) from the same noise, each scored against the prompt by CLIP score (100 · max(cos, 0) of CLIP's image
  and text embeddings), the student/teacher ratio, and their SSIM/PSNR agreement; a summary table on stdout, and
  with --out the images, summary.json and charts (clip_scores.svg/.png, agreement.svg/.png)
  on features (--features): SSIM/PSNR from the same noise and the distillation loss, on held-out samples

  --flux DIR|FILE      the transformer (a diffusers folder: its text encoders beside it)
  --vae DIR            default: the FLUX folder's vae/
  --alignnet FILE|DIR  AlignNet's weights, or a 'x2i train' run folder (its latest checkpoint)
  --prompts FILE       one prompt per line (.txt), or JSONL with "prompt" or "caption"
  --mllm DIR           the student's MLLM (any X2I student; its kind from config.json)
  --clip DIR           a whole CLIP checkpoint (e.g. openai/clip-vit-large-patch14): both towers, projections, tokenizer
  --text-encoder DIR --text-encoder-2 DIR   the teacher's CLIP and T5 (default: beside --flux)
  --out DIR            write teacher_N.png, student_N.png, summary.json and the charts there
  --features FILE      .safetensors as for x2i train (the features mode)
  --steps 28 --height 1024 --width 1024 --guidance 3.5 --seed 0 --device cpu --dtype DTYPE
  --json FILE          also write the results as JSON
${COMMON_HELP}`,

  demo: `usage: x2i demo [--out DIR] [options]

the whole pipeline on a built-in tiny configuration (no download, CPU, ~4-5 min on 2 cores): train a tiny teacher
on drawn shapes, distill a tiny MLLM + AlignNet into it, generate held-out prompts with both, train a style LoRA
on the teacher and apply it to both; writes before.png, after.png, lora.png, loss.png, summary.json

  --out x2i-demo       the output folder
  --seed 0
  --quick              a few steps of each (seconds)
  --student qwen       the tiny student's architecture: qwen, internvl or minicpm-o
${COMMON_HELP}`,

  info: `usage: x2i info

the native addon, the LibTorch it runs on (version, flavour), CUDA devices and backend, threads

${COMMON_HELP}`,

  bench: `usage: x2i bench [bridge|flux|distill|qwen|finetune|low_rank] [options]

  bridge               (default) the N-API call overhead and copy bandwidth vs LibTorch; --mib 256 (copy size)
  flux                 FLUX.1 blocks and the whole model on CUDA, bf16
  distill              the distillation loss kernel and the training step on CUDA
  qwen                 the Qwen2.5-VL-7B-size encoder on CUDA: prefill with and without all-layer capture, vision
  finetune             LoRA and LightControl training steps and generation with an adapter, FLUX.1-dev size
  low_rank             unfused LoRA's one-pass kernel at FLUX.1-dev's adapted layers vs its LibTorch twin
  --baseline PATH      (not bridge) a python3 script of the same math in PyTorch, run with --json
                       (bench/baselines/*.py)
  --json FILE          the results as JSON
${COMMON_HELP}`,
});

function info(): number {
  const b = buildInfo();
  const lines = [
    ['x2i', readVersion()],
    ['node', `${process.version} (${process.platform}-${process.arch})`],
    ['libtorch', `${b.libtorchVersion} (${b.libtorchFlavour})${targetLibTorch() ? '' : ' [no build record]'}`],
    ['cuda', cuda.isAvailable() ? `${cuda.deviceCount()} device(s)` :
      b.builtWithCuda ? 'built with CUDA, but no device visible' : 'not in this build (CPU LibTorch)'],
    ['cuda backend', b.builtWithCuda ? (b.cudaBackendRegistered ? 'registered' : 'NOT registered') : 'n/a'],
    ['threads', String(b.intraOpThreads)],
    ['live tensors', `${memory().tensors} (${memory().bytes} bytes)`],
  ];
  for (const [k, v] of lines) console.log(`${k.padEnd(14)} ${v}`);
  return 0;
}

function readVersion(): string {
  try {
    return JSON.parse(fs.readFileSync(path.join(packageRoot, 'package.json'), 'utf8')).version;
  } catch {
    return '?';
  }
}

// ---------------------------------------------------------------------------------------------------------------
// flags: every command takes --help/-h and --quiet/-q; the training commands --config FILE

type OptionSpec = { type: 'string' | 'boolean'; multiple?: boolean; short?: string; default?: string };
type Values<O extends Record<string, OptionSpec>> = { -readonly [K in keyof O]: O[K] extends { type: 'boolean' } ? boolean
  : O[K] extends { multiple: true } ? string[] | undefined : O[K] extends { default: string } ? string : string | undefined } &
  { quiet: boolean };

const COMMON_OPTIONS = { help: { type: 'boolean', short: 'h' }, quiet: { type: 'boolean', short: 'q' } } as const;

const camel = (k: string) => k.replace(/-([a-z0-9])/g, (_, c: string) => c.toUpperCase());

/** The option a mistyped one was probably meant to be (one edit away, or a prefix of it). */
function closest(name: string, names: string[]): string | undefined {
  const near = (a: string, b: string) => {
    if (Math.abs(a.length - b.length) > 1) return false;
    let i = 0;
    while (i < a.length && a[i] === b[i]) i++;
    return [1, 0].some((da) => [1, 0].some((db) => (da || db) && a.slice(i + da) === b.slice(i + db)));
  };
  return names.find((n) => near(name, n)) ?? names.find((n) => n.startsWith(name) && name.length >= 3);
}

/** A parseArgs error as one line naming the flag, with where to look (exit status 2). */
function usageError(cmd: string, e: unknown, names: string[]): X2IError {
  const msg = (e as Error).message;
  const unknown = /^Unknown option '(-{1,2})([^']*)'/.exec(msg);
  if (unknown) {
    const guess = unknown[1] === '--' ? closest(unknown[2], names) : undefined;
    return new X2IError(`unknown option '${unknown[1]}${unknown[2]}' (${guess ? `did you mean --${guess}? ` : ''}see x2i ${cmd} --help)`, 'ERR_INVALID_ARG');
  }
  const value = /^Option '(-{1,2}[^ ']+)[^']*' argument (missing|is ambiguous)/.exec(msg);
  if (value) return new X2IError(value[2] === 'missing' ? `${value[1]}: expected a value after it (see x2i ${cmd} --help)`
    : `${value[1]}: its value starts with '-': write ${value[1]}=VALUE`, 'ERR_INVALID_ARG');
  return new X2IError(`${msg.split('. ')[0].replace(/\.$/, '')} (see x2i ${cmd} --help)`, 'ERR_INVALID_ARG');
}

/** `--config FILE`: a JSON object of options (long flag names without dashes, kebab-case or camelCase; numbers or
 * strings for values, true/false for switches) → the values as if given on the command line. */
function readConfig(cmd: string, file: string, options: Record<string, OptionSpec>): Record<string, string | boolean> {
  let json: unknown;
  try {
    json = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new X2IError(`--config: ${file}: no such file`, 'ERR_FILE_NOT_FOUND');
    throw new X2IError(`--config: ${file}: ${code ? (e as Error).message : `not valid JSON (${(e as Error).message})`}`, 'ERR_INVALID_ARG');
  }
  if (typeof json !== 'object' || json === null || Array.isArray(json))
    throw new X2IError(`--config: ${file}: expected a JSON object of options ({"lr": 1e-4, "steps": 2000, ...}), got ${Array.isArray(json) ? 'an array' : JSON.stringify(json)}`, 'ERR_INVALID_ARG');
  const names = Object.keys(options).filter((k) => k !== 'help' && k !== 'config');
  const byKey = new Map(names.flatMap((k) => [[k, k], [camel(k), k]]));
  const out: Record<string, string | boolean> = {};
  for (const [key, value] of Object.entries(json)) {
    const k = byKey.get(key);
    if (!k) {
      const guess = closest(key, names);
      throw new X2IError(`--config: ${file}: unknown option ${JSON.stringify(key)} (${guess ? `did you mean "${guess}"? ` : ''}see x2i ${cmd} --help)`, 'ERR_INVALID_ARG');
    }
    if (options[k].type === 'boolean') {
      if (typeof value !== 'boolean') throw new X2IError(`--config: ${file}: "${key}": expected true or false, got ${JSON.stringify(value)}`, 'ERR_INVALID_ARG');
      out[k] = value;
    } else if (typeof value === 'string' || (typeof value === 'number' && Number.isFinite(value))) {
      out[k] = String(value);
    } else {
      throw new X2IError(`--config: ${file}: "${key}": expected a string or a finite number, got ${JSON.stringify(value)}`, 'ERR_INVALID_ARG');
    }
  }
  return out;
}

/**
 * A command's flags: parseArgs (strict) plus --help/-h and --quiet/-q (and --config FILE with `config`), defaults
 * applied last (command line over --config over defaults). `--steps -1` reads -1 as the value. An unknown flag or a
 * missing value is an error naming the flag (exit 2); null when --help was asked.
 */
function parse<O extends Record<string, OptionSpec>>(cmd: string, args: string[], options: O,
  opts: { positionals?: boolean; config?: boolean } = {}): { v: Values<O>; positionals: string[] } | null {
  const all: Record<string, OptionSpec> = { ...options, ...COMMON_OPTIONS, ...(opts.config ? { config: { type: 'string' } } : {}) };
  const fixed: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const m = /^--([^=]+)$/.exec(args[i]);
    if (m && all[m[1]]?.type === 'string' && i + 1 < args.length && /^-(\d|\.\d|inf|nan)/i.test(args[i + 1])) fixed.push(`${args[i]}=${args[++i]}`);
    else fixed.push(args[i]);
  }
  const bare = Object.fromEntries(Object.entries(all).map(([k, { default: _, ...o }]) => [k, o]));
  let parsed: { values: Record<string, unknown>; positionals: string[] };
  try {
    parsed = parseArgs({ args: fixed, options: bare as ParseArgsConfig['options'], allowPositionals: !!opts.positionals, strict: true });
  } catch (e) {
    if (args.includes('--help') || args.includes('-h')) return null;
    throw usageError(cmd, e, Object.keys(all));
  }
  const cli = parsed.values;
  if (cli.help) return null;
  const file = typeof cli.config === 'string' ? readConfig(cmd, cli.config, all) : {};
  const defaults = Object.fromEntries(Object.entries(options).map(([k, o]) => [k, o.default ?? (o.type === 'boolean' ? false : undefined)]));
  const v = { ...defaults, ...file, ...cli } as Record<string, unknown>;
  v.quiet = Boolean(v.quiet);
  return { v: v as Values<O>, positionals: parsed.positionals };
}

function help(cmd: string): number {
  process.stdout.write(HELP[cmd] ?? OVERVIEW);
  return 0;
}

/** `--lora PATH[:SCALE]`: the scale is what follows the last ':' when it is a number (a path that exists as given is
 * taken whole, so paths with ':' in them still work). */
function loraArg(s: string): { file: string; scale: number } {
  if (fs.existsSync(s)) return { file: s, scale: 1 };
  const i = s.lastIndexOf(':');
  const file = i > 0 ? s.slice(0, i) : s;
  if (i <= 0 || !fs.existsSync(file)) throw new X2IError(`--lora: ${s}: no such file`, 'ERR_FILE_NOT_FOUND');
  const scale = Number(s.slice(i + 1).trim());
  if (s.slice(i + 1).trim() === '' || !Number.isFinite(scale))
    throw new X2IError(`--lora: ${s}: the scale after the last ':' must be a finite number, got ${JSON.stringify(s.slice(i + 1))}`, 'ERR_INVALID_ARG');
  return { file, scale };
}

/** A run folder of `x2i train lora|lightcontrol` (trainer.json) → its latest checkpoint's `name`; else the path. */
async function runFile(p: string, name: string): Promise<string> {
  if (!fs.existsSync(path.join(p, 'trainer.json'))) return p;
  const { LoraTrainer } = await import('../train/finetune.js');
  return path.join(LoraTrainer.latestCheckpoint(p), name);
}

/** LightControl branches from a folder, a file or a training run folder (whose config.json the run copied). */
async function loadLightControl(p: string, opts: { device: string; dtype?: DType }) {
  const { LightControl } = await import('../index.js');
  const file = await runFile(p, 'lightcontrol.safetensors');
  const cfg = path.join(p, 'config.json');
  const config = file !== p && fs.existsSync(cfg) ? JSON.parse(fs.readFileSync(cfg, 'utf8')) : undefined;
  return LightControl.fromPretrained(file, { ...opts, config });
}

function mustExist(flag: string, f: string | undefined): void {
  if (f !== undefined && !fs.existsSync(f)) throw new X2IError(`${flag}: ${f}: no such file`, 'ERR_FILE_NOT_FOUND');
}

async function generate(args: string[]): Promise<number> {
  const p = parse('generate', args, {
    flux: { type: 'string' }, vae: { type: 'string' }, prompt: { type: 'string' }, embeds: { type: 'string' },
    'text-encoder': { type: 'string' }, 'text-encoder-2': { type: 'string' }, mllm: { type: 'string' }, alignnet: { type: 'string' },
    'prompt-image': { type: 'string', multiple: true }, audio: { type: 'string', multiple: true }, video: { type: 'string', multiple: true },
    image: { type: 'string' }, strength: { type: 'string' }, mask: { type: 'string' },
    lora: { type: 'string', multiple: true }, 'fuse-lora': { type: 'boolean' }, lightcontrol: { type: 'string' },
    'control-image': { type: 'string' }, 'control-scale': { type: 'string' },
    out: { type: 'string', default: 'out.png' }, height: { type: 'string' },
    width: { type: 'string' }, steps: { type: 'string', default: '28' }, guidance: { type: 'string', default: '3.5' },
    seed: { type: 'string', default: '0' }, device: { type: 'string', default: 'cpu' }, dtype: { type: 'string' },
    memory: { type: 'string', default: 'full' } } as const);
  if (!p) return help('generate');
  const { v } = p;
  const fail = (msg: string) => (endProgressLine(), process.stderr.write(`x2i generate: ${msg}\n`), 2);
  if (!v.flux) return fail('--flux is required (see x2i generate --help)');
  const preset = memoryFlag(v.memory);
  if (typeof preset === 'string') return fail(preset);
  if (v['fuse-lora'] && preset.quantize === 'fp8') return fail(`--fuse-lora: --memory ${v.memory} has FP8 block weights, on which adapters run unfused`);
  const studentInput = !!(v.prompt || v['prompt-image'] || v.audio || v.video);
  for (const k of ['prompt-image', 'audio', 'video'] as const)
    if (v[k] && !v.mllm) return fail(`--${k} is the student's prompt: it needs --mllm and --alignnet`);
  if (!v.prompt && !v.embeds && !(v.mllm && studentInput)) return fail('give --prompt or --embeds (the student also takes --prompt-image, --video, --audio; see x2i generate --help)');
  if ((v.mllm || v.alignnet) && (!v.mllm || !v.alignnet || !studentInput))
    return fail('the student needs --mllm, --alignnet and a prompt (--prompt, --prompt-image, --video or --audio)');
  if (v.strength !== undefined && !v.image) return fail('--strength needs --image (the init image of image-to-image)');
  if (v.mask !== undefined && !v.image) return fail('--mask needs --image (the image to inpaint)');
  if (v['fuse-lora'] && !v.lora) return fail('--fuse-lora needs --lora');
  if (v['control-image'] !== undefined && !v.lightcontrol) return fail('--control-image needs --lightcontrol PATH (the LightControl branches)');
  if (v['control-scale'] !== undefined && !v['control-image']) return fail('--control-scale needs --control-image and --lightcontrol');
  if (v.lightcontrol !== undefined && !v['control-image']) return fail('--lightcontrol needs --control-image FILE (the control image)');
  // every option checked before a model loads
  const format = imageOutput('--out', v.out);
  const device = deviceOption('--device', v.device), dtype = v.dtype === undefined ? undefined : floatDtypeOption('--dtype', v.dtype);
  const side = (k: 'height' | 'width') => v[k] !== undefined ? imageSide(`--${k}`, parseNumberArg(`--${k}`, v[k])) : v.image ? undefined : 1024;
  const gen0 = { height: side('height'), width: side('width'),
    numInferenceSteps: positiveInt('--steps', parseNumberArg('--steps', v.steps), LIMITS.inferenceSteps),
    guidanceScale: finiteOption('--guidance', parseNumberArg('--guidance', v.guidance)), seed: seedOption('--seed', parseNumberArg('--seed', v.seed)) };
  const strength = v.strength !== undefined ? finiteOption('--strength', parseNumberArg('--strength', v.strength), { min: 0, max: 1, minExclusive: true }) : undefined;
  const controlScale = v['control-scale'] !== undefined ? finiteOption('--control-scale', parseNumberArg('--control-scale', v['control-scale'])) : undefined;
  for (const k of ['prompt-image', 'audio', 'video'] as const) for (const f of v[k] ?? []) mustExist(`--${k}`, f);
  for (const k of ['embeds', 'image', 'mask', 'lightcontrol', 'control-image'] as const) mustExist(`--${k}`, v[k]);
  const loras = (v.lora ?? []).map(loraArg);
  const progress = new Progress({ quiet: v.quiet });
  const x2i = await import('../index.js');
  const opts = { device, dtype };
  const root = fs.existsSync(path.join(v.flux, 'transformer')) ? v.flux : path.dirname(v.flux);
  const load = (what: string) => ({ ...opts, onProgress: progress.loading(`x2i generate: loading ${what}`) });
  // the student's prompt (text, images, video frames, sounds)
  const studentPrompt = async (): Promise<string | import('../models/students.js').StudentPrompt> => {
    const images = [], video = [], audios = [];
    // EXIF orientation applied, transparency composited on white (lib/core/image_decode.ts)
    for (const f of v['prompt-image'] ?? []) images.push(await decodeRgb(f, { name: '--prompt-image' }));
    for (const f of v.video ?? [])  // a frame, or a folder of frames in name order
      for (const g of fs.statSync(f).isDirectory() ? fs.readdirSync(f).filter((n) => /\.(png|jpe?g|webp)$/i.test(n)).sort().map((n) => path.join(f, n)) : [f])
        video.push(await decodeRgb(g, { name: '--video' }));
    for (const f of v.audio ?? []) audios.push(await x2i.audio.load(f));
    const mixed = images.length || video.length || audios.length;
    return mixed ? { text: v.prompt, ...(images.length ? { images } : {}), ...(video.length ? { video } : {}), ...(audios.length ? { audios } : {}) } : v.prompt!;
  };
  // --memory 48gb / 24gb: the MLLM encodes the prompt and is freed before the transformer loads
  let studentEmbeds: { encoderHiddenStates: import('../core/tensor.js').Tensor; pooledProjections: import('../core/tensor.js').Tensor } | undefined;
  if (v.mllm && preset.freeEncoderBeforeDenoising) {
    const mllm = await x2i.studentFromPretrained(v.mllm, load('the MLLM'));
    const alignNet = await x2i.AlignNet.fromPretrained(v.alignnet!, load('AlignNet'));
    try {
      const { hiddenStates, attentionMask } = await x2i.encodeStudentPrompt(mllm, await studentPrompt());
      attentionMask.dispose();
      studentEmbeds = await alignNet.forward(hiddenStates);
      hiddenStates.dispose();
    } finally {
      await mllm.disposeAsync();  // freed before the transformer loads
      await alignNet.disposeAsync();
    }
  }
  const transformer = await x2i.FluxTransformer.fromPretrained(v.flux, { ...load('FLUX'), quantize: preset.quantize });
  for (const l of loras) await transformer.loadLora(await runFile(l.file, 'lora.safetensors'), { scale: l.scale });
  if (v['fuse-lora']) await transformer.fuseLora();
  const vae = await x2i.AutoencoderKL.fromPretrained(v.vae ?? path.join(root, 'vae'), load('the VAE'));
  const lightControl = v.lightcontrol ? await loadLightControl(v.lightcontrol, opts) : undefined;
  const schedulerFile = path.join(root, 'scheduler', 'scheduler_config.json');
  const scheduler = fs.existsSync(schedulerFile) ? x2i.FlowMatchEulerScheduler.fromPretrained(schedulerFile) : new x2i.FlowMatchEulerScheduler();
  const gen = { ...gen0, onProgress: progress.steps('x2i generate'),
    ...(v.image ? { image: v.image, strength, mask: v.mask } : {}),
    ...(v['control-image'] ? { control: { image: v['control-image'], scale: controlScale } } : {}) };
  let out: FluxImages;
  if (studentEmbeds) {
    try {
      out = await new x2i.FluxPipeline({ transformer, vae, scheduler, lightControl }).generate({ ...gen,
        promptEmbeds: studentEmbeds.encoderHiddenStates, pooledPromptEmbeds: studentEmbeds.pooledProjections });
    } finally {
      studentEmbeds.encoderHiddenStates.dispose();
      studentEmbeds.pooledProjections.dispose();
    }
  } else if (v.mllm || v.alignnet) {
    const g = new x2i.X2IGenerator({ mllm: await x2i.studentFromPretrained(v.mllm!, load('the MLLM')),
      alignNet: await x2i.AlignNet.fromPretrained(v.alignnet!, load('AlignNet')), pipeline: new x2i.FluxPipeline({ transformer, vae, scheduler, lightControl }) });
    out = await g.generate({ ...gen, prompt: await studentPrompt() });
  } else if (v.embeds) {
    const e = await x2i.loadSafetensors(v.embeds, { device });
    if (!e.prompt_embeds || !e.pooled_prompt_embeds) return fail(`--embeds: ${v.embeds} lacks prompt_embeds / pooled_prompt_embeds`);
    out = await new x2i.FluxPipeline({ transformer, vae, scheduler, lightControl }).generate({ ...gen, promptEmbeds: e.prompt_embeds,
      pooledPromptEmbeds: e.pooled_prompt_embeds });
  } else {
    const pipe = new x2i.FluxPipeline({ transformer, vae, scheduler, lightControl,
      textEncoder: await x2i.ClipTextEncoder.fromPretrained(v['text-encoder'] ?? path.join(root, 'text_encoder'), load('CLIP')),
      textEncoder2: await x2i.T5Encoder.fromPretrained(v['text-encoder-2'] ?? path.join(root, 'text_encoder_2'), load('T5')) });
    out = await pipe.generate({ ...gen, prompt: v.prompt });
  }
  fs.writeFileSync(v.out, await x2i.encodeImage(out.images, 0, format));
  progress.note(`x2i generate: wrote ${v.out} (${format === 'jpeg' ? 'JPEG' : format === 'png' ? 'PNG' : 'WebP'}, ${out.images.shape[3]}×${out.images.shape[2]})`);
  return 0;
}

/** --memory's preset (exit 2 naming the presets otherwise). */
function memoryFlag(v: string): Readonly<MemoryPreset> | string {
  return isMemoryPresetName(v) ? MEMORY_PRESETS[v] : `--memory: expected ${Object.keys(MEMORY_PRESETS).join(', ')}, got "${v}"`;
}

/** The flags every training command shares, each checked (exit 2 naming the flag on a bad value). */
function trainingFlags(num: (flag: string) => number, v: { device: string; dtype?: string }) {
  return {
    steps: positiveInt('--steps', num('steps'), LIMITS.trainSteps),
    lr: finiteOption('--lr', num('lr'), { min: 0 }),
    warmup: integerOption('--warmup', num('warmup'), { min: 0, max: LIMITS.trainSteps }),
    accumulate: positiveInt('--accumulate', num('accumulate')),
    checkpointEvery: positiveInt('--checkpoint-every', num('checkpoint-every'), LIMITS.trainSteps),
    keepLast: positiveInt('--keep-last', num('keep-last'), 1000),
    height: imageSide('--height', num('height')),
    width: imageSide('--width', num('width')),
    device: deviceOption('--device', v.device),
    dtype: v.dtype === undefined ? undefined : floatDtypeOption('--dtype', v.dtype),
  };
}

/** A path as recorded in a run's config: absolute (a run resumed from another folder compares equal). */
const absolute = (p: string | undefined) => (p === undefined ? undefined : path.resolve(p));

/** The options of every training command recorded in trainer.json "config" but free to change on --resume: the
 * run's length, its checkpointing, where it runs (the initial weights a resume replaces are added per command). */
const RESUME_FREE = ['steps', 'checkpoint-every', 'keep-last', 'device', 'gradient-checkpointing'];

/**
 * `--resume` against the options the run recorded (trainer.json "config"): every option that changes the run (all but
 * `free`) and differs is named with both values in one error (exit 2), unless `force` (--force-resume: a note, and the
 * new options are recorded from the next checkpoint on). Runs that recorded no config pass.
 */
async function checkResume(cmd: string, dir: string, config: Record<string, unknown>, free: readonly string[], force: boolean,
  progress: Progress): Promise<void> {
  const { configChanges, recordedConfig } = await import('../train/checkpoints.js');
  const recorded = recordedConfig(dir);
  if (!recorded) return;
  const keys = [...new Set([...Object.keys(recorded), ...Object.keys(config)])].filter((k) => !free.includes(k));
  const changes = configChanges(recorded, config, keys);
  if (changes.length === 0) return;
  const show = (x: unknown) => (x === undefined ? '(not given)' : typeof x === 'string' ? JSON.stringify(x) : String(x));
  const list = changes.map((c) => `--${c.key}: the run recorded ${show(c.recorded)}, this command gives ${show(c.given)}`).join('; ');
  if (!force) throw new X2IError(`--resume: ${dir} was trained with other options: ${list} (give the recorded values, or --force-resume to continue with these)`,
    'ERR_CONFIG_MISMATCH');
  progress.note(`${cmd}: --force-resume: continuing ${dir} with ${list}`);
}

async function train(args: string[]): Promise<number> {
  const p = parse('train', args, {
    flux: { type: 'string' }, alignnet: { type: 'string' }, out: { type: 'string' }, captions: { type: 'string' },
    features: { type: 'string' }, mllm: { type: 'string' }, 'text-encoder': { type: 'string' }, 'text-encoder-2': { type: 'string' },
    steps: { type: 'string', default: '1000' }, lr: { type: 'string', default: '1e-4' }, warmup: { type: 'string', default: '0' },
    accumulate: { type: 'string', default: '1' }, 'checkpoint-every': { type: 'string', default: '100' },
    height: { type: 'string', default: '1024' }, width: { type: 'string', default: '1024' }, resume: { type: 'boolean' },
    'force-resume': { type: 'boolean' }, overwrite: { type: 'boolean' }, 'keep-last': { type: 'string', default: '2' },
    device: { type: 'string', default: 'cpu' }, dtype: { type: 'string' }, parallel: { type: 'string' },
    'nproc-per-node': { type: 'string' }, nnodes: { type: 'string', default: '1' }, 'node-rank': { type: 'string', default: '0' },
    'master-addr': { type: 'string' }, 'master-port': { type: 'string' }, memory: { type: 'string', default: 'full' } } as const, { config: true });
  if (!p) return help('train');
  const { v } = p;
  const fail = (msg: string) => (endProgressLine(), process.stderr.write(`x2i train: ${msg}\n`), 2);
  const preset = memoryFlag(v.memory);
  if (typeof preset === 'string') return fail(preset);
  if (preset.precomputedFeatures && !v.features)
    return fail(`--memory ${v.memory} trains on precomputed features (no encoder on the GPU): give --features FILE`);
  if (!v.flux || !v.alignnet || !v.out) return fail('--flux, --alignnet and --out are required (see x2i train --help)');
  if (v.parallel && v.parallel !== 'data' && v.parallel !== 'split') return fail(`--parallel: expected data or split, got "${v.parallel}"`);
  if (v['nproc-per-node'] && !v.parallel) return fail('--nproc-per-node needs --parallel data|split');
  if (!v.captions && !v.features) return fail('give --captions (with --mllm) or --features (see x2i train --help)');
  if (v.captions && !v.mllm) return fail('--captions needs --mllm for the student');
  // every option checked before a model loads (and before the launcher starts any rank)
  const num = (k: string) => parseNumberArg(`--${k}`, (v as Record<string, unknown>)[k] as string);
  const { steps, lr, warmup, accumulate, checkpointEvery, keepLast, height, width, device: given, dtype } = trainingFlags(num, v);
  const nnodes = positiveInt('--nnodes', num('nnodes'), 100_000);
  const nodeRank = integerOption('--node-rank', num('node-rank'), { min: 0, max: nnodes - 1 });
  const nproc = v['nproc-per-node'] !== undefined ? positiveInt('--nproc-per-node', num('nproc-per-node'), 1024) : undefined;
  const masterPort = v['master-port'] !== undefined ? integerOption('--master-port', num('master-port'), { min: 1, max: 65535 }) : undefined;
  if (v.resume && v.overwrite) return fail('give --resume or --overwrite, not both');
  if (v['force-resume'] && !v.resume) return fail('--force-resume needs --resume');
  const resuming = v.resume && fs.existsSync(path.join(v.out, 'trainer.json'));
  outputDir('--out', v.out, { refuseNonEmpty: !resuming && !v.overwrite,
    hint: v.resume ? 'it holds no trainer.json to resume from; pass --overwrite to replace it' : 'pass --resume to continue its run, or --overwrite to replace it' });
  const progress = new Progress({ quiet: v.quiet });
  // the effective options, recorded in trainer.json and compared on --resume
  const config = { flux: absolute(v.flux), alignnet: absolute(v.alignnet), captions: absolute(v.captions), features: absolute(v.features),
    mllm: absolute(v.mllm), 'text-encoder': absolute(v['text-encoder']), 'text-encoder-2': absolute(v['text-encoder-2']), steps, lr,
    warmup, accumulate, 'checkpoint-every': checkpointEvery, 'keep-last': keepLast, height, width, device: given, dtype,
    parallel: v.parallel, 'nproc-per-node': nproc, nnodes, ...(preset.quantize !== 'none' ? { quantize: preset.quantize } : {}) };
  if (resuming) {
    (await import('../train/trainer.js')).X2ITrainer.latestCheckpoint(v.out);  // a bad trainer.json: now
    await checkResume('x2i train', v.out, config, [...RESUME_FREE, 'alignnet'], v['force-resume'], progress);  // resume replaces AlignNet's init
  }
  for (const [k, f] of [['--features', v.features], ['--captions', v.captions], ['--alignnet', v.alignnet]] as const)
    if (f && !fs.existsSync(f)) throw new X2IError(`${k}: ${f}: no such file`, 'ERR_FILE_NOT_FOUND');
  if (nproc !== undefined && process.env.X2I_LAUNCHED !== '1') {  // the launcher: one process per GPU, then wait
    const { launch } = await import('../train/distributed.js');
    // Ctrl-C reaches every rank (one process group): they stop together at a step boundary and save; wait for them
    process.on('SIGINT', () => {});
    const codes = await launch(process.argv[1], { nprocPerNode: nproc, nnodes, nodeRank, masterAddr: v['master-addr'], masterPort,
      args: process.argv.slice(2), env: { X2I_LAUNCHED: '1' } });
    return codes.every((c) => c === 0) ? 0 : 1;
  }
  const x2i = await import('../index.js');
  const group = v.parallel ? await x2i.ProcessGroup.init() : undefined;
  const device = group && given.startsWith('cuda') ? x2i.ProcessGroup.localDevice() : given;
  const opts = { device, dtype };
  // what this rank holds: everything, or the teacher's (rank 0) / the student's (rank 1) half in split mode
  const split = v.parallel === 'split', teacherSide = !split || group!.rank === 0, studentSide = !split || group!.rank === 1;
  const reporting = !group || (split ? group.rank === 1 : group.rank === 0);
  const report = reporting ? progress : new Progress({ quiet: true });
  const root = fs.existsSync(path.join(v.flux, 'transformer')) ? v.flux : path.dirname(v.flux);
  const transformer = await x2i.FluxTransformer.fromPretrained(v.flux, { ...opts, quantize: preset.quantize });
  const alignNet = await x2i.AlignNet.fromPretrained(v.alignnet, { ...opts, dtype: 'float32' });
  let data: import('../train/trainer.js').X2IBatch[];
  let parts: ConstructorParameters<typeof x2i.X2ITrainer>[0] = { transformer, alignNet };
  if (v.features) {
    const f = await x2i.loadSafetensors(v.features, { device });
    for (const k of ['teacher.encoder_hidden_states', 'teacher.pooled_projections', 'student.hidden_states'])
      if (!f[k]) return fail(`--features: ${v.features} lacks '${k}'`);
    data = [{ teacher: { encoderHiddenStates: f['teacher.encoder_hidden_states'], pooledProjections: f['teacher.pooled_projections'] },
      student: { hiddenStates: f['student.hidden_states'] } }];
  } else {
    let captions = x2i.loadCaptions(v.captions!);
    if (group && !split) captions = captions.filter((_, i) => i % group.worldSize === group.rank);  // this rank's share
    data = captions.map((c) => ({ teacher: { caption: c }, student: { prompt: c } }));
    if (studentSide) parts = { ...parts, mllm: await x2i.studentFromPretrained(v.mllm!, opts) };
    if (teacherSide) parts = { ...parts,
      t5: await x2i.T5Encoder.fromPretrained(v['text-encoder-2'] ?? path.join(root, 'text_encoder_2'), opts),
      clip: await x2i.ClipTextEncoder.fromPretrained(v['text-encoder'] ?? path.join(root, 'text_encoder'), opts) };
  }
  const trainer = new x2i.X2ITrainer(parts, { lr, warmupSteps: warmup, totalSteps: steps, gradientAccumulation: accumulate, height, width,
    keepLast, overwrite: v.overwrite, parallel: group ? { group, mode: v.parallel as 'data' | 'split' } : null, config,
    checkpoint: preset.checkpoint });
  if (resuming) await trainer.resume(v.out);
  const ac = new AbortController();
  process.once('SIGINT', () => { report.note('x2i train: stopping at the next step boundary'); ac.abort(); });
  const bar = report.bar('x2i train');
  await trainer.fit({ data, steps: Math.max(0, steps - trainer.microStep), signal: ac.signal, checkpointDir: v.out, collect: false,
    checkpointEvery, onStep: (i) => bar(i.microStep, steps, `loss ${i.loss.toFixed(4)} lr ${i.lr.toExponential(2)}`) });
  if (reporting) progress.note(`x2i train: step ${trainer.step}; checkpoint ${x2i.X2ITrainer.latestCheckpoint(v.out)}`);
  await group?.close();
  return 0;
}

/** Split a comma list at the commas outside braces (`a-{0,1}.tar,b.tar` → `a-{0,1}.tar`, `b.tar`). */
function splitShards(s: string): string[] {
  const out: string[] = [];
  let depth = 0, cur = '';
  for (const c of s) {
    if (c === '{') depth++;
    else if (c === '}') depth = Math.max(0, depth - 1);
    if (c === ',' && depth === 0) { out.push(cur); cur = ''; } else cur += c;
  }
  out.push(cur);
  return out.map((x) => x.trim()).filter((x) => x !== '');
}

/** `--data`: a folder, a .jsonl manifest, or .tar shards (a path, a brace pattern, a comma list); checked now. */
async function dataSpec(spec: string): Promise<{ kind: 'folder' | 'jsonl' | 'tar'; shards?: string[] }> {
  if (fs.existsSync(spec) && fs.statSync(spec).isDirectory()) return { kind: 'folder' };
  if (/\.jsonl$/i.test(spec)) {
    mustExist('--data', spec);
    return { kind: 'jsonl' };
  }
  const { expandBraces } = await import('../train/data.js');
  const shards = splitShards(spec).flatMap((s) => expandBraces(s));
  if (shards.length === 0 || !shards.every((s) => /\.tar$/i.test(s))) {
    if (!fs.existsSync(spec)) throw new X2IError(`--data: ${spec}: no such file or folder`, 'ERR_FILE_NOT_FOUND');
    throw new X2IError(`--data: expected a folder, a .jsonl file or .tar shards (a path, a brace pattern or a comma list), got ${JSON.stringify(spec)}`,
      'ERR_INVALID_ARG');
  }
  for (const s of shards) mustExist('--data', s);
  return { kind: 'tar', shards };
}

/** `x2i train lora` / `x2i train lightcontrol`: fine-tuning on the frozen FLUX transformer (LoraTrainer, LightControlTrainer). */
async function finetune(kind: 'lora' | 'lightcontrol', args: string[]): Promise<number> {
  const cmd = `x2i train ${kind}`;
  const p = parse(`train ${kind}`, args, {
    flux: { type: 'string' }, vae: { type: 'string' }, out: { type: 'string' }, data: { type: 'string' },
    mllm: { type: 'string' }, alignnet: { type: 'string' }, 'text-encoder': { type: 'string' }, 'text-encoder-2': { type: 'string' },
    embeds: { type: 'string' },
    steps: { type: 'string', default: '1000' }, lr: { type: 'string', default: kind === 'lora' ? '1e-4' : '1e-5' },
    accumulate: { type: 'string', default: '1' }, warmup: { type: 'string', default: '0' }, 'checkpoint-every': { type: 'string', default: '100' },
    height: { type: 'string', default: '1024' }, width: { type: 'string', default: '1024' }, seed: { type: 'string', default: '0' },
    resume: { type: 'boolean' }, 'force-resume': { type: 'boolean' }, overwrite: { type: 'boolean' }, 'keep-last': { type: 'string', default: '2' },
    device: { type: 'string', default: 'cpu' }, dtype: { type: 'string' }, 'gradient-checkpointing': { type: 'boolean' },
    ...(kind === 'lora' ? { rank: { type: 'string', default: '16' }, alpha: { type: 'string' }, targets: { type: 'string' },
      'editing-prompt': { type: 'string' } } as const
      : { lightcontrol: { type: 'string' }, hint: { type: 'string', default: 'source' } } as const) } as const, { config: true });
  if (!p) return help(`train ${kind}`);
  const { v } = p;
  const fail = (msg: string) => (endProgressLine(), process.stderr.write(`${cmd}: ${msg}\n`), 2);
  const s = (k: string) => (v as Record<string, string | boolean | undefined>)[k] as string | undefined;
  if (!v.flux || !v.out || !v.data) return fail(`--flux, --out and --data are required (see ${cmd} --help)`);
  if ((v.mllm || v.alignnet) && (!v.mllm || !v.alignnet)) return fail('the student conditioning needs both --mllm and --alignnet');
  if (v.embeds && (v.mllm || v['text-encoder'] || v['text-encoder-2'])) return fail('give --embeds, or the encoders (--mllm/--alignnet or --text-encoder/--text-encoder-2), not both');
  if (v.mllm && (v['text-encoder'] || v['text-encoder-2'])) return fail('give the student (--mllm, --alignnet) or the teacher (--text-encoder, --text-encoder-2), not both');
  // every option checked before a model loads
  const num = (k: string) => parseNumberArg(`--${k}`, s(k));
  const { steps, lr, warmup, accumulate, checkpointEvery, keepLast, height, width, device, dtype } = trainingFlags(num, v);
  const seed = seedOption('--seed', num('seed'));
  const rank = kind === 'lora' ? integerOption('--rank', num('rank'), { min: 1, max: 4096 }) : 0;
  const alpha = kind === 'lora' && s('alpha') !== undefined ? finiteOption('--alpha', num('alpha'), { min: 0, minExclusive: true }) : undefined;
  const targets = s('targets')?.split(',').map((t) => t.trim());
  if (targets && (targets.length === 0 || targets.some((t) => t === '')))
    throw new X2IError(`--targets: expected a comma list of module names or suffixes (to_q,to_k,...), got ${JSON.stringify(s('targets'))}`, 'ERR_INVALID_ARG');
  const hint = s('hint');
  if (kind === 'lightcontrol' && hint !== 'source' && hint !== 'target')
    throw new X2IError(`--hint: expected source or target, got ${JSON.stringify(hint)}`, 'ERR_INVALID_ARG');
  if (v.resume && v.overwrite) return fail('give --resume or --overwrite, not both');
  if (v['force-resume'] && !v.resume) return fail('--force-resume needs --resume');
  const resuming = v.resume && fs.existsSync(path.join(v.out, 'trainer.json'));
  outputDir('--out', v.out, { refuseNonEmpty: !resuming && !v.overwrite,
    hint: v.resume ? 'it holds no trainer.json to resume from; pass --overwrite to replace it' : 'pass --resume to continue its run, or --overwrite to replace it' });
  const progress = new Progress({ quiet: v.quiet });
  const { LoraTrainer, LightControlTrainer } = await import('../train/finetune.js');
  const data = await dataSpec(v.data);
  // the effective options, recorded in trainer.json and compared on --resume (the data's paths made absolute)
  const config = { flux: absolute(v.flux), vae: absolute(v.vae), data: data.kind === 'tar' ? data.shards!.map((f) => path.resolve(f)).join(',') : absolute(v.data),
    mllm: absolute(v.mllm), alignnet: absolute(v.alignnet), 'text-encoder': absolute(v['text-encoder']),
    'text-encoder-2': absolute(v['text-encoder-2']), embeds: absolute(v.embeds), steps, lr, accumulate, warmup,
    'checkpoint-every': checkpointEvery, 'keep-last': keepLast, height, width, seed, device, dtype,
    'gradient-checkpointing': v['gradient-checkpointing'],
    ...(kind === 'lora' ? { rank, alpha, targets: targets?.join(','), 'editing-prompt': s('editing-prompt') }
      : { lightcontrol: absolute(s('lightcontrol')), hint }) };
  if (resuming) {
    LoraTrainer.latestCheckpoint(v.out);  // a bad trainer.json: now
    await checkResume(cmd, v.out, config, kind === 'lightcontrol' ? [...RESUME_FREE, 'lightcontrol'] : RESUME_FREE, v['force-resume'], progress);
  }
  for (const k of ['alignnet', 'embeds', 'lightcontrol'] as const) mustExist(`--${k}`, s(k));
  for (const k of ['mllm', 'vae', 'text-encoder', 'text-encoder-2'] as const) mustExist(`--${k}`, s(k));
  mustExist('--flux', v.flux);

  const x2i = await import('../index.js');
  const opts = { device, dtype };
  const root = fs.existsSync(path.join(v.flux, 'transformer')) ? v.flux : path.dirname(v.flux);
  const transformer = await x2i.FluxTransformer.fromPretrained(v.flux, opts);
  const vae = await x2i.AutoencoderKL.fromPretrained(v.vae ?? path.join(root, 'vae'), opts);
  const schedulerFile = path.join(root, 'scheduler', 'scheduler_config.json');
  const scheduler = fs.existsSync(schedulerFile) ? x2i.FlowMatchEulerScheduler.fromPretrained(schedulerFile) : undefined;
  let parts: import('../train/finetune.js').FineTuneParts = { transformer, vae, scheduler };
  let conditioning: { encoderHiddenStates: import('../core/tensor.js').Tensor; pooledProjections: import('../core/tensor.js').Tensor } | undefined;
  if (v.embeds) {
    const e = await x2i.loadSafetensors(v.embeds, { device });
    if (!e.prompt_embeds || !e.pooled_prompt_embeds) return fail(`--embeds: ${v.embeds} lacks prompt_embeds / pooled_prompt_embeds`);
    conditioning = { encoderHiddenStates: e.prompt_embeds, pooledProjections: e.pooled_prompt_embeds };
  } else if (v.mllm) {
    parts = { ...parts, mllm: await x2i.studentFromPretrained(v.mllm, opts), alignNet: await x2i.AlignNet.fromPretrained(v.alignnet!, opts) };
  } else {
    parts = { ...parts, t5: await x2i.T5Encoder.fromPretrained(v['text-encoder-2'] ?? path.join(root, 'text_encoder_2'), opts),
      clip: await x2i.ClipTextEncoder.fromPretrained(v['text-encoder'] ?? path.join(root, 'text_encoder'), opts) };
  }
  const common = { lr, warmupSteps: warmup, totalSteps: steps, gradientAccumulation: accumulate, height, width, seed, keepLast,
    overwrite: v.overwrite, checkpoint: v['gradient-checkpointing'], conditioning: v.mllm ? 'student' as const : 'teacher' as const, config };
  let trainer: InstanceType<typeof LoraTrainer> | InstanceType<typeof LightControlTrainer>;
  if (kind === 'lora') {
    trainer = new LoraTrainer(parts, { ...common, editingPrompt: s('editing-prompt'), lora: { rank, alpha, targets, seed } });
  } else {
    const lightControl = s('lightcontrol') ? await loadLightControl(s('lightcontrol')!, { device, dtype: 'float32' })
      : await x2i.LightControl.fromConfig({}, { dtype: 'float32', device, seed });
    trainer = new LightControlTrainer({ ...parts, lightControl }, { ...common, hint: hint as 'source' | 'target' });
  }
  if (resuming) await trainer.resume(v.out);
  const ac = new AbortController();
  process.once('SIGINT', () => { progress.note(`${cmd}: stopping at the next step boundary`); ac.abort(); });
  const dopts = { repeat: true, skip: trainer.microStep };
  const samples = data.kind === 'folder' ? x2i.datasets.fromFolder(v.data, dopts) : data.kind === 'jsonl' ? x2i.datasets.fromJsonl(v.data, dopts)
    : x2i.datasets.fromWebDataset(data.shards!, dopts);
  const withConditioning = conditioning ? (async function* () {
    for await (const x of samples) yield { ...x, conditioning };
  })() : samples;
  const bar = progress.bar(cmd);
  const infos = await trainer.fit({ data: withConditioning, steps: Math.max(0, steps - trainer.microStep), signal: ac.signal, checkpointDir: v.out,
    checkpointEvery, onStep: (i) => bar(i.microStep, steps, `loss ${i.loss.toFixed(4)} lr ${i.lr.toExponential(2)}`) });
  if (infos.length === 0 && trainer.microStep < steps && !ac.signal.aborted)
    throw new X2IError(`--data: ${v.data}: no samples`, 'ERR_DATA');
  const lc = s('lightcontrol');
  if (lc) {  // the branches' config beside the run (x2i generate --lightcontrol OUT reads it)
    const cfg = fs.existsSync(path.join(lc, 'trainer.json')) || fs.statSync(lc).isDirectory() ? path.join(lc, 'config.json')
      : path.join(path.dirname(lc), 'config.json');
    if (fs.existsSync(cfg) && path.resolve(cfg) !== path.resolve(v.out, 'config.json')) fs.copyFileSync(cfg, path.join(v.out, 'config.json'));
  }
  progress.note(`${cmd}: step ${trainer.step}; checkpoint ${LoraTrainer.latestCheckpoint(v.out)}`);
  return 0;
}

async function evaluate(args: string[]): Promise<number> {
  const p = parse('eval', args, {
    flux: { type: 'string' }, vae: { type: 'string' }, alignnet: { type: 'string' }, features: { type: 'string' },
    prompts: { type: 'string' }, mllm: { type: 'string' }, clip: { type: 'string' }, 'text-encoder': { type: 'string' },
    'text-encoder-2': { type: 'string' }, out: { type: 'string' }, guidance: { type: 'string', default: '3.5' }, seed: { type: 'string', default: '0' },
    steps: { type: 'string', default: '28' }, height: { type: 'string', default: '1024' }, width: { type: 'string', default: '1024' },
    device: { type: 'string', default: 'cpu' }, dtype: { type: 'string' }, json: { type: 'string' } } as const);
  if (!p) return help('eval');
  const { v } = p;
  const fail = (msg: string) => (endProgressLine(), process.stderr.write(`x2i eval: ${msg}\n`), 2);
  if (!v.flux || !v.alignnet || (!v.features && !v.prompts))
    return fail('--flux, --alignnet and --prompts (with --mllm, --clip) or --features are required (see x2i eval --help)');
  if (v.prompts && v.features) return fail('--prompts and --features are two modes: give one');
  if (v.prompts && (!v.mllm || !v.clip)) return fail('--prompts needs --mllm (the student) and --clip (the CLIP checkpoint that scores)');
  const numInferenceSteps = positiveInt('--steps', parseNumberArg('--steps', v.steps), LIMITS.inferenceSteps);
  const height = imageSide('--height', parseNumberArg('--height', v.height)), width = imageSide('--width', parseNumberArg('--width', v.width));
  const guidanceScale = finiteOption('--guidance', parseNumberArg('--guidance', v.guidance));
  const seed = seedOption('--seed', parseNumberArg('--seed', v.seed));
  const device = deviceOption('--device', v.device), dtype = v.dtype === undefined ? undefined : floatDtypeOption('--dtype', v.dtype);
  if (v.json) outputFile('--json', v.json);
  if (v.out) outputDir('--out', v.out);
  for (const [k, f] of [['--features', v.features], ['--prompts', v.prompts], ['--alignnet', v.alignnet]] as const)
    if (f !== undefined && !fs.existsSync(f)) throw new X2IError(`${k}: ${f}: no such file`, 'ERR_FILE_NOT_FOUND');
  const prompts = v.prompts ? readPrompts(v.prompts) : [];  // before any model loads
  const progress = new Progress({ quiet: v.quiet });
  const x2i = await import('../index.js');
  const opts = { device, dtype };
  const load = (what: string) => ({ ...opts, onProgress: progress.loading(`x2i eval: loading ${what}`) });
  const root = fs.existsSync(path.join(v.flux, 'transformer')) ? v.flux : path.dirname(v.flux);
  const alignnetPath = fs.existsSync(path.join(v.alignnet, 'trainer.json'))
    ? path.join(x2i.X2ITrainer.latestCheckpoint(v.alignnet), 'alignnet.safetensors') : v.alignnet;
  // each sample's teacher and student images, in turn, with their progress
  let images = 0;
  class ReportingPipeline extends x2i.FluxPipeline {
    override generate(o: import('../sample/pipeline.js').FluxGenerateOptions) {
      return super.generate({ ...o, onProgress: progress.steps(`x2i eval: ${images++ % 2 ? 'student' : 'teacher'} images`) });
    }
  }
  const transformer = await x2i.FluxTransformer.fromPretrained(v.flux, load('the transformer'));
  const vae = await x2i.AutoencoderKL.fromPretrained(v.vae ?? path.join(root, 'vae'), load('the VAE'));
  const alignNet = await x2i.AlignNet.fromPretrained(alignnetPath, load('AlignNet'));
  if (v.prompts) {
    const teacher = new ReportingPipeline({ transformer, vae,
      textEncoder: await x2i.ClipTextEncoder.fromPretrained(v['text-encoder'] ?? path.join(root, 'text_encoder'), load("the teacher's CLIP")),
      textEncoder2: await x2i.T5Encoder.fromPretrained(v['text-encoder-2'] ?? path.join(root, 'text_encoder_2'), load("the teacher's T5")) });
    const student = new x2i.X2IGenerator({ mllm: await x2i.studentFromPretrained(v.mllm!, load('the MLLM')), alignNet,
      pipeline: new ReportingPipeline({ transformer, vae }) });
    const clip = await x2i.ClipScorer.fromPretrained(v.clip!, load('CLIP'));
    const r = await x2i.evaluatePrompts({ teacher, student, clip, prompts, height, width, numInferenceSteps, guidanceScale, seed,
      onImages: v.out ? (i, t, s) => {
        fs.writeFileSync(path.join(v.out!, `teacher_${i}.png`), t);
        fs.writeFileSync(path.join(v.out!, `student_${i}.png`), s);
      } : undefined });
    progress.end();
    const f = (x: number, d = 2) => x.toFixed(d);
    console.log('| # | prompt | CLIP teacher | CLIP student | student / teacher | SSIM | PSNR dB |');
    console.log('|---:|---|---:|---:|---:|---:|---:|');
    r.prompts.forEach((row, i) => console.log(`| ${i} | ${row.prompt.length > 48 ? `${row.prompt.slice(0, 47)}…` : row.prompt} | ${f(row.clipTeacher)} | ` +
      `${f(row.clipStudent)} | ${row.clipTeacher > 0 ? f(row.clipStudent / row.clipTeacher, 3) : '—'} | ${f(row.ssim, 4)} | ${f(row.psnr)} |`));
    const m = r.summary;
    console.log(`| mean (${m.n}) | | ${f(m.clipTeacher)} | ${f(m.clipStudent)} | ${m.ratio === null ? '—' : f(m.ratio, 3)} | ${f(m.ssim, 4)} | ${f(m.psnr)} |`);
    if (v.out) await evalCharts(v.out, r);
    if (v.json) fs.writeFileSync(v.json, JSON.stringify(r, null, 2));
    clip.dispose();
    return 0;
  }
  const pipeline = new ReportingPipeline({ transformer, vae });
  const f = await x2i.loadSafetensors(v.features!, { device });
  for (const k of ['teacher.encoder_hidden_states', 'teacher.pooled_projections', 'student.hidden_states'])
    if (!f[k]) return fail(`--features: ${v.features} lacks '${k}'`);
  const r = await x2i.evaluateAgreement({ pipeline, alignNet, height, width, numInferenceSteps, guidanceScale, seed, samples: [{ teacher: { encoderHiddenStates: f['teacher.encoder_hidden_states'],
      pooledProjections: f['teacher.pooled_projections'] }, student: { hiddenStates: f['student.hidden_states'] } }] });
  progress.end();
  console.log(`ssim ${r.ssim.toFixed(4)}  psnr ${r.psnr.toFixed(2)} dB  distillation loss ${r.loss.toFixed(5)}`);
  if (v.json) fs.writeFileSync(v.json, JSON.stringify(r, null, 2));
  return 0;
}

/** Prompts of a .txt file (one per non-empty line) or JSONL ("prompt" or "caption" per line). */
function readPrompts(file: string): string[] {
  const lines = fs.readFileSync(file, 'utf8').split(/\r?\n/).map((l) => l.trim()).filter(Boolean);
  const prompts = lines.map((l, i) => {
    if (!file.toLowerCase().endsWith('.jsonl')) return l;
    let o: unknown;
    try {
      o = JSON.parse(l);
    } catch (e) {
      throw new X2IError(`--prompts: ${file} line ${i + 1}: not JSON (${(e as Error).message})`, 'ERR_DATA');
    }
    const t = (o as Record<string, unknown>)?.prompt ?? (o as Record<string, unknown>)?.caption;
    if (typeof t !== 'string' || !t.trim()) throw new X2IError(`--prompts: ${file} line ${i + 1}: no "prompt" or "caption" string`, 'ERR_DATA');
    return t;
  });
  if (!prompts.length) throw new X2IError(`--prompts: ${file} holds no prompt`, 'ERR_DATA');
  return prompts;
}

/** x2i eval's charts: CLIP score per prompt (teacher, student) and the images' agreement (SSIM) per prompt. */
async function evalCharts(out: string, r: import('../sample/evaluate.js').PromptEvaluation): Promise<void> {
  const { barChartSvg, writeChart } = await import('./plots.js');
  const categories = r.prompts.map((_, i) => `#${i}`);
  const scores = barChartSvg({ title: `CLIP score per prompt (student / teacher ${r.summary.ratio === null ? '—' : r.summary.ratio.toFixed(3)})`, xLabel: 'prompt',
    yLabel: 'CLIP score', categories, series: [{ name: 'teacher (T5 + CLIP)', values: r.prompts.map((p) => p.clipTeacher), color: '#1e1ec8' },
      { name: 'student (MLLM + AlignNet)', values: r.prompts.map((p) => p.clipStudent), color: '#c81e1e' }] });
  const agree = barChartSvg({ title: 'teacher–student agreement per prompt', xLabel: 'prompt', yLabel: 'SSIM', categories,
    series: [{ name: 'SSIM (same noise)', values: r.prompts.map((p) => p.ssim), color: '#2a8a2a' }] });
  for (const [name, svg] of [['clip_scores', scores], ['agreement', agree]] as const) {
    await writeChart(path.join(out, `${name}.svg`), svg);
    await writeChart(path.join(out, `${name}.png`), svg);
  }
  fs.writeFileSync(path.join(out, 'summary.json'), JSON.stringify(r, null, 2));
}

async function demo(args: string[]): Promise<number> {
  const p = parse('demo', args, { out: { type: 'string', default: 'x2i-demo' }, seed: { type: 'string', default: '0' },
    quick: { type: 'boolean' }, student: { type: 'string', default: 'qwen' } } as const);
  if (!p) return help('demo');
  const { v } = p;
  const seed = seedOption('--seed', parseNumberArg('--seed', v.seed));
  if (!['qwen', 'internvl', 'minicpm-o'].includes(v.student)) {
    process.stderr.write(`x2i demo: --student must be qwen, internvl or minicpm-o, got "${v.student}"\n`);
    return 2;
  }
  outputDir('--out', v.out);
  const progress = new Progress({ quiet: v.quiet });
  const { runDemo } = await import('./demo.js');
  const label: Record<string, string> = { teacher: 'training the teacher', distill: 'distilling the student', lora: 'training a LoRA',
    generate: 'generating' };
  const bars = new Map<string, ReturnType<Progress['bar']>>();
  const s = await runDemo({ out: v.out, seed, quick: v.quick, student: v.student as 'qwen' | 'internvl' | 'minicpm-o', onProgress: (e) => {
    if (!bars.has(e.phase)) bars.set(e.phase, progress.bar(`x2i demo: ${label[e.phase]}`));
    bars.get(e.phase)!(e.step, e.total, e.loss !== undefined ? `loss ${e.loss.toFixed(4)}` : undefined);
  } });
  progress.end();
  const f = (x: number, d = 3) => x.toFixed(d);
  console.log(`teacher: flow-matching loss ${f(s.teacher.lossFirst)} → ${f(s.teacher.lossLast)} over ${s.teacher.steps} steps`);
  console.log(`distillation loss ${f(s.loss.first)} → ${f(s.loss.last)}`);
  console.log(`teacher–student agreement on ${s.heldOut.length} held-out prompts: SSIM ${f(s.agreement.before.ssim)} → ${f(s.agreement.after.ssim)}, ` +
    `PSNR ${f(s.agreement.before.psnr, 1)} → ${f(s.agreement.after.psnr, 1)} dB`);
  const bg = s.lora.background;
  console.log(`LoRA (a light-background style, ${s.lora.steps} micro-batches, loss ${f(s.lora.lossFirst)} → ${f(s.lora.lossLast)}): ` +
    `held-out background ${f(bg.without, 2)} → ${f(bg.teacher, 2)} (teacher), ${f(bg.student, 2)} (student); style ${f(bg.target, 2)}`);
  console.log(`${s.seconds.toFixed(0)} s; wrote ${s.files.map((x) => path.join(v.out, x)).join(', ')}`);
  return 0;
}

async function bench(args: string[]): Promise<number> {
  const p = parse('bench', args, { mib: { type: 'string' }, json: { type: 'string' }, baseline: { type: 'string' } } as const, { positionals: true });
  if (!p) return help('bench');
  const { v, positionals } = p;
  const fail = (msg: string) => (process.stderr.write(`x2i bench: ${msg}\n`), 2);
  const which = positionals[0] ?? 'bridge';
  if (positionals.length > 1) return fail(`one benchmark at a time, got ${positionals.join(', ')} (see x2i bench --help)`);
  if (!['bridge', 'flux', 'distill', 'qwen', 'finetune', 'low_rank'].includes(which)) return fail(`unknown benchmark '${which}' (available: bridge, flux, distill, qwen, finetune, low_rank)`);
  if (v.mib !== undefined && which !== 'bridge') return fail(`--mib is the bridge benchmark's (copy size), not ${which}'s`);
  if (v.baseline !== undefined && which === 'bridge') return fail('--baseline is for flux, distill, qwen and finetune');
  const args2 = [path.join(packageRoot, 'bench', `${which}.mjs`)];
  if (v.mib !== undefined) args2.push('--mib', String(positiveInt('--mib', parseNumberArg('--mib', v.mib), 1 << 16)));
  if (v.baseline !== undefined) {
    mustExist('--baseline', v.baseline);
    args2.push('--baseline', v.baseline);
  }
  if (v.json !== undefined) args2.push('--json', outputFile('--json', v.json));
  return spawnSync(process.execPath, args2, { stdio: 'inherit' }).status ?? 1;
}

/** A user's mistake (an option, a path, a file): printed as one line, exit status 2 (no stack trace). */
function isUserError(e: unknown): e is Error & { code: string } {
  const code = (e as { code?: unknown })?.code;
  return e instanceof Error && typeof code === 'string' && (code.startsWith('ERR_PARSE_ARGS') ||
    ['ERR_INVALID_ARG', 'ERR_OUTPUT_EXISTS', 'ERR_OUTPUT_PATH', 'ERR_FILE_NOT_FOUND', 'ERR_BAD_CHECKPOINT', 'ERR_CHECKSUM',
      'ERR_NON_FINITE', 'ERR_DATA', 'ERR_IMAGE', 'ERR_CONFIG_MISMATCH'].includes(code));
}

export async function main(argv: string[]): Promise<number> {
  try {
    return await run(argv);
  } catch (e) {
    if (e instanceof X2IError || isUserError(e)) {
      const cmd = argv[0] === 'train' && (argv[1] === 'lora' || argv[1] === 'lightcontrol') ? `train ${argv[1]}` : argv[0] ?? '';
      endProgressLine();
      process.stderr.write(`x2i ${cmd}: ${(e as Error).message}\n`);
      return isUserError(e) ? 2 : 1;
    }
    throw e;
  }
}

async function run(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  switch (cmd) {
    case 'demo':
      return demo(rest);
    case 'eval':
      return evaluate(rest);
    case 'train':
      return rest[0] === 'lora' || rest[0] === 'lightcontrol' ? finetune(rest[0], rest.slice(1)) : train(rest);
    case 'generate':
      return generate(rest);
    case 'serve':
      return (await import('./serve.js')).serveCommand(rest);
    case 'info':
      return parse('info', rest, {}) ? info() : help('info');
    case 'bench':
      return bench(rest);
    case '--version':
    case '-v':
      process.stdout.write(`${readVersion()}\n`);
      return 0;
    case 'help': {
      const topic = rest[0] === 'train' && (rest[1] === 'lora' || rest[1] === 'lightcontrol') ? `train ${rest[1]}` : rest[0];
      if (topic !== undefined && !HELP[topic]) {
        process.stderr.write(`x2i help: no command '${rest.join(' ')}' (commands: ${Object.keys(HELP).join(', ')})\n`);
        return 2;
      }
      return help(topic ?? '');
    }
    case undefined:
    case '--help':
    case '-h':
      return help('');
    default:
      process.stderr.write(`x2i: unknown command '${cmd}' (x2i --help lists the commands)\n`);
      return 2;
  }
}
