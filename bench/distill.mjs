// The X2I distillation loss on a GPU (issue 4): one fused pass per row (loss + gradient) at 4608 and
// 18432 rows × 3072, bf16, against the official formula in PyTorch eager and torch.compile and a bf16
// `a + b → c` bandwidth yardstick (a python3 script given as --baseline, same run); accuracy against float64; then
// the share of the loss in a FLUX.1-size student step.
//   node bench/distill.mjs [--baseline path/x2i_loss.py] [--json out.json] [--no-step]
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import * as x2i from '../dist/index.js';
import { probes } from '../dist/testing.js';

const { values: args } = parseArgs({ options: { baseline: { type: 'string' }, json: { type: 'string' },
  'no-step': { type: 'boolean', default: false } } });
if (!x2i.cuda.isAvailable()) { console.error('bench/distill.mjs needs CUDA'); process.exit(1); }
const D = 3072;
const result = { date: new Date().toISOString(), cases: [] };

const bench = (t, s, inc, method = 'fused', iters = 200) =>
  probes().benchDistillTap(t.handle, s.handle, 'rkl', 3, inc ? inc.handle : undefined, method, iters);
for (const rows of [4608, 18432]) {
  const B = Math.max(1, rows / 4608), N = rows / B;
  const s = await x2i.randn([B, N, D], { seed: 1, device: 'cuda', dtype: 'bfloat16' });
  const t = await x2i.randn([B, N, D], { seed: 2, device: 'cuda', dtype: 'bfloat16' });
  const inc = await x2i.randn([B, N, D], { seed: 9, device: 'cuda', dtype: 'bfloat16' });
  const ms = await bench(t, s);                         // forward form: read S, T; write dS
  const msBackward = await bench(t, s, inc);            // backward form: read S, T, incoming; write incoming + dS
  const msComposite = await bench(t, s, undefined, 'composite', 20);  // the same formulas as unfused LibTorch ops
  const msCompositeBackward = await bench(t, s, inc, 'composite', 20);
  const bytes = 3 * rows * D * 2, bytesBackward = 4 * rows * D * 2;
  // accuracy of this bf16-in, float32-accumulate pass against float64 on the same inputs
  const wrap = (x) => ({ doubleImg: x, doubleTxt: x, single: x });
  const [s4, t4] = [s.shape, t.shape].map((sh) => [sh[0], 1, sh[1], sh[2]]);
  const got = await x2i.distillationLoss(wrap(await reshape(t, t4)), wrap(await reshape(s, s4)), { returnGrad: true });
  const ref = await x2i.distillationLoss(wrap(await reshape(await t.to({ dtype: 'float64' }), t4)),
    wrap(await reshape(await s.to({ dtype: 'float64' }), s4)), { returnGrad: true });
  result.cases.push({ rows, batch: B, x2i_ms: ms, x2i_TBps: bytes / (ms * 1e-3) / 1e12,
    x2i_backward_ms: msBackward, x2i_backward_TBps: bytesBackward / (msBackward * 1e-3) / 1e12,
    composite_ms: msComposite, composite_backward_ms: msCompositeBackward,
    loss_rel_err: Math.abs(got.loss - ref.loss) / ref.loss,
    grad_rel_err: await x2i.relativeError(await got.grads.single.to({ dtype: 'float64' }), ref.grads.single),
    // what the pass allocates: the gradient (the tap's shape and dtype), one float per block, the term
    extra_memory_ratio: (rows * D * 2 + 4 * 132 * 16 + 4) / (rows * D * 2) });
  s.dispose(); t.dispose(); inc.dispose();
}
async function reshape(t, shape) {  // [B, N, D] → [B, 1, N, D] through the host (small enough)
  return x2i.Tensor.fromArray(await t.toArray(), shape, { dtype: t.dtype, device: t.device });
}

// other register tiles for 3072-wide bf16 rows (X2I_DISTILL_TILE), same inputs
result.tiles = [];
for (const tile of ['4x24', '2x48', '6x16', '4x24b5', '4x24np', '4x24b5np']) {  // 4x24 is the default
  if (tile !== '4x24') process.env.X2I_DISTILL_TILE = tile;
  const row = { tile };
  for (const rows of [4608, 18432]) {
    const [s, t, inc] = await Promise.all([1, 2, 9].map((seed) => x2i.randn([rows / 4608, 4608, D], { seed, device: 'cuda', dtype: 'bfloat16' })));
    row[`fwd_${rows}`] = await bench(t, s);
    row[`bwd_${rows}`] = await bench(t, s, inc);
    s.dispose(); t.dispose(); inc.dispose();
  }
  delete process.env.X2I_DISTILL_TILE;
  result.tiles.push(row);
}

// the loss passes of one 1024² training step (B = 1): 19 double-stream image taps of 4096 rows, 19 text
// taps of 512, 38 single-stream taps of 4608, each in the backward form the step uses
{
  const per = {};
  for (const rows of [4096, 512, 4608]) {
    const [s, t, inc] = await Promise.all([1, 2, 9].map((seed) => x2i.randn([1, rows, D], { seed, device: 'cuda', dtype: 'bfloat16' })));
    per[rows] = await bench(t, s, inc);
    s.dispose(); t.dispose(); inc.dispose();
  }
  result.stepLoss = { per_tap_ms: per, total_ms: 19 * per[4096] + 19 * per[512] + 38 * per[4608],
    bytes: 4 * (19 * 4096 + 19 * 512 + 38 * 4608) * D * 2 };
  result.stepLoss.TBps = result.stepLoss.bytes / (result.stepLoss.total_ms * 1e-3) / 1e12;
}

if (args.baseline) {
  const out = path.join(os.tmpdir(), `x2i_loss-${process.pid}.json`);
  const r = spawnSync('python3', [args.baseline, '--rows', '4608,18432', '--json', out], { encoding: 'utf8', timeout: 300_000 });
  if (r.status === 0) result.baseline = JSON.parse(fs.readFileSync(out, 'utf8'));
  else result.baselineError = (r.stderr || '').split('\n').slice(-5).join('\n');
}

// the whole step at FLUX.1-dev size, 1024², batch 1: distillationStep vs teacher forward + student fwd+bwd
if (!args['no-step']) {
  const m = await x2i.FluxTransformer.fromConfig({}, { device: 'cuda', dtype: 'bfloat16', seed: 0 });
  const T = 512, N = 4096, side = 64;
  const ids = new Float32Array(N * 3);
  for (let n = 0; n < N; n++) { ids[3 * n + 1] = Math.floor(n / side); ids[3 * n + 2] = n % side; }
  const base = { hiddenStates: await x2i.randn([1, N, 64], { seed: 3, device: 'cuda', dtype: 'bfloat16' }),
    timestep: x2i.Tensor.fromArray(new Float32Array([1]), [1], { device: 'cuda' }),
    guidance: x2i.Tensor.fromArray(new Float32Array([3.5]), [1], { device: 'cuda' }),
    imgIds: x2i.Tensor.fromArray(ids, [N, 3], { device: 'cuda' }),
    txtIds: x2i.Tensor.fromArray(new Float32Array(T * 3), [T, 3], { device: 'cuda' }) };
  const teacher = { ...base, encoderHiddenStates: await x2i.randn([1, T, 4096], { seed: 4, device: 'cuda', dtype: 'bfloat16' }),
    pooledProjections: await x2i.randn([1, 768], { seed: 5, device: 'cuda', dtype: 'bfloat16' }) };
  const student = { ...base, encoderHiddenStates: await x2i.randn([1, T, 4096], { seed: 6, device: 'cuda', dtype: 'bfloat16' }),
    pooledProjections: await x2i.randn([1, 768], { seed: 7, device: 'cuda', dtype: 'bfloat16' }) };
  const gradSample = await x2i.randn([1, N, 64], { seed: 8, device: 'cuda', dtype: 'bfloat16' });
  const median = async (fn, n = 7) => {
    for (let i = 0; i < 2; i++) await fn();
    const ts = [];
    for (let i = 0; i < n; i++) { const t0 = performance.now(); await fn(); ts.push(performance.now() - t0); }
    return ts.sort((a, b) => a - b)[Math.floor(n / 2)];
  };
  const dispose = (o) => { for (const v of Object.values(o)) if (v instanceof x2i.Tensor) v.dispose(); else if (v && typeof v === 'object') dispose(v); };
  // the step, and the same step with the loss nodes passing the gradient on unchanged (no loss pass: what is
  // left is the teacher forward, the student forward and the backward from the taps), interleaved in pairs so
  // that clock drift hits both alike; the loss's cost in the step is the median of the pairs' differences
  const timeStep = async (passThrough) => {
    if (passThrough) process.env.X2I_DISTILL_PASSTHROUGH = '1';
    const t0 = performance.now();
    dispose(await m.distillationStep(teacher, student));
    const ms = performance.now() - t0;
    delete process.env.X2I_DISTILL_PASSTHROUGH;
    return ms;
  };
  for (let i = 0; i < 2; i++) await timeStep(false), await timeStep(true);
  const pairs = [];
  for (let i = 0; i < 21; i++) {
    const a = await timeStep(false), b = await timeStep(true);
    pairs.push([a, b]);
  }
  const med = (xs) => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)];
  const stepMs = med(pairs.map((p) => p[0])), nullMs = med(pairs.map((p) => p[1]));
  const diffMs = med(pairs.map((p) => p[0] - p[1]));
  const teacherMs = await median(async () => dispose(await m.forward(teacher)));
  const studentMs = await median(async () => dispose(await m.forwardBackward(student, { gradSample })));
  const r = await m.distillationStep(teacher, student);
  result.step = { step_ms: stepMs, teacher_forward_ms: teacherMs, student_fwdbwd_ms: studentMs,
    loss_and_capture_ms: stepMs - teacherMs - studentMs, share_of_student: (stepMs - teacherMs - studentMs) / studentMs,
    loss_passes_share_of_student: result.stepLoss.total_ms / studentMs, passthrough_step_ms: nullMs,
    loss_in_step_ms: diffMs, loss_in_step_share: diffMs / studentMs,
    loss_in_step_pairs_ms: pairs.map((p) => p[0] - p[1]), loss: r.loss, skipped: r.skipped };
  m.dispose();
}

console.log(`X2I distillation loss, bf16, D = ${D} — ${result.date}`);
console.log('| rows | x2i fwd form ms | TB/s | x2i bwd form ms | TB/s | LibTorch composite ms (fwd / bwd) | eager ms | compile ms | a+b→c ms | x2i vs a+b | vs eager | vs compile | vs composite | loss err | grad err |');
console.log('|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
for (const c of result.cases) {
  const b = result.baseline?.cases?.find((x) => x.rows === c.rows);
  const f = (x, d = 3) => (x === undefined ? '—' : x.toFixed(d));
  console.log(`| ${c.rows} | ${f(c.x2i_ms)} | ${f(c.x2i_TBps, 2)} | ${f(c.x2i_backward_ms)} | ${f(c.x2i_backward_TBps, 2)} | ` +
    `${f(c.composite_ms)} / ${f(c.composite_backward_ms)} | ${f(b?.eager_ms)} | ${f(b?.compile_ms)} | ${f(b?.yardstick_add_ms, 4)} | ` +
    `${b ? `${(b.yardstick_add_ms / c.x2i_ms * 100).toFixed(0)}%` : '—'} | ${b ? `${(b.eager_ms / c.x2i_ms).toFixed(1)}×` : '—'} | ` +
    `${b ? `${(b.compile_ms / c.x2i_ms).toFixed(1)}×` : '—'} | ${(c.composite_ms / c.x2i_ms).toFixed(1)}× | ${c.loss_rel_err.toExponential(1)} | ${c.grad_rel_err.toExponential(1)} |`);
}
if (result.baseline) for (const b of result.baseline.cases)
  console.log(`baseline ${b.rows}: eager loss/grad err ${b.eager_loss_rel_err.toExponential(1)}/${b.eager_grad_rel_err.toExponential(1)}, ` +
    `compile ${b.compile_loss_rel_err.toExponential(1)}/${b.compile_grad_rel_err.toExponential(1)}; peak extra MiB eager ${b.eager_peak_extra_MiB.toFixed(0)}, compile ${b.compile_peak_extra_MiB.toFixed(0)}`);
const sl = result.stepLoss;
console.log(`loss passes of a 1024² step (backward form): 19 × ${sl.per_tap_ms[4096].toFixed(4)} + 19 × ${sl.per_tap_ms[512].toFixed(4)} + ` +
  `38 × ${sl.per_tap_ms[4608].toFixed(4)} ms = ${sl.total_ms.toFixed(2)} ms (${sl.TBps.toFixed(2)} TB/s)`);
if (result.step) console.log(`step at 1024², B=1: distillationStep ${result.step.step_ms.toFixed(1)} ms = teacher forward ${result.step.teacher_forward_ms.toFixed(1)} + ` +
  `student fwd+bwd ${result.step.student_fwdbwd_ms.toFixed(1)} + loss & capture ${result.step.loss_and_capture_ms.toFixed(1)} ms ` +
  `(${(result.step.share_of_student * 100).toFixed(2)}% of the student's fwd+bwd; the loss passes alone ${(result.step.loss_passes_share_of_student * 100).toFixed(2)}%); ` +
  `with pass-through loss nodes ${result.step.passthrough_step_ms.toFixed(1)} ms: the loss in the step (median of 21 interleaved pairs) ${result.step.loss_in_step_ms.toFixed(2)} ms = ${(result.step.loss_in_step_share * 100).toFixed(2)}%; ` +
  `pairs' differences ${[...result.step.loss_in_step_pairs_ms].sort((a, b) => a - b).map((x) => x.toFixed(1)).join(' ')} ms`);
for (const r of result.tiles) console.log(`tile ${r.tile}: fwd ${r.fwd_4608.toFixed(4)} / ${r.fwd_18432.toFixed(4)} ms, bwd ${r.bwd_4608.toFixed(4)} / ${r.bwd_18432.toFixed(4)} ms (4608 / 18432 rows)`);
if (result.baselineError) console.log('baseline failed:', result.baselineError);
if (args.json) fs.writeFileSync(args.json, JSON.stringify(result, null, 2));
