// The CUDA kernels against their LibTorch composites (X2I_NO_KERNELS=1) and against float64 on the CPU,
// on odd sizes: forward, and the backward to the conditioning inputs. Head dims 128 and 64 take the QKV kernels'
// vector path (a lane holds 4 or 2 consecutive elements), 34 the striding one.
import assert from 'node:assert/strict';
import path from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import * as x2i from '../../dist/index.js';

const golden = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', 'fixtures', 'golden');
const skip = x2i.cuda.isAvailable() ? false : 'CUDA is not available';
const gpuIt = (name, fn) => it(name, { skip }, fn);

async function run(m, inputs, grads, kernels) {
  if (kernels) delete process.env.X2I_NO_KERNELS; else process.env.X2I_NO_KERNELS = '1';
  try {
    const f = await m.forward(inputs, { capture: true });
    const b = await m.forwardBackward(inputs, grads);
    return { sample: f.sample, ...f.captures, ...b.grad };
  } finally {
    delete process.env.X2I_NO_KERNELS;
  }
}

async function inputsFor(c, B, T, N, device, dtype) {
  const ids = new Float32Array(N * 3).map((_, i) => (i % 3 === 0 ? 0 : (i * 7) % 13));
  return {
    hiddenStates: await x2i.randn([B, N, c.in_channels], { seed: 1, device, dtype }),
    encoderHiddenStates: await x2i.randn([B, T, c.joint_attention_dim], { seed: 2, device, dtype }),
    pooledProjections: await x2i.randn([B, c.pooled_projection_dim], { seed: 3, device, dtype }),
    timestep: x2i.Tensor.fromArray(new Float32Array(B).fill(0.75), [B], { device }),
    guidance: x2i.Tensor.fromArray(new Float32Array(B).fill(3.5), [B], { device }),
    imgIds: x2i.Tensor.fromArray(ids, [N, 3], { device }),
    txtIds: x2i.Tensor.fromArray(new Float32Array(T * 3), [T, 3], { device }),
  };
}

const configs = [
  { name: 'head dim 34 (17 pairs), 3 heads, 7 + 37 tokens, batch 2', B: 2, T: 7, N: 37,
    c: { in_channels: 16, num_layers: 2, num_single_layers: 2, attention_head_dim: 34, num_attention_heads: 3,
      joint_attention_dim: 40, pooled_projection_dim: 24, axes_dims_rope: [2, 16, 16] } },
  { name: 'head dim 128 (FLUX), 2 heads, 1 + 65 tokens', B: 1, T: 1, N: 65,
    c: { in_channels: 64, num_layers: 1, num_single_layers: 1, attention_head_dim: 128, num_attention_heads: 2,
      joint_attention_dim: 64, pooled_projection_dim: 32, axes_dims_rope: [16, 56, 56] } },
  { name: 'head dim 64 (two elements a lane), 3 heads, 5 + 50 tokens, batch 2', B: 2, T: 5, N: 50,
    c: { in_channels: 16, num_layers: 1, num_single_layers: 2, attention_head_dim: 64, num_attention_heads: 3,
      joint_attention_dim: 48, pooled_projection_dim: 24, axes_dims_rope: [8, 28, 28] } },
];

describe('fused QKV + QK-RMSNorm + RoPE kernel', () => {
  for (const { name, c, B, T, N } of configs) {
    for (const [dtype, tol] of [['float32', 2e-5], ['bfloat16', 2e-2]]) {
      gpuIt(`${name}, ${dtype}: kernel = composite (forward, captures, gradients)`, async () => {
        const m = await x2i.FluxTransformer.fromConfig(c, { device: 'cuda', dtype, seed: 5 });
        const inputs = await inputsFor(c, B, T, N, 'cuda', dtype);
        const probe = await m.forward(inputs, { capture: true });
        const grads = { gradSample: await x2i.randn(probe.sample.shape, { seed: 6, device: 'cuda', dtype }),
          gradCaptures: { single: await x2i.randn(probe.captures.single.shape, { seed: 7, device: 'cuda', dtype }),
            doubleTxt: await x2i.randn(probe.captures.doubleTxt.shape, { seed: 8, device: 'cuda', dtype }) } };
        const a = await run(m, inputs, grads, true);
        const b = await run(m, inputs, grads, false);
        for (const k of Object.keys(a)) {
          const e = await x2i.relativeError(a[k], b[k]);
          assert.ok(e < tol, `${k}: rel err ${e} > ${tol}`);
        }
        m.dispose();
      });
    }
  }

  gpuIt('golden model: float32 with kernels on CUDA = float64 on the CPU (forward and gradients)', async () => {
    const io = await x2i.loadSafetensors(path.join(golden, 'flux-transformer', 'io.safetensors'));
    const cpu = await x2i.FluxTransformer.fromPretrained(path.join(golden, 'flux-transformer'), { dtype: 'float64' });
    const gpu = await x2i.FluxTransformer.fromPretrained(path.join(golden, 'flux-transformer'), { device: 'cuda', dtype: 'float32' });
    const inputs = { hiddenStates: io.hidden_states, encoderHiddenStates: io.encoder_hidden_states,
      pooledProjections: io.pooled_projections, timestep: io.timestep, guidance: io.guidance, imgIds: io.img_ids, txtIds: io.txt_ids };
    const grads = { gradSample: await x2i.randn([2, 64, 16], { seed: 9, dtype: 'float64' }) };
    const ref = await run(cpu, inputs, grads, true);
    const got = await run(gpu, inputs, grads, true);
    for (const k of Object.keys(ref)) {
      const e = await x2i.relativeError(await got[k].to({ device: 'cpu', dtype: 'float64' }), ref[k]);
      assert.ok(e < 1e-5, `${k}: rel err ${e}`);
    }
  });
});
