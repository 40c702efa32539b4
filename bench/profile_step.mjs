// One X2I distillation step through the frozen transformer at FLUX.1-dev size (random bf16 weights, 1024², 512 text
// tokens, B = 1: teacher forward with its 76 taps, student forward, input-gradient backward), bf16 or FP8 block weights,
// for a kernel profiler: the profiled steps run between cudaProfilerStart and cudaProfilerStop after warm-up steps, so
//   ncu --clock-control none --profile-from-start off --metrics gpu__time_duration.sum --csv --page raw \
//       --log-file fp8.csv node bench/profile_step.mjs --quantize fp8
// records exactly those steps' kernels (bench/ncu_summary.mjs sums them by kernel). Without a profiler it prints the
// median step time of --iters more steps.
//   node bench/profile_step.mjs [--quantize none|fp8] [--transposed (fp8TransposedWeights)] [--steps 1] [--warmup 2] [--iters 5]
import { parseArgs } from 'node:util';
import * as x2i from '../dist/index.js';
import { profiled } from './profiled.mjs';

const { values: args } = parseArgs({ options: {
  quantize: { type: 'string', default: 'fp8' }, transposed: { type: 'boolean', default: false }, steps: { type: 'string', default: '1' }, warmup: { type: 'string', default: '2' },
  iters: { type: 'string', default: '5' } } });
if (!['none', 'fp8'].includes(args.quantize)) { console.error(`--quantize: expected none or fp8, got ${args.quantize}`); process.exit(2); }
if (!x2i.cuda.isAvailable()) { console.error('bench/profile_step.mjs needs CUDA'); process.exit(1); }
const device = 'cuda', dtype = 'bfloat16', T = 512, N = 4096;
const flux = await x2i.FluxTransformer.fromConfig({}, { device, dtype, seed: 0, quantize: args.quantize, fp8TransposedWeights: args.transposed });
const cond = async (seed) => ({
  encoderHiddenStates: await x2i.randn([1, T, 4096], { seed, device, dtype }),
  pooledProjections: await x2i.randn([1, 768], { seed: seed + 1, device, dtype }),
  imgIds: x2i.FluxPipeline.imageIds(128, 128, device), txtIds: x2i.Tensor.fromArray(new Float32Array(T * 3), [T, 3], { device }),
});
const shared = { hiddenStates: await x2i.randn([1, N, 64], { seed: 5, device, dtype }),
  timestep: x2i.Tensor.fromArray(new Float32Array([0.7]), [1], { device }), guidance: x2i.Tensor.fromArray(new Float32Array([3.5]), [1], { device }) };
const teacher = { ...(await cond(10)), ...shared }, student = { ...(await cond(20)), ...shared };
const sync = () => x2i.cuda.synchronize(device);
const step = async () => { const r = await flux.distillationStep(teacher, student); for (const g of Object.values(r.grad)) g.dispose(); };

const t = await profiled(step, sync, { warmup: Number(args.warmup), steps: Number(args.steps), iters: Number(args.iters) });
console.log(`quantize ${args.quantize}${args.transposed ? ' (kept transposed)' : ''}: one distillation step median ${t.medianMs?.toFixed(2)} ms over ${t.n}`);
for (const t of new Set([...Object.values(teacher), ...Object.values(student)])) t.dispose();
flux.dispose();
