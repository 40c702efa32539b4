// One denoising step of generation at FLUX.1-dev size (random bf16 weights, 1024², 512 text tokens, B = 1) with no
// adapter, one frozen rank-16 adapter on the 418 default targets unfused, or the same adapter fused — for a kernel
// profiler: the profiled steps run between cudaProfilerStart and cudaProfilerStop, after warm-up steps, so
//   ncu --clock-control none --profile-from-start off --metrics gpu__time_duration.sum --csv --page raw \
//       --log-file unfused.csv node bench/profile_generate.mjs --mode unfused
// records exactly those steps' kernels (bench/ncu_summary.mjs compares two such files). Without a profiler it prints
// the median step time of --iters more steps (a device synchronisation around each).
//   node bench/profile_generate.mjs [--mode none|unfused|fused] [--steps 1] [--warmup 2] [--iters 5] [--size 1024]
import { parseArgs } from 'node:util';
import * as x2i from '../dist/index.js';
import { profiled } from './profiled.mjs';
import { loadFrozenAdapter } from './frozen_adapter.mjs';

const { values: args } = parseArgs({ options: {
  mode: { type: 'string', default: 'unfused' }, steps: { type: 'string', default: '1' }, warmup: { type: 'string', default: '2' },
  iters: { type: 'string', default: '5' }, size: { type: 'string', default: '1024' }, tiny: { type: 'boolean', default: false },
  device: { type: 'string' } } });
if (!['none', 'unfused', 'fused'].includes(args.mode)) { console.error(`--mode: expected none, unfused or fused, got ${args.mode}`); process.exit(2); }
const device = args.device ?? (args.tiny ? 'cpu' : 'cuda');
const onCuda = device.startsWith('cuda');
if (onCuda && !x2i.cuda.isAvailable()) { console.error('bench/profile_generate.mjs needs CUDA (or --tiny --device cpu)'); process.exit(1); }
const side = Number(args.size), T = args.tiny ? 8 : 512;
const config = args.tiny ? { num_layers: 2, num_single_layers: 2, attention_head_dim: 16, num_attention_heads: 2, joint_attention_dim: 32,
  pooled_projection_dim: 24, in_channels: 16, axes_dims_rope: [4, 6, 6] } : {};
const flux = await x2i.FluxTransformer.fromConfig(config, { device, dtype: onCuda ? 'bfloat16' : 'float32', seed: 0 });
if (args.mode !== 'none') await loadFrozenAdapter(flux, { rank: 16 });
if (args.mode === 'fused') await flux.fuseLora();
const C = Number(flux.config.in_channels ?? 64), N = (side / 16) ** 2, lh = 2 * (side / 16);
const dtype = onCuda ? 'bfloat16' : 'float32';
const inputs = {
  encoderHiddenStates: await x2i.randn([1, T, Number(flux.config.joint_attention_dim ?? 4096)], { seed: 2, device, dtype }),
  pooledProjections: await x2i.randn([1, Number(flux.config.pooled_projection_dim ?? 768)], { seed: 3, device, dtype }),
  guidance: x2i.Tensor.fromArray(new Float32Array([3.5]), [1], { device }),
  imgIds: x2i.FluxPipeline.imageIds(lh, lh, device), txtIds: x2i.Tensor.fromArray(new Float32Array(T * 3), [T, 3], { device }),
  hiddenStates: await x2i.randn([1, N, C], { seed: 5, device, dtype }),
};
const sync = async () => { if (onCuda) await x2i.cuda.synchronize(device); };
const step = async () => (await flux.denoise(inputs, [0.75], [0.75, 0.7], { returnStepLatents: false })).latents.dispose();

const t = await profiled(step, sync, { warmup: Number(args.warmup), steps: Number(args.steps), iters: Number(args.iters) });
console.log(`mode ${args.mode}: one denoising step at ${side}² median ${t.medianMs?.toFixed(2)} ms over ${t.n}`);
for (const t of Object.values(inputs)) t.dispose();
flux.dispose();
