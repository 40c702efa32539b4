// The X2I training step's encoders at real size (random bf16 weights: T5-XXL and CLIP-L for the teacher, Qwen2.5-VL-7B
// for the student; 512 / 77 / 512 tokens, B = 1), one or all three side by side, for a kernel profiler (the harness
// of bench/profiled.mjs: warm-up calls, the profiled calls between cudaProfilerStart and cudaProfilerStop, then timed
// calls):
//   ncu --clock-control none --profile-from-start off --metrics gpu__time_duration.sum --csv --page raw \
//       --log-file t5.csv node bench/profile_encoders.mjs --model t5
//   node bench/profile_encoders.mjs [--model t5|clip|qwen|all] [--steps 1] [--warmup 2] [--iters 5]
import { parseArgs } from 'node:util';
import * as x2i from '../dist/index.js';
import { CLIP_L, QWEN_7B, T5_XXL, promptIds } from './real_sizes.mjs';
import { profiled } from './profiled.mjs';

const { values: args } = parseArgs({ options: {
  model: { type: 'string', default: 'all' }, steps: { type: 'string', default: '1' }, warmup: { type: 'string', default: '2' },
  iters: { type: 'string', default: '5' } } });
const names = args.model === 'all' ? ['t5', 'clip', 'qwen'] : [args.model];
if (!names.every((n) => ['t5', 'clip', 'qwen'].includes(n))) { console.error(`--model: expected t5, clip, qwen or all, got ${args.model}`); process.exit(2); }
if (!x2i.cuda.isAvailable()) { console.error('bench/profile_encoders.mjs needs CUDA'); process.exit(1); }
const device = 'cuda', dtype = 'bfloat16';
const ids = promptIds(x2i.Tensor, device, 512);
const make = { t5: () => x2i.T5Encoder.fromConfig(T5_XXL, { device, dtype, seed: 1 }), clip: () => x2i.ClipTextEncoder.fromConfig(CLIP_L, { device, dtype, seed: 2 }),
  qwen: () => x2i.QwenVLEncoder.fromConfig(QWEN_7B, { device, dtype, seed: 3 }) };
const models = Object.fromEntries(await Promise.all(names.map(async (n) => [n, await make[n]()])));
const step = async () => {
  const rs = await Promise.all(names.map((n) => models[n].forward({ inputIds: ids[n] })));
  for (const r of rs) for (const v of Object.values(r)) if (v instanceof x2i.Tensor) v.dispose();
};
const t = await profiled(step, () => x2i.cuda.synchronize(device), { warmup: Number(args.warmup), steps: Number(args.steps), iters: Number(args.iters) });
console.log(`${names.join(' + ')}: median ${t.medianMs?.toFixed(2)} ms over ${t.n}`);
for (const m of Object.values(models)) m.dispose();
for (const v of Object.values(ids)) v.dispose();
