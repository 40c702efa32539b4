import fs from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import * as x2i from '../../lib/index.js';
import { ClipTextEncoder, T5Encoder, Tensor } from '../../lib/index.js';
import { golden, tmpDir } from '../helpers.js';

const tmp = tmpDir();
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

async function variant(src: string, name: string, edit: (w: Record<string, Tensor>, c: Record<string, unknown>) => Promise<void> | void) {
  const d = path.join(tmp, name);
  fs.mkdirSync(d);
  const w = await x2i.loadSafetensors(path.join(src, 'model.safetensors'));
  const c = JSON.parse(fs.readFileSync(path.join(src, 'config.json'), 'utf8'));
  await edit(w, c);
  await x2i.saveSafetensors(path.join(d, 'model.safetensors'), w);
  fs.writeFileSync(path.join(d, 'config.json'), JSON.stringify(c));
  for (const t of Object.values(w)) t.dispose();
  return d;
}

describe('T5Encoder', () => {
  const dir = path.join(golden, 't5-encoder');
  it('matches transformers: last hidden state and every layer', async () => {
    const io = await x2i.loadSafetensors(path.join(dir, 'io.safetensors'));
    using m = await T5Encoder.fromPretrained(dir);
    const r = await m.forward({ inputIds: io.input_ids });
    expect(r.hiddenStates.shape).toEqual([2, 3, 12, 32]);
    expect(await x2i.relativeError(r.lastHiddenState, io.last_hidden_state)).toBeLessThan(1e-4);
    expect(await x2i.relativeError(r.hiddenStates, io.hidden_states)).toBeLessThan(1e-4);
    // an all-ones mask is no mask; a real one changes the result
    const ones = Tensor.fromArray(new BigInt64Array(24).fill(1n), [2, 12]);
    const r1 = await m.forward({ inputIds: io.input_ids, attentionMask: ones });
    expect(await x2i.relativeError(r1.lastHiddenState, io.last_hidden_state)).toBeLessThan(1e-6);
    const half = Tensor.fromArray(BigInt64Array.from({ length: 24 }, (_, i) => (i % 12 < 6 ? 1n : 0n)), [2, 12]);
    const r2 = await m.forward({ inputIds: io.input_ids, attentionMask: half });
    expect(await x2i.relativeError(r2.lastHiddenState, io.last_hidden_state)).toBeGreaterThan(1e-3);
  });

  it('the tied alias encoder.embed_tokens.weight is accepted', async () => {
    const d = await variant(dir, 't5-alias', (w) => { w['encoder.embed_tokens.weight'] = w['shared.weight']; delete w['shared.weight']; });
    using m = await T5Encoder.fromPretrained(d);
    const io = await x2i.loadSafetensors(path.join(dir, 'io.safetensors'));
    expect(await x2i.relativeError((await m.forward({ inputIds: io.input_ids })).lastHiddenState, io.last_hidden_state)).toBeLessThan(1e-4);
  });

  it('errors name the file and field, the tensor and shapes, the bad ids', async () => {
    const noField = await variant(dir, 't5-nofield', (_w, c) => { delete c.d_ff; });
    await expect(T5Encoder.fromPretrained(noField)).rejects.toThrow(/config\.json: field 'd_ff' is missing/);
    const missing = await variant(dir, 't5-missing', (w) => { delete w['encoder.block.1.layer.1.DenseReluDense.wo.weight']; });
    await expect(T5Encoder.fromPretrained(missing)).rejects.toThrow(/missing tensor 'encoder\.block\.1\.layer\.1\.DenseReluDense\.wo\.weight' \(expected shape \[32, 64\]\)/);
    const wrongType = await variant(dir, 't5-type', (_w, c) => { c.model_type = 'bert'; });
    await expect(T5Encoder.fromPretrained(wrongType)).rejects.toThrow(/model_type 'bert' is not a T5 model/);
    using m = await T5Encoder.fromPretrained(dir);
    await expect(m.forward({ inputIds: Tensor.fromArray(new BigInt64Array([5n, 500n]), [1, 2]) })).rejects.toThrow(/token ids must be in \[0, 120\)/);
    await expect(m.forward({ inputIds: Tensor.fromArray(new Float32Array(2), [1, 2]) })).rejects.toThrow(/integer ids/);
  });
});

describe('ClipTextEncoder', () => {
  const dir = path.join(golden, 'clip-text');
  it('matches transformers: last hidden state, pooled output (first EOS), every layer', async () => {
    const io = await x2i.loadSafetensors(path.join(dir, 'io.safetensors'));
    using m = await ClipTextEncoder.fromPretrained(dir);
    const r = await m.forward({ inputIds: io.input_ids });
    expect(await x2i.relativeError(r.lastHiddenState, io.last_hidden_state)).toBeLessThan(1e-4);
    expect(await x2i.relativeError(r.pooledOutput, io.pooler_output)).toBeLessThan(1e-4);
    expect(await x2i.relativeError(r.hiddenStates, io.hidden_states)).toBeLessThan(1e-4);
  });

  it('accepts the text_model. prefix and the eos_token_id 2 (largest id) rule', async () => {
    const io = await x2i.loadSafetensors(path.join(dir, 'io.safetensors'));
    const d = await variant(dir, 'clip-prefixed', (w, c) => {
      for (const k of Object.keys(w)) { w[`text_model.${k}`] = w[k]; delete w[k]; }
      c.eos_token_id = 2;  // the released CLIP-L config: pool at the largest id (here the EOS, 99)
    });
    using m = await ClipTextEncoder.fromPretrained(d);
    const r = await m.forward({ inputIds: io.input_ids });
    expect(await x2i.relativeError(r.pooledOutput, io.pooler_output)).toBeLessThan(1e-4);
  });

  it('errors: too many tokens, missing tensors', async () => {
    using m = await ClipTextEncoder.fromPretrained(dir);
    await expect(m.forward({ inputIds: Tensor.fromArray(new BigInt64Array(78), [1, 78]) })).rejects.toThrow(/78 tokens, at most 77/);
    const missing = await variant(dir, 'clip-missing', (w) => { delete w['final_layer_norm.bias']; });
    await expect(ClipTextEncoder.fromPretrained(missing)).rejects.toThrow(/missing tensor 'final_layer_norm\.bias'/);
  });
});

describe('encodePrompt on the teacher encoders', () => {
  const fakeTok = (vocab: number) => ({
    encode: (text: string | string[], opts?: { maxLength?: number }) => {
      const L = opts?.maxLength ?? 8;
      const ids = BigInt64Array.from({ length: L }, (_, i) => BigInt(((String(text).charCodeAt(i % String(text).length) || 1) + i) % vocab));
      return { inputIds: Tensor.fromArray(ids, [1, L]), attentionMask: Tensor.fromArray(new BigInt64Array(L).fill(1n), [1, L]) };
    },
  });
  it('T5 and CLIP: the same as tokenizing and calling forward', async () => {
    using t5 = await T5Encoder.fromPretrained(path.join(golden, 't5-encoder'));
    const tok = fakeTok(120);
    const a = await t5.encodePrompt('a red circle', { tokenizer: tok, maxLength: 12 });
    const b = await t5.forward({ inputIds: tok.encode('a red circle', { maxLength: 12 }).inputIds });
    expect(await a.lastHiddenState.toArray()).toEqual(await b.lastHiddenState.toArray());
    using clip = await ClipTextEncoder.fromPretrained(path.join(golden, 'clip-text'));
    const tc = fakeTok(100);
    const c = await clip.encodePrompt('a red circle', { tokenizer: tc, maxLength: 20 });
    const d = await clip.forward({ inputIds: tc.encode('a red circle', { maxLength: 20 }).inputIds });
    expect(await c.pooledOutput.toArray()).toEqual(await d.pooledOutput.toArray());
  });
  it('without a tokenizer beside the model, a clear error', async () => {
    using t5 = await T5Encoder.fromPretrained(path.join(golden, 't5-encoder'));
    await expect(t5.encodePrompt('x')).rejects.toThrow(/tokenizer\.json: no such file/);
  });
});
