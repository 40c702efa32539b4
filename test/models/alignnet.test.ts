import fs from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import * as x2i from '../../lib/index.js';
import { AlignNet, Tensor } from '../../lib/index.js';
import { golden, tmpDir } from '../helpers.js';

const dir = path.join(golden, 'alignnet');
const tmp = tmpDir();
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe('AlignNet matches the official X2I code', () => {
  for (const file of ['alignnet.safetensors', 'diffusion_pytorch_model.bin']) {
    it(`from ${file}`, async () => {
      const io = await x2i.loadSafetensors(path.join(dir, 'io.safetensors'));
      using net = await AlignNet.fromPretrained(path.join(dir, file));
      expect(net.info).toEqual({ variant: 'conv', layers: 5, inputDim: 32, sequenceDim: 32, pooledDim: 24, kernelSize: 5 });
      const r = await net.forward(io.hidden_states);
      expect(await x2i.relativeError(r.encoderHiddenStates, io.encoder_hidden_states)).toBeLessThan(1e-4);
      expect(await x2i.relativeError(r.pooledProjections, io.pooled_projections)).toBeLessThan(1e-4);
    });
  }

  it('saves safetensors that load back identically (official key names)', async () => {
    using net = await AlignNet.fromPretrained(path.join(dir, 'diffusion_pytorch_model.bin'));
    const out = path.join(tmp, 'a.safetensors');
    await net.save(out);
    const h = await x2i.readSafetensorsHeader(out);
    expect(h.entries.map((e) => e.name).sort()).toEqual(['conv.bias', 'conv.weight', 'mlp.fc.1.bias', 'mlp.fc.1.weight',
      'mlp.layernorm.bias', 'mlp.layernorm.weight', 'mlp.projector.0.weight', 'mlp.projector.2.weight']);
    expect(h.metadata['x2i.variant']).toBe('conv');
    const a = await x2i.loadSafetensors(out), b = await x2i.loadSafetensors(path.join(dir, 'alignnet.safetensors'));
    for (const k of Object.keys(b)) expect(await a[k].toArray(), k).toEqual(await b[k].toArray());
  });

  it('per-layer scale (InternVL-1B) and mean variants', async () => {
    const w = await x2i.loadSafetensors(path.join(dir, 'alignnet.safetensors'));
    const { 'conv.weight': cw, 'conv.bias': cb, ...mlp } = w;
    cw.dispose(); cb.dispose();
    const scale = Tensor.fromArray(new Float32Array([0.5, -1, 2, 0.25, 1]), [1, 5, 1, 1]);
    await x2i.saveSafetensors(path.join(tmp, 'scale.safetensors'), { ...mlp, cha_scale: scale });
    await x2i.saveSafetensors(path.join(tmp, 'mean.safetensors'), mlp);
    using s = await AlignNet.fromPretrained(path.join(tmp, 'scale.safetensors'));
    using m = await AlignNet.fromPretrained(path.join(tmp, 'mean.safetensors'));
    expect(s.info.variant).toBe('scale');
    expect(m.info.variant).toBe('mean');
    // scale with all ones = mean
    await x2i.saveSafetensors(path.join(tmp, 'ones.safetensors'), { ...mlp, cha_scale: Tensor.fromArray(new Float32Array(5).fill(1), [1, 5, 1, 1]) });
    using o = await AlignNet.fromPretrained(path.join(tmp, 'ones.safetensors'));
    const x = await x2i.randn([2, 5, 9, 32], { seed: 3 });
    const [ro, rm] = [await o.forward(x), await m.forward(x)];
    expect(await x2i.relativeError(ro.encoderHiddenStates, rm.encoderHiddenStates)).toBeLessThan(1e-6);
    const rs = await s.forward(x);
    expect(rs.pooledProjections.shape).toEqual([2, 24]);
  });

  it('ComfyUI {config, state_dict} layout: the config is skipped, the state_dict prefix stripped', async () => {
    // the same tensors under state_dict.*, written as safetensors (a torch pickle cannot be written from here)
    const w = await x2i.loadSafetensors(path.join(dir, 'alignnet.safetensors'));
    const prefixed = Object.fromEntries(Object.entries(w).map(([k, t]) => [`state_dict.${k}`, t]));
    await x2i.saveSafetensors(path.join(tmp, 'comfy.safetensors'), prefixed);
    using net = await AlignNet.fromPretrained(path.join(tmp, 'comfy.safetensors'));
    expect(net.info.variant).toBe('conv');
  });

  it('errors name the tensor, the file and the shapes', async () => {
    const w = await x2i.loadSafetensors(path.join(dir, 'alignnet.safetensors'));
    const { 'mlp.fc.1.bias': gone, ...rest } = w;
    await x2i.saveSafetensors(path.join(tmp, 'missing.safetensors'), rest);
    await expect(AlignNet.fromPretrained(path.join(tmp, 'missing.safetensors'))).rejects.toThrow(/missing\.safetensors\): missing tensor 'mlp\.fc\.1\.bias'/);
    await x2i.saveSafetensors(path.join(tmp, 'bad.safetensors'), { ...w, 'mlp.projector.2.weight': await x2i.randn([32, 31]) });
    await expect(AlignNet.fromPretrained(path.join(tmp, 'bad.safetensors'))).rejects.toThrow(/'mlp\.projector\.2\.weight' has shape \[32, 31\], expected \[32, 32\]/);
    await x2i.saveSafetensors(path.join(tmp, 'extra.safetensors'), { ...w, 'foo.weight': gone });
    await expect(AlignNet.fromPretrained(path.join(tmp, 'extra.safetensors'))).rejects.toThrow(/1 unexpected tensor\(s\): 'foo\.weight'/);
    using net = await AlignNet.fromPretrained(path.join(dir, 'alignnet.safetensors'));
    await expect(net.forward(await x2i.randn([2, 4, 9, 32]))).rejects.toThrow(/hiddenStates has shape \[2, 4, 9, 32\], expected \[B, 5, tokens, 32\]/);
  });
});
