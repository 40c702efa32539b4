// LoRA and LightControl on CUDA: the golden adapters and branches in float32, fused vs unfused in bf16 against the
// CPU, and a fine-tuning step on CUDA against the same step on the CPU.
import assert from 'node:assert/strict';
import path from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import * as x2i from '../../dist/index.js';

const golden = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', 'fixtures', 'golden');
const skip = x2i.cuda.isAvailable() ? false : 'CUDA is not available';
const gpuIt = (name, fn) => it(name, { skip }, fn);

async function inputsOn(file, device) {
  const io = await x2i.loadSafetensors(file, { device });
  return { io, inputs: { hiddenStates: io.hidden_states, encoderHiddenStates: io.encoder_hidden_states, pooledProjections: io.pooled_projections,
    timestep: io.timestep, guidance: io.guidance, imgIds: io.img_ids, txtIds: io.txt_ids } };
}

describe('LoRA and LightControl on CUDA', () => {
  gpuIt('float32: the golden LoRA outputs (diffusers and kohya files, scale 1, 0.5, fused) and the LightControl sample', async () => {
    const { io, inputs } = await inputsOn(path.join(golden, 'flux-lora', 'io.safetensors'), 'cuda');
    const m = await x2i.FluxTransformer.fromPretrained(path.join(golden, 'flux-transformer'), { device: 'cuda', dtype: 'float32' });
    for (const file of ['lora_diffusers.safetensors', 'lora_kohya.safetensors']) {
      const name = await m.loadLora(path.join(golden, 'flux-lora', file));
      for (const [scale, key] of [[1, 'sample.scale_1'], [0.5, 'sample.scale_0_5']]) {
        const { sample } = await m.forward(inputs, { loraScales: { [name]: scale } });
        const e = await x2i.relativeError(sample, io[key]);
        assert.ok(e <= 1e-4, `${file} scale ${scale}: rel err ${e}`);
      }
      await m.fuseLora();
      const { sample } = await m.forward(inputs);
      const e = await x2i.relativeError(sample, io['sample.fused']);
      assert.ok(e <= 1e-4, `${file} fused: rel err ${e}`);
      m.unloadLora(name);
    }
    const lc = await x2i.LightControl.fromPretrained(path.join(golden, 'lightcontrol', 'lightcontrol.bin'), { device: 'cuda', dtype: 'float32' });
    const c = await inputsOn(path.join(golden, 'lightcontrol', 'io.safetensors'), 'cuda');
    const { residuals } = await lc.forward({ hint: c.io.hint, timestep: c.io.timestep });
    const eb = await x2i.relativeError(residuals, c.io.branch_outputs);
    assert.ok(eb <= 1e-4, `branch outputs: rel err ${eb}`);
    const { sample } = await m.forward(c.inputs, { controlResiduals: residuals });
    const es = await x2i.relativeError(sample, c.io.sample);
    assert.ok(es <= 1e-4, `LightControl sample: rel err ${es}`);
    m.dispose();
    lc.dispose();
  });

  gpuIt('bf16: unfused and fused adapters agree with each other and with the CPU', async () => {
    const results = {};
    for (const device of ['cpu', 'cuda']) {
      const { inputs } = await inputsOn(path.join(golden, 'flux-lora', 'io.safetensors'), device);
      const m = await x2i.FluxTransformer.fromPretrained(path.join(golden, 'flux-transformer'), { device, dtype: 'bfloat16' });
      await m.loadLora(path.join(golden, 'flux-lora', 'lora_kohya.safetensors'), { adapterName: 'k' });
      const unfused = (await m.forward(inputs)).sample;
      await m.fuseLora();
      const fused = (await m.forward(inputs)).sample;
      results[device] = { unfused: await unfused.to({ device: 'cpu', dtype: 'float32' }), fused: await fused.to({ device: 'cpu', dtype: 'float32' }) };
      m.dispose();
    }
    for (const [a, b, tol] of [[results.cuda.unfused, results.cuda.fused, 3e-2], [results.cuda.unfused, results.cpu.unfused, 3e-2]]) {
      const e = await x2i.relativeError(a, b);
      assert.ok(e <= tol, `rel err ${e} > ${tol}`);
    }
  });

  gpuIt('float32: the stacked one-pass path equals the LibTorch composition (two adapters, one off, one fused)', async () => {
    const { inputs } = await inputsOn(path.join(golden, 'flux-lora', 'io.safetensors'), 'cuda');
    const m = await x2i.FluxTransformer.fromPretrained(path.join(golden, 'flux-transformer'), { device: 'cuda', dtype: 'float32' });
    await m.loadLora(path.join(golden, 'flux-lora', 'lora_kohya.safetensors'), { adapterName: 'a', scale: 0.7 });
    await m.loadLora(path.join(golden, 'flux-lora', 'lora_diffusers.safetensors'), { adapterName: 'b', scale: -0.3 });
    const compare = async (opts, what) => {
      const kernel = (await m.forward(inputs, opts)).sample;
      process.env.X2I_NO_KERNELS = '1';  // the composed path (and the QKV composite)
      let composed;
      try {
        composed = (await m.forward(inputs, opts)).sample;
      } finally {
        delete process.env.X2I_NO_KERNELS;
      }
      const e = await x2i.relativeError(kernel, composed);
      assert.ok(e <= 1e-5, `${what}: rel err ${e}`);
    };
    await compare({}, 'both adapters');
    await compare({ loraScales: { b: 0 } }, 'b off');
    await compare({ loraScales: { a: 0, b: 1 } }, 'a off, b at 1');
    await m.fuseLora();
    await compare({ loraScales: { a: 1 } }, 'fused at 0.7 and -0.3, then a at 1');
    m.dispose();
  });

  gpuIt('a LoRA fine-tuning step (float32) on CUDA equals the CPU step', async () => {
    const losses = {};
    for (const device of ['cpu', 'cuda']) {
      const flux = await x2i.FluxTransformer.fromPretrained(path.join(golden, 'flux-transformer'), { device, dtype: 'float32' });
      const trainer = new x2i.LoraTrainer({ transformer: flux }, { height: 32, width: 32, lr: 1e-2, checkpoint: device === 'cuda',
        lora: { rank: 4, seed: 1 } });
      const sample = { latents: await x2i.randn([1, 4, 16], { seed: 1, device }), conditioning: {
        encoderHiddenStates: await x2i.randn([1, 7, 32], { seed: 2, device }), pooledProjections: await x2i.randn([1, 24], { seed: 3, device }) } };
      losses[device] = (await trainer.fit({ data: [sample], steps: 4 })).map((i) => i.loss);
      trainer.dispose();
      flux.dispose();
    }
    losses.cpu.forEach((l, k) => assert.ok(Math.abs(l - losses.cuda[k]) <= 1e-4 * Math.abs(l), `step ${k}: cpu ${l} cuda ${losses.cuda[k]}`));
  });
});
