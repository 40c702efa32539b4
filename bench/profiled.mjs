// The harness of the kernel-profiler scripts (profile_generate.mjs, profile_step.mjs): `warmup` calls, then `steps`
// calls between cudaProfilerStart and cudaProfilerStop (what `ncu --profile-from-start off` records), then `iters`
// timed calls (a synchronisation around each). Returns the timed calls' median ms and their count.
import { probes } from '../dist/testing.js';

export async function profiled(step, sync, { warmup, steps, iters }) {
  for (let i = 0; i < warmup; i++) await step();
  await sync();
  probes().cudaProfiler(true);
  for (let i = 0; i < steps; i++) await step();
  await sync();
  probes().cudaProfiler(false);
  const ts = [];
  for (let i = 0; i < iters; i++) {
    const t = performance.now();
    await step();
    await sync();
    ts.push(performance.now() - t);
  }
  ts.sort((a, b) => a - b);
  return { medianMs: ts[Math.floor(ts.length / 2)], n: ts.length };
}
