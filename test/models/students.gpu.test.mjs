// The zoo's students on CUDA: InternVL2.5 and MiniCPM-o 2.6 match their golden hidden states in float32 (rel err
// ≤ 1e-4) and stay within bf16's rounding in bfloat16; Whisper's log-mel features on CUDA equal the CPU's.
import assert from 'node:assert/strict';
import path from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import * as x2i from '../../dist/index.js';

const golden = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', 'fixtures', 'golden');
const skip = x2i.cuda.isAvailable() ? false : 'CUDA is not available';
const rel = async (a, b) => x2i.relativeError(await a.to({ device: 'cpu', dtype: 'float64' }), await b.to({ dtype: 'float64' }));

describe('students on CUDA', () => {
  it('InternVL2.5: golden hidden states (float32) and bf16 close to them', { skip }, async () => {
    const io = await x2i.loadSafetensors(path.join(golden, 'internvl2_5', 'io.safetensors'));
    for (const [dtype, tol] of [['float32', 1e-4], ['bfloat16', 3e-2]]) {
      const enc = await x2i.InternVLEncoder.fromPretrained(path.join(golden, 'internvl2_5'), { device: 'cuda', dtype });
      for (const c of ['text_padded', 'image_tiles']) {
        const px = io[`${c}.pixel_values`] ? await io[`${c}.pixel_values`].to({ device: 'cuda', dtype }) : undefined;
        const { hiddenStates } = await enc.forward({ inputIds: io[`${c}.input_ids`], attentionMask: io[`${c}.attention_mask`], pixelValues: px });
        const e = await rel(hiddenStates, io[`${c}.hidden_states`]);
        assert.ok(e <= tol, `${c} ${dtype}: rel err ${e}`);
      }
      enc.dispose();
    }
  });

  it('MiniCPM-o 2.6: golden hidden states of the mixed prompt (float32) and bf16 close to them', { skip }, async () => {
    const dir = path.join(golden, 'minicpm_o');
    const io = await x2i.loadSafetensors(path.join(dir, 'io.safetensors'));
    for (const [dtype, tol] of [['float32', 1e-4], ['bfloat16', 3e-2]]) {
      const enc = await x2i.MiniCPMOEncoder.fromPretrained(dir, { device: 'cuda', dtype });
      const { hiddenStates } = await enc.forward({ inputIds: io['mixed.input_ids'], pixelValues: [io['mixed.pixel_values.0']],
        tgtSizes: io['mixed.tgt_sizes'], imageBound: io['mixed.image_bound'], audioFeatures: io['mixed.audio_features'],
        audioFeatureLens: io['mixed.audio_feature_lens'], audioBounds: io['mixed.audio_bounds'] });
      const e = await rel(hiddenStates, io['mixed.hidden_states']);
      assert.ok(e <= tol, `mixed ${dtype}: rel err ${e}`);
      enc.dispose();
    }
  });

  it('log-mel features on CUDA equal the CPU ones (a clip over 30 s)', { skip }, async () => {
    const w = Float32Array.from({ length: 31 * 16000 + 77 }, (_, i) => 0.3 * Math.sin(i / 7) * Math.sin(i / 3001));
    const cpu = await x2i.audio.logMel(w), gpu = await x2i.audio.logMel(w, { device: 'cuda' });
    assert.deepEqual(gpu.shape, cpu.shape);
    const e = await rel(gpu, cpu);
    assert.ok(e <= 1e-4, `rel err ${e}`);
  });
});
