// The denoising step as a CUDA graph (native/sample/euler.cc): one Euler step per call as FluxPipeline makes them
// (the first eager, the second captured, the rest replayed) gives the same latents as the eager loop
// (X2I_NO_CUDA_GRAPHS=1), also across what changes the captured work: new inputs of the same shapes, LoRA adapters
// loaded, rescaled, fused and unloaded between calls, another batch size, FP8 weights.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import * as x2i from '../../dist/index.js';
import { probes } from '../../dist/testing.js';

const skip = x2i.cuda.isAvailable() ? false : 'CUDA is not available';
const device = 'cuda', dtype = 'bfloat16';
const cfg = { num_layers: 2, num_single_layers: 3, attention_head_dim: 64, num_attention_heads: 4, joint_attention_dim: 128,
  pooled_projection_dim: 64, axes_dims_rope: [16, 24, 24] };

async function inputs(seed, B = 1, side = 16, T = 24) {
  return { encoderHiddenStates: await x2i.randn([B, T, 128], { seed, device, dtype }),
    pooledProjections: await x2i.randn([B, 64], { seed: seed + 1, device, dtype }),
    guidance: x2i.Tensor.fromArray(new Float32Array(B).fill(3.5), [B], { device }),
    imgIds: x2i.FluxPipeline.imageIds(side, side, device), txtIds: x2i.Tensor.fromArray(new Float32Array(T * 3), [T, 3], { device }),
    hiddenStates: await x2i.randn([B, (side / 2) ** 2, 64], { seed: seed + 2, device, dtype }) };
}

// `steps` Euler steps, one denoise call each; the latents as float32
async function run(flux, ins, steps = 5, loraScales) {
  const { timesteps, sigmas } = new x2i.FlowMatchEulerScheduler().setTimesteps(steps, { imageSeqLen: ins.hiddenStates.shape[1] });
  let x = ins.hiddenStates;
  for (let i = 0; i < steps; i++) {
    const r = await flux.denoise({ ...ins, hiddenStates: x }, [timesteps[i]], [sigmas[i], sigmas[i + 1]],
      { returnStepLatents: false, ...(loraScales ? { loraScales } : {}) });
    if (x !== ins.hiddenStates) x.dispose();
    x = r.latents;
  }
  const f = await x.to({ dtype: 'float32', device: 'cpu' });
  x.dispose();
  return f.toArray();
}
async function eager(fn) {
  process.env.X2I_NO_CUDA_GRAPHS = '1';
  try { return await fn(); } finally { delete process.env.X2I_NO_CUDA_GRAPHS; }
}
const dispose = (o) => { for (const v of Object.values(o)) v.dispose(); };
// the same kernels replayed: equal up to what a different cuBLAS workspace could change (bit-equal in practice)
function same(a, b, what) {
  let num = 0, den = 0;
  for (let i = 0; i < a.length; i++) num += (a[i] - b[i]) ** 2, den += b[i] ** 2;
  assert.ok(Math.sqrt(num / den) < 1e-3, `${what}: relative difference ${Math.sqrt(num / den)}`);
}

describe('the denoising step as a CUDA graph', { skip }, () => {
  it('equals the eager loop, step for step, with new inputs of the same shapes and another batch size', async () => {
    for (const quantize of ['none', 'fp8']) {
      const flux = await x2i.FluxTransformer.fromConfig(cfg, { device, dtype, seed: 1, quantize });
      for (const [seed, B] of [[10, 1], [20, 1], [30, 2], [10, 1]]) {
        const ins = await inputs(seed, B);
        const g = await run(flux, ins), e = await eager(() => run(flux, ins));
        same(g, e, `${quantize}, seed ${seed}, batch ${B}`);
        assert.equal(probes().stepGraphState(flux.nativeHandle()), 'captured', 'the steps after the first replay a graph');
        dispose(ins);
      }
      flux.dispose();
    }
  });

  it('LoRA adapters loaded, rescaled, fused, unfused and unloaded between calls: what eager gives', async () => {
    const flux = await x2i.FluxTransformer.fromConfig(cfg, { device, dtype, seed: 2 });
    const ins = await inputs(40);
    const plain = await run(flux, ins);
    const rank = 8, tensors = {};
    for (const [k, [out, inp]] of Object.entries({ 'transformer_blocks.0.attn.to_q': [256, 256], 'single_transformer_blocks.1.proj_out': [256, 1280] })) {
      tensors[`transformer.${k}.lora_A.weight`] = await x2i.randn([rank, inp], { seed: 5, dtype: 'float32' });
      tensors[`transformer.${k}.lora_B.weight`] = await x2i.randn([out, rank], { seed: 6, dtype: 'float32' });
    }
    await flux.loadLora(tensors, { adapterName: 'a' });
    const withA = await run(flux, ins);
    assert.throws(() => same(withA, plain, 'the adapter changes the latents'));
    same(withA, await eager(() => run(flux, ins)), 'adapter a');
    const half = await run(flux, ins, 5, { a: 0.5 });
    same(half, await eager(() => run(flux, ins, 5, { a: 0.5 })), 'scale 0.5 per call');
    flux.setLoraScales({ a: 1 });
    await flux.fuseLora();
    const fused = await run(flux, ins);
    same(fused, await eager(() => run(flux, ins)), 'fused');
    await flux.unfuseLora();
    // another adapter under the same name and scale, loaded with no step in between: only the weights' storage changed
    flux.unloadLora('a');
    const other = {};
    for (const [k, v] of Object.entries(tensors)) other[k] = await x2i.randn(v.shape, { seed: k.length + (k.includes('lora_A') ? 7 : 8), dtype: 'float32' });
    await flux.loadLora(other, { adapterName: 'a' });
    const withOther = await run(flux, ins);
    assert.equal(probes().stepGraphState(flux.nativeHandle()), 'captured');
    same(withOther, await eager(() => run(flux, ins)), 'another adapter a');
    assert.throws(() => same(withOther, withA, 'the other adapter differs'));
    dispose(other);
    same(await run(flux, ins), await eager(() => run(flux, ins)), 'unloaded');
    dispose(tensors);
    dispose(ins);
    flux.dispose();
  });
});
