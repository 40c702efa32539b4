/** The `x2i` command line. */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { packageRoot, targetLibTorch } from '../core/native.js';
import { X2IError } from '../core/errors.js';
import { LIMITS, finiteOption, imageOutput, imageSide, integerOption, outputDir, outputFile, parseNumberArg,
  positiveInt, seedOption } from '../core/options.js';
import { buildInfo, cuda, memory } from '../index.js';
import type { DType } from '../core/tensor.js';
import type { FluxImages } from '../sample/pipeline.js';

const USAGE = `usage: x2i <command> [options]

commands:
  generate             an image with FLUX, conditioned by its own text encoders (teacher) or by an MLLM +
                       AlignNet (X2I student)
                       --flux DIR|FILE (transformer: a diffusers folder, its pipeline folder, or a BFL file)
                       --vae DIR (default: FLUX folder's vae/)
                       teacher: --prompt TEXT with --text-encoder DIR --text-encoder-2 DIR (default: beside --flux),
                                or --embeds FILE.safetensors (prompt_embeds, pooled_prompt_embeds)
                       student: --mllm DIR --alignnet FILE with any mix of --prompt TEXT, --prompt-image FILE
                                (repeatable: images the MLLM reads), --video FILE|DIR (repeatable: a video's frames
                                in order, or a folder of them) and --audio FILE (repeatable: WAV, FLAC, MP3, OGG; the
                                MiniCPM-o student hears); the student kind comes from --mllm's config.json
                       image-to-image: --image FILE (the init image) --strength 0.6; inpainting: also --mask FILE
                       (white = repaint); height and width default to the image's
                       --lora PATH[:SCALE] (repeatable; SCALE default 1) --fuse-lora (merge them before sampling)
                       --lightcontrol DIR|FILE --control-image FILE --control-scale 1.0 (X2I's LightControl)
                       --out FILE.png|.jpg|.webp (default out.png) --height 1024 --width 1024 --steps 28
                       --guidance 3.5 --seed 0 --device cpu|cuda[:N] --dtype float32|bfloat16
  train                train AlignNet by attention distillation (X2ITrainer)
                       --flux DIR|FILE --alignnet FILE (initial weights) --out DIR (checkpoints)
                       data: --captions FILE.jsonl|.txt with --mllm DIR (student) and --text-encoder DIR
                             --text-encoder-2 DIR (teacher; default: beside --flux),
                             or --features FILE.safetensors (teacher.encoder_hidden_states,
                             teacher.pooled_projections, student.hidden_states; batch on dim 0)
                       --steps 1000 --lr 1e-4 --warmup 0 --accumulate 1 --checkpoint-every 100
                       --height 1024 --width 1024 --resume --device cpu|cuda[:N] --dtype ...
                       --overwrite (replace the checkpoints of a non-empty --out; without it or --resume,
                       a non-empty --out is refused) --keep-last 2 (checkpoints kept)
                       several GPUs: --nproc-per-node N --parallel data|split (one process per GPU, NCCL;
                       data: each rank its share of the captions; split: 2 ranks, teacher | student)
                       many nodes: also --nnodes M --node-rank I --master-addr HOST --master-port 29500 on each
  train lora           train a LoRA on the frozen FLUX by flow matching (LoraTrainer)
  train lightcontrol   train LightControl's branches (LightControlTrainer)
                       --flux DIR|FILE --vae DIR (default: FLUX folder's vae/) --out DIR (checkpoints)
                       --data DIR|FILE.jsonl|SHARDS.tar (a folder of images with .txt/.json sidecars, a JSONL
                       manifest, or WebDataset shards: a path, data-{000..009}.tar or a comma list)
                       conditioning: --mllm DIR --alignnet FILE (student; samples with references: IT2I), or
                       --text-encoder DIR --text-encoder-2 DIR (teacher; default: beside --flux), or
                       --embeds FILE.safetensors (prompt_embeds, pooled_prompt_embeds: one for every sample)
                       --steps 1000 --lr (1e-4 lora, 1e-5 lightcontrol) --accumulate 1 --warmup 0
                       --checkpoint-every 100 --height 1024 --width 1024 --seed 0 --resume --overwrite
                       --keep-last 2 --gradient-checkpointing --device ... --dtype ...
                       lora: --rank 16 --alpha 16 --targets to_q,to_k,... (default: FLUX's usual set)
                             --editing-prompt TEXT (the IT2I template's)
                       lightcontrol: --lightcontrol DIR|FILE (initial branches; default: new official-config
                             ones) --hint source|target (default source; target copies the released script,
                             whose hint is the target image itself: a leak, for reproducing it only)
  eval                 teacher–student agreement: SSIM/PSNR of images from the same noise and the distillation
                       loss, on held-out samples
                       --flux DIR|FILE --vae DIR --alignnet FILE|DIR --features FILE.safetensors (as for train)
                       --steps 28 --height 1024 --width 1024 --device ... --json FILE
  demo                 the whole pipeline on a built-in tiny configuration (no download, CPU, ~4-5 min on 2
                       cores): train a tiny teacher on drawn shapes, distill a tiny MLLM + AlignNet into it,
                       generate held-out prompts with both, train a style LoRA on the teacher and apply it
                       to both; writes before.png, after.png, lora.png, loss.png, summary.json
                       --out DIR (default x2i-demo) --seed 0 --quick (a few steps of each: seconds)
                       --student qwen|internvl|minicpm-o (the tiny student's architecture; default qwen)
  info                 the native addon, the LibTorch it runs on, CUDA devices
  bench [bridge]       benchmark the N-API bridge (call overhead, copy bandwidth vs LibTorch)
                       options: --mib N (copy size, default 256), --json FILE
  bench flux           FLUX.1 blocks and the whole model on CUDA, bf16 (needs a GPU)
                       options: --baseline PATH (a python3 script of the same block math in PyTorch, run with --json), --json FILE
  bench distill        the distillation loss kernel and training step on CUDA (needs a GPU)
                       options: --baseline PATH (a python3 script of the official loss in PyTorch, run with --json), --json FILE
  bench qwen           the Qwen2.5-VL-7B-size encoder on CUDA: prefill with and without all-layer
                       capture, the vision tower (needs a GPU)
                       options: --baseline PATH (bench/baselines/qwen_prefill.py, transformers), --json FILE
  bench finetune       LoRA and LightControl training steps and generation with an adapter, FLUX.1-dev size on CUDA
                       options: --baseline PATH (bench/baselines/finetune_step.py, PyTorch eager), --json FILE
  help                 this text
`;

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

function progressBar(label: string): (p: { step: number; total: number; phase: string }) => void {
  return ({ step, total, phase }) => {
    const width = 30, done = Math.round((step / total) * width);
    process.stderr.write(`\r${label} [${'#'.repeat(done)}${'.'.repeat(width - done)}] ${step}/${total} ${phase}   `);
    if (phase === 'decode') process.stderr.write('\n');
  };
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

/** An image file decoded to RGB for the MLLM (sharp). */
async function rgbImage(f: string): Promise<{ data: Uint8Array; width: number; height: number }> {
  const { default: sharp } = await import('sharp');
  const { data, info } = await sharp(f).removeAlpha().raw().toBuffer({ resolveWithObject: true });
  return { data: new Uint8Array(data), width: info.width, height: info.height };
}

async function generate(args: string[]): Promise<number> {
  const { values: v } = parseArgs({ args, options: {
    flux: { type: 'string' }, vae: { type: 'string' }, prompt: { type: 'string' }, embeds: { type: 'string' },
    'text-encoder': { type: 'string' }, 'text-encoder-2': { type: 'string' }, mllm: { type: 'string' }, alignnet: { type: 'string' },
    'prompt-image': { type: 'string', multiple: true }, audio: { type: 'string', multiple: true }, video: { type: 'string', multiple: true },
    image: { type: 'string' }, strength: { type: 'string' }, mask: { type: 'string' },
    lora: { type: 'string', multiple: true }, 'fuse-lora': { type: 'boolean', default: false }, lightcontrol: { type: 'string' },
    'control-image': { type: 'string' }, 'control-scale': { type: 'string' },
    out: { type: 'string', default: 'out.png' }, height: { type: 'string' },
    width: { type: 'string' }, steps: { type: 'string', default: '28' }, guidance: { type: 'string', default: '3.5' },
    seed: { type: 'string', default: '0' }, device: { type: 'string', default: 'cpu' }, dtype: { type: 'string' } } });
  const fail = (msg: string) => (process.stderr.write(`x2i generate: ${msg}\n`), 2);
  if (!v.flux) return fail('--flux is required');
  const studentInput = !!(v.prompt || v['prompt-image'] || v.audio || v.video);
  for (const k of ['prompt-image', 'audio', 'video'] as const)
    if (v[k] && !v.mllm) return fail(`--${k} is the student's prompt: it needs --mllm and --alignnet`);
  if (!v.prompt && !v.embeds && !(v.mllm && studentInput)) return fail('give --prompt or --embeds (the student also takes --prompt-image, --video, --audio)');
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
  const side = (k: 'height' | 'width') => v[k] !== undefined ? imageSide(`--${k}`, parseNumberArg(`--${k}`, v[k])) : v.image ? undefined : 1024;
  const gen0 = { height: side('height'), width: side('width'),
    numInferenceSteps: positiveInt('--steps', parseNumberArg('--steps', v.steps), LIMITS.inferenceSteps),
    guidanceScale: finiteOption('--guidance', parseNumberArg('--guidance', v.guidance)), seed: seedOption('--seed', parseNumberArg('--seed', v.seed)) };
  const strength = v.strength !== undefined ? finiteOption('--strength', parseNumberArg('--strength', v.strength), { min: 0, max: 1, minExclusive: true }) : undefined;
  const controlScale = v['control-scale'] !== undefined ? finiteOption('--control-scale', parseNumberArg('--control-scale', v['control-scale'])) : undefined;
  for (const k of ['prompt-image', 'audio', 'video'] as const) for (const f of v[k] ?? []) mustExist(`--${k}`, f);
  for (const k of ['embeds', 'image', 'mask', 'lightcontrol', 'control-image'] as const) mustExist(`--${k}`, v[k]);
  const loras = (v.lora ?? []).map(loraArg);
  const x2i = await import('../index.js');
  const opts = { device: v.device, dtype: v.dtype as DType | undefined };
  const root = fs.existsSync(path.join(v.flux, 'transformer')) ? v.flux : path.dirname(v.flux);
  const transformer = await x2i.FluxTransformer.fromPretrained(v.flux, opts);
  for (const l of loras) await transformer.loadLora(await runFile(l.file, 'lora.safetensors'), { scale: l.scale });
  if (v['fuse-lora']) await transformer.fuseLora();
  const vae = await x2i.AutoencoderKL.fromPretrained(v.vae ?? path.join(root, 'vae'), opts);
  const lightControl = v.lightcontrol ? await loadLightControl(v.lightcontrol, opts) : undefined;
  const schedulerFile = path.join(root, 'scheduler', 'scheduler_config.json');
  const scheduler = fs.existsSync(schedulerFile) ? x2i.FlowMatchEulerScheduler.fromPretrained(schedulerFile) : new x2i.FlowMatchEulerScheduler();
  const gen = { ...gen0, onProgress: progressBar('x2i generate'),
    ...(v.image ? { image: v.image, strength, mask: v.mask } : {}),
    ...(v['control-image'] ? { control: { image: v['control-image'], scale: controlScale } } : {}) };
  let out: FluxImages;
  if (v.mllm || v.alignnet) {
    const images = [], video = [], audios = [];
    for (const f of v['prompt-image'] ?? []) images.push(await rgbImage(f));
    for (const f of v.video ?? [])  // a frame, or a folder of frames in name order
      for (const g of fs.statSync(f).isDirectory() ? fs.readdirSync(f).filter((n) => /\.(png|jpe?g|webp)$/i.test(n)).sort().map((n) => path.join(f, n)) : [f])
        video.push(await rgbImage(g));
    for (const f of v.audio ?? []) audios.push(await x2i.audio.load(f));
    const g = new x2i.X2IGenerator({ mllm: await x2i.studentFromPretrained(v.mllm!, opts),
      alignNet: await x2i.AlignNet.fromPretrained(v.alignnet!, opts), pipeline: new x2i.FluxPipeline({ transformer, vae, scheduler, lightControl }) });
    const mixed = images.length || video.length || audios.length;
    out = await g.generate({ ...gen, prompt: mixed ? { text: v.prompt, ...(images.length ? { images } : {}), ...(video.length ? { video } : {}),
      ...(audios.length ? { audios } : {}) } : v.prompt! });
  } else if (v.embeds) {
    const e = await x2i.loadSafetensors(v.embeds, { device: v.device });
    if (!e.prompt_embeds || !e.pooled_prompt_embeds) return fail(`${v.embeds} lacks prompt_embeds / pooled_prompt_embeds`);
    out = await new x2i.FluxPipeline({ transformer, vae, scheduler, lightControl }).generate({ ...gen, promptEmbeds: e.prompt_embeds,
      pooledPromptEmbeds: e.pooled_prompt_embeds });
  } else {
    const pipe = new x2i.FluxPipeline({ transformer, vae, scheduler, lightControl,
      textEncoder: await x2i.ClipTextEncoder.fromPretrained(v['text-encoder'] ?? path.join(root, 'text_encoder'), opts),
      textEncoder2: await x2i.T5Encoder.fromPretrained(v['text-encoder-2'] ?? path.join(root, 'text_encoder_2'), opts) });
    out = await pipe.generate({ ...gen, prompt: v.prompt });
  }
  fs.writeFileSync(v.out!, await x2i.encodeImage(out.images, 0, format));
  process.stderr.write(`x2i generate: wrote ${v.out}\n`);
  return 0;
}

/** The flags every training command shares, each checked (exit 2 naming the flag on a bad value). */
function trainingFlags(num: (flag: string) => number) {
  return {
    steps: positiveInt('--steps', num('steps'), LIMITS.trainSteps),
    lr: finiteOption('--lr', num('lr'), { min: 0 }),
    warmup: integerOption('--warmup', num('warmup'), { min: 0, max: LIMITS.trainSteps }),
    accumulate: positiveInt('--accumulate', num('accumulate')),
    checkpointEvery: positiveInt('--checkpoint-every', num('checkpoint-every'), LIMITS.trainSteps),
    keepLast: positiveInt('--keep-last', num('keep-last'), 1000),
    height: imageSide('--height', num('height')),
    width: imageSide('--width', num('width')),
  };
}

async function train(args: string[]): Promise<number> {
  const { values: v } = parseArgs({ args, options: {
    flux: { type: 'string' }, alignnet: { type: 'string' }, out: { type: 'string' }, captions: { type: 'string' },
    features: { type: 'string' }, mllm: { type: 'string' }, 'text-encoder': { type: 'string' }, 'text-encoder-2': { type: 'string' },
    steps: { type: 'string', default: '1000' }, lr: { type: 'string', default: '1e-4' }, warmup: { type: 'string', default: '0' },
    accumulate: { type: 'string', default: '1' }, 'checkpoint-every': { type: 'string', default: '100' },
    height: { type: 'string', default: '1024' }, width: { type: 'string', default: '1024' }, resume: { type: 'boolean', default: false },
    overwrite: { type: 'boolean', default: false }, 'keep-last': { type: 'string', default: '2' }, device: { type: 'string', default: 'cpu' }, dtype: { type: 'string' }, parallel: { type: 'string' },
    'nproc-per-node': { type: 'string' }, nnodes: { type: 'string', default: '1' }, 'node-rank': { type: 'string', default: '0' },
    'master-addr': { type: 'string' }, 'master-port': { type: 'string' } } });
  if (!v.flux || !v.alignnet || !v.out) { process.stderr.write('x2i train: --flux, --alignnet and --out are required\n'); return 2; }
  if (v.parallel && v.parallel !== 'data' && v.parallel !== 'split') { process.stderr.write(`x2i train: --parallel data|split, got '${v.parallel}'\n`); return 2; }
  if (v['nproc-per-node'] && !v.parallel) { process.stderr.write('x2i train: --nproc-per-node needs --parallel data|split\n'); return 2; }
  if (!v.captions && !v.features) { process.stderr.write('x2i train: give --captions (with --mllm) or --features\n'); return 2; }
  if (v.captions && !v.mllm) { process.stderr.write('x2i train: --captions needs --mllm for the student\n'); return 2; }
  // every option checked before a model loads (and before the launcher starts any rank)
  const num = (k: keyof typeof v) => parseNumberArg(`--${k}`, v[k] as string);
  const { steps, lr, warmup, accumulate, checkpointEvery, keepLast, height, width } = trainingFlags((k) => num(k as keyof typeof v));
  if (v.resume && v.overwrite) { process.stderr.write('x2i train: give --resume or --overwrite, not both\n'); return 2; }
  const resuming = v.resume && fs.existsSync(path.join(v.out, 'trainer.json'));
  outputDir('--out', v.out, { refuseNonEmpty: !resuming && !v.overwrite,
    hint: v.resume ? 'it holds no trainer.json to resume from; pass --overwrite to replace it' : 'pass --resume to continue its run, or --overwrite to replace it' });
  if (resuming) (await import('../train/trainer.js')).X2ITrainer.latestCheckpoint(v.out);  // a bad trainer.json: now
  for (const [k, f] of [['--features', v.features], ['--captions', v.captions], ['--alignnet', v.alignnet]] as const)
    if (f && !fs.existsSync(f)) throw new X2IError(`${k}: ${f}: no such file`, 'ERR_FILE_NOT_FOUND');
  if (v['nproc-per-node'] && process.env.X2I_LAUNCHED !== '1') {  // the launcher: one process per GPU, then wait
    const { launch } = await import('../train/distributed.js');
    // Ctrl-C reaches every rank (one process group): they stop together at a step boundary and save; wait for them
    process.on('SIGINT', () => {});
    const nnodes = positiveInt('--nnodes', num('nnodes'), 100_000);
    const codes = await launch(process.argv[1], { nprocPerNode: positiveInt('--nproc-per-node', num('nproc-per-node'), 1024), nnodes,
      nodeRank: integerOption('--node-rank', num('node-rank'), { min: 0, max: nnodes - 1 }), masterAddr: v['master-addr'],
      masterPort: v['master-port'] ? integerOption('--master-port', num('master-port'), { min: 1, max: 65535 }) : undefined,
      args: process.argv.slice(2), env: { X2I_LAUNCHED: '1' } });
    return codes.every((c) => c === 0) ? 0 : 1;
  }
  const x2i = await import('../index.js');
  const group = v.parallel ? await x2i.ProcessGroup.init() : undefined;
  const device = group && v.device.startsWith('cuda') ? x2i.ProcessGroup.localDevice() : v.device;
  const opts = { device, dtype: v.dtype as DType | undefined };
  // what this rank holds: everything, or the teacher's (rank 0) / the student's (rank 1) half in split mode
  const split = v.parallel === 'split', teacherSide = !split || group!.rank === 0, studentSide = !split || group!.rank === 1;
  const reporting = !group || (split ? group.rank === 1 : group.rank === 0);
  const root = fs.existsSync(path.join(v.flux, 'transformer')) ? v.flux : path.dirname(v.flux);
  const transformer = await x2i.FluxTransformer.fromPretrained(v.flux, opts);
  const alignNet = await x2i.AlignNet.fromPretrained(v.alignnet, { ...opts, dtype: 'float32' });
  let data: import('../train/trainer.js').X2IBatch[];
  let parts: ConstructorParameters<typeof x2i.X2ITrainer>[0] = { transformer, alignNet };
  if (v.features) {
    const f = await x2i.loadSafetensors(v.features, { device });
    for (const k of ['teacher.encoder_hidden_states', 'teacher.pooled_projections', 'student.hidden_states'])
      if (!f[k]) { process.stderr.write(`x2i train: ${v.features} lacks '${k}'\n`); return 2; }
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
    keepLast, overwrite: v.overwrite, parallel: group ? { group, mode: v.parallel as 'data' | 'split' } : null });
  if (resuming) await trainer.resume(v.out);
  const ac = new AbortController();
  process.once('SIGINT', () => { process.stderr.write('\nx2i train: stopping at the next step boundary\n'); ac.abort(); });
  const bar = progressBar('x2i train');
  await trainer.fit({ data, steps: Math.max(0, steps - trainer.microStep), signal: ac.signal, checkpointDir: v.out, collect: false,
    checkpointEvery, onStep: (i) => {
      if (reporting) bar({ step: i.microStep, total: steps, phase: `loss ${i.loss.toFixed(4)} lr ${i.lr.toExponential(2)}` });
    } });
  if (reporting) process.stderr.write(`\nx2i train: step ${trainer.step}; checkpoint ${x2i.X2ITrainer.latestCheckpoint(v.out)}\n`);
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
  const { values: v } = parseArgs({ args, options: {
    flux: { type: 'string' }, vae: { type: 'string' }, out: { type: 'string' }, data: { type: 'string' },
    mllm: { type: 'string' }, alignnet: { type: 'string' }, 'text-encoder': { type: 'string' }, 'text-encoder-2': { type: 'string' },
    embeds: { type: 'string' },
    steps: { type: 'string', default: '1000' }, lr: { type: 'string', default: kind === 'lora' ? '1e-4' : '1e-5' },
    accumulate: { type: 'string', default: '1' }, warmup: { type: 'string', default: '0' }, 'checkpoint-every': { type: 'string', default: '100' },
    height: { type: 'string', default: '1024' }, width: { type: 'string', default: '1024' }, seed: { type: 'string', default: '0' },
    resume: { type: 'boolean', default: false }, overwrite: { type: 'boolean', default: false }, 'keep-last': { type: 'string', default: '2' },
    device: { type: 'string', default: 'cpu' }, dtype: { type: 'string' }, 'gradient-checkpointing': { type: 'boolean', default: false },
    ...(kind === 'lora' ? { rank: { type: 'string', default: '16' }, alpha: { type: 'string' }, targets: { type: 'string' },
      'editing-prompt': { type: 'string' } } as const
      : { lightcontrol: { type: 'string' }, hint: { type: 'string', default: 'source' } } as const) } });
  const fail = (msg: string) => (process.stderr.write(`${cmd}: ${msg}\n`), 2);
  const s = (k: string) => (v as Record<string, string | boolean | undefined>)[k] as string | undefined;
  if (!v.flux || !v.out || !v.data) return fail('--flux, --out and --data are required');
  if ((v.mllm || v.alignnet) && (!v.mllm || !v.alignnet)) return fail('the student conditioning needs both --mllm and --alignnet');
  if (v.embeds && (v.mllm || v['text-encoder'] || v['text-encoder-2'])) return fail('give --embeds, or the encoders (--mllm/--alignnet or --text-encoder/--text-encoder-2), not both');
  if (v.mllm && (v['text-encoder'] || v['text-encoder-2'])) return fail('give the student (--mllm, --alignnet) or the teacher (--text-encoder, --text-encoder-2), not both');
  // every option checked before a model loads
  const num = (k: string) => parseNumberArg(`--${k}`, s(k));
  const { steps, lr, warmup, accumulate, checkpointEvery, keepLast, height, width } = trainingFlags(num);
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
  const resuming = v.resume && fs.existsSync(path.join(v.out, 'trainer.json'));
  outputDir('--out', v.out, { refuseNonEmpty: !resuming && !v.overwrite,
    hint: v.resume ? 'it holds no trainer.json to resume from; pass --overwrite to replace it' : 'pass --resume to continue its run, or --overwrite to replace it' });
  const { LoraTrainer, LightControlTrainer } = await import('../train/finetune.js');
  if (resuming) LoraTrainer.latestCheckpoint(v.out);  // a bad trainer.json: now
  const data = await dataSpec(v.data);
  for (const k of ['alignnet', 'embeds', 'lightcontrol'] as const) mustExist(`--${k}`, s(k));
  for (const k of ['mllm', 'vae', 'text-encoder', 'text-encoder-2'] as const) mustExist(`--${k}`, s(k));
  mustExist('--flux', v.flux);

  const x2i = await import('../index.js');
  const opts = { device: v.device, dtype: v.dtype as DType | undefined };
  const root = fs.existsSync(path.join(v.flux, 'transformer')) ? v.flux : path.dirname(v.flux);
  const transformer = await x2i.FluxTransformer.fromPretrained(v.flux, opts);
  const vae = await x2i.AutoencoderKL.fromPretrained(v.vae ?? path.join(root, 'vae'), opts);
  const schedulerFile = path.join(root, 'scheduler', 'scheduler_config.json');
  const scheduler = fs.existsSync(schedulerFile) ? x2i.FlowMatchEulerScheduler.fromPretrained(schedulerFile) : undefined;
  let parts: import('../train/finetune.js').FineTuneParts = { transformer, vae, scheduler };
  let conditioning: { encoderHiddenStates: import('../core/tensor.js').Tensor; pooledProjections: import('../core/tensor.js').Tensor } | undefined;
  if (v.embeds) {
    const e = await x2i.loadSafetensors(v.embeds, { device: v.device });
    if (!e.prompt_embeds || !e.pooled_prompt_embeds) return fail(`${v.embeds} lacks prompt_embeds / pooled_prompt_embeds`);
    conditioning = { encoderHiddenStates: e.prompt_embeds, pooledProjections: e.pooled_prompt_embeds };
  } else if (v.mllm) {
    parts = { ...parts, mllm: await x2i.studentFromPretrained(v.mllm, opts), alignNet: await x2i.AlignNet.fromPretrained(v.alignnet!, opts) };
  } else {
    parts = { ...parts, t5: await x2i.T5Encoder.fromPretrained(v['text-encoder-2'] ?? path.join(root, 'text_encoder_2'), opts),
      clip: await x2i.ClipTextEncoder.fromPretrained(v['text-encoder'] ?? path.join(root, 'text_encoder'), opts) };
  }
  const common = { lr, warmupSteps: warmup, totalSteps: steps, gradientAccumulation: accumulate, height, width, seed, keepLast,
    overwrite: v.overwrite, checkpoint: v['gradient-checkpointing'], conditioning: v.mllm ? 'student' as const : 'teacher' as const };
  let trainer: InstanceType<typeof LoraTrainer> | InstanceType<typeof LightControlTrainer>;
  if (kind === 'lora') {
    trainer = new LoraTrainer(parts, { ...common, editingPrompt: s('editing-prompt'), lora: { rank, alpha, targets, seed } });
  } else {
    const lightControl = s('lightcontrol') ? await loadLightControl(s('lightcontrol')!, { device: v.device, dtype: 'float32' })
      : await x2i.LightControl.fromConfig({}, { dtype: 'float32', device: v.device, seed });
    trainer = new LightControlTrainer({ ...parts, lightControl }, { ...common, hint: hint as 'source' | 'target' });
  }
  if (resuming) await trainer.resume(v.out);
  const ac = new AbortController();
  process.once('SIGINT', () => { process.stderr.write(`\n${cmd}: stopping at the next step boundary\n`); ac.abort(); });
  const dopts = { repeat: true, skip: trainer.microStep };
  const samples = data.kind === 'folder' ? x2i.datasets.fromFolder(v.data, dopts) : data.kind === 'jsonl' ? x2i.datasets.fromJsonl(v.data, dopts)
    : x2i.datasets.fromWebDataset(data.shards!, dopts);
  const withConditioning = conditioning ? (async function* () {
    for await (const x of samples) yield { ...x, conditioning };
  })() : samples;
  const bar = progressBar(cmd);
  const infos = await trainer.fit({ data: withConditioning, steps: Math.max(0, steps - trainer.microStep), signal: ac.signal, checkpointDir: v.out,
    checkpointEvery, onStep: (i) => bar({ step: i.microStep, total: steps, phase: `loss ${i.loss.toFixed(4)} lr ${i.lr.toExponential(2)}` }) });
  if (infos.length === 0 && trainer.microStep < steps && !ac.signal.aborted)
    throw new X2IError(`--data: ${v.data}: no samples`, 'ERR_DATA');
  const lc = s('lightcontrol');
  if (lc) {  // the branches' config beside the run (x2i generate --lightcontrol OUT reads it)
    const cfg = fs.existsSync(path.join(lc, 'trainer.json')) || fs.statSync(lc).isDirectory() ? path.join(lc, 'config.json')
      : path.join(path.dirname(lc), 'config.json');
    if (fs.existsSync(cfg) && path.resolve(cfg) !== path.resolve(v.out, 'config.json')) fs.copyFileSync(cfg, path.join(v.out, 'config.json'));
  }
  process.stderr.write(`\n${cmd}: step ${trainer.step}; checkpoint ${LoraTrainer.latestCheckpoint(v.out)}\n`);
  return 0;
}

async function evaluate(args: string[]): Promise<number> {
  const { values: v } = parseArgs({ args, options: {
    flux: { type: 'string' }, vae: { type: 'string' }, alignnet: { type: 'string' }, features: { type: 'string' },
    steps: { type: 'string', default: '28' }, height: { type: 'string', default: '1024' }, width: { type: 'string', default: '1024' },
    device: { type: 'string', default: 'cpu' }, dtype: { type: 'string' }, json: { type: 'string' } } });
  if (!v.flux || !v.alignnet || !v.features) { process.stderr.write('x2i eval: --flux, --alignnet and --features are required\n'); return 2; }
  const numInferenceSteps = positiveInt('--steps', parseNumberArg('--steps', v.steps), LIMITS.inferenceSteps);
  const height = imageSide('--height', parseNumberArg('--height', v.height)), width = imageSide('--width', parseNumberArg('--width', v.width));
  if (v.json) outputFile('--json', v.json);
  for (const [k, f] of [['--features', v.features], ['--alignnet', v.alignnet]] as const)
    if (!fs.existsSync(f)) throw new X2IError(`${k}: ${f}: no such file`, 'ERR_FILE_NOT_FOUND');
  const x2i = await import('../index.js');
  const opts = { device: v.device, dtype: v.dtype as DType | undefined };
  const root = fs.existsSync(path.join(v.flux, 'transformer')) ? v.flux : path.dirname(v.flux);
  const alignnetPath = fs.existsSync(path.join(v.alignnet, 'trainer.json'))
    ? path.join(x2i.X2ITrainer.latestCheckpoint(v.alignnet), 'alignnet.safetensors') : v.alignnet;
  const pipeline = new x2i.FluxPipeline({ transformer: await x2i.FluxTransformer.fromPretrained(v.flux, opts),
    vae: await x2i.AutoencoderKL.fromPretrained(v.vae ?? path.join(root, 'vae'), opts) });
  const alignNet = await x2i.AlignNet.fromPretrained(alignnetPath, opts);
  const f = await x2i.loadSafetensors(v.features, { device: v.device });
  for (const k of ['teacher.encoder_hidden_states', 'teacher.pooled_projections', 'student.hidden_states'])
    if (!f[k]) { process.stderr.write(`x2i eval: ${v.features} lacks '${k}'\n`); return 2; }
  const r = await x2i.evaluateAgreement({ pipeline, alignNet, height, width, numInferenceSteps, samples: [{ teacher: { encoderHiddenStates: f['teacher.encoder_hidden_states'],
      pooledProjections: f['teacher.pooled_projections'] }, student: { hiddenStates: f['student.hidden_states'] } }] });
  console.log(`ssim ${r.ssim.toFixed(4)}  psnr ${r.psnr.toFixed(2)} dB  distillation loss ${r.loss.toFixed(5)}`);
  if (v.json) fs.writeFileSync(v.json, JSON.stringify(r, null, 2));
  return 0;
}

async function demo(args: string[]): Promise<number> {
  const { values: v } = parseArgs({ args, options: { out: { type: 'string', default: 'x2i-demo' },
    seed: { type: 'string', default: '0' }, quick: { type: 'boolean', default: false }, student: { type: 'string', default: 'qwen' } } });
  const seed = seedOption('--seed', parseNumberArg('--seed', v.seed));
  if (!['qwen', 'internvl', 'minicpm-o'].includes(v.student!)) {
    process.stderr.write(`x2i demo: --student must be qwen, internvl or minicpm-o, got "${v.student}"\n`);
    return 2;
  }
  outputDir('--out', v.out);
  const { runDemo } = await import('./demo.js');
  const label: Record<string, string> = { teacher: 'training the teacher', distill: 'distilling the student', lora: 'training a LoRA',
    generate: 'generating' };
  let phase = '';
  const s = await runDemo({ out: v.out!, seed, quick: v.quick, student: v.student as 'qwen' | 'internvl' | 'minicpm-o', onProgress: (e) => {
    if (e.phase !== phase) { if (phase) process.stderr.write('\n'); phase = e.phase; }
    const width = 30, done = Math.round((e.step / e.total) * width);
    process.stderr.write(`\rx2i demo: ${label[e.phase]} [${'#'.repeat(done)}${'.'.repeat(width - done)}] ${e.step}/${e.total}` +
      (e.loss !== undefined ? ` loss ${e.loss.toFixed(4)}` : '') + '   ');
  } });
  process.stderr.write('\n');
  const f = (x: number, d = 3) => x.toFixed(d);
  console.log(`teacher: flow-matching loss ${f(s.teacher.lossFirst)} → ${f(s.teacher.lossLast)} over ${s.teacher.steps} steps`);
  console.log(`distillation loss ${f(s.loss.first)} → ${f(s.loss.last)}`);
  console.log(`teacher–student agreement on ${s.heldOut.length} held-out prompts: SSIM ${f(s.agreement.before.ssim)} → ${f(s.agreement.after.ssim)}, ` +
    `PSNR ${f(s.agreement.before.psnr, 1)} → ${f(s.agreement.after.psnr, 1)} dB`);
  const bg = s.lora.background;
  console.log(`LoRA (a light-background style, ${s.lora.steps} micro-batches, loss ${f(s.lora.lossFirst)} → ${f(s.lora.lossLast)}): ` +
    `held-out background ${f(bg.without, 2)} → ${f(bg.teacher, 2)} (teacher), ${f(bg.student, 2)} (student); style ${f(bg.target, 2)}`);
  console.log(`${s.seconds.toFixed(0)} s; wrote ${s.files.map((x) => path.join(v.out!, x)).join(', ')}`);
  return 0;
}

/** A user's mistake (an option, a path, a file): printed as one line, exit status 2 (no stack trace). */
function isUserError(e: unknown): e is Error & { code: string } {
  const code = (e as { code?: unknown })?.code;
  return e instanceof Error && typeof code === 'string' && (code.startsWith('ERR_PARSE_ARGS') ||
    ['ERR_INVALID_ARG', 'ERR_OUTPUT_EXISTS', 'ERR_OUTPUT_PATH', 'ERR_FILE_NOT_FOUND', 'ERR_BAD_CHECKPOINT', 'ERR_CHECKSUM',
      'ERR_NON_FINITE', 'ERR_DATA'].includes(code));
}

export async function main(argv: string[]): Promise<number> {
  try {
    return await run(argv);
  } catch (e) {
    if (e instanceof X2IError || isUserError(e)) {
      const cmd = argv[0] === 'train' && (argv[1] === 'lora' || argv[1] === 'lightcontrol') ? `train ${argv[1]}` : argv[0] ?? '';
      process.stderr.write(`\nx2i ${cmd}: ${(e as Error).message}\n`);
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
    case 'info':
      return info();
    case 'bench': {
      const { positionals, values } = parseArgs({ args: rest, allowPositionals: true,
        options: { mib: { type: 'string' }, json: { type: 'string' }, baseline: { type: 'string' } } });
      const which = positionals[0] ?? 'bridge';
      if (!['bridge', 'flux', 'distill', 'qwen', 'finetune'].includes(which)) {
        console.error(`x2i bench: unknown benchmark '${which}' (available: bridge, flux, distill, qwen, finetune)`);
        return 2;
      }
      const args = [path.join(packageRoot, 'bench', `${which}.mjs`)];
      if (values.mib && which === 'bridge') args.push('--mib', values.mib);
      if (values.baseline && which !== 'bridge') args.push('--baseline', values.baseline);
      if (values.json) args.push('--json', values.json);
      return spawnSync(process.execPath, args, { stdio: 'inherit' }).status ?? 1;
    }
    case undefined:
    case 'help':
    case '--help':
    case '-h':
      process.stdout.write(USAGE);
      return 0;
    default:
      process.stderr.write(`x2i: unknown command '${cmd}'\n\n${USAGE}`);
      return 2;
  }
}
