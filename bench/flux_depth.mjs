// FLUX.1-dev's blocks at full depth, on CUDA: a transformer of its 19 double blocks alone and one of its 38 single
// blocks alone (FluxTransformer.fromConfig, random bf16 weights, 4608 tokens), forward and forward + backward to the
// conditioning inputs; median of 15 calls after 3 warm-up, wall time from Node (each call returns after the device
// finished). Steadier than bench/flux.mjs's per-block estimate (a difference of two short calls), so it is what
// compares two builds: node bench/flux_depth.mjs [dist folder, default ../dist of this file]
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const dist = path.resolve(process.argv[2] ?? path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'dist'));
const x2i = await import(path.join(dist, 'index.js'));
if (!x2i.cuda.isAvailable()) { console.error('bench/flux_depth.mjs needs CUDA'); process.exit(1); }
const D = 3072, T = 512, N = 4096, side = 64, dev = 'cuda', dt = 'bfloat16';
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const dispose = (o) => { for (const v of Object.values(o ?? {})) if (v instanceof x2i.Tensor) v.dispose(); else if (v && typeof v === 'object') dispose(v); };
async function time(fn, n = 15, warm = 3) {
  for (let i = 0; i < warm; i++) await fn();
  const ts = [];
  for (let i = 0; i < n; i++) { const t0 = process.hrtime.bigint(); await fn(); ts.push(Number(process.hrtime.bigint() - t0) / 1e6); }
  return median(ts);
}
const imgIds = new Float32Array(N * 3);
for (let n = 0; n < N; n++) { imgIds[3 * n + 1] = Math.floor(n / side); imgIds[3 * n + 2] = n % side; }
const ins = {
  hiddenStates: await x2i.randn([1, N, 64], { seed: 1, device: dev, dtype: dt }),
  encoderHiddenStates: await x2i.randn([1, T, 4096], { seed: 2, device: dev, dtype: dt }),
  pooledProjections: await x2i.randn([1, 768], { seed: 3, device: dev, dtype: dt }),
  timestep: x2i.Tensor.fromArray(new Float32Array(1).fill(1), [1], { device: dev }),
  guidance: x2i.Tensor.fromArray(new Float32Array(1).fill(3.5), [1], { device: dev }),
  imgIds: x2i.Tensor.fromArray(imgIds, [N, 3], { device: dev }),
  txtIds: x2i.Tensor.fromArray(new Float32Array(T * 3), [T, 3], { device: dev }),
};
const gradSample = await x2i.randn([1, N, 64], { seed: 4, device: dev, dtype: dt });
const out = {};
for (const [name, nd, ns] of [['19 double', 19, 0], ['38 single', 0, 38]]) {
  const m = await x2i.FluxTransformer.fromConfig({ num_layers: nd, num_single_layers: ns }, { device: dev, dtype: dt, seed: 0 });
  out[name] = { fwd: await time(async () => dispose(await m.forward(ins))), fwdbwd: await time(async () => dispose(await m.forwardBackward(ins, { gradSample }))) };
  m.dispose();
}
console.log(JSON.stringify({ dist, ...out }));
