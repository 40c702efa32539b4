// FluxTransformer on CUDA: the golden model in float32 and bf16, and the distillation gradient.
import assert from 'node:assert/strict';
import path from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import * as x2i from '../../dist/index.js';

const golden = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', 'fixtures', 'golden');
const skip = x2i.cuda.isAvailable() ? false : 'CUDA is not available';
const gpuIt = (name, fn) => it(name, { skip }, fn);

async function onCuda(io) {
  const out = {};
  for (const [k, v] of Object.entries(io)) out[k] = await v.to({ device: 'cuda' });
  return out;
}

describe('FluxTransformer on CUDA', () => {
  gpuIt('float32 matches the golden sample and captures (rel err <= 1e-4)', async () => {
    const io = await onCuda(await x2i.loadSafetensors(path.join(golden, 'flux-transformer', 'io.safetensors')));
    const inputs = { hiddenStates: io.hidden_states, encoderHiddenStates: io.encoder_hidden_states,
      pooledProjections: io.pooled_projections, timestep: io.timestep, guidance: io.guidance, imgIds: io.img_ids, txtIds: io.txt_ids };
    for (const [dtype, tol] of [['float32', 1e-4]]) {
      const m = await x2i.FluxTransformer.fromPretrained(path.join(golden, 'flux-transformer'), { device: 'cuda', dtype });
      assert.equal(m.device, 'cuda:0');
      const r = await m.forward(inputs, { capture: true });
      assert.equal(r.sample.dtype, dtype);
      for (const [got, want] of [[r.sample, io.sample], [r.captures.doubleImg, io['capture.double_img']],
        [r.captures.doubleTxt, io['capture.double_txt']], [r.captures.single, io['capture.single']]]) {
        const e = await x2i.relativeError(got, want);
        assert.ok(e <= tol, `${dtype}: rel err ${e} > ${tol}`);
      }
      m.dispose();
    }
  });

  // bf16 follows the reference's bf16 op chain (timestep rounded to bf16 before ×1000, ...), so it is
  // compared with the same chain on the CPU rather than with the float32 reference.
  gpuIt('bf16 on CUDA agrees with bf16 on the CPU', async () => {
    const io = await x2i.loadSafetensors(path.join(golden, 'flux-transformer', 'io.safetensors'));
    const inputs = { hiddenStates: io.hidden_states, encoderHiddenStates: io.encoder_hidden_states,
      pooledProjections: io.pooled_projections, timestep: io.timestep, guidance: io.guidance, imgIds: io.img_ids, txtIds: io.txt_ids };
    const cpu = await x2i.FluxTransformer.fromPretrained(path.join(golden, 'flux-transformer'), { dtype: 'bfloat16' });
    const gpu = await x2i.FluxTransformer.fromPretrained(path.join(golden, 'flux-transformer'), { device: 'cuda', dtype: 'bfloat16' });
    const a = await cpu.forward(inputs, { capture: true });
    const b = await gpu.forward(await onCuda(inputs), { capture: true });
    for (const k of ['doubleImg', 'doubleTxt', 'single']) {
      const e = await x2i.relativeError(b.captures[k], await a.captures[k].to({ device: 'cuda' }));
      assert.ok(e < 2e-2, `${k}: rel err ${e}`);
    }
    const e = await x2i.relativeError(b.sample, await a.sample.to({ device: 'cuda' }));
    assert.ok(e < 2e-2, `sample: rel err ${e}`);
    cpu.dispose(); gpu.dispose();
  });

  gpuIt('the distillation gradient matches grad.student.* (rel err <= 1e-3)', async () => {
    const d = await onCuda(await x2i.loadSafetensors(path.join(golden, 'x2i-distill-loss', 'io.safetensors')));
    const m = await x2i.FluxTransformer.fromPretrained(path.join(golden, 'flux-transformer'), { device: 'cuda', dtype: 'float32' });
    const base = { hiddenStates: d.hidden_states, timestep: d.timestep, guidance: d.guidance, imgIds: d.img_ids, txtIds: d.txt_ids };
    const student = { ...base, encoderHiddenStates: d['student.encoder_hidden_states'], pooledProjections: d['student.pooled_projections'] };
    const t = await m.forward({ ...base, encoderHiddenStates: d['teacher.encoder_hidden_states'], pooledProjections: d['teacher.pooled_projections'] }, { capture: true });
    const s = await m.forward(student, { capture: true });
    const r = await x2i.distillationLoss(t.captures, s.captures, { returnGrad: true });
    const want = (await d.loss.toArray())[0];
    assert.ok(Math.abs(r.loss - want) / want < 1e-4, `loss ${r.loss} vs ${want}`);
    const fb = await m.forwardBackward(student, { gradCaptures: r.grads });
    assert.ok(await x2i.relativeError(fb.grad.encoderHiddenStates, d['grad.student.encoder_hidden_states']) < 1e-3);
    assert.ok(await x2i.relativeError(fb.grad.pooledProjections, d['grad.student.pooled_projections']) < 1e-3);
    m.dispose();
  });

  for (const checkpoint of [false, true]) {
    gpuIt(`distillationStep (loss nodes at the taps, fused backward) matches the golden loss, terms and gradients${checkpoint ? ', checkpointed' : ''}`, async () => {
      const d = await onCuda(await x2i.loadSafetensors(path.join(golden, 'x2i-distill-loss', 'io.safetensors')));
      const m = await x2i.FluxTransformer.fromPretrained(path.join(golden, 'flux-transformer'), { device: 'cuda', dtype: 'float32' });
      const base = { hiddenStates: d.hidden_states, timestep: d.timestep, guidance: d.guidance, imgIds: d.img_ids, txtIds: d.txt_ids };
      const r = await m.distillationStep(
        { ...base, encoderHiddenStates: d['teacher.encoder_hidden_states'], pooledProjections: d['teacher.pooled_projections'] },
        { ...base, encoderHiddenStates: d['student.encoder_hidden_states'], pooledProjections: d['student.pooled_projections'] },
        { checkpoint });
      const want = (await d.loss.toArray())[0];
      assert.ok(Math.abs(r.loss - want) / want < 1e-4, `loss ${r.loss} vs ${want}`);
      assert.equal(r.skipped, 0);
      for (const [k, key] of [['doubleImg', 'terms.double_img'], ['doubleTxt', 'terms.double_txt'], ['single', 'terms.single']]) {
        if (!d[key]) continue;
        const w = await d[key].toArray();
        r.terms[k].forEach((v, i) => assert.ok(Math.abs(v - w[i]) / Math.abs(w[i]) < 1e-4, `${k}[${i}] ${v} vs ${w[i]}`));
      }
      assert.ok(await x2i.relativeError(r.grad.encoderHiddenStates, d['grad.student.encoder_hidden_states']) < 1e-3);
      assert.ok(await x2i.relativeError(r.grad.pooledProjections, d['grad.student.pooled_projections']) < 1e-3);
      m.dispose();
    });
  }
});
